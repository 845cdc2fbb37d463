//! Moves SQLite's WAL checkpoints (where the fsyncs happen under `synchronous = NORMAL`) off the
//! connection that commits messages, so a send or a delivery never waits behind one.

use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use rusqlite::Connection;

use crate::error::ClientError;

/// Checkpoint interval while the home changes.
const MIN_WAIT: Duration = Duration::from_millis(20);
/// Checkpoint interval when idle.
const MAX_WAIT: Duration = Duration::from_secs(1);

/// A thread that runs `PRAGMA wal_checkpoint(PASSIVE)` on its own connection every 20 ms while
/// the home changes, backing off to once a second when idle (`PRAGMA data_version` tells).
/// Small, frequent checkpoints keep each fsync short: the kernel's journal flush behind a large
/// one stalls the next WAL write of a message commit for tens of milliseconds (the relay store
/// measured the same, docs/BENCHMARKS.md). Stops (and is joined) when dropped.
pub(super) struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Checkpointer {
    pub(super) fn start(db: &Path) -> Result<Self, ClientError> {
        let conn = Connection::open(db)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let (stop, rx) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("tincan-home-checkpoint".into())
            .spawn(move || {
                let version = |c: &Connection| {
                    c.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
                        .ok()
                };
                let mut seen = version(&conn);
                let mut wait = MIN_WAIT;
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(wait) {
                    let now = version(&conn);
                    if now == seen {
                        wait = (wait * 2).min(MAX_WAIT);
                        continue;
                    }
                    seen = now;
                    wait = MIN_WAIT;
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::debug!(error = %e, "home checkpoint failed; will retry");
                    }
                }
                // Leave a small WAL behind for the next process.
                let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
