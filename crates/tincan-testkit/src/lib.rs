//! Helpers shared by tincan's tests: a relay as a child process that can be SIGKILLed and
//! restarted, a runner for CLI commands with JSON output, an in-process relay, and a raw relay
//! connection for sending frames a well-behaved client never would.

pub mod process;
pub mod raw;

use std::net::TcpListener;
use std::path::Path;

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    // Test helper: failing to bind loopback means the machine cannot run the tests at all.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// An in-process relay on 127.0.0.1, stopped when dropped.
pub struct InProcessRelay {
    /// Its URL.
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl InProcessRelay {
    /// Starts a relay with `config` (its db_path should live in a temp dir).
    pub async fn start(config: tincan_relay::Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tincan_relay::run(listener, config, async {
                let _ = rx.await;
            })
            .await
            .expect("relay run");
        });
        Self {
            url,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the relay and waits for it to flush.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for InProcessRelay {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A counter or gauge from a relay's `/metrics` (`name` may include labels), read over a plain
/// HTTP/1.0 request so it works against an in-process relay on the same runtime.
pub async fn metric(relay_url: &str, name: &str) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = relay_url.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the relay");
    conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .await
        .expect("write the request");
    let mut text = String::new();
    conn.read_to_string(&mut text).await.expect("read /metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Reads a file and its SQLite WAL and shm companions, for plaintext scans.
pub fn read_db_files(db: &Path) -> Vec<u8> {
    let mut out = std::fs::read(db).unwrap_or_default();
    for ext in ["db-wal", "db-shm"] {
        out.extend(std::fs::read(db.with_extension(ext)).unwrap_or_default());
    }
    out
}

/// Overwrites, in place, every page of `table` in the SQLite database `db` (after emptying its
/// WAL into it) with garbage, leaving the other tables readable; returns the file as it was, to
/// restore it with. For tests of what a damaged home does.
pub fn corrupt_table(db: &Path, table: &str) -> Vec<u8> {
    let (pages, size) = {
        let conn = rusqlite::Connection::open(db).expect("open the database");
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .expect("checkpoint");
        let size: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .expect("page size");
        let mut stmt = conn
            .prepare("SELECT pageno FROM dbstat WHERE name = ?1")
            .expect("dbstat");
        let pages: Vec<i64> = stmt
            .query_map([table], |r| r.get(0))
            .expect("pages")
            .map(|p| p.expect("page number"))
            .collect();
        (pages, size as usize)
    };
    assert!(!pages.is_empty(), "table {table} has no pages");
    let before = std::fs::read(db).expect("read the database");
    let mut bytes = before.clone();
    for p in pages {
        let at = (p as usize - 1) * size;
        bytes[at..at + size].fill(0xA5);
    }
    std::fs::write(db, &bytes).expect("write the database");
    before
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
