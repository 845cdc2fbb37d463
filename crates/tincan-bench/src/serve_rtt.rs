//! The round trip through `tincan serve` with a trivial handler (`cat`): A sends, a real
//! `tincan serve --on-message cat` child process for B runs `sh -c cat` on it and sends the
//! output back, A waits for that reply. One sample is one turn: message, handler run, reply.

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use tincan_client::{Client, Event};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::report::{Figure, Outcome, percentile, sorted_ms};
use crate::setup::{Pair, STEP_TIMEOUT};

/// Settings.
#[derive(Clone, Debug)]
pub struct Params {
    pub round_trips: usize,
    pub warmup: usize,
}

pub async fn run(tincan: &Path, relay_url: &str, p: &Params, bar: &ProgressBar) -> Result<Outcome> {
    let Pair {
        mut a,
        b,
        a_to_b,
        dir,
        ..
    } = Pair::new(relay_url).await?;
    // The serve process takes over B's home.
    drop(b);
    let mut serve = Command::new(tincan)
        .arg("--home")
        .arg(dir.path().join("b"))
        .args([
            "--json",
            "serve",
            "--on-message",
            "cat",
            "--relay",
            relay_url,
        ])
        // The bench sends as fast as replies come: no per-peer rate limit here.
        .args(["--rate", "1000000", "--burst", "1000000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {} serve", tincan.display()))?;
    let stdout = serve.stdout.take().context("serve stdout")?;
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    // Drains serve's events (a full pipe would stall it) and reports when it is serving.
    let drain = tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        let mut ready_tx = Some(ready_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("\"event\":\"serving\"")
                && let Some(tx) = ready_tx.take()
            {
                let _ = tx.send(());
            }
        }
    });
    tokio::time::timeout(STEP_TIMEOUT, ready)
        .await
        .context("serve did not start in time")?
        .context("serve exited before serving")?;

    let mut samples = Vec::with_capacity(p.round_trips);
    for i in 0..p.warmup + p.round_trips {
        let t = Instant::now();
        a.send(&a_to_b, "ping").await.context("send")?;
        wait_reply(&mut a)
            .await
            .with_context(|| format!("turn {i}"))?;
        if i >= p.warmup {
            samples.push(t.elapsed());
            bar.inc(1);
        }
    }
    let _ = serve.kill().await;
    drain.abort();
    let v = sorted_ms(&samples);
    Ok(Outcome::Measured {
        figures: vec![
            Figure::new(
                "serve_median_ms",
                "serve turn median",
                percentile(&v, 50.0),
                "ms",
            )
            .at_most(3.0),
            Figure::new("serve_p99_ms", "serve turn p99", percentile(&v, 99.0), "ms"),
        ],
        notes: vec![format!(
            "{} turns after {} warm-up (message, `sh -c cat`, reply); max {:.3} ms",
            p.round_trips,
            p.warmup,
            v.last().copied().unwrap_or(0.0)
        )],
    })
}

async fn wait_reply(client: &mut Client) -> Result<()> {
    let wait = async {
        loop {
            match client.next_event().await {
                Some(Event::Message(m)) if m.text == "ping" => return Ok(()),
                Some(Event::Message(m)) => bail!("unexpected reply of {} bytes", m.text.len()),
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
        .context("no reply from serve in time")?
}
