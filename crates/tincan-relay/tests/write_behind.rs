//! Write-behind (`store/pending.rs`): a message delivered to an online recipient waits unwritten
//! for its ack. Acked in time, it never reaches the relay's files and its sender's `Sent` comes
//! from the ack; otherwise it is written when due (or when the recipient reads the store, the
//! sender resends it, or the relay closes), and `Sent` follows that commit. Either way a sender
//! holds `Sent` only for a message that is durable somewhere.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use tincan_proto::frame::{ClientFrame, RelayFrame};
use tincan_proto::identity::Identity;
use tincan_proto::ids::MessageId;
use tincan_relay::Config;
use tincan_testkit::raw::{RawConn, pair};
use tincan_testkit::{InProcessRelay, contains, metric, read_db_files};

fn config(db: &Path, write_behind: Duration) -> Config {
    let mut c = Config::new(db.to_path_buf());
    c.write_behind = write_behind;
    c
}

async fn send(c: &mut RawConn, req: u32, id: u8, to: &Identity, body: &[u8]) {
    c.send(&ClientFrame::Send {
        req,
        id: MessageId::from_bytes([id; 16]),
        to: to.peer_id(),
        body: body.to_vec(),
    })
    .await;
}

/// The next frame within 5 s.
async fn next(c: &mut RawConn) -> RelayFrame {
    tokio::time::timeout(Duration::from_secs(5), c.recv())
        .await
        .expect("a frame within 5 s")
        .expect("connection open")
}

async fn sent(c: &mut RawConn) -> (u32, u64) {
    match next(c).await {
        RelayFrame::Sent { req, seq } => (req, seq),
        other => panic!("expected Sent, got {other:?}"),
    }
}

async fn delivered(c: &mut RawConn) -> (u64, Vec<u8>) {
    match next(c).await {
        RelayFrame::Deliver { seq, body, .. } => (seq, body),
        other => panic!("expected a delivery, got {other:?}"),
    }
}

struct World {
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
    a: Identity,
    b: Identity,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("relay.db");
        Self {
            _dir: dir,
            db,
            a: Identity::generate(),
            b: Identity::generate(),
        }
    }

    async fn start(&self, write_behind: Duration) -> InProcessRelay {
        InProcessRelay::start(config(&self.db, write_behind)).await
    }

    /// A relay with A and B paired, A connected (receiving if `a_receives`), B receiving.
    async fn online(
        &self,
        write_behind: Duration,
        a_receives: bool,
    ) -> (InProcessRelay, RawConn, RawConn) {
        let r = self.start(write_behind).await;
        pair(&r.url, &self.a, &self.b).await;
        let ca = RawConn::authed(&r.url, &self.a, a_receives).await;
        let rb = RawConn::authed(&r.url, &self.b, true).await;
        (r, ca, rb)
    }
}

#[tokio::test]
async fn a_message_acked_in_time_never_reaches_the_relays_files() {
    let w = World::new();
    let (r, mut ca, mut rb) = w.online(Duration::from_secs(30), false).await;
    let marker = b"write-behind marker 7f3a9c";
    let t = Instant::now();
    send(&mut ca, 1, 1, &w.b, marker).await;
    let (seq, body) = delivered(&mut rb).await;
    assert_eq!(body, marker);
    rb.send(&ClientFrame::Ack { seq }).await;
    // `Sent` comes from the ack, long before the 30 s write-behind would write it.
    assert_eq!(sent(&mut ca).await, (1, seq));
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(metric(&r.url, "tincan_messages_unwritten_total").await, 1);
    assert_eq!(metric(&r.url, "tincan_messages_stored_total").await, 0);
    // A late resend is recognised (same seq) and not delivered again.
    send(&mut ca, 2, 1, &w.b, marker).await;
    assert_eq!(sent(&mut ca).await, (2, seq));
    let again = tokio::time::timeout(Duration::from_millis(300), rb.recv()).await;
    assert!(again.is_err(), "delivered again: {again:?}");
    r.stop().await;
    assert!(
        !contains(&read_db_files(&w.db), marker),
        "the relay's files hold a message its recipient acked before it was written"
    );
}

