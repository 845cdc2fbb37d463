//! The relay's store through real connections: deduplication after an ack, sequence numbers
//! across restarts (and of queued messages across restarts), the migrations from the first and
//! second database layouts, and the page size of a new database.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tincan_proto::frame::{ClientFrame, RelayFrame};
use tincan_proto::identity::Identity;
use tincan_proto::ids::MessageId;
use tincan_relay::Config;
use tincan_testkit::InProcessRelay;
use tincan_testkit::raw::{RawConn, pair};

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn send(c: &mut RawConn, req: u32, id: [u8; 16], to: &Identity, body: Vec<u8>) -> u64 {
    c.send(&ClientFrame::Send {
        req,
        id: MessageId::from_bytes(id),
        to: to.peer_id(),
        body,
    })
    .await;
    match c.recv().await {
        Some(RelayFrame::Sent { req: r, seq }) if r == req => seq,
        other => panic!("expected Sent for {req}, got {other:?}"),
    }
}

/// Receives one delivery and acks it; returns (seq, body).
async fn take(rb: &mut RawConn) -> (u64, Vec<u8>) {
    match rb.recv().await {
        Some(RelayFrame::Deliver { seq, body, .. }) => {
            rb.send(&ClientFrame::Ack { seq }).await;
            (seq, body)
        }
        other => panic!("expected a delivery, got {other:?}"),
    }
}

/// Nothing arrives within `ms`.
async fn quiet(rb: &mut RawConn, ms: u64) {
    let r = tokio::time::timeout(Duration::from_millis(ms), rb.recv()).await;
    assert!(
        !matches!(r, Ok(Some(RelayFrame::Deliver { .. }))),
        "unexpected delivery: {r:?}"
    );
}

/// Writes the pair row an older relay layout kept for `a` and `b` (smaller id first).
fn record_pair(conn: &rusqlite::Connection, a: &Identity, b: &Identity) {
    let (lo, hi) = if a.peer_id() <= b.peer_id() {
        (a.peer_id(), b.peer_id())
    } else {
        (b.peer_id(), a.peer_id())
    };
    conn.execute(
        "INSERT INTO pairs (a, b) VALUES (?1, ?2)",
        rusqlite::params![lo.as_bytes(), hi.as_bytes()],
    )
    .unwrap();
}

