//! Part 1: one-way throughput between two paired agents through the relay.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use tincan_client::Event;
use tokio::sync::Notify;

use crate::report::{Figure, Outcome};
use crate::setup::Pair;

/// Throughput settings.
#[derive(Clone, Debug)]
pub struct Params {
    pub messages: usize,
    pub batch: usize,
    pub size: usize,
    /// Most messages sent but not yet received, so the sender never overruns the relay's
    /// per-recipient queue cap (10,000 by default) and gets refusals.
    pub window: usize,
}

pub async fn run(
    relay_url: &str,
    p: &Params,
    limit: Duration,
    bar: &ProgressBar,
) -> Result<Outcome> {
    let deadline = tokio::time::Instant::now() + limit;
    let Pair {
        a,
        mut b,
        a_to_b,
        dir: _dir,
        ..
    } = Pair::new(relay_url).await?;
    let payload = "x".repeat(p.size);
    let texts: Vec<&str> = vec![payload.as_str(); p.batch];

    let received = Arc::new(AtomicU64::new(0));
    let wake = Arc::new(Notify::new());
    let total = p.messages as u64;
    let receiver = {
        let received = received.clone();
        let wake = wake.clone();
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while n < total {
                match b.next_event().await {
                    Some(Event::Message(_)) => {
                        n += 1;
                        if n.is_multiple_of(64) || n == total {
                            received.store(n, Ordering::Release);
                            wake.notify_one();
                            bar.set_position(n);
                        }
                    }
                    Some(Event::Rejected { reason, .. }) => {
                        bail!("receiver rejected a message: {reason}")
                    }
                    Some(_) => {}
                    None => bail!("receiver closed after {n} messages"),
                }
            }
            Ok::<_, anyhow::Error>(Instant::now())
        })
    };

    let start = Instant::now();
    let cpu_before = crate::cpu::used();
    let mut sent = 0usize;
    let mut busy = Duration::ZERO;
    while sent < p.messages {
        while (sent as u64).saturating_sub(received.load(Ordering::Acquire)) > p.window as u64 {
            // Bounded wait: a lost wake-up only costs a millisecond.
            let _ = tokio::time::timeout(Duration::from_millis(1), wake.notified()).await;
            if tokio::time::Instant::now() > deadline {
                bail!("{}", stalled(&a, sent, &received, limit));
            }
        }
        let k = p.batch.min(p.messages - sent);
        let t = Instant::now();
        a.send_many(&a_to_b, &texts[..k])
            .await
            .context("send_many")?;
        busy += t.elapsed();
        sent += k;
    }
    let all_queued = start.elapsed();
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    if a.wait_outbox_empty(left).await.is_err() {
        bail!("{}", stalled(&a, sent, &received, limit));
    }
    let all_stored = start.elapsed();
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let last = match tokio::time::timeout(left, receiver).await {
        Ok(joined) => joined.context("receiver task panicked")??,
        Err(_) => bail!("{}", stalled(&a, sent, &received, limit)),
    };
    let cpu = crate::cpu::per_unit_us(cpu_before, crate::cpu::used(), p.messages);
    let elapsed = last - start;
    let rate = p.messages as f64 / elapsed.as_secs_f64();

    let mut figures = vec![
        Figure::new("msg_per_sec", "msg/s end to end", rate, "msg/s").at_least(20_000.0),
        Figure::new("elapsed_ms", "wall time", elapsed.as_secs_f64() * 1e3, "ms"),
        Figure::new(
            "send_many_us_per_msg",
            "send_many busy per msg",
            busy.as_secs_f64() * 1e6 / p.messages as f64,
            "us",
        ),
    ];
    figures.extend(crate::cpu::figure(
        "cpu_us_per_msg",
        "CPU per message (whole process)",
        cpu,
    ));
    Ok(Outcome::Measured {
        figures,
        notes: vec![format!(
            "{} x {} B in batches of {}: all queued after {:.0} ms, all stored at the relay after {:.0} ms, all received after {:.0} ms",
            p.messages,
            p.size,
            p.batch,
            all_queued.as_secs_f64() * 1e3,
            all_stored.as_secs_f64() * 1e3,
            elapsed.as_secs_f64() * 1e3,
        )],
    })
}

/// Why the run stopped: how far each side got when the time limit passed.
fn stalled(
    a: &tincan_client::Client,
    sent: usize,
    received: &AtomicU64,
    limit: Duration,
) -> String {
    let home = a.home();
    let pending = home
        .outbox_len()
        .map_or_else(|e| format!("unknown ({e})"), |n| n.to_string());
    format!(
        "no progress within {limit:?}: {sent} queued, {pending} not yet stored at the relay, about {} received",
        received.load(Ordering::Acquire)
    )
}
