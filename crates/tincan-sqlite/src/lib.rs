//! SQLite helpers shared by the relay's store and the client's home.
//!
//! [`Checkpointer`] moves WAL checkpoints (where the fsyncs happen under `synchronous = NORMAL`)
//! off the connection that commits messages, so a send or a delivery never waits behind one.
//! [`limit_wal`] keeps the WAL file from growing without bound while commits never pause.

use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use rusqlite::Connection;

/// Checkpoint interval while the database changes.
pub const MIN_WAIT: Duration = Duration::from_millis(20);
/// Checkpoint interval when idle.
pub const MAX_WAIT: Duration = Duration::from_secs(1);
/// Consecutive failed checkpoints before each further failure is logged as a warning (a busy
/// database is normal now and then; a WAL that can never be checkpointed grows without bound).
const WARN_AFTER: u32 = 10;

/// The write-ahead log SQLite keeps beside the database at `db` (`<db>-wal`).
pub fn wal_path(db: &Path) -> std::path::PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    name.into()
}

/// Puts the database in WAL mode. Switching a fresh database takes an exclusive lock, and SQLite
/// answers `SQLITE_BUSY` at once (no busy handler) while another connection opening the same file
/// holds it, so this retries for up to five seconds (two processes setting up one home at the
/// same moment).
pub fn enable_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// Sets up the connection that commits (the only writer) so its WAL stays near `limit` bytes.
///
/// SQLite starts the log over only when a write transaction begins with every frame already
/// copied into the database. Under steady traffic that never happens by itself: the writer
/// commits again while each background checkpoint ([`Checkpointer`]) runs, so the WAL grew by
/// every page ever committed (measured: 30 MB/s at 5,000 msg/s on the relay, without end). With
/// `wal_autocheckpoint` at `limit`, a commit that leaves the log that long runs a PASSIVE
/// checkpoint on the writer itself, between two of its own transactions: nothing new can be
/// committed meanwhile, so that checkpoint completes (the background thread has copied most
/// frames already) and the next commit starts the log from the beginning, reusing its blocks. If
/// the background checkpoint holds the lock at that moment, the next commit tries again.
pub fn limit_wal(conn: &Connection, limit: u64) -> rusqlite::Result<()> {
    let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let pages = (limit / page.max(512) as u64).max(1);
    conn.pragma_update(None, "wal_autocheckpoint", pages as i64)?;
    // A log that overshot (commits made while the background checkpoint held the lock, or a WAL
    // left by an older version) is cut back to `limit` when it starts over; below that the file
    // keeps its blocks, so steady traffic overwrites them instead of allocating new ones.
    conn.query_row(&format!("PRAGMA journal_size_limit = {limit}"), [], |_| {
        Ok(())
    })
}

/// A thread that runs `PRAGMA wal_checkpoint(PASSIVE)` on its own connection every
/// [`MIN_WAIT`] while the database changes, backing off to [`MAX_WAIT`] when idle
/// (`PRAGMA data_version` tells). Stops, after one last checkpoint, and is joined when dropped.
///
/// Small, frequent checkpoints matter for latency: a checkpoint's fsync makes the kernel flush
/// its journal, and the writer's next WAL `pwrite` waits for that flush. With one checkpoint a
/// second the relay's commits at 1,000 msg/s stalled for over 25 ms (delivery p99 23 ms); every
/// 20 ms it was 0.3 ms (docs/BENCHMARKS.md).
pub struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer").finish_non_exhaustive()
    }
}

