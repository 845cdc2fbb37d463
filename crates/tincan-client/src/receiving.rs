//! One receiving client per home and relay: an exclusive advisory lock on
//! `<home>/receiving-<relay hash>.lock`, held by a client started with `receive: true` for as long
//! as it lives. A relay keeps one receiving connection per identity (the newest), so a second
//! receiver of the same home on the same relay (a `listen` started beside a `serve` or an MCP
//! server) would take the other's messages; it is refused at start instead, naming the process
//! that holds it. Receivers on different relays (two rooms of one home) do not collide.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::error::ClientError;

/// The lock file in a home for receiving from `relay_url` (normalized).
fn lock_file(relay_url: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(relay_url.as_bytes());
    format!("receiving-{}.lock", hex::encode(&digest[..8]))
}

/// Held while a receiving client lives; dropping it releases the lock.
#[derive(Debug)]
pub struct ReceivingLock {
    _file: Option<File>,
}

impl ReceivingLock {
    /// Takes the home's receiving lock for `relay_url`, or says who holds it. A home where the
    /// lock file cannot be created (read-only) is not refused for that: the lock is advisory.
    pub fn take(home_dir: &Path, relay_url: &str) -> Result<Self, ClientError> {
        let path = home_dir.join(lock_file(relay_url));
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
    fn a_second_receiver_on_one_relay_is_refused_with_the_holders_pid_until_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let relay = "http://127.0.0.1:8787";
        let first = ReceivingLock::take(dir.path(), relay).unwrap();
        match ReceivingLock::take(dir.path(), relay) {
            Err(ClientError::HomeBusy { pid }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected HomeBusy, got {other:?}"),
        }
        // Another relay of the same home (a second room) is another lock.
        let other = ReceivingLock::take(dir.path(), "http://127.0.0.1:8788");
        assert!(other.is_ok(), "{other:?}");
        drop(first);
        let again = ReceivingLock::take(dir.path(), relay);
        assert!(again.is_ok(), "{again:?}");
    }
}
