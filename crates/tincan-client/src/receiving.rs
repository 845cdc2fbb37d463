//! One receiving client per home: an exclusive advisory lock on `<home>/receiving.lock`, held
//! by a client started with `receive: true` for as long as it lives. A relay keeps one receiving
//! connection per identity (the newest), so a second receiver on the same home (a `listen`
//! started beside a `serve` or an MCP server) would take the other's messages; it is refused at
//! start instead, naming the process that holds the home.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::error::ClientError;

/// The lock file's name in a home.
pub const LOCK_FILE: &str = "receiving.lock";

/// Held while a receiving client lives; dropping it releases the lock.
#[derive(Debug)]
pub struct ReceivingLock {
    _file: Option<File>,
}

impl ReceivingLock {
    /// Takes the home's receiving lock, or says who holds it. A home where the lock file cannot
    /// be created (read-only) is not refused for that: the lock is advisory.
    pub fn take(home_dir: &Path) -> Result<Self, ClientError> {
        let path = home_dir.join(LOCK_FILE);
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = match options.open(&path) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(error = %e, "no receiving lock for this home");
                return Ok(Self { _file: None });
            }
        };
        match file.try_lock() {
            Ok(()) => {
                // Who holds it, for the next one that asks.
                let _ = file.set_len(0);
                let _ = file.rewind();
                let _ = writeln!(file, "{}", std::process::id());
                Ok(Self { _file: Some(file) })
            }
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                Err(ClientError::HomeBusy {
                    pid: holder.trim().parse().ok(),
                })
            }
            Err(TryLockError::Error(e)) => {
                tracing::debug!(error = %e, "cannot lock {}", path.display());
                Ok(Self { _file: None })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_receiver_is_refused_with_the_holders_pid_until_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let first = ReceivingLock::take(dir.path()).unwrap();
        match ReceivingLock::take(dir.path()) {
            Err(ClientError::HomeBusy { pid }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected HomeBusy, got {other:?}"),
        }
        drop(first);
        let again = ReceivingLock::take(dir.path());
        assert!(again.is_ok(), "{again:?}");
    }
}
