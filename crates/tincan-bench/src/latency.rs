//! Part 2: round-trip latency. A sends, B's loop replies on receipt, A waits for the reply.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use tincan_client::{Client, Event};

use crate::report::{Figure, Outcome, percentile, sorted_ms};
use crate::setup::{Pair, STEP_TIMEOUT};

/// Latency settings.
#[derive(Clone, Debug)]
pub struct Params {
    pub round_trips: usize,
    pub warmup: usize,
}

pub async fn run(relay_url: &str, p: &Params, bar: &ProgressBar) -> Result<Outcome> {
    let Pair {
        mut a,
        mut b,
        a_to_b,
        b_to_a,
        dir: _dir,
    } = Pair::new(relay_url).await?;
    let echo = tokio::spawn(async move {
        while let Some(event) = b.next_event().await {
            if let Event::Message(m) = event {
                b.send(&b_to_a, &m.text).await.context("echo send")?;
            }
        }
        Ok::<_, anyhow::Error>(())
    });
    let mut samples = Vec::with_capacity(p.round_trips);
    let mut cpu_before = None;
    for i in 0..p.warmup + p.round_trips {
        if i == p.warmup {
            cpu_before = crate::cpu::used();
        }
        let t = Instant::now();
        a.send(&a_to_b, "ping").await.context("send")?;
        wait_message(&mut a)
            .await
            .with_context(|| format!("round trip {i}"))?;
        let rtt = t.elapsed();
        if i >= p.warmup {
            samples.push(rtt);
            bar.inc(1);
        }
    }
    let cpu = crate::cpu::per_unit_us(cpu_before, crate::cpu::used(), p.round_trips);
    echo.abort();
    let v = sorted_ms(&samples);
    let mut figures = vec![
        Figure::new("median_ms", "RTT median", percentile(&v, 50.0), "ms").at_most(0.5),
        Figure::new("p90_ms", "RTT p90", percentile(&v, 90.0), "ms"),
        Figure::new("p99_ms", "RTT p99", percentile(&v, 99.0), "ms").at_most(2.0),
    ];
    figures.extend(crate::cpu::figure(
        "cpu_us_per_rtt",
        "CPU per round trip (whole process)",
        cpu,
    ));
    Ok(Outcome::Measured {
        figures,
        notes: vec![format!(
            "{} round trips after {} warm-up; max {:.3} ms",
            p.round_trips,
            p.warmup,
            v.last().copied().unwrap_or(0.0)
        )],
    })
}

async fn wait_message(client: &mut Client) -> Result<()> {
    let wait = async {
        loop {
            match client.next_event().await {
                Some(Event::Message(_)) => return Ok(()),
                Some(Event::Rejected { reason, .. }) => bail!("reply rejected: {reason}"),
                Some(Event::SendFailed { code, message, .. }) => {
                    bail!("send failed: {code}: {message}")
                }
                Some(_) => {}
                None => bail!("client closed"),
            }
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, wait)
        .await
        .map_err(|_| anyhow::anyhow!("no reply within {:?}", STEP_TIMEOUT))?
}