impl Checkpointer {
    /// Opens its own connection to `db` and starts the thread, named `thread_name`.
    pub fn start<E>(db: &Path, thread_name: &str) -> Result<Self, E>
    where
        E: From<rusqlite::Error> + From<std::io::Error>,
    {
        let conn = Connection::open(db)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let (stop, rx) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name(thread_name.into())
            .spawn(move || run(&conn, &rx))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

fn run(conn: &Connection, stop: &mpsc::Receiver<()>) {
    let version = || {
        conn.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
            .ok()
    };
    let checkpoint = || conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
    // The first round always checkpoints: what was committed before the thread read
    // `data_version` (a WAL left by an earlier process, or a write racing the thread's start)
    // would otherwise wait for the next change.
    let mut seen = None;
    let mut wait = MIN_WAIT;
    let mut failures = 0u32;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(wait) {
        let now = version();
        if now == seen {
            wait = (wait * 2).min(MAX_WAIT);
            continue;
        }
        seen = now;
        wait = MIN_WAIT;
        match checkpoint() {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures >= WARN_AFTER {
                    tracing::warn!(error = %e, failures, "WAL checkpoint keeps failing; will retry");
                } else {
                    tracing::debug!(error = %e, "WAL checkpoint failed; will retry");
                }
            }
        }
    }
    // Leave a small WAL behind for the next process.
    let _ = checkpoint();
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn copies_committed_pages_into_the_database_file_while_a_writer_keeps_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let writer = wal_writer(&db);
        writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        writer.execute_batch("CREATE TABLE t (x BLOB);").unwrap();
        let c = Checkpointer::start::<Box<dyn std::error::Error>>(&db, "test-checkpoint").unwrap();
        // Whether this commit lands before or after the thread first reads `data_version`, a
        // round checkpoints it (the first round always does).
        writer
            .execute("INSERT INTO t VALUES (zeroblob(100000))", [])
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        // Wait for the whole row, not just a larger file: a checkpoint grows the file page by
        // page, and a check in the middle of one saw it part-way.
        while std::fs::metadata(&db).unwrap().len() <= 100_000
            && std::time::Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(10));
        }
        assert!(
            std::fs::metadata(&db).unwrap().len() > 100_000,
            "the committed rows reached the database file"
        );
        drop(c);
    }

    /// Commits back to back, as a relay under steady traffic does, while the checkpointer runs:
    /// without `limit_wal` the log never starts over and the WAL file holds every page committed
    /// (about 25 MB here).
    #[test]
    fn the_wal_stays_near_its_limit_while_a_writer_commits_without_pause() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let writer = wal_writer(&db);
        let limit = 1 << 20;
        limit_wal(&writer, limit).unwrap();
        writer
            .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, x BLOB);")
            .unwrap();
        let c = Checkpointer::start::<Box<dyn std::error::Error>>(&db, "test-checkpoint").unwrap();
        let wal = wal_size(&db);
        let mut largest = 0;
        for i in 0..1200 {
            writer
                .execute("INSERT INTO t (x) VALUES (zeroblob(16000))", [])
                .unwrap();
            if i % 4 == 3 {
                // A queue: old rows go as new ones come.
                writer
                    .execute("DELETE FROM t WHERE id <= ?1", [i - 40])
                    .unwrap();
            }
            largest = largest.max(wal());
        }
        drop(c);
        // The checkpointer's last round copied everything; the next commit starts the log over
        // and cuts an overshoot back to the limit.
        writer
            .execute("INSERT INTO t (x) VALUES (zeroblob(16000))", [])
            .unwrap();
        assert!(
            wal() <= limit,
            "the WAL file kept {} bytes after starting over (limit {limit})",
            wal()
        );
        // The limit plus the commits made while a background checkpoint held the lock (the
        // writer then tries again at its next commit; one with an fsync on a slow disk can
        // take a while).
        assert!(
            largest <= 8 * limit,
            "the WAL file reached {largest} bytes with a limit of {limit}"
        );
        let rows: i64 = writer
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 42, "every row not deleted is there");
    }

    /// A connection to `db` set up as both stores set up theirs (WAL, `synchronous = NORMAL`).
    fn wal_writer(db: &Path) -> Connection {
        let writer = Connection::open(db).unwrap();
        writer.pragma_update(None, "journal_mode", "WAL").unwrap();
        writer.pragma_update(None, "synchronous", "NORMAL").unwrap();
        writer.busy_timeout(Duration::from_secs(5)).unwrap();
        writer
    }

    fn wal_size(db: &Path) -> impl Fn() -> u64 + use<> {
        let wal = wal_path(db);
        move || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0)
    }
}
