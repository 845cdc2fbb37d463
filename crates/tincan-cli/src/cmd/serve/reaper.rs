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
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{ExitCode, Stdio};

use nix::unistd::Pid;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

/// The hidden subcommand that runs the reaper.
pub const SUBCOMMAND: &str = "__reap";

/// The serve's end: handler groups go to a task that writes them to the reaper's pipe, so a
/// reaper that stops reading (stopped, swapped out) never stalls the serve, which keeps the pipe
/// open all the while (closing it would make the reaper stop handlers that are still wanted).
pub struct Reaper {
    changes: mpsc::UnboundedSender<(bool, i32)>,
}

impl Reaper {
    /// Starts the reaper (this same binary) and its writer task. `None`, with a warning, if it
    /// cannot be started: the serve still runs, without the guarantee.
    pub fn spawn() -> Option<Self> {
        // The running binary, even if the file was replaced since (an upgrade in place).
        let exe = Path::new("/proc/self/exe");
        let exe = if exe.exists() {
            exe.to_path_buf()
        } else {
            std::env::current_exe().unwrap_or_else(|_| "tincan".into())
        };
        let started = std::process::Command::new(exe)
            .arg(SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .and_then(|mut child| {
                let pipe = child.stdin.take().map(OwnedFd::from);
                let pipe = pipe.ok_or_else(|| std::io::Error::other("no stdin pipe"))?;
                Ok((child, pipe::Sender::from_owned_fd(pipe)?))
            });
        match started {
            Ok((child, pipe)) => {
                let (changes, rx) = mpsc::unbounded_channel();
                tokio::spawn(feed(Some(child), pipe, rx));
                Some(Self { changes })
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the handler reaper; handlers running when this process is killed will outlive it");
                None
            }
        }
    }

    /// Reports a handler's process group started (`true`) or ended. An error means the reaper
    /// is gone.
    pub fn tell(&self, started: bool, pgid: i32) -> Result<(), ()> {
        self.changes.send((started, pgid)).map_err(|_| ())
    }
}

/// Writes the changes to the reaper. What it is told is the difference between the groups it
/// knows and the ones running now, and changes that come while a write waits (a reaper that
/// stopped reading) are folded into the running set, so nothing piles up.
async fn feed<W: tokio::io::AsyncWrite + Unpin>(
    mut child: Option<std::process::Child>,
    mut pipe: W,
    mut changes: mpsc::UnboundedReceiver<(bool, i32)>,
) {
    use tokio::io::AsyncWriteExt;
    let apply = |running: &mut HashSet<i32>, (started, g): (bool, i32)| {
        if started {
            running.insert(g);
        } else {
            running.remove(&g);
        }
    };
    let (mut running, mut told) = (HashSet::new(), HashSet::new());
    'changes: while let Some(change) = changes.recv().await {
        apply(&mut running, change);
        while let Ok(change) = changes.try_recv() {
            apply(&mut running, change);
        }
        let mut lines = String::new();
        for g in told.difference(&running) {
            lines.push_str(&format!("-{g}\n"));
        }
        for g in running.difference(&told) {
            lines.push_str(&format!("+{g}\n"));
        }
        let sent = running.clone();
        let write = pipe.write_all(lines.as_bytes());
        tokio::pin!(write);
        loop {
            tokio::select! {
                written = &mut write => {
                    if let Err(e) = written {
                        tracing::warn!(error = %e, "the handler reaper is gone; handlers running when this process is killed will outlive it");
                        break 'changes;
                    }
                    told = sent;
                    break;
                }
                change = changes.recv() => match change {
                    Some(change) => apply(&mut running, change),
                    None => break 'changes,
                },
            }
        }
    }
    // Collect a reaper that died early, so it does not stay a zombie.
    if let Some(child) = child.as_mut() {
        let _ = child.try_wait();
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
    let groups = live.into_iter().map(Pid::from_raw).collect();
    super::handler::stop_groups(groups, super::handler::GRACE).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_reaper_is_told_the_running_groups_and_a_stalled_one_stalls_nothing() {
        use tokio::io::AsyncReadExt;
        // A pipe nobody reads yet: 64 KiB of room at most, far less than what is reported.
        let (tx, mut rx) = tokio::net::unix::pipe::pipe().unwrap();
        let (changes, rec) = mpsc::unbounded_channel();
        let writer = tokio::spawn(feed(None, tx, rec));
        for g in 2..20_002 {
            changes.send((true, g)).unwrap();
            changes.send((false, g)).unwrap();
            if g % 1000 == 0 {
                tokio::task::yield_now().await;
            }
        }
        changes.send((true, 7)).unwrap();
        changes.send((true, 8)).unwrap();
        changes.send((false, 7)).unwrap();
        // The reaper reads at last: what it is told adds up to the one group still running.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let (mut text, mut live, mut buf) = (String::new(), HashSet::new(), [0u8; 4096]);
        while live != HashSet::from([8]) {
            let n = tokio::time::timeout_at(deadline, rx.read(&mut buf))
                .await
                .expect("the reaper was never told the running set")
                .unwrap();
            text.push_str(std::str::from_utf8(&buf[..n]).unwrap());
            live.clear();
            let complete = text.rsplit_once('\n').map_or("", |(done, _)| done);
            for line in complete.lines() {
                apply(&mut live, line);
            }
        }
        assert!(!writer.is_finished());
        drop(changes);
        assert!(text.len() < 64 * 1024, "{} bytes written", text.len());
    }

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
