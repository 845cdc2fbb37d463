//! Relay latency under a fixed offered load: N pairs send open loop at a set total rate; each
//! body carries its send time, and the receiver takes send → deliver for every message sent in
//! the measured window.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use indicatif::ProgressBar;

use crate::load::{self, Drive};
use crate::relay_load::{StoreMetrics, TARGET_MSG_PER_SEC, TARGET_PAIRS, TARGET_SIZE};
use crate::report::{Figure, Outcome, percentile};
use crate::setup::Relay;

/// Latency settings.
#[derive(Clone, Debug)]
pub struct Params {
    pub pairs: usize,
    pub size: usize,
    /// Offered load, messages per second across all pairs.
    pub rate: f64,
    pub warmup: Duration,
    pub measure: Duration,
    /// Most un-`Sent` requests per sender; reaching it means the relay fell behind the load.
    pub window: usize,
}

pub async fn run(p: &Params, rate_source: &str, bar: &ProgressBar) -> Result<Outcome> {
    let relay = Relay::start_with(load::tune).await?;
    let result = measure(relay.url(), p, rate_source, bar).await;
    let stopped = relay.stop().await;
    let outcome = result?;
    stopped?;
    Ok(outcome)
}

async fn measure(url: &str, p: &Params, rate_source: &str, bar: &ProgressBar) -> Result<Outcome> {
    bar.set_message(format!("pairing {}", p.pairs));
    let conns = load::open_pairs(url, p.pairs, || {}).await?;
    let drive = Drive {
        size: p.size.max(8),
        window: p.window,
        rate_per_pair: Some(p.rate / p.pairs as f64),
        record_from: p.warmup,
        record_to: p.warmup + p.measure,
    };
    let start = Instant::now();
    let mut running = load::start(conns, drive, start);
    let c = running.counters.clone();
    let total = p.warmup + p.measure;
    let mut d0 = None;
    let mut m0 = None;
    while start.elapsed() < total {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(e) = running.failed() {
            return Err(e);
        }
        if d0.is_none() && start.elapsed() >= p.warmup {
            d0 = Some((c.delivered.load(Ordering::Relaxed), Instant::now()));
            m0 = Some(StoreMetrics::scrape(url).await?);
        }
        bar.set_position((start.elapsed().as_millis() as u64).min(total.as_millis() as u64));
    }
    let (d_start, t_start) = d0.unwrap_or((0, start));
    let delivered_rate =
        (c.delivered.load(Ordering::Relaxed) - d_start) as f64 / t_start.elapsed().as_secs_f64();
    let m1 = StoreMetrics::scrape(url).await?;
    let scraped_over = t_start.elapsed();
    // Messages sent late in the window are still in flight: give them a moment to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let window_full = c.window_full.load(Ordering::Relaxed);
    let mut samples = running.stop(Duration::from_secs(10)).await?;
    if samples.is_empty() {
        bail!("no message sent in the measured window was delivered");
    }
    samples.sort_unstable();
    let ms: Vec<f64> = samples.iter().map(|&n| n as f64 / 1e6).collect();
    let expected = p.rate * p.measure.as_secs_f64();
    let mut notes = vec![
        format!(
            "{} pairs x {} B, offered {:.0} msg/s open loop ({rate_source}); {} samples over {:.1} s after {:.1} s warm-up ({:.0} expected); delivered+acked {:.0} msg/s",
            p.pairs,
            p.size,
            p.rate,
            samples.len(),
            p.measure.as_secs_f64(),
            p.warmup.as_secs_f64(),
            expected,
            delivered_rate,
        ),
        "latency = send time stamped in the body just before the frame is written -> Deliver read by the receiver (same clock); includes both WebSocket hops, the store thread and the bench's own scheduling on the shared cores".into(),
    ];
    if let Some(m0) = m0 {
        let n = m1.batch_count - m0.batch_count;
        let over5 = n - (m1.batches_le_5ms - m0.batches_le_5ms);
        let over25 = n - (m1.batches_le_25ms - m0.batches_le_25ms);
        notes.push(format!(
            "relay store in the window: {n:.0} batches writing {:.1} messages on average ({:.0} written, {:.0} acked before the write-behind wrote them); {over5:.0} took over 5 ms, {over25:.0} over 25 ms; store thread {:.0}% busy",
            (m1.stored - m0.stored) / n.max(1.0),
            m1.stored - m0.stored,
            m1.unwritten - m0.unwritten,
            (m1.batch_seconds - m0.batch_seconds) * 100.0 / scraped_over.as_secs_f64(),
        ));
    }
    if window_full > 0 {
        notes.push(format!(
            "the relay fell behind: senders found their window of {} full {window_full} times, so less than the offered load was sent",
            p.window
        ));
    }
    let half = TARGET_MSG_PER_SEC / 2.0;
    if p.rate < half {
        notes.push(format!(
            "the target is stated at half of {TARGET_MSG_PER_SEC:.0} msg/s ({half:.0} msg/s, {TARGET_PAIRS} pairs x {TARGET_SIZE} B); this run offered {:.0} msg/s",
            p.rate
        ));
    }
    Ok(Outcome::Measured {
        figures: vec![
            Figure::new("offered_msg_per_sec", "offered load", p.rate, "msg/s"),
            Figure::new("p50_ms", "p50", percentile(&ms, 50.0), "ms"),
            Figure::new("p90_ms", "p90", percentile(&ms, 90.0), "ms"),
            Figure::new("p99_ms", "p99", percentile(&ms, 99.0), "ms").at_most(5.0),
            Figure::new("max_ms", "max", ms.last().copied().unwrap_or(0.0), "ms"),
        ],
        notes,
    })
}
