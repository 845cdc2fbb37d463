//! Relay routing throughput: N pairs on raw connections, closed loop, for each body size. One
//! fresh in-process relay (and SQLite file) per cell; a cell runs a warm-up, then a fixed
//! measured time, and counts deliveries received and acked in it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::ProgressBar;

use crate::load::{self, Drive};
use crate::report::{Figure, Outcome};
use crate::setup::Relay;

/// The 1 KiB, 100-pair cell carries the target.
pub const TARGET_PAIRS: usize = 100;
pub const TARGET_SIZE: usize = 1024;
pub const TARGET_MSG_PER_SEC: f64 = 100_000.0;

/// Matrix settings.
#[derive(Clone, Debug)]
pub struct Params {
    pub pairs: Vec<usize>,
    pub sizes: Vec<usize>,
    /// Measured time per cell.
    pub measure: Duration,
    /// Unmeasured time first, per cell.
    pub warmup: Duration,
    /// Requests in flight across all senders, split evenly (4..=1024 per sender).
    pub in_flight: usize,
}

impl Params {
    /// Per-sender window for `pairs` pairs.
    pub fn window(&self, pairs: usize) -> usize {
        (self.in_flight / pairs.max(1)).clamp(4, 1024)
    }

    /// A bound on one cell's wall time, setup and teardown included.
    pub fn cell_limit(&self, pairs: usize) -> Duration {
        self.measure
            + self.warmup
            + Duration::from_secs(30)
            + Duration::from_millis(20) * pairs as u32
    }
}

/// One cell's result.
#[derive(Clone, Copy, Debug)]
pub struct Cell {
    pub delivered_per_sec: f64,
    pub stored_per_sec: f64,
    /// The store thread over the measured window, from the relay's /metrics.
    pub store: StoreLoad,
    /// CPU of the whole bench process (relay and load generator) per delivered message.
    pub cpu_us_per_msg: Option<f64>,
}

/// What the relay's store thread did in the measured window (from `tincan_store_batch_seconds`).
#[derive(Clone, Copy, Debug, Default)]
pub struct StoreLoad {
    /// Transactions committed per second.
    pub batches_per_sec: f64,
    /// Mean messages written per transaction.
    pub msgs_per_batch: f64,
    /// Share of confirmed messages never written (their recipient acked them within the
    /// relay's write-behind).
    pub unwritten_share: f64,
    /// Share of wall time spent inside transactions (1.0 = the store thread never waits).
    pub busy: f64,
}

/// Runs the matrix. Also returns the target cell's delivered rate, when it was measured.
pub async fn run(p: &Params, bar: &ProgressBar) -> Result<(Outcome, Option<f64>)> {
    let mut figures = Vec::new();
    let mut notes = Vec::new();
    let mut target_rate = None;
    for &pairs in &p.pairs {
        for &size in &p.sizes {
            bar.set_message(format!("{pairs} pairs x {size} B"));
            let cell = tokio::time::timeout(p.cell_limit(pairs), cell(p, pairs, size, bar))
                .await
                .with_context(|| format!("{pairs} pairs x {size} B: timed out"))?
                .with_context(|| format!("{pairs} pairs x {size} B"))?;
            bar.inc(1);
            let mut f = Figure::new(
                format!("pairs{pairs}_size{size}_msg_per_sec"),
                format!("{pairs} pairs x {} delivered", size_label(size)),
                cell.delivered_per_sec,
                "msg/s",
            );
            if pairs == TARGET_PAIRS && size == TARGET_SIZE {
                f = f.at_least(TARGET_MSG_PER_SEC);
                target_rate = Some(cell.delivered_per_sec);
            }
            figures.push(f);
            notes.push(format!(
                "{pairs} pairs x {size} B: {:.0} msg/s delivered+acked, {:.0} msg/s confirmed (Sent), {:.1} MB/s of bodies, window {} per sender; store thread {:.0}% busy, {:.0} batches/s writing {:.1} messages each, {:.0}% of messages acked before the write-behind wrote them; {} of CPU per message (relay and load generator)",
                cell.delivered_per_sec,
                cell.stored_per_sec,
                cell.delivered_per_sec * size as f64 / 1e6,
                p.window(pairs),
                cell.store.busy * 100.0,
                cell.store.batches_per_sec,
                cell.store.msgs_per_batch,
                cell.store.unwritten_share * 100.0,
                cell.cpu_us_per_msg
                    .map_or_else(|| "unknown".to_string(), |us| format!("{us:.1} us")),
            ));
        }
    }
    Ok((Outcome::Measured { figures, notes }, target_rate))
}

