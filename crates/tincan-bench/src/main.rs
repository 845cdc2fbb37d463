//! `tincan-bench`: throughput, latency, pairing, relay idle RSS and cold start, all through a
//! real relay on 127.0.0.1 over real WebSockets with real SQLite files in temp dirs.
//!
//! ```text
//! cargo build --release -p tincan-cli        # for relay RSS and cold start
//! cargo run --release -p tincan-bench -- [--messages N] [--json] [--breakdown]
//! ```

mod breakdown;
mod cpu;
mod crypto;
mod external;
mod http_poll;
mod idle_conns;
mod latency;
mod load;
mod pairing;
mod relay_latency;
mod relay_load;
mod report;
mod serve_rtt;
mod setup;
mod throughput;
mod wire;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::report::{Outcome, Part};
use crate::setup::Relay;

/// Benchmarks tincan through a real relay on 127.0.0.1 and prints the figures beside their targets.
#[derive(Debug, Parser)]
#[command(name = "tincan-bench", version)]
struct Args {
    /// Messages for the one-way throughput run.
    #[arg(long, default_value_t = 50_000)]
    messages: usize,
    /// Messages per `send_many` call.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Most messages in flight (sent, not yet received) during the throughput run.
    #[arg(long, default_value_t = 4096)]
    window: usize,
    /// Timed round trips, after the warm-up.
    #[arg(long, default_value_t = 2_000)]
    round_trips: usize,
    /// Untimed round trips first.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Pairings to time.
    #[arg(long, default_value_t = 20)]
    pairings: usize,
    /// Timed turns through `tincan serve --on-message cat`.
    #[arg(long, default_value_t = 500)]
    serve_turns: usize,
    /// Runs of `tincan version`.
    #[arg(long, default_value_t = 50)]
    cold_starts: usize,
    /// The `tincan` binary (default: next to this one).
    #[arg(long)]
    tincan: Option<PathBuf>,
    /// Relay load: pair counts for the routing-throughput matrix.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    load_pairs: Vec<usize>,
    /// Relay load: body sizes in bytes for the matrix.
    #[arg(long, value_delimiter = ',', default_value = "64,1024,16384")]
    load_sizes: Vec<usize>,
    /// Relay load: measured seconds per matrix cell (after the warm-up).
    #[arg(long, default_value_t = 3.0)]
    load_secs: f64,
    /// Relay load: unmeasured warm-up per cell, in milliseconds.
    #[arg(long, default_value_t = 500)]
    load_warmup_ms: u64,
    /// Relay load: Send requests in flight across all senders (split evenly, 4..=1024 each).
    #[arg(long, default_value_t = 4096)]
    load_in_flight: usize,
    /// Relay latency: offered load in msg/s (default: half the measured 100-pair 1 KiB rate).
    #[arg(long)]
    latency_rate: Option<f64>,
    /// Relay latency: sending pairs.
    #[arg(long, default_value_t = 100)]
    latency_pairs: usize,
    /// Relay latency: measured seconds (after 1 s of warm-up).
    #[arg(long, default_value_t = 5.0)]
    latency_secs: f64,
    /// Idle connections held open against a `tincan relay` process.
    #[arg(long, default_value_t = 10_000)]
    idle_conns: usize,
    /// HTTP API: sender/receiver pairs.
    #[arg(long, default_value_t = 10)]
    http_pairs: usize,
    /// HTTP API: POST /v1/messages requests in flight per sender.
    #[arg(long, default_value_t = 4)]
    http_concurrency: usize,
    /// HTTP API: measured seconds (after 1 s of warm-up).
    #[arg(long, default_value_t = 3.0)]
    http_secs: f64,
    /// Parts to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    parts: Vec<PartName>,
    /// Also time the throughput stages one by one (seal, open, consume, relay store, drain).
    #[arg(long)]
    breakdown: bool,
    /// Print a JSON document (schema "tincan-bench/1") instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PartName {
    Throughput,
    Latency,
    Pairing,
    RelayRss,
    ColdStart,
    Serve,
    /// Relay routing throughput matrix (raw frames, no E2E crypto).
    RelayLoad,
    /// Relay latency percentiles under a fixed open-loop load.
    RelayLatency,
    /// Relay RSS per idle authenticated connection.
    IdleConns,
    /// HTTP API long-poll throughput.
    HttpPoll,
    /// Olm encrypt, decrypt, key derivation and pickling alone (vodozemac, no I/O).
    Crypto,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let parts = runtime.block_on(run_all(&args));
    if args.json {
        println!("{:#}", report::json(&parts));
    } else {
        print!("{}", report::table(&parts));
    }
    if parts
        .iter()
        .any(|p| matches!(p.outcome, Outcome::Failed(_)))
    {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn run_all(args: &Args) -> Vec<Part> {
    let wanted = |p: PartName| args.parts.is_empty() || args.parts.contains(&p);
    let tp = throughput::Params {
        messages: args.messages.max(1),
        batch: args.batch.max(1),
        size: args.size,
        window: args.window.max(args.batch),
    };
    let tp_timeout = Duration::from_secs(60 + args.messages as u64 / 250);
    let mut parts = Vec::new();

    if wanted(PartName::Throughput) {
        let bar = bar("throughput", tp.messages as u64);
        // The inner limit reports how far each side got; the outer one is a backstop.
        let outcome = in_relay(tp_timeout + Duration::from_secs(10), |url| {
            let (tp, bar) = (tp.clone(), bar.clone());
            async move { throughput::run(&url, &tp, tp_timeout, &bar).await }
        })
        .await;
        finish(&bar, &outcome);
        parts.push(Part {
            key: "throughput",
            title: "one-way throughput",
            params: json!({"messages": tp.messages, "batch": tp.batch, "size": tp.size, "window": tp.window}),
            outcome,
        });
    }
    if wanted(PartName::Throughput) && args.breakdown {
        let bar = bar("breakdown", tp.messages as u64);
        let outcome = bounded(tp_timeout * 2, breakdown::run(&tp, &bar)).await;
        finish(&bar, &outcome);
        parts.push(Part {
            key: "throughput_breakdown",
            title: "throughput stages",
            params: json!({"messages": tp.messages, "batch": tp.batch, "size": tp.size}),
            outcome,
        });
    }
    if wanted(PartName::Latency) {
        let lp = latency::Params {
            round_trips: args.round_trips.max(1),
            warmup: args.warmup,
        };
        let bar = bar("latency", lp.round_trips as u64);
        // Generous: each round trip may cost ~90 ms while both ends leave Nagle's algorithm on.
        let timeout = Duration::from_secs(30)
            + Duration::from_millis(150) * (lp.warmup + lp.round_trips) as u32;
        let outcome = in_relay(timeout, |url| {
            let (lp, bar) = (lp.clone(), bar.clone());
            async move { latency::run(&url, &lp, &bar).await }
        })
        .await;
        finish(&bar, &outcome);
        parts.push(Part {
            key: "latency",
            title: "round trip",
            params: json!({"round_trips": lp.round_trips, "warmup": lp.warmup, "size": 4}),
            outcome,
        });
    }
    if wanted(PartName::Pairing) {
        let n = args.pairings.max(1);
        let bar = bar("pairing", n as u64);
        let outcome = in_relay(Duration::from_secs(60 + n as u64), |url| {
            let bar = bar.clone();
            async move { pairing::run(&url, n, &bar).await }
        })
        .await;
        finish(&bar, &outcome);
        parts.push(Part {
            key: "pairing",
            title: "pairing",
            params: json!({"pairings": n}),
            outcome,
        });
    }

    if wanted(PartName::Crypto) {
        let bar = bar("crypto", 0);
        let outcome = blocking(Duration::from_secs(60), crypto::run).await;
        finish(&bar, &outcome);
        parts.push(Part {
            key: "crypto",
            title: "Olm alone",
            params: json!({}),
            outcome,
        });
    }

    let tincan = external::locate(args.tincan.as_deref());
    if wanted(PartName::RelayRss) {
        let bar = bar("relay rss", 0);
        let outcome = match &tincan {
            Ok(path) => {
                let path = path.clone();
                blocking(Duration::from_secs(30), move || {
                    external::relay_rss(&path, Duration::from_secs(15))
                })
                .await
            }
            Err(why) => Outcome::Skipped(why.clone()),
        };
        finish(&bar, &outcome);
        parts.push(Part {
            key: "relay_rss",
            title: "relay idle RSS",
            params: json!({"settle_secs": 1}),
            outcome,
        });
    }
    if wanted(PartName::ColdStart) {
        let n = args.cold_starts.max(1);
        let bar = bar("cold start", n as u64);
        let outcome = match &tincan {
            Ok(path) => {
                let (path, b) = (path.clone(), bar.clone());
                let limit = Duration::from_secs(60);
                blocking(limit + Duration::from_secs(5), move || {
                    external::cold_start(&path, n, limit, &b)
                })
                .await
            }
            Err(why) => Outcome::Skipped(why.clone()),
        };
        finish(&bar, &outcome);
        parts.push(Part {
            key: "cold_start",
            title: "cold start",
            params: json!({"runs": n, "command": "tincan version"}),
            outcome,
        });
    }
    if wanted(PartName::Serve) {
        let sp = serve_rtt::Params {
            round_trips: args.serve_turns.max(1),
            warmup: 20,
        };
        let bar = bar("serve", sp.round_trips as u64);
        let outcome = match &tincan {
            Ok(path) => {
                let timeout = Duration::from_secs(30)
                    + Duration::from_millis(200) * (sp.warmup + sp.round_trips) as u32;
                in_relay(timeout, |url| {
                    let (sp, bar, path) = (sp.clone(), bar.clone(), path.clone());
                    async move { serve_rtt::run(&path, &url, &sp, &bar).await }
                })
                .await
            }
            Err(why) => Outcome::Skipped(why.clone()),
        };
        finish(&bar, &outcome);
        parts.push(Part {
            key: "serve",
            title: "serve round trip (cat handler)",
            params: json!({"turns": sp.round_trips, "warmup": sp.warmup, "handler": "cat"}),
            outcome,
        });
    }
    relay_parts(args, &tincan, &mut parts).await;
    parts
}

/// The relay-level parts (issue 4 part 7): raw frames against a relay, no client SDK.
async fn relay_parts(args: &Args, tincan: &Result<PathBuf, String>, parts: &mut Vec<Part>) {
    let wanted = |p: PartName| args.parts.is_empty() || args.parts.contains(&p);
    let lp = relay_load::Params {
        pairs: args.load_pairs.iter().map(|&n| n.max(1)).collect(),
        sizes: args.load_sizes.iter().map(|&n| n.max(8)).collect(),
        measure: Duration::from_secs_f64(args.load_secs.max(0.1)),
        warmup: Duration::from_millis(args.load_warmup_ms),
        in_flight: args.load_in_flight.max(1),
    };
    let mut target_rate = None;
    if wanted(PartName::RelayLoad) {
        let cells = (lp.pairs.len() * lp.sizes.len()) as u64;
        let bar = bar("relay load", cells);
        let limit: Duration =
            lp.pairs.iter().map(|&n| lp.cell_limit(n)).sum::<Duration>() * lp.sizes.len() as u32;
        let outcome = bounded(limit, async {
            let (outcome, rate) = relay_load::run(&lp, &bar).await?;
            target_rate = rate;
            Ok(outcome)
        })
        .await;
        finish(&bar, &outcome);
        parts.push(Part {
            key: "relay_load",
            title: "relay routing",
            params: json!({"pairs": lp.pairs, "sizes": lp.sizes, "measure_secs": lp.measure.as_secs_f64(), "warmup_ms": lp.warmup.as_millis() as u64, "in_flight": lp.in_flight}),
            outcome,
        });
    }
    if wanted(PartName::RelayLatency) {
        let measure = Duration::from_secs_f64(args.latency_secs.max(0.5));
        let warmup = Duration::from_secs(1);
        let bar = bar("relay lat", (warmup + measure).as_millis() as u64);
        let pairs = args.latency_pairs.max(1);
        let outcome = bounded(measure + Duration::from_secs(90), async {
            let (rate, source) = match (args.latency_rate, target_rate) {
                (Some(r), _) => (r, "--latency-rate".to_string()),
                (None, Some(t)) => (t / 2.0, format!("half the measured {t:.0} msg/s")),
                (None, None) => {
                    // Calibrate: a short closed-loop run of the target cell.
                    bar.set_message("calibrating");
                    let cal = relay_load::Params {
                        measure: Duration::from_secs(2),
                        ..lp.clone()
                    };
                    let t = relay_load::cell(
                        &cal,
                        relay_load::TARGET_PAIRS,
                        relay_load::TARGET_SIZE,
                        &bar,
                    )
                    .await?
                    .delivered_per_sec;
                    (
                        t / 2.0,
                        format!("half of {t:.0} msg/s measured by a 2 s calibration run"),
                    )
                }
            };
            let p = relay_latency::Params {
                pairs,
                size: relay_load::TARGET_SIZE,
                rate: rate.max(1.0),
                warmup,
                measure,
                window: 1024,
            };
            relay_latency::run(&p, &source, &bar).await
        })
        .await;
        finish(&bar, &outcome);
        parts.push(Part {
            key: "relay_latency",
            title: "relay latency",
            params: json!({"pairs": pairs, "size": relay_load::TARGET_SIZE, "rate": args.latency_rate, "measure_secs": measure.as_secs_f64()}),
            outcome,
        });
    }
    if wanted(PartName::IdleConns) {
        let n = args.idle_conns.max(1);
        let bar = bar("idle conns", n as u64);
        let outcome = match tincan {
            Ok(path) => {
                bounded(
                    Duration::from_secs(60) + Duration::from_millis(10) * n as u32,
                    idle_conns::run(path, n, &bar),
                )
                .await
            }
            Err(why) => Outcome::Skipped(why.clone()),
        };
        finish(&bar, &outcome);
        parts.push(Part {
            key: "idle_conns",
            title: "relay idle connections",
            params: json!({"connections": n}),
            outcome,
        });
    }
    if wanted(PartName::HttpPoll) {
        let hp = http_poll::Params {
            pairs: args.http_pairs.max(1),
            size: relay_load::TARGET_SIZE,
            concurrency: args.http_concurrency.max(1),
            warmup: Duration::from_secs(1),
            measure: Duration::from_secs_f64(args.http_secs.max(0.5)),
        };
        let bar = bar("http poll", (hp.warmup + hp.measure).as_millis() as u64);
        let outcome = bounded(
            hp.warmup + hp.measure + Duration::from_secs(60),
            http_poll::run(&hp, &bar),
        )
        .await;
        finish(&bar, &outcome);
        parts.push(Part {
            key: "http_poll",
            title: "HTTP long-poll",
            params: json!({"pairs": hp.pairs, "size": hp.size, "concurrency": hp.concurrency, "measure_secs": hp.measure.as_secs_f64()}),
            outcome,
        });
    }
}

/// Runs `f` against a fresh in-process relay, bounded by `limit`, and stops the relay after.
async fn in_relay<F, Fut>(limit: Duration, f: F) -> Outcome
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<Outcome>>,
{
    // The end-to-end parts measure tincan, not the relay's abuse limits: rates unlimited.
    let relay = match Relay::start_with(|c| {
        c.rate_per_identity = tincan_relay::Rate::new(0.0, 1.0);
        c.rate_per_ip = tincan_relay::Rate::new(0.0, 1.0);
    })
    .await
    {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("cannot start relay: {e:#}")),
    };
    let outcome = bounded(limit, f(relay.url().to_string())).await;
    if let Err(e) = relay.stop().await
        && !matches!(outcome, Outcome::Failed(_))
    {
        return Outcome::Failed(format!("relay: {e:#}"));
    }
    outcome
}

/// Awaits `fut` for at most `limit`; an error or a timeout becomes a failed outcome.
async fn bounded(limit: Duration, fut: impl Future<Output = Result<Outcome>>) -> Outcome {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => Outcome::Failed(format!("{e:#}")),
        Err(_) => Outcome::Failed(format!("timed out after {limit:?}")),
    }
}