#[tokio::test]
async fn an_unacked_message_is_written_when_due_and_delivered_again_after_a_restart() {
    let w = World::new();
    let hold = Duration::from_millis(300);
    let (r, mut ca, mut rb) = w.online(hold, false).await;
    let t = Instant::now();
    send(&mut ca, 1, 1, &w.b, b"not acked").await;
    let (seq, _) = delivered(&mut rb).await;
    // No ack: `Sent` waits for the write, which waits for the hold.
    assert_eq!(sent(&mut ca).await, (1, seq));
    assert!(t.elapsed() >= hold, "Sent after {:?}", t.elapsed());
    assert_eq!(metric(&r.url, "tincan_messages_stored_total").await, 1);
    drop(rb);
    r.stop().await;
    assert!(contains(&read_db_files(&w.db), b"not acked"));
    let r = w.start(hold).await;
    let mut rb = RawConn::authed(&r.url, &w.b, true).await;
    assert_eq!(delivered(&mut rb).await, (seq, b"not acked".to_vec()));
    r.stop().await;
}

#[tokio::test]
async fn a_recipient_that_reads_the_store_or_a_resend_makes_it_written_at_once() {
    let w = World::new();
    let (r, mut ca, mut rb) = w.online(Duration::from_secs(30), false).await;
    let t = Instant::now();

    // The recipient reconnects without acking: its new connection reads the store, so the
    // message is written first, delivered again, and the sender gets `Sent` (well before 30 s).
    send(&mut ca, 1, 1, &w.b, b"first").await;
    let (seq1, _) = delivered(&mut rb).await;
    drop(rb);
    let mut rb = RawConn::authed(&r.url, &w.b, true).await;
    assert_eq!(delivered(&mut rb).await, (seq1, b"first".to_vec()));
    assert_eq!(sent(&mut ca).await, (1, seq1));

    // A resend of a message still unwritten: written now, both requests answered.
    send(&mut ca, 2, 2, &w.b, b"second").await;
    let (seq2, _) = delivered(&mut rb).await;
    send(&mut ca, 3, 2, &w.b, b"second").await;
    let mut answers = vec![sent(&mut ca).await, sent(&mut ca).await];
    answers.sort();
    assert_eq!(answers, [(2, seq2), (3, seq2)]);
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(metric(&r.url, "tincan_messages_stored_total").await, 2);
    assert_eq!(metric(&r.url, "tincan_messages_unwritten_total").await, 0);
    r.stop().await;
    assert!(contains(&read_db_files(&w.db), b"second"));
}

#[tokio::test]
async fn closing_the_relay_writes_what_waits_unwritten() {
    let w = World::new();
    let (r, mut ca, mut rb) = w.online(Duration::from_secs(30), false).await;
    send(&mut ca, 1, 1, &w.b, b"owed at close").await;
    let (seq, _) = delivered(&mut rb).await;
    drop(rb);
    r.stop().await;
    let r = w.start(Duration::from_secs(30)).await;
    let mut rb = RawConn::authed(&r.url, &w.b, true).await;
    assert_eq!(delivered(&mut rb).await, (seq, b"owed at close".to_vec()));
    r.stop().await;
}

#[tokio::test]
async fn an_ack_from_another_identity_does_not_release_a_message() {
    let w = World::new();
    let (r, mut ca, mut rb) = w.online(Duration::from_millis(300), true).await;
    send(&mut ca, 1, 1, &w.b, b"for b only").await;
    let (seq, _) = delivered(&mut rb).await;
    // A (the sender, not the recipient) acks B's seq: nothing happens; the message is written
    // when due and `Sent` follows the write.
    ca.send(&ClientFrame::Ack { seq }).await;
    assert_eq!(sent(&mut ca).await, (1, seq));
    assert_eq!(metric(&r.url, "tincan_messages_unwritten_total").await, 0);
    assert_eq!(metric(&r.url, "tincan_messages_stored_total").await, 1);
    r.stop().await;
}