/// One cell on a fresh relay.
pub async fn cell(p: &Params, pairs: usize, size: usize, bar: &ProgressBar) -> Result<Cell> {
    let relay = Relay::start_with(load::tune).await?;
    let result = drive_cell(relay.url(), p, pairs, size, bar).await;
    let stopped = relay.stop().await;
    let cell = result?;
    stopped.context("relay shutdown")?;
    Ok(cell)
}

async fn drive_cell(
    url: &str,
    p: &Params,
    pairs: usize,
    size: usize,
    bar: &ProgressBar,
) -> Result<Cell> {
    let ready = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let conns = {
        let (ready, bar, label) = (
            ready.clone(),
            bar.clone(),
            format!("{pairs} pairs x {size} B"),
        );
        load::open_pairs(url, pairs, move || {
            let n = ready.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(50) || n == pairs {
                bar.set_message(format!("{label}: {n}/{pairs} paired"));
            }
        })
        .await?
    };
    let drive = Drive {
        size,
        window: p.window(pairs),
        rate_per_pair: None,
        record_from: Duration::ZERO,
        record_to: Duration::ZERO,
    };
    let mut running = load::start(conns, drive, Instant::now());
    let c = running.counters.clone();
    tokio::time::sleep(p.warmup).await;
    if let Some(e) = running.failed() {
        return Err(e);
    }
    let m0 = StoreMetrics::scrape(url).await?;
    let scraped0 = Instant::now();
    let (d0, s0, t0) = (
        c.delivered.load(Ordering::Relaxed),
        c.stored.load(Ordering::Relaxed),
        Instant::now(),
    );
    let cpu0 = crate::cpu::used();
    let end = t0 + p.measure;
    while Instant::now() < end {
        tokio::time::sleep((end - Instant::now()).min(Duration::from_millis(250))).await;
        if let Some(e) = running.failed() {
            return Err(e);
        }
        let rate = (c.delivered.load(Ordering::Relaxed) - d0) as f64 / t0.elapsed().as_secs_f64();
        bar.set_message(format!("{pairs} pairs x {size} B: {rate:.0} msg/s"));
    }
    let (d1, s1, elapsed) = (
        c.delivered.load(Ordering::Relaxed),
        c.stored.load(Ordering::Relaxed),
        t0.elapsed(),
    );
    let cpu_us_per_msg = crate::cpu::per_unit_us(
        cpu0,
        crate::cpu::used(),
        usize::try_from(d1 - d0).unwrap_or(0),
    );
    let m1 = StoreMetrics::scrape(url).await?;
    let scraped = scraped0.elapsed();
    running.stop(Duration::from_secs(10)).await?;
    if d1 == d0 {
        anyhow::bail!("nothing was delivered in {:?}", p.measure);
    }
    Ok(Cell {
        delivered_per_sec: (d1 - d0) as f64 / elapsed.as_secs_f64(),
        stored_per_sec: (s1 - s0) as f64 / elapsed.as_secs_f64(),
        store: m1.since(&m0, scraped),
        cpu_us_per_msg,
    })
}

/// Counters read from the relay's Prometheus text.
pub struct StoreMetrics {
    pub batch_count: f64,
    pub batch_seconds: f64,
    /// Store transactions that took at most 5 ms / 25 ms.
    pub batches_le_5ms: f64,
    pub batches_le_25ms: f64,
    pub stored: f64,
    pub unwritten: f64,
}

impl StoreMetrics {
    pub async fn scrape(url: &str) -> Result<Self> {
        let text = tincan_client::http_client()
            .get(format!("{url}/metrics"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .context("GET /metrics")?
            .text()
            .await?;
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
                .unwrap_or(0.0)
        };
        Ok(Self {
            batch_count: value("tincan_store_batch_seconds_count"),
            batch_seconds: value("tincan_store_batch_seconds_sum"),
            batches_le_5ms: value("tincan_store_batch_seconds_bucket{le=\"0.005\"}"),
            batches_le_25ms: value("tincan_store_batch_seconds_bucket{le=\"0.025\"}"),
            stored: value("tincan_messages_stored_total"),
            unwritten: value("tincan_messages_unwritten_total"),
        })
    }

    fn since(&self, before: &Self, elapsed: Duration) -> StoreLoad {
        let batches = self.batch_count - before.batch_count;
        let (stored, unwritten) = (
            self.stored - before.stored,
            self.unwritten - before.unwritten,
        );
        StoreLoad {
            batches_per_sec: batches / elapsed.as_secs_f64(),
            msgs_per_batch: stored / batches.max(1.0),
            unwritten_share: unwritten / (stored + unwritten).max(1.0),
            busy: (self.batch_seconds - before.batch_seconds) / elapsed.as_secs_f64(),
        }
    }
}

fn size_label(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}