/// Runs blocking work (child processes) off the async workers, bounded by `limit`.
async fn blocking(
    limit: Duration,
    f: impl FnOnce() -> Result<Outcome> + Send + 'static,
) -> Outcome {
    let task = tokio::task::spawn_blocking(f);
    match tokio::time::timeout(limit, task).await {
        Ok(Ok(Ok(o))) => o,
        Ok(Ok(Err(e))) => Outcome::Failed(format!("{e:#}")),
        Ok(Err(e)) => Outcome::Failed(format!("task panicked: {e}")),
        Err(_) => Outcome::Failed(format!("timed out after {limit:?}")),
    }
}

fn bar(name: &str, len: u64) -> ProgressBar {
    let bar = if len == 0 {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::new(len)
    };
    let template = if len == 0 {
        "{prefix:>12} {spinner} {msg} ({elapsed})"
    } else {
        "{prefix:>12} [{bar:30}] {pos}/{len} {per_sec} {msg} ({elapsed})"
    };
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(name.to_string());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

fn finish(bar: &ProgressBar, outcome: &Outcome) {
    let msg = match outcome {
        Outcome::Measured { .. } => "done".to_string(),
        Outcome::Skipped(why) => format!("skipped: {why}"),
        Outcome::Failed(why) => format!("FAILED: {why}"),
    };
    bar.finish_with_message(msg);
}