#[tokio::test]
async fn a_resend_after_the_ack_is_recognised_and_not_delivered_again() {
    let dir = tempfile::tempdir().unwrap();
    let r = InProcessRelay::start(Config::new(dir.path().join("relay.db"))).await;
    let (a, b) = (Identity::generate(), Identity::generate());
    pair(&r.url, &a, &b).await;
    let mut c = RawConn::authed(&r.url, &a, false).await;
    let mut rb = RawConn::authed(&r.url, &b, true).await;
    let first = send(&mut c, 1, [1; 16], &b, b"one".to_vec()).await;
    assert_eq!(take(&mut rb).await, (first, b"one".to_vec()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The sender never saw `Sent` (say its connection dropped) and resends: the relay answers with
    // the original seq, stores nothing and delivers nothing.
    let again = send(&mut c, 2, [1; 16], &b, b"one".to_vec()).await;
    assert_eq!(again, first);
    quiet(&mut rb, 300).await;
    let second = send(&mut c, 3, [2; 16], &b, b"two".to_vec()).await;
    assert!(second > first);
    assert_eq!(take(&mut rb).await, (second, b"two".to_vec()));
    r.stop().await;
}

#[tokio::test]
async fn sequence_numbers_keep_increasing_after_every_message_is_acked_and_the_relay_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let (a, b) = (Identity::generate(), Identity::generate());
    let r = InProcessRelay::start(Config::new(db.clone())).await;
    pair(&r.url, &a, &b).await;
    let mut last = 0;
    {
        let mut c = RawConn::authed(&r.url, &a, false).await;
        let mut rb = RawConn::authed(&r.url, &b, true).await;
        for i in 0..3u8 {
            last = send(&mut c, u32::from(i) + 1, [i; 16], &b, vec![i]).await;
            take(&mut rb).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    r.stop().await;
    let queued: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM queue", [], |r| r.get(0))
        .unwrap();
    assert_eq!(queued, 0, "acked messages are deleted");
    let r = InProcessRelay::start(Config::new(db)).await;
    let mut c = RawConn::authed(&r.url, &a, false).await;
    let next = send(&mut c, 9, [9; 16], &b, vec![9]).await;
    assert!(next > last, "seq {next} reused after {last}");
    r.stop().await;
}

#[tokio::test]
async fn a_first_layout_database_is_migrated_keeping_the_queue_and_its_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let (a, b) = (Identity::generate(), Identity::generate());
    let far = (now_secs() as i64 + 3600) * 1000;
    {
        // The layout the first release wrote: every message in `messages`, acked ones bodiless.
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE messages (
                seq INTEGER PRIMARY KEY AUTOINCREMENT, recipient BLOB NOT NULL, sender BLOB NOT NULL,
                client_id BLOB NOT NULL, body BLOB, stored_at INTEGER NOT NULL,
                expires_at INTEGER NOT NULL, acked INTEGER NOT NULL DEFAULT 0,
                UNIQUE (sender, client_id));
             CREATE INDEX messages_queue ON messages (recipient, acked, seq);
             CREATE INDEX messages_expiry ON messages (expires_at);
             CREATE TABLE invites (id BLOB PRIMARY KEY, inviter BLOB NOT NULL,
                expires_at INTEGER NOT NULL, claimed_by BLOB);
             CREATE TABLE pairs (a BLOB NOT NULL, b BLOB NOT NULL, PRIMARY KEY (a, b)) WITHOUT ROWID;",
        )
        .unwrap();
        record_pair(&conn, &a, &b);
        for (seq, id, body, acked) in [
            (10i64, [1u8; 16], None, 1),
            (11, [2; 16], Some(b"second".to_vec()), 0),
            (12, [3; 16], Some(b"third".to_vec()), 0),
        ] {
            conn.execute(
                "INSERT INTO messages (seq, recipient, sender, client_id, body, stored_at, expires_at, acked)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7)",
                rusqlite::params![seq, b.peer_id().as_bytes(), a.peer_id().as_bytes(), id, body, far, acked],
            )
            .unwrap();
        }
    }
    let r = InProcessRelay::start(Config::new(db.clone())).await;
    let mut rb = RawConn::authed(&r.url, &b, true).await;
    assert_eq!(take(&mut rb).await, (11, b"second".to_vec()));
    assert_eq!(take(&mut rb).await, (12, b"third".to_vec()));
    quiet(&mut rb, 200).await;
    let mut c = RawConn::authed(&r.url, &a, false).await;
    // A resend of a queued message is still recognised.
    assert_eq!(send(&mut c, 1, [2; 16], &b, b"second".to_vec()).await, 11);
    let next = send(&mut c, 2, [4; 16], &b, b"fourth".to_vec()).await;
    assert!(next > 12);
    assert_eq!(take(&mut rb).await, (next, b"fourth".to_vec()));
    let has_old: Option<i64> = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE name = 'messages'",
            [],
            |r| r.get(0),
        )
        .ok();
    assert!(has_old.is_none(), "the old table is gone");
    r.stop().await;
}

#[tokio::test]
async fn a_database_from_a_newer_relay_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA user_version = 99;")
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = tincan_relay::run(listener, Config::new(db), async {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("layout 99") && err.contains("upgrade"),
        "{err}"
    );
}

