//! Relay RSS per idle connection: a `tincan relay` child process, N authenticated receiving
//! connections that then do nothing, and the child's VmRSS before and after.
//!
//! Both this process and the relay hold N sockets, so both need RLIMIT_NOFILE above N. The
//! bench does not raise it (the workspace forbids `unsafe`, which `setrlimit` needs); it checks
//! the soft limit and says to run under `ulimit -n` when it is too low. The relay inherits it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use tincan_proto::identity::Identity;

use crate::external::{Reaped, free_port, health_ok, vm_field};
use crate::report::{Figure, Outcome};
use crate::wire;

/// File descriptors this process needs beyond the connections.
const FD_MARGIN: u64 = 256;
/// Connections opened first, to separate one-time growth (runtime, buffers) from per-connection.
const WARM: usize = 100;
/// Connections opened at once.
const CONCURRENCY: usize = 64;

pub const TARGET_KB_PER_CONN: f64 = 16.0;

pub async fn run(tincan: &Path, n: usize, bar: &ProgressBar) -> Result<Outcome> {
    let limit = nofile_soft_limit()?;
    if limit < n as u64 + FD_MARGIN {
        bail!(
            "RLIMIT_NOFILE is {limit}, need at least {}: run the bench under `ulimit -n {}`",
            n as u64 + FD_MARGIN,
            (n as u64 + FD_MARGIN).next_power_of_two()
        );
    }
    let dir = tempfile::tempdir()?;
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let cap = (n + 1000).to_string();
    let child = Command::new(tincan)
        .arg("relay")
        .args(["--listen", &addr.to_string()])
        .arg("--db")
        .arg(dir.path().join("relay.db"))
        .args(["--max-connections", &cap, "--max-connections-per-ip", &cap])
        .args(["--rate-per-ip", "0", "--rate-per-identity", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", tincan.display()))?;
    let mut child = Reaped(child);
    let pid = child.0.id();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.0.try_wait()? {
            bail!("relay exited early with {status}");
        }
        if tokio::task::spawn_blocking(move || health_ok(addr)).await? {
            break;
        }
        if Instant::now() > deadline {
            bail!("relay did not answer /health on {addr} in time");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("http://{addr}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss0 = rss_kib(pid)?;

    let opened = Arc::new(AtomicUsize::new(0));
    let open = |count: usize| {
        let (url, opened, bar) = (url.clone(), opened.clone(), bar.clone());
        wire::bounded_all(count, CONCURRENCY, move |_| {
            let (url, opened, bar) = (url.clone(), opened.clone(), bar.clone());
            async move {
                let ws = wire::connect(&url, &Identity::generate(), true).await?;
                opened.fetch_add(1, Ordering::Relaxed);
                bar.inc(1);
                Ok(ws)
            }
        })
    };
    let warm = open(WARM.min(n)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_warm = rss_kib(pid)?;
    let rest = open(n - warm.len()).await?;
    // Let the relay finish any work the connection burst started before reading RSS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_n = rss_kib(pid)?;
    let online = relay_connections(&url).await?;
    let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| vm_field(&s, "VmHWM:"));
    drop(rest);
    drop(warm);
    drop(child);

    let per_conn = (rss_n.saturating_sub(rss0)) as f64 / n as f64;
    let marginal = if n > WARM {
        (rss_n.saturating_sub(rss_warm)) as f64 / (n - WARM) as f64
    } else {
        per_conn
    };
    let mut notes = vec![
        format!(
            "`tincan relay` pid {pid}: VmRSS {:.1} MB idle, {:.1} MB with {WARM} connections, {:.1} MB with {n} (peak {:.1} MB); relay /health reported {online} connections",
            rss0 as f64 / 1024.0,
            rss_warm as f64 / 1024.0,
            rss_n as f64 / 1024.0,
            hwm.unwrap_or(0) as f64 / 1024.0,
        ),
        format!(
            "per connection: (RSS at {n} - idle RSS) / {n} = {per_conn:.1} KB; marginal beyond the first {WARM}: {marginal:.1} KB"
        ),
        format!(
            "each connection: its own identity, Ed25519 challenge answered, receive flag set, then idle; RLIMIT_NOFILE soft limit {limit}"
        ),
    ];
    if online != n {
        notes.push(format!(
            "expected {n} connections at the relay, it reported {online}"
        ));
    }
    Ok(Outcome::Measured {
        figures: vec![
            Figure::new("connections", "connections held", n as f64, "conns"),
            Figure::new(
                "rss_mb",
                "relay VmRSS with them",
                rss_n as f64 / 1024.0,
                "MB",
            ),
            Figure::new(
                "kb_per_conn",
                "relay RSS per idle connection",
                per_conn,
                "KB",
            )
            .at_most(TARGET_KB_PER_CONN),
        ],
        notes,
    })
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("cannot read /proc/<pid>/status (Linux only)")?;
    vm_field(&status, "VmRSS:").context("no VmRSS line in /proc/<pid>/status")
}

/// The soft RLIMIT_NOFILE of this process, from /proc/self/limits.
fn nofile_soft_limit() -> Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits")
        .context("cannot read /proc/self/limits (Linux only)")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no 'Max open files' line in /proc/self/limits")?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()
        .context("malformed 'Max open files' line")?;
    Ok(if soft == "unlimited" {
        u64::MAX
    } else {
        soft.parse()
            .with_context(|| format!("malformed soft limit {soft:?}"))?
    })
}

/// The relay's own count of open connections, from /health.
async fn relay_connections(url: &str) -> Result<usize> {
    let v: serde_json::Value = tincan_client::http_client()
        .get(format!("{url}/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .json()
        .await?;
    v["connections"]
        .as_u64()
        .map(|n| n as usize)
        .context("no 'connections' in /health")
}
