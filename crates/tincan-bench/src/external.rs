//! Parts 4 and 5: the `tincan` binary as a separate process (relay idle RSS, cold start).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;

use crate::report::{Figure, Outcome, percentile, sorted_ms};

/// Where the `tincan` binary should be: next to this bench binary, unless overridden.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this executable's directory: {e}"))?
            .with_file_name(format!("tincan{}", std::env::consts::EXE_SUFFIX)),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "build tincan-cli: {} not found (run `cargo build --release -p tincan-cli`)",
            path.display()
        ))
    }
}

/// Kills the child by its PID when dropped, so an early return never leaves a relay running.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Part 4: start `tincan relay`, wait for /health, sleep 1 s, read VmRSS.
pub fn relay_rss(tincan: &Path, timeout: Duration) -> Result<Outcome> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let child = Command::new(tincan)
        .arg("relay")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--db")
        .arg(dir.path().join("relay.db"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", tincan.display()))?;
    let mut child = Reaped(child);
    let pid = child.0.id();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.0.try_wait()? {
            bail!("relay exited early with {status}");
        }
        if health_ok(addr) {
            break;
        }
        if Instant::now() > deadline {
            bail!("relay did not answer /health on {addr} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("cannot read /proc/<pid>/status (Linux only)")?;
    let kib = vm_field(&status, "VmRSS:").context("no VmRSS line in /proc/<pid>/status")?;
    let hwm = vm_field(&status, "VmHWM:");
    drop(child);
    let mut notes = vec![format!(
        "pid {pid}, listening on {addr}, measured 1 s after /health answered"
    )];
    if let Some(h) = hwm {
        notes.push(format!(
            "peak RSS so far (VmHWM) {:.1} MB",
            h as f64 / 1024.0
        ));
    }
    Ok(Outcome::Measured {
        figures: vec![Figure::new("rss_mb", "VmRSS", kib as f64 / 1024.0, "MB").at_most(15.0)],
        notes,
    })
}

/// Part 5: wall time of `tincan version`, run `runs` times.
pub fn cold_start(
    tincan: &Path,
    runs: usize,
    timeout: Duration,
    bar: &ProgressBar,
) -> Result<Outcome> {
    let deadline = Instant::now() + timeout;
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        if Instant::now() > deadline {
            bail!("cold-start runs took over {timeout:?}");
        }
        let t = Instant::now();
        let status = Command::new(tincan)
            .arg("version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("cannot run {}", tincan.display()))?;
        samples.push(t.elapsed());
        if !status.success() {
            bail!("`tincan version` exited with {status}");
        }
        bar.inc(1);
    }
    let v = sorted_ms(&samples);
    Ok(Outcome::Measured {
        figures: vec![
            Figure::new("median_ms", "median", percentile(&v, 50.0), "ms").at_most(5.0),
            Figure::new("p99_ms", "p99", percentile(&v, 99.0), "ms"),
        ],
        notes: vec![format!("{runs} runs of `tincan version`, spawn to exit")],
    })
}

pub fn free_port() -> Result<u16> {
    // Another process could take the port between this and the relay's bind; the health check
    // then fails loudly rather than measuring the wrong thing.
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

pub fn health_ok(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let req = format!("GET /health HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.") && buf.split_whitespace().nth(1) == Some("200")
}

pub fn vm_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vmrss() {
        let s = "Name:\ttincan\nVmHWM:\t   9000 kB\nVmRSS:\t    8123 kB\n";
        assert_eq!(vm_field(s, "VmRSS:"), Some(8123));
        assert_eq!(vm_field(s, "VmHWM:"), Some(9000));
        assert_eq!(vm_field(s, "VmSwap:"), None);
    }
}
