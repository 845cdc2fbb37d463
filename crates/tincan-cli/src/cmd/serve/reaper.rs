//! The reaper: a small `tincan __reap` process beside each `serve` that stops the serve's running
//! handlers if the serve itself dies without doing so (SIGKILL, the OOM killer).
//!
//! A handler runs in its own process group, so a timeout reaches everything it started; that
//! same group outlives a killed serve, and a handler that is an agent with tools would go on
//! acting on a message nobody will answer. Tying the handler to its parent's death
//! (`PR_SET_PDEATHSIG`) needs code between fork and exec, which this workspace does not allow
//! (`unsafe`). Instead the serve tells the reaper, over a pipe, each group it starts (`+PGID`)
//! and ends (`-PGID`). The pipe closes when the serve exits, however it exits; the reaper then
//! stops the groups still listed (SIGTERM, then SIGKILL after the grace period) and exits. After
//! a clean exit the list is empty. The reaper has its own process group and ignores SIGINT,
//! SIGTERM and SIGHUP, so a Ctrl-C or a signal to the serve's group does not take it first.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The hidden subcommand that runs the reaper.
pub const SUBCOMMAND: &str = "__reap";

/// The serve's end of the pipe.
pub struct Reaper {
    pipe: ChildStdin,
}

impl Reaper {
    /// Starts the reaper (this same binary). `None`, with a warning, if it cannot be started:
    /// the serve still runs, without the guarantee.
    pub fn spawn() -> Option<Self> {
        let started = std::env::current_exe().and_then(|exe| {
            std::process::Command::new(exe)
                .arg(SUBCOMMAND)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
        });
        match started {
            Ok(mut child) => child.stdin.take().map(|pipe| Self { pipe }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the handler reaper; handlers running when this process is killed will outlive it");
                None
            }
        }
    }

    /// Reports a handler's process group started (`true`) or ended. An error means the reaper
    /// is gone.
    pub fn tell(&mut self, started: bool, pgid: i32) -> std::io::Result<()> {
        let sign = if started { '+' } else { '-' };
        self.pipe.write_all(format!("{sign}{pgid}\n").as_bytes())
    }
}

/// `tincan __reap`: reads `+PGID`/`-PGID` lines until the pipe closes, then stops what is left.
pub async fn run() -> ExitCode {
    use tokio::io::AsyncBufReadExt;
    use tokio::signal::unix::{SignalKind, signal};
    // Signals that would end this process before its work is due are taken and dropped: tokio's
    // handler replaces their default action for as long as the process lives.
    let _ignored = [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ]
    .map(signal);
    let mut live = HashSet::new();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        apply(&mut live, &line);
    }
    stop(&live, super::handler::GRACE).await;
    ExitCode::SUCCESS
}

/// Applies one `+PGID`/`-PGID` line; anything else is ignored.
fn apply(live: &mut HashSet<i32>, line: &str) {
    let (sign, pgid) = line.split_at(line.len().min(1));
    match (sign, pgid.parse::<i32>()) {
        ("+", Ok(g)) if g > 1 => {
            live.insert(g);
        }
        ("-", Ok(g)) => {
            live.remove(&g);
        }
        _ => {}
    }
}

/// SIGTERM to every group, SIGKILL to those still there after `grace`.
async fn stop(live: &HashSet<i32>, grace: Duration) {
    let groups: Vec<Pid> = live.iter().map(|g| Pid::from_raw(*g)).collect();
    for g in &groups {
        let _ = killpg(*g, Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && groups.iter().any(|g| killpg(*g, None).is_ok()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for g in &groups {
        let _ = killpg(*g, Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_add_and_remove_groups_and_nonsense_changes_nothing() {
        let mut live = HashSet::new();
        for line in [
            "+200", "+300", "-200", "+", "", "x12", "+-5", "+1", "+0", "-999", "+4x",
        ] {
            apply(&mut live, line);
        }
        assert_eq!(live, HashSet::from([300]));
    }
}
