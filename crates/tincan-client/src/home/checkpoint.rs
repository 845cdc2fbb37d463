//! Moves SQLite's WAL checkpoints (where the fsyncs happen under `synchronous = NORMAL`) off the
//! connection that commits messages, so a send or a delivery never waits behind one.

use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use rusqlite::Connection;

use crate::error::ClientError;

/// A thread that runs `PRAGMA wal_checkpoint(PASSIVE)` on its own connection twice a second.
/// Stops (and is joined) when dropped.
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
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(Duration::from_millis(500))
                {
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