#[tokio::test]
async fn expired_messages_are_never_delivered_and_the_sweep_deletes_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let (a, b) = (Identity::generate(), Identity::generate());
    let mut short = Config::new(db.clone());
    short.message_ttl = Duration::from_millis(300);
    let r = InProcessRelay::start(short).await;
    pair(&r.url, &a, &b).await;
    let mut c = RawConn::authed(&r.url, &a, false).await;
    send(&mut c, 1, [1; 16], &b, b"old one".to_vec()).await;
    send(&mut c, 2, [2; 16], &b, b"old two".to_vec()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut rb = RawConn::authed(&r.url, &b, true).await;
    quiet(&mut rb, 200).await;
    drop((c, rb));
    r.stop().await;
    // A restarted relay sweeps at once; a fresh message is kept and delivered.
    let r = InProcessRelay::start(Config::new(db.clone())).await;
    let mut c = RawConn::authed(&r.url, &a, false).await;
    let fresh = send(&mut c, 3, [3; 16], &b, b"fresh".to_vec()).await;
    let count = || {
        rusqlite::Connection::open(&db)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM queue", [], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while count() != 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count(), 1, "only the fresh message is left in the queue");
    let mut rb = RawConn::authed(&r.url, &b, true).await;
    assert_eq!(take(&mut rb).await, (fresh, b"fresh".to_vec()));
    quiet(&mut rb, 200).await;
    r.stop().await;
}

#[tokio::test]
async fn acks_remove_only_the_acking_identitys_messages_even_in_bulk() {
    let dir = tempfile::tempdir().unwrap();
    let r = InProcessRelay::start(Config::new(dir.path().join("relay.db"))).await;
    let (a, b, m) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    pair(&r.url, &a, &b).await;
    pair(&r.url, &m, &a).await;
    let mut c = RawConn::authed(&r.url, &a, false).await;
    let mut seqs = Vec::new();
    // More than one ack statement's worth (64 per statement).
    for i in 0..150u32 {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        seqs.push(send(&mut c, i + 1, id, &b, i.to_be_bytes().to_vec()).await);
    }
    // Mallory, a paired identity of A's, acks every one of B's seqs: nothing happens to them.
    let mut cm = RawConn::authed(&r.url, &m, true).await;
    for s in &seqs {
        cm.send(&ClientFrame::Ack { seq: *s }).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut rb = RawConn::authed(&r.url, &b, true).await;
    for (i, s) in seqs.iter().enumerate() {
        // B gets all 150 in order and acks them, in bursts as they arrive.
        assert_eq!(take(&mut rb).await, (*s, (i as u32).to_be_bytes().to_vec()));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(rb);
    let mut rb = RawConn::authed(&r.url, &b, true).await;
    quiet(&mut rb, 300).await;
    let left: i64 = rusqlite::Connection::open(dir.path().join("relay.db"))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM queue", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0, "every acked message is deleted");
    r.stop().await;
}

#[tokio::test]
async fn a_resend_of_a_queued_message_is_recognised_after_a_restart() {
    // Queued messages are indexed in the writer's memory (layout 3); the index is rebuilt from the
    // table on open, so deduplication survives a restart.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let (a, b) = (Identity::generate(), Identity::generate());
    let r = InProcessRelay::start(Config::new(db.clone())).await;
    pair(&r.url, &a, &b).await;
    let (first, second) = {
        let mut c = RawConn::authed(&r.url, &a, false).await;
        let first = send(&mut c, 1, [1; 16], &b, b"one".to_vec()).await;
        let second = send(&mut c, 2, [2; 16], &b, b"two".to_vec()).await;
        (first, second)
    };
    r.stop().await;
    let r = InProcessRelay::start(Config::new(db.clone())).await;
    let mut c = RawConn::authed(&r.url, &a, false).await;
    assert_eq!(send(&mut c, 3, [2; 16], &b, b"two".to_vec()).await, second);
    assert_eq!(send(&mut c, 4, [1; 16], &b, b"one".to_vec()).await, first);
    let mut rb = RawConn::authed(&r.url, &b, true).await;
    assert_eq!(take(&mut rb).await, (first, b"one".to_vec()));
    assert_eq!(take(&mut rb).await, (second, b"two".to_vec()));
    quiet(&mut rb, 300).await;
    let third = send(&mut c, 5, [3; 16], &b, b"three".to_vec()).await;
    assert!(third > second);
    assert_eq!(take(&mut rb).await, (third, b"three".to_vec()));
    r.stop().await;
}

#[tokio::test]
async fn a_second_layout_database_is_migrated_to_a_queue_without_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let (a, b) = (Identity::generate(), Identity::generate());
    let far = (now_secs() as i64 + 3600) * 1000;
    {
        // The layout relays wrote before: `queue` with a unique index and a recipient index.
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE queue (seq INTEGER PRIMARY KEY, recipient BLOB NOT NULL,
                sender BLOB NOT NULL, client_id BLOB NOT NULL, body BLOB NOT NULL,
                stored_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
                UNIQUE (sender, client_id));
             CREATE INDEX queue_recipient ON queue (recipient, seq);
             CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
             CREATE TABLE invites (id BLOB PRIMARY KEY, inviter BLOB NOT NULL,
                expires_at INTEGER NOT NULL, claimed_by BLOB);
             CREATE TABLE pairs (a BLOB NOT NULL, b BLOB NOT NULL, PRIMARY KEY (a, b)) WITHOUT ROWID;
             INSERT INTO meta (key, value) VALUES ('last_seq', 4096);
             PRAGMA user_version = 2;",
        )
        .unwrap();
        record_pair(&conn, &a, &b);
        for (seq, id, body) in [(21i64, [2u8; 16], b"second"), (20, [1; 16], b"first!")] {
            conn.execute(
                "INSERT INTO queue (seq, recipient, sender, client_id, body, stored_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)",
                rusqlite::params![
                    seq,
                    b.peer_id().as_bytes(),
                    a.peer_id().as_bytes(),
                    id,
                    body.to_vec(),
                    far
                ],
            )
            .unwrap();
        }
    }
    let r = InProcessRelay::start(Config::new(db.clone())).await;
    let mut c = RawConn::authed(&r.url, &a, false).await;
    // A resend of a queued message is recognised from the migrated rows.
    assert_eq!(send(&mut c, 1, [2; 16], &b, b"second".to_vec()).await, 21);
    let mut rb = RawConn::authed(&r.url, &b, true).await;
    assert_eq!(take(&mut rb).await, (20, b"first!".to_vec()));
    assert_eq!(take(&mut rb).await, (21, b"second".to_vec()));
    quiet(&mut rb, 200).await;
    let next = send(&mut c, 2, [3; 16], &b, b"third".to_vec()).await;
    assert!(next > 4096, "seq {next} below the recorded ceiling");
    assert_eq!(take(&mut rb).await, (next, b"third".to_vec()));
    r.stop().await;
    let conn = rusqlite::Connection::open(&db).unwrap();
    let indexes: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'queue'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(indexes, 0, "layout 3 keeps no index on the queue");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 3);
}

