//! `tincan-bench`: throughput, latency, pairing, relay idle RSS and cold start, all through a
//! real relay on 127.0.0.1 over real WebSockets with real SQLite files in temp dirs.
//!
//! ```text
//! cargo build --release -p tincan-cli        # for relay RSS and cold start
//! cargo run --release -p tincan-bench -- [--messages N] [--json] [--breakdown]
//! ```

mod breakdown;
mod external;
mod latency;
mod pairing;
mod report;
mod serve_rtt;
mod setup;
mod throughput;

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
    parts
}

/// Runs `f` against a fresh in-process relay, bounded by `limit`, and stops the relay after.
async fn in_relay<F, Fut>(limit: Duration, f: F) -> Outcome
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<Outcome>>,
{
    let relay = match Relay::start().await {
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