#[tokio::test]
async fn a_new_database_uses_16_kib_pages() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let r = InProcessRelay::start(Config::new(db.clone())).await;
    r.stop().await;
    let page: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    assert_eq!(page, 16_384);
}

/// A relay on `db` with a pair and one message queued for B; returns it and A.
async fn one_queued(db: &std::path::Path) -> (InProcessRelay, Identity) {
    let (a, b) = (Identity::generate(), Identity::generate());
    let r = InProcessRelay::start(Config::new(db.to_path_buf())).await;
    pair(&r.url, &a, &b).await;
    let mut c = RawConn::authed(&r.url, &a, false).await;
    send(&mut c, 1, [1; 16], &b, b"queued".to_vec()).await;
    (r, a)
}

#[tokio::test]
async fn a_stopped_relay_has_closed_its_database_files() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let (r, _) = one_queued(&db).await;
    r.stop().await;
    // The last connection to close removes the WAL and the shared-memory file; either left
    // behind means a thread of the store still had the database open after `stop` returned.
    for suffix in ["-wal", "-shm"] {
        let mut path = db.clone().into_os_string();
        path.push(suffix);
        assert!(
            !std::path::Path::new(&path).exists(),
            "{suffix} file still there after the relay stopped"
        );
    }
    let queued: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM queue", [], |r| r.get(0))
        .unwrap();
    assert_eq!(queued, 1, "the undelivered message is in the database file");
}

#[tokio::test]
async fn a_second_relay_on_the_same_database_is_refused_until_the_first_stops() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let first = InProcessRelay::start(Config::new(db.clone())).await;
    let (a, b) = (Identity::generate(), Identity::generate());
    pair(&first.url, &a, &b).await; // the first relay is up and holds the database
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second = tincan_relay::run(listener, Config::new(db.clone()), async {}).await;
    let err = second.expect_err("two relays on one database").to_string();
    assert!(err.contains("another relay is using"), "{err}");
    // The first one still works.
    let mut c = RawConn::authed(&first.url, &a, false).await;
    send(&mut c, 1, [1; 16], &b, b"still here".to_vec()).await;
    first.stop().await;
    // Stopping it releases the database at once.
    let again = InProcessRelay::start(Config::new(db)).await;
    again.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn the_database_files_are_private_to_the_relays_user() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    // Made under the usual umask (022), the files would be readable by every local user.
    let (r, a) = one_queued(&db).await;
    let mut wal = db.clone().into_os_string();
    wal.push("-wal");
    let wal = std::path::PathBuf::from(wal);
    assert_eq!(mode(&db), 0o600, "the database holds the token secret");
    assert_eq!(mode(&wal), 0o600, "the WAL holds pages of it");
    r.stop().await;
    // A database an operator left readable is tightened at start.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = InProcessRelay::start(Config::new(db.clone())).await;
    // Served (so the store is open) once a connection authenticates.
    RawConn::authed(&r.url, &a, false).await;
    assert_eq!(mode(&db), 0o600);
    r.stop().await;
}
