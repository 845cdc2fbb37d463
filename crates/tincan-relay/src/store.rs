//! The relay's SQLite store, owned by one writer thread.
//!
//! Every mutation goes through one thread that batches whatever commands are waiting into a
//! single transaction (group commit). A sender is told its message is stored only after the
//! transaction holding it has committed (or its recipient acknowledged it, see below). The recipient's connection gets the message as soon as
//! its row is inserted, in sequence order, without waiting for the commit: delivery latency does
//! not include the group commit or a slow write. If the commit then fails, the sender is refused
//! and resends, and the recipient sees the same message id again, which every client must
//! recognise anyway (docs/PROTOCOL.md §12). An acknowledged message is deleted (tables: [`schema`]). A resend of the same (sender,
//! message id) is recognised while the message is queued (the writer's in-memory index,
//! [`queued`]) and, after its ack, for a bounded window kept in memory ([`Recent`]); past that the
//! recipient's client recognises it by id, as docs/PROTOCOL.md asks every client to.
//!
//! Write-behind ([`pending`]): a message whose recipient has a live connection is delivered and
//! not written at once; if the recipient acks it within `Config::write_behind`, its sender's
//! `Sent` comes from that ack and the message never reaches the disk; otherwise it is written
//! when due (or earlier, when the recipient reads the store, the sender resends it, or the relay
//! closes) and `Sent` follows that commit.
//!
//! Sends and acks are one statement each and run without a savepoint: a savepoint per command
//! made SQLite copy every page a command touched into a sub-journal, which cost more than the
//! writes themselves. Multi-statement commands (invites, sweeps) run inside their own savepoint.

mod pending;
mod queued;
mod recent;
mod schema;

pub(crate) use recent::Recent;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::thread;

use rusqlite::{Connection, OptionalExtension, params};
use thiserror::Error;
use tincan_proto::frame::{ErrorCode, RelayFrame};
use tincan_proto::ids::{InviteId, MessageId, PeerId};
use tokio::sync::{mpsc, oneshot};

use tincan_sqlite::Checkpointer;

use crate::Config;
use crate::metrics::Metrics;
use crate::router::Router;

/// Why the store failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// SQLite reported an error (locked, corrupt, full disk, ...).
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The store thread is gone.
    #[error("store is closed")]
    Closed,
    /// The store thread could not be started.
    #[error("cannot start store thread: {0}")]
    Thread(#[from] std::io::Error),
    /// An earlier command's failure rolled back the batch this command was in.
    #[error("the store transaction was rolled back by an earlier failure")]
    RolledBack,
    /// Another relay (another process, or another store in this one) has the database open.
    #[error(
        "another relay is using {0} (its lock file {0}.lock is held): stop that relay, or give this one another --db"
    )]
    InUse(String),
    /// The lock file next to the database could not be created or locked.
    #[error("cannot use the lock file {path}: {error}")]
    LockFile {
        /// The lock file.
        path: String,
        /// What failed.
        error: std::io::Error,
    },
    /// The database was written by a newer relay.
    #[error(
        "the relay database has layout {found}, newer than this relay supports ({supported}); upgrade tincan or use another --db"
    )]
    NewerLayout {
        /// Layout found in the file.
        found: i64,
        /// Newest layout this build knows.
        supported: i64,
    },
}

/// Most body bytes one fetch returns (it returns at least one row): a long-poll's response and a
/// catch-up batch stay small however large the queued messages are.
pub(crate) const FETCH_MAX_BYTES: usize = 1 << 20;

/// What one fetch read.
pub(crate) struct Fetched {
    /// Rows in `seq` order.
    pub rows: Vec<Stored>,
    /// Whether more rows were left for the next fetch (the row or byte limit was reached).
    pub more: bool,
}

/// A stored message on its way to its recipient.
pub struct Stored {
    /// Relay sequence number.
    pub seq: u64,
    /// The authenticated sender.
    pub from: PeerId,
    /// The sender's message id.
    pub id: MessageId,
    /// When it was stored, unix ms.
    pub stored_at: u64,
    /// Sealed bytes.
    pub body: Vec<u8>,
}

impl Stored {
    /// The encoded `Deliver` frame, without copying the body into a frame first.
    pub fn encode(&self) -> Vec<u8> {
        RelayFrame::encode_deliver(self.seq, &self.from, &self.id, self.stored_at, &self.body)
    }
}

/// Where a reply to a request goes: the requesting connection's response queue.
pub type Responder = mpsc::UnboundedSender<RelayFrame>;

enum Cmd {
    Send {
        sender: PeerId,
        req: u32,
        id: MessageId,
        to: PeerId,
        body: Vec<u8>,
        now_ms: u64,
        respond: Responder,
    },
    Ack {
        recipient: PeerId,
        seq: u64,
    },
    Fetch {
        recipient: PeerId,
        after: u64,
        limit: usize,
        now_ms: u64,
        reply: oneshot::Sender<Fetched>,
    },
    RegisterInvite {
        inviter: PeerId,
        req: u32,
        id: InviteId,
        expires_at: u64,
        respond: Responder,
    },
    ClaimInvite {
        claimer: PeerId,
        req: u32,
        id: InviteId,
        now_ms: u64,
        respond: Responder,
    },
    Sweep {
        now_ms: u64,
    },
    Stats {
        reply: oneshot::Sender<Result<u64, String>>,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

impl Cmd {
    /// Whether the command writes more than one statement and so needs its own savepoint to be
    /// undone as a whole. A send undoes its own first insert if the second fails.
    fn needs_savepoint(&self) -> bool {
        matches!(
            self,
            Cmd::RegisterInvite { .. } | Cmd::ClaimInvite { .. } | Cmd::Sweep { .. }
        )
    }
}

/// A handle to the store thread. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: std_mpsc::Sender<Cmd>,
}

/// Takes the exclusive lock that marks `db` as in use by this relay (`<db>.lock`, created if
/// needed; the lock, not the file, is what counts, so a file left by a crashed relay is no
/// obstacle).
fn lock_db(db: &std::path::Path) -> Result<std::fs::File, StoreError> {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let failed = |error| StoreError::LockFile {
        path: std::path::Path::new(&name).display().to_string(),
        error,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&name)
        .map_err(failed)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse(db.display().to_string())),
        Err(std::fs::TryLockError::Error(e)) => Err(failed(e)),
    }
}

impl Store {
    /// Opens (creating if needed) the database and starts the writer thread.
    pub(crate) fn open(
        config: &Config,
        router: Arc<Router>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        // One relay per database: two writers would each keep their own in-memory index and
        // sequence counter over the same rows.
        let lock = lock_db(&config.db_path)?;
        let mut conn = Connection::open(&config.db_path)?;
        // A corrupt or foreign file fails here with SQLite's own words ("file is not a database").
        conn.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0))?;
        conn.pragma_update(None, "page_size", schema::PAGE_SIZE)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL in WAL mode: a commit survives a process crash (SIGKILL); FULL would add an fsync
        // per commit to survive power loss too. See docs/ARCHITECTURE.md.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Checkpoints (the only fsyncs under NORMAL) run on their own thread, not in the writer's
        // commits, except when the WAL reaches its limit (`limit_wal`: under steady traffic it
        // would otherwise never start over); a bigger page cache saves re-reading index pages.
        tincan_sqlite::limit_wal(&conn, WAL_LIMIT)?;
        conn.pragma_update(None, "cache_size", -32_768)?;
        let next_seq = schema::prepare(&mut conn)?;
        if let Some(max) = config.max_db_bytes {
            let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let pages = (max / page.max(512) as u64).max(16);
            conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                r.get::<_, i64>(0)
            })?;
        }
        let pairs = load_pairs(&conn)?;
        let index = queued::Queued::load(&conn)?;
        let checkpoints = Checkpointer::start::<StoreError>(&config.db_path, "tincan-checkpoint")?;
        let (tx, rx) = std_mpsc::channel();
        let worker = Worker {
            conn,
            router,
            pairs,
            queue_cap: config.queue_cap,
            max_queued: config.max_queued,
            max_pairs: config.max_pairs,
            ttl_ms: config.message_ttl.as_millis() as u64,
            require_pairing: config.require_pairing,
            max_open_invites: config.max_open_invites,
            metrics,
            held: HashMap::new(),
            index,
            next_seq,
            seq_reserved: next_seq - 1,
            recent: Recent::default(),
            pending: pending::Pending::default(),
            write_behind: config.write_behind,
            closing: false,
            _checkpoints: checkpoints,
            _lock: lock,
        };
        thread::Builder::new()
            .name("tincan-store".into())
            .spawn(move || worker.run(rx))?;
        Ok(Self { tx })
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send(
        &self,
        sender: PeerId,
        req: u32,
        id: MessageId,
        to: PeerId,
        body: Vec<u8>,
        now_ms: u64,
        respond: Responder,
    ) {
        self.submit(Cmd::Send {
            sender,
            req,
            id,
            to,
            body,
            now_ms,
            respond,
        });
    }

    pub(crate) fn ack(&self, recipient: PeerId, seq: u64) {
        self.submit(Cmd::Ack { recipient, seq });
    }

    pub(crate) async fn fetch(
        &self,
        recipient: PeerId,
        after: u64,
        limit: usize,
        now_ms: u64,
    ) -> Result<Fetched, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Fetch {
                recipient,
                after,
                limit,
                now_ms,
                reply,
            })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    pub(crate) fn register_invite(
        &self,
        inviter: PeerId,
        req: u32,
        id: InviteId,
        expires_at: u64,
        respond: Responder,
    ) {
        self.submit(Cmd::RegisterInvite {
            inviter,
            req,
            id,
            expires_at,
            respond,
        });
    }

    pub(crate) fn claim_invite(
        &self,
        claimer: PeerId,
        req: u32,
        id: InviteId,
        now_ms: u64,
        respond: Responder,
    ) {
        self.submit(Cmd::ClaimInvite {
            claimer,
            req,
            id,
            now_ms,
            respond,
        });
    }

    /// Number of stored, unacknowledged messages; an error if the store cannot answer.
    pub(crate) async fn stats(&self) -> Result<u64, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Stats { reply })
            .map_err(|_| "store is closed".to_string())?;
        rx.await.map_err(|_| "store is closed".to_string())?
    }

    pub(crate) fn sweep(&self, now_ms: u64) {
        self.submit(Cmd::Sweep { now_ms });
    }

    /// Commits what is pending and stops the writer thread.
    pub(crate) async fn close(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Cmd::Close { done }).is_ok() {
            let _ = rx.await;
        }
    }

    fn submit(&self, cmd: Cmd) {
        if let Err(std_mpsc::SendError(cmd)) = self.tx.send(cmd) {
            fail(cmd, ErrorCode::ShuttingDown, "relay is shutting down");
        }
    }
}

fn load_pairs(conn: &Connection) -> Result<HashSet<(PeerId, PeerId)>, StoreError> {
    let mut stmt = conn.prepare("SELECT a, b FROM pairs")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
    })?;
    let mut out = HashSet::new();
    for row in rows {
        let (a, b) = row?;
        if let (Some(a), Some(b)) = (peer(&a), peer(&b)) {
            out.insert((a, b));
        }
    }
    Ok(out)
}

fn peer(bytes: &[u8]) -> Option<PeerId> {
    Some(PeerId::from_bytes(bytes.try_into().ok()?))
}

/// A sender's message id as stored in a `client_id` column.
fn message_id(bytes: &[u8]) -> Option<MessageId> {
    Some(MessageId::from_bytes(bytes.try_into().ok()?))
}

fn pair_key(x: PeerId, y: PeerId) -> (PeerId, PeerId) {
    if x <= y { (x, y) } else { (y, x) }
}

/// When retrying a request refused with `code` may succeed, in ms; 0 if retrying will not help.
/// The one place that decides it for every refusal the store sends.
fn retry_after(code: ErrorCode) -> u32 {
    match code {
        // A full queue drains as the recipient reads.
        ErrorCode::QueueFull => 2000,
        ErrorCode::StorageFull => 5000,
        ErrorCode::Internal | ErrorCode::ShuttingDown => 1000,
        // Pairing, size and invite state never change by retrying.
        _ => 0,
    }
}

/// Tells a command's requester that it failed, without touching the database.
fn fail(cmd: Cmd, code: ErrorCode, message: &str) {
    let respond = |r: Responder, req: u32| {
        let _ = r.send(RelayFrame::Error {
            req,
            code,
            retry_after_ms: retry_after(code),
            message: message.to_string(),
        });
    };
    match cmd {
        Cmd::Send {
            respond: r, req, ..
        }
        | Cmd::RegisterInvite {
            respond: r, req, ..
        }
        | Cmd::ClaimInvite {
            respond: r, req, ..
        } => respond(r, req),
        Cmd::Fetch { reply, .. } => drop(reply),
        Cmd::Close { done } => drop(done.send(())),
        Cmd::Stats { reply } => drop(reply.send(Err(message.to_string()))),
        Cmd::Ack { .. } | Cmd::Sweep { .. } => {}
    }
}

/// What a batch produced, released only after its transaction commits.
#[derive(Default)]
struct Effects {
    replies: Vec<(Responder, RelayFrame)>,
    deliveries: Vec<(PeerId, Arc<Stored>)>,
    new_pairs: Vec<(PeerId, PeerId)>,
    fetches: Vec<(oneshot::Sender<Fetched>, Fetched)>,
    /// Messages acked in this batch: (sender, id, seq), remembered once the batch commits.
    acked: Vec<(PeerId, MessageId, u64)>,
}

struct Worker {
    conn: Connection,
    router: Arc<Router>,
    pairs: HashSet<(PeerId, PeerId)>,
    max_pairs: u64,
    queue_cap: u64,
    max_queued: u64,
    ttl_ms: u64,
    require_pairing: bool,
    max_open_invites: u32,
    metrics: Arc<Metrics>,
    /// Ordering guard: after a retryable refusal of message `id` from a sender to a recipient,
    /// later messages on that path are refused too until `id` itself is resent, so a refusal in
    /// the middle of a pipelined burst can never let later messages overtake it.
    held: HashMap<(PeerId, PeerId), Held>,
    /// Stored, unacknowledged messages by recipient and by (sender, id); matches the committed
    /// table plus this transaction's changes, reloaded after a rollback.
    index: queued::Queued,
    /// The sequence number the next stored message gets.
    next_seq: u64,
    /// The highest sequence number recorded in `meta` as handed out.
    seq_reserved: u64,
    /// Recently acknowledged messages, for deduplicating late resends.
    recent: Recent,
    /// Delivered to an online recipient, not written yet (write-behind, [`pending`]).
    pending: pending::Pending,
    /// How long an entry may wait in `pending`.
    write_behind: std::time::Duration,
    /// The relay is closing: write everything pending with this batch.
    closing: bool,
    _checkpoints: Checkpointer,
    /// Held (an exclusive advisory lock on `<db>.lock`) for as long as the store is open.
    _lock: std::fs::File,
}

/// Most messages, and most body bytes, waiting unwritten at once (their bodies are in memory);
/// past either, new messages are written at once. Entries leave after `write_behind` at the
/// latest, so in practice this holds one hold time of traffic.
const MAX_PENDING: usize = 65_536;
const MAX_PENDING_BYTES: usize = 64 << 20;

struct Held {
    id: MessageId,
    code: ErrorCode,
    message: String,
    until_ms: u64,
}

/// How long a hold lasts if the refused message is never resent.
const HOLD_MS: u64 = 60_000;

const MAX_BATCH: usize = 1024;

/// WAL size at which the writer checkpoints itself so the log starts over
/// (`tincan_sqlite::limit_wal`). Each time costs the writer two fsyncs and the copy of what the
/// background checkpointer has not copied yet; sustained for 20 s, 100 pairs of 1 KiB messages
/// ran at 69.6k msg/s with 64 MiB, 76.8k with 256 MiB and 73.7k with no limit (whose WAL reached
/// 3.2 GB), 16 KiB messages at 7.9k, 11.3k and 13.3k (5.2 GB). A larger log also takes longer to
/// scan when the relay starts after a crash. docs/BENCHMARKS.md.
const WAL_LIMIT: u64 = 256 << 20;

/// Sequence numbers reserved per write to `meta`.
const SEQ_BLOCK: u64 = 4096;

/// Longest an ack-only batch waits for a write to commit with.
const ACK_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

/// Acks deleted per statement.
const ACK_CHUNK: usize = 64;

/// `DELETE FROM queue WHERE recipient = ?1 AND seq IN (?2, …, ?65) RETURNING seq, sender, client_id`.
static ACK_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let marks: Vec<String> = (2..ACK_CHUNK + 2).map(|i| format!("?{i}")).collect();
    format!(
        "DELETE FROM queue WHERE recipient = ?1 AND seq IN ({}) RETURNING seq, sender, client_id",
        marks.join(", ")
    )
});

/// How long the store thread keeps looking for its next command before it parks. Under load
/// commands come in bursts a few microseconds apart; parking between them made every `Send` and
/// `Ack` pay a futex wake-up and two context switches (the largest kernel cost left in the
/// open-loop profile, docs/BENCHMARKS.md). The thread yields the core while it looks, so a
/// runnable connection task is never kept waiting by it.
const SPIN: std::time::Duration = std::time::Duration::from_micros(20);

/// What the store thread's wait for work ended with.
enum Next {
    Cmd(Cmd),
    /// `wake` came first.
    Due,
    /// Every sender is gone.
    Closed,
}

/// Waits for the next command until `wake`: first for [`SPIN`], yielding the core, then parked.
fn next_cmd(rx: &std_mpsc::Receiver<Cmd>, wake: Option<std::time::Instant>) -> Next {
    let start = std::time::Instant::now();
    loop {
        match rx.try_recv() {
            Ok(cmd) => return Next::Cmd(cmd),
            Err(std_mpsc::TryRecvError::Disconnected) => return Next::Closed,
            Err(std_mpsc::TryRecvError::Empty) => {}
        }
        let now = std::time::Instant::now();
        if wake.is_some_and(|w| now >= w) {
            return Next::Due;
        }
        if now.duration_since(start) >= SPIN {
            break;
        }
        std::thread::yield_now();
    }
    match wake {
        None => rx.recv().map_or(Next::Closed, Next::Cmd),
        Some(at) => {
            match rx.recv_timeout(at.saturating_duration_since(std::time::Instant::now())) {
                Ok(cmd) => Next::Cmd(cmd),
                Err(std_mpsc::RecvTimeoutError::Timeout) => Next::Due,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => Next::Closed,
            }
        }
    }
}

impl Worker {
    fn run(mut self, rx: std_mpsc::Receiver<Cmd>) {
        let mut close: Option<oneshot::Sender<()>> = None;
        // Acks waiting to ride along with the next write (see `ACK_DELAY`).
        let mut acks: Vec<Cmd> = Vec::new();
        let mut acks_due = std::time::Instant::now();
        while close.is_none() {
            // Wake for the first of: deferred acks due, a pending message due to be written.
            let wake = [
                (!acks.is_empty()).then_some(acks_due),
                self.pending.next_due(),
            ]
            .into_iter()
            .flatten()
            .min();
            let first = match next_cmd(&rx, wake) {
                Next::Cmd(cmd) => cmd,
                Next::Due => {
                    self.apply_batch(std::mem::take(&mut acks));
                    continue;
                }
                Next::Closed => break,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            // Acks of messages still unwritten need no transaction: answer them now.
            self.ack_pending(&mut batch);
            if batch.is_empty() {
                continue;
            }
            if let Some(pos) = batch.iter().position(|c| matches!(c, Cmd::Close { .. })) {
                // Commands after Close (none expected) are failed, not dropped silently.
                for cmd in batch.split_off(pos + 1) {
                    fail(cmd, ErrorCode::ShuttingDown, "relay is shutting down");
                }
                if let Some(Cmd::Close { done }) = batch.pop() {
                    close = Some(done);
                    self.closing = true;
                }
            }
            // A batch of nothing but acks waits (briefly, boundedly) for a write to share a commit
            // with: at low load that halves the commits per message. Acks are not urgent (an
            // unapplied ack only means a redelivery after a crash, which clients deduplicate).
            if close.is_none()
                && acks.len() + batch.len() < MAX_BATCH
                && batch.iter().all(|c| matches!(c, Cmd::Ack { .. }))
            {
                if acks.is_empty() {
                    acks_due = std::time::Instant::now() + ACK_DELAY;
                }
                acks.append(&mut batch);
                continue;
            }
            acks.append(&mut batch);
            self.apply_batch(std::mem::take(&mut acks));
        }
        // Whatever is still unwritten is written before the thread ends.
        self.closing = true;
        if !acks.is_empty() || self.pending.len() > 0 {
            self.apply_batch(acks);
        }
        // The checkpointer stops first (after its last pass), then the writer truncates the WAL
        // and closes its connection, and only then is `close` answered: once it returns, no
        // thread of this store touches the database files any more.
        let Worker {
            conn,
            _checkpoints: checkpoints,
            _lock: lock,
            ..
        } = self;
        drop(checkpoints);
        let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
        drop(conn);
        drop(lock);
        if let Some(done) = close {
            let _ = done.send(());
        }
    }

    fn apply_batch(&mut self, batch: Vec<Cmd>) {
        let started = std::time::Instant::now();
        // DEFERRED: the write lock is taken by the first write, so a batch that writes nothing
        // (sends held unwritten for their acks, see `pending`) costs no lock and no commit work.
        // The relay is the database's only writer, so the upgrade never waits for another.
        if let Err(e) = self
            .conn
            .prepare_cached("BEGIN DEFERRED")
            .and_then(|mut s| s.execute([]))
        {
            // Nothing was applied: every command is answered with the reason, none is dropped.
            let e = StoreError::from(e);
            Metrics::inc(&self.metrics.store_errors);
            tracing::error!(error = %e, "cannot begin a store transaction; batch refused");
            for cmd in batch {
                self.refuse(cmd, &e);
            }
            return;
        }
        let mut fx = Effects::default();
        let mut failed = Vec::new();
        // Acks last, grouped, so the batch's messages are inserted (and handed to their
        // recipients) without waiting for ack deletes. An ack in this batch answers a delivery
        // made before the batch began, so its row was inserted by an earlier batch. A fetch in the
        // batch may still return a row acked in it: that row was delivered already, the reader
        // skips it by seq or deduplicates it by id.
        let (acks, batch): (Vec<Cmd>, Vec<Cmd>) = batch
            .into_iter()
            .partition(|c| matches!(c, Cmd::Ack { .. }));
        let mut batch = batch.into_iter();
        while let Some(cmd) = batch.next() {
            // Each command is all-or-nothing inside the batch: a failure undoes only that
            // command's statements, never half of it.
            let savepoint = cmd.needs_savepoint();
            if savepoint && let Err(e) = self.conn.execute_batch("SAVEPOINT cmd") {
                tracing::error!(error = %e, "savepoint failed");
                failed.push((cmd, StoreError::from(e)));
                continue;
            }
            match self.apply(cmd, &mut fx) {
                Ok(()) => {
                    if savepoint {
                        let _ = self.conn.execute_batch("RELEASE cmd");
                    }
                }
                Err((cmd, e)) => {
                    tracing::error!(error = %e, "store command failed");
                    if savepoint {
                        let _ = self.conn.execute_batch("ROLLBACK TO cmd; RELEASE cmd");
                    }
                    failed.push((cmd, e));
                    if self.conn.is_autocommit() {
                        // SQLite rolled the whole transaction back (it may on a full disk or an
                        // I/O error): nothing of this batch is stored. Refuse the rest too.
                        for cmd in batch.by_ref() {
                            failed.push((cmd, StoreError::RolledBack));
                        }
                    }
                }
            }
        }
        if !self.conn.is_autocommit() {
            let due = if self.closing {
                self.pending.take_all()
            } else {
                self.pending.take_due(std::time::Instant::now())
            };
            self.write_pending(due, &mut fx);
        }
        if !self.conn.is_autocommit() {
            self.apply_acks(acks, &mut fx);
        }
        if self.next_seq > self.seq_reserved {
            // Sequence numbers are reserved in blocks, so `meta` is written once per
            // `SEQ_BLOCK` messages, not once per commit; a restart continues above the block.
            let reserved = self.next_seq - 1 + SEQ_BLOCK;
            match schema::record_seq(&self.conn, reserved) {
                Ok(()) => self.seq_reserved = reserved,
                // The commit below fails too if this did; if it somehow does not, sequence
                // numbers are still unique while any row carries them.
                Err(e) => tracing::error!(error = %e, "cannot reserve sequence numbers"),
            }
        }
        let committed = self
            .conn
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]))
            .map(drop)
            .map_err(StoreError::from);
        for (cmd, e) in failed {
            Metrics::inc(&self.metrics.store_errors);
            self.refuse(cmd, &e);
        }
        // Reads in the batch saw committed data only; they are valid either way.
        for (reply, rows) in fx.fetches {
            let _ = reply.send(rows);
        }
        if let Err(e) = committed {
            Metrics::inc(&self.metrics.store_errors);
            tracing::error!(error = %e, "store transaction failed; batch refused");
            let _ = self.conn.execute_batch("ROLLBACK");
            // The reservation in `meta` may have been rolled back with it: make the next commit
            // record one again.
            self.seq_reserved = 0;
            self.reload_index();
            let (code, why) = classify(&e);
            // Hold each path at its first refused message, so nothing overtakes it.
            let mut seen = HashSet::new();
            for (to, msg) in &fx.deliveries {
                if seen.insert((msg.from, *to)) {
                    self.hold(msg.from, *to, msg.id, code, &why, msg.stored_at);
                }
            }
            for (r, frame) in fx.replies {
                let req = match frame {
                    RelayFrame::Sent { req, .. }
                    | RelayFrame::InviteRegistered { req }
                    | RelayFrame::InviteClaimed { req, .. }
                    | RelayFrame::Error { req, .. } => req,
                    _ => 0,
                };
                let _ = r.send(RelayFrame::Error {
                    req,
                    code,
                    retry_after_ms: retry_after(code),
                    message: why.clone(),
                });
            }
            return;
        }
        self.metrics.store_batch.observe(started.elapsed());
        for (a, b) in fx.new_pairs {
            self.pairs.insert(pair_key(a, b));
        }
        let now = crate::now_ms();
        for (sender, id, seq) in fx.acked {
            self.recent.insert(sender, id, seq, now);
        }
        for (r, frame) in fx.replies {
            let _ = r.send(frame);
        }
    }

    // The error hands the command back so its requester can be told; it is the rare path.
    #[allow(clippy::result_large_err)]
    fn apply(&mut self, cmd: Cmd, fx: &mut Effects) -> Result<(), (Cmd, StoreError)> {
        match cmd {
            Cmd::Send {
                sender,
                req,
                id,
                to,
                body,
                now_ms,
                respond,
            } => match self.insert_message(sender, id, to, body, now_ms) {
                Ok(Inserted::New { msg, offered }) => {
                    // Forwarded at once, before the commit (see the module docs): only `Sent`
                    // waits for durability.
                    if !offered {
                        self.router.deliver(&to, msg.clone());
                    }
                    self.written(fx, respond, req, to, msg);
                }
                Ok(Inserted::Deferred(msg)) => self.pending.push(pending::Entry {
                    msg,
                    to,
                    req,
                    respond,
                    due: std::time::Instant::now() + self.write_behind,
                }),
                Ok(Inserted::Duplicate(seq)) => {
                    Metrics::inc(&self.metrics.messages_deduplicated);
                    // A resend of a message still unwritten: it is written now, and both
                    // requests get their `Sent` after this commit.
                    if let Some(entry) = self.pending.take(seq) {
                        self.write_pending(vec![entry], fx);
                    }
                    fx.replies.push((respond, RelayFrame::Sent { req, seq }))
                }
                Ok(Inserted::Refused(code, message)) => fx.replies.push((
                    respond,
                    RelayFrame::Error {
                        req,
                        code,
                        retry_after_ms: retry_after(code),
                        message,
                    },
                )),
                Err((e, body)) => {
                    return Err((
                        Cmd::Send {
                            sender,
                            req,
                            id,
                            to,
                            body,
                            now_ms,
                            respond,
                        },
                        e,
                    ));
                }
            },
            // Applied in bulk by `apply_acks` after the rest of the batch (or, for messages
            // still unwritten, by `ack_pending` before it).
            Cmd::Ack { .. } => {}
            Cmd::Fetch {
                recipient,
                after,
                limit,
                now_ms,
                reply,
            } => {
                // The recipient reads the store: what it has not acked yet is written first.
                let mine = self.pending.take_for(&recipient);
                self.write_pending(mine, fx);
                match self.fetch(recipient, after, limit, now_ms) {
                    Ok(rows) => fx.fetches.push((reply, rows)),
                    Err(e) => {
                        tracing::error!(error = %e, "fetch failed");
                        drop(reply);
                    }
                }
            }
            Cmd::RegisterInvite {
                inviter,
                req,
                id,
                expires_at,
                respond,
            } => {
                let open: rusqlite::Result<i64> = self
                    .conn
                    .prepare_cached(schema::OPEN_INVITES)
                    .and_then(|mut s| {
                        s.query_row(
                            params![inviter.as_bytes(), (crate::now_ms() / 1000) as i64],
                            |r| r.get(0),
                        )
                    });
                if let Ok(n) = open
                    && n >= i64::from(self.max_open_invites)
                {
                    Metrics::inc(&self.metrics.refused_invites);
                    let message = format!(
                        "you have {n} open invites on this relay (limit {}); wait until some are used or expire",
                        self.max_open_invites
                    );
                    let frame = RelayFrame::Error {
                        req,
                        code: ErrorCode::RateLimited,
                        retry_after_ms: 0,
                        message,
                    };
                    fx.replies.push((respond, frame));
                    return Ok(());
                }
                let r = self
                    .conn
                    .prepare_cached("INSERT INTO invites (id, inviter, expires_at) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO NOTHING")
                    .and_then(|mut s| s.execute(params![id.as_bytes(), inviter.as_bytes(), expires_at as i64]));
                match r {
                    Ok(_) => fx
                        .replies
                        .push((respond, RelayFrame::InviteRegistered { req })),
                    Err(e) => {
                        return Err((
                            Cmd::RegisterInvite {
                                inviter,
                                req,
                                id,
                                expires_at,
                                respond,
                            },
                            e.into(),
                        ));
                    }
                }
            }
            Cmd::ClaimInvite {
                claimer,
                req,
                id,
                now_ms,
                respond,
            } => match self.claim(claimer, id, now_ms) {
                Ok(Ok(inviter)) => {
                    fx.new_pairs.push((inviter, claimer));
                    fx.replies
                        .push((respond, RelayFrame::InviteClaimed { req, inviter }));
                }
                Ok(Err((code, message))) => fx.replies.push((
                    respond,
                    RelayFrame::Error {
                        req,
                        code,
                        retry_after_ms: 0,
                        message: message.into(),
                    },
                )),
                Err(e) => {
                    return Err((
                        Cmd::ClaimInvite {
                            claimer,
                            req,
                            id,
                            now_ms,
                            respond,
                        },
                        e,
                    ));
                }
            },
            Cmd::Sweep { now_ms } => {
                let r = self.sweep_queue(now_ms).and_then(|n| {
                    let m = self.conn.execute(
                        "DELETE FROM invites WHERE expires_at <= ?1",
                        params![(now_ms / 1000) as i64],
                    )?;
                    Ok((n, m))
                });
                match r {
                    Ok((n, m)) => {
                        self.metrics
                            .messages_expired
                            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        if n > 0 || m > 0 {
                            tracing::info!(messages = n, invites = m, "expired entries removed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "sweep failed");
                        self.reload_index();
                    }
                }
            }
            Cmd::Stats { reply } => {
                let _ = reply.send(Ok(self.index.total()));
            }
            Cmd::Close { done } => {
                let _ = done.send(());
            }
        }
        Ok(())
    }

    /// Deletes acknowledged messages, up to [`ACK_CHUNK`] per statement for each recipient. An
    /// ack affects only rows addressed to the identity that sent it; a failed delete only means
    /// the message is delivered again.
    fn apply_acks(&mut self, acks: Vec<Cmd>, fx: &mut Effects) {
        let mut by_recipient: HashMap<PeerId, Vec<i64>> = HashMap::new();
        for cmd in acks {
            if let Cmd::Ack { recipient, seq } = cmd {
                by_recipient.entry(recipient).or_default().push(seq as i64);
            }
        }
        for (recipient, seqs) in by_recipient {
            for chunk in seqs.chunks(ACK_CHUNK) {
                match self.delete_acked(&recipient, chunk) {
                    Ok(rows) => {
                        let n = rows.len() as u64;
                        fx.acked.extend(rows);
                        self.metrics
                            .messages_acked
                            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "ack failed; messages will be redelivered");
                        self.reload_index();
                        if self.conn.is_autocommit() {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// One `DELETE … WHERE recipient = ? AND seq IN (…)` for up to [`ACK_CHUNK`] seqs (a short
    /// chunk repeats its last seq, so one prepared statement serves every size).
    fn delete_acked(
        &mut self,
        recipient: &PeerId,
        seqs: &[i64],
    ) -> rusqlite::Result<Vec<(PeerId, MessageId, u64)>> {
        let Some(last) = seqs.last() else {
            return Ok(Vec::new());
        };
        let mut stmt = self.conn.prepare_cached(&ACK_SQL)?;
        let padded = seqs
            .iter()
            .chain(std::iter::repeat(last))
            .take(ACK_CHUNK)
            .map(|s| rusqlite::types::Value::Integer(*s));
        let params = std::iter::once(rusqlite::types::Value::Blob(recipient.as_bytes().to_vec()))
            .chain(padded);
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        let mut out = Vec::with_capacity(seqs.len());
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0)?;
            let sender: Vec<u8> = row.get(1)?;
            let id: Vec<u8> = row.get(2)?;
            if let (Some(sender), Some(id)) = (peer(&sender), message_id(&id)) {
                self.index.remove(seq as u64, recipient, sender, id);
                out.push((sender, id, seq as u64));
            }
        }
        Ok(out)
    }

    fn insert_message(
        &mut self,
        sender: PeerId,
        id: MessageId,
        to: PeerId,
        body: Vec<u8>,
        now_ms: u64,
    ) -> Result<Inserted, Unwritten> {
        if let Some(h) = self.held.get(&(sender, to)) {
            if h.id != id && now_ms < h.until_ms {
                return Ok(Inserted::Refused(
                    h.code,
                    format!(
                        "{} (held behind an earlier message that must be resent first)",
                        h.message
                    ),
                ));
            }
            self.held.remove(&(sender, to));
        }
        let result = self.insert_message_inner(sender, id, to, body, now_ms)?;
        if let Inserted::Refused(code @ (ErrorCode::QueueFull | ErrorCode::StorageFull), message) =
            &result
        {
            self.hold(sender, to, id, *code, message, now_ms);
        }
        Ok(result)
    }

    fn hold(
        &mut self,
        sender: PeerId,
        to: PeerId,
        id: MessageId,
        code: ErrorCode,
        message: &str,
        now_ms: u64,
    ) {
        if self.held.len() > 100_000 {
            self.held.retain(|_, h| h.until_ms > now_ms);
        }
        let message = message.to_string();
        self.held.insert(
            (sender, to),
            Held {
                id,
                code,
                message,
                until_ms: now_ms + HOLD_MS,
            },
        );
    }

    fn insert_message_inner(
        &mut self,
        sender: PeerId,
        id: MessageId,
        to: PeerId,
        body: Vec<u8>,
        now_ms: u64,
    ) -> Result<Inserted, Unwritten> {
        if self.require_pairing && !self.pairs.contains(&pair_key(sender, to)) {
            return Ok(Inserted::Refused(
                ErrorCode::NotPaired,
                "recipient has not paired with you on this relay; accept an invite from them first"
                    .into(),
            ));
        }
        // A resend of a queued or recently acked message gets its original seq, even when the
        // queue is full; the lookup is in memory, so the common path is one INSERT.
        if let Some(seq) = self.existing_seq(sender, id) {
            return Ok(Inserted::Duplicate(seq));
        }
        let count = self.index.len_for(&to);
        if count >= self.queue_cap {
            Metrics::inc(&self.metrics.refused_queue_full);
            return Ok(Inserted::Refused(
                ErrorCode::QueueFull,
                format!(
                    "recipient's queue holds {count} undelivered messages (cap {}); retry after they read some",
                    self.queue_cap
                ),
            ));
        }
        let total = self.index.total();
        if total >= self.max_queued {
            Metrics::inc(&self.metrics.refused_max_queued);
            return Ok(Inserted::Refused(
                ErrorCode::StorageFull,
                format!(
                    "relay holds {total} undelivered messages in all (max_queued {}); retry later",
                    self.max_queued
                ),
            ));
        }
        let seq = self.next_seq;
        let msg = Arc::new(Stored {
            seq,
            from: sender,
            id,
            stored_at: now_ms,
            body,
        });
        // An online recipient gets it now; its row may wait for the ack (`pending`).
        let offered = !self.write_behind.is_zero()
            && self.pending.len() < MAX_PENDING
            && self.pending.bytes() < MAX_PENDING_BYTES;
        if offered && self.router.deliver(&to, msg.clone()) {
            self.next_seq += 1;
            self.index.insert(seq, to, sender, id);
            return Ok(Inserted::Deferred(msg));
        }
        if let Err(e) = self.write_row(&msg, &to) {
            // Not handed to anyone (a connection that refused it dropped its copy).
            let body = Arc::try_unwrap(msg).map_or_else(|m| m.body.clone(), |m| m.body);
            return Err((e.into(), body));
        }
        self.next_seq += 1;
        self.index.insert(seq, to, sender, id);
        Ok(Inserted::New { msg, offered })
    }

    /// The row of one message.
    fn write_row(&self, msg: &Stored, to: &PeerId) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO queue (seq, recipient, sender, client_id, body, stored_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                msg.seq as i64,
                to.as_bytes(),
                msg.from.as_bytes(),
                msg.id.as_bytes(),
                msg.body,
                msg.stored_at as i64,
                (msg.stored_at + self.ttl_ms) as i64
            ])?;
        Ok(())
    }

    /// What a message written in this transaction leaves for after the commit: its sender's
    /// `Sent`, and the delivery a failed commit must hold its path at.
    fn written(
        &self,
        fx: &mut Effects,
        respond: Responder,
        req: u32,
        to: PeerId,
        msg: Arc<Stored>,
    ) {
        Metrics::inc(&self.metrics.messages_stored);
        fx.replies
            .push((respond, RelayFrame::Sent { req, seq: msg.seq }));
        fx.deliveries.push((to, msg));
    }

    /// Writes messages that waited unwritten; each sender's `Sent` follows the commit. One that
    /// cannot be written is refused to its sender (who sends it again) and forgotten here; if
    /// SQLite rolled the whole transaction back, the rest are refused too rather than written
    /// outside it (as `apply_batch` does with the rest of a batch).
    fn write_pending(&mut self, entries: Vec<pending::Entry>, fx: &mut Effects) {
        for e in entries {
            let result = if self.conn.is_autocommit() {
                Err(StoreError::RolledBack)
            } else {
                self.write_row(&e.msg, &e.to).map_err(StoreError::from)
            };
            match result {
                Ok(()) => self.written(fx, e.respond, e.req, e.to, e.msg),
                Err(err) => {
                    tracing::error!(error = %err, "cannot write a delivered message; its sender is told to resend");
                    Metrics::inc(&self.metrics.store_errors);
                    self.index.remove(e.msg.seq, &e.to, e.msg.from, e.msg.id);
                    let (code, why) = classify(&err);
                    let _ = e.respond.send(RelayFrame::Error {
                        req: e.req,
                        code,
                        retry_after_ms: retry_after(code),
                        message: why,
                    });
                }
            }
        }
    }

    /// Answers, without a transaction, the acks in `batch` for messages that were never
    /// written: the recipient has them, so each sender gets its `Sent` now. Those acks leave
    /// `batch`.
    fn ack_pending(&mut self, batch: &mut Vec<Cmd>) {
        if self.pending.len() == 0 {
            return;
        }
        let now = crate::now_ms();
        batch.retain(|cmd| {
            let Cmd::Ack { recipient, seq } = cmd else {
                return true;
            };
            let Some(e) = self.pending.take_acked(recipient, *seq) else {
                return true;
            };
            self.index.remove(e.msg.seq, &e.to, e.msg.from, e.msg.id);
            self.recent.insert(e.msg.from, e.msg.id, e.msg.seq, now);
            Metrics::inc(&self.metrics.messages_unwritten);
            Metrics::inc(&self.metrics.messages_acked);
            let _ = e.respond.send(RelayFrame::Sent {
                req: e.req,
                seq: e.msg.seq,
            });
            false
        });
    }

    /// Answers a command the store could not apply, holding its path if it was a send.
    fn refuse(&mut self, cmd: Cmd, e: &StoreError) {
        let (code, why) = classify(e);
        if let Cmd::Send {
            sender,
            to,
            id,
            now_ms,
            ..
        } = &cmd
        {
            self.hold(*sender, *to, *id, code, &why, *now_ms);
        }
        fail(cmd, code, &why);
    }

    /// Deletes expired messages. Rows are stored in `seq` order with one TTL, so the expired ones
    /// are the oldest: walk from the lowest seq to the first unexpired row and delete up to it.
    /// (A row stored a few milliseconds out of order, or under a longer TTL before a restart,
    /// may wait for a later sweep; expired rows are never delivered either way.)
    fn sweep_queue(&mut self, now_ms: u64) -> rusqlite::Result<usize> {
        let first_live: Option<i64> = self
            .conn
            .prepare_cached("SELECT seq FROM queue WHERE expires_at > ?1 ORDER BY seq LIMIT 1")?
            .query_row(params![now_ms as i64], |r| r.get(0))
            .optional()?;
        let mut stmt = self.conn.prepare_cached(
            "DELETE FROM queue WHERE seq < ?1 RETURNING seq, recipient, sender, client_id",
        )?;
        let mut rows = stmt.query(params![first_live.unwrap_or(i64::MAX)])?;
        let mut n = 0;
        while let Some(row) = rows.next()? {
            n += 1;
            let seq: i64 = row.get(0)?;
            let (to, from, id): (Vec<u8>, Vec<u8>, Vec<u8>) =
                (row.get(1)?, row.get(2)?, row.get(3)?);
            if let (Some(to), Some(from), Some(id)) = (peer(&to), peer(&from), message_id(&id)) {
                self.index.remove(seq as u64, &to, from, id);
            }
        }
        Ok(n)
    }

    /// Rebuilds the in-memory index from the table after a rolled-back transaction (its
    /// inserts and deletes were undone in SQLite, not in memory).
    fn reload_index(&mut self) {
        match queued::Queued::load(&self.conn) {
            Ok(index) => {
                self.index = index;
                // Messages waiting unwritten are not in the table but are still owed.
                for (seq, to, from, id) in self.pending.keys() {
                    self.index.insert(seq, to, from, id);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot reload the queue index"),
        }
    }

    fn existing_seq(&self, sender: PeerId, id: MessageId) -> Option<u64> {
        self.index
            .seq_of(&sender, &id)
            .or_else(|| self.recent.get(&sender, &id))
    }

    /// Up to `limit` unexpired messages owed to `recipient` with seq above `after`, in order:
    /// the index names the seqs, each row is read by its rowid.
    fn fetch(
        &mut self,
        recipient: PeerId,
        after: u64,
        limit: usize,
        now_ms: u64,
    ) -> Result<Fetched, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT sender, client_id, body, stored_at FROM queue WHERE seq = ?1 AND expires_at > ?2",
        )?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        for seq in self.index.after(&recipient, after) {
            if out.len() >= limit || bytes >= FETCH_MAX_BYTES {
                more = true;
                break;
            }
            let row = stmt
                .query_row(params![seq as i64, now_ms as i64], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })
                .optional()?;
            // Expired (the sweep removes it later) or gone: skip it.
            let Some((from, id, body, stored_at)) = row else {
                continue;
            };
            let (Some(from), Some(id)) = (peer(&from), message_id(&id)) else {
                tracing::warn!(seq, "skipping malformed stored row");
                continue;
            };
            bytes += body.len();
            out.push(Stored {
                seq,
                from,
                id,
                stored_at: stored_at as u64,
                body,
            });
        }
        Ok(Fetched { rows: out, more })
    }

    fn claim(
        &mut self,
        claimer: PeerId,
        id: InviteId,
        now_ms: u64,
    ) -> Result<Result<PeerId, (ErrorCode, &'static str)>, StoreError> {
        let row: Option<(Vec<u8>, i64, Option<Vec<u8>>)> = self
            .conn
            .prepare_cached("SELECT inviter, expires_at, claimed_by FROM invites WHERE id = ?1")?
            .query_row(params![id.as_bytes()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let Some((inviter, expires_at, claimed_by)) = row else {
            return Ok(Err((
                ErrorCode::InviteUnknown,
                "this relay does not know the invite: it was never registered here, or it expired and was removed",
            )));
        };
        let Some(inviter) = peer(&inviter) else {
            return Ok(Err((ErrorCode::InviteUnknown, "invite record is damaged")));
        };
        if claimed_by.is_some() {
            return Ok(Err((
                ErrorCode::InviteUsed,
                "invite already used; ask the inviter for a new one",
            )));
        }
        if (expires_at as u64).saturating_mul(1000) <= now_ms {
            return Ok(Err((
                ErrorCode::InviteExpired,
                "invite expired; ask the inviter for a new one",
            )));
        }
        if inviter == claimer {
            return Ok(Err((
                ErrorCode::InviteUnknown,
                "you cannot accept your own invite",
            )));
        }
        // Before the invite is spent: a refused claim leaves it usable on a relay with room.
        if self.pairs.len() as u64 >= self.max_pairs
            && !self.pairs.contains(&pair_key(inviter, claimer))
        {
            Metrics::inc(&self.metrics.refused_max_pairs);
            return Ok(Err((
                ErrorCode::StorageFull,
                "this relay keeps no more pairs (max_pairs); ask its operator, or pair on another relay",
            )));
        }
        let claimed = self
            .conn
            .prepare_cached(
                "UPDATE invites SET claimed_by = ?1 WHERE id = ?2 AND claimed_by IS NULL",
            )?
            .execute(params![claimer.as_bytes(), id.as_bytes()])?;
        // The check above and this update run in the one writer, so this cannot lose a race
        // today; it is what makes the claim single-use on its own if that ever changes.
        if claimed != 1 {
            return Ok(Err((
                ErrorCode::InviteUsed,
                "invite already used; ask the inviter for a new one",
            )));
        }
        let (a, b) = pair_key(inviter, claimer);
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO pairs (a, b) VALUES (?1, ?2)")?
            .execute(params![a.as_bytes(), b.as_bytes()])?;
        Ok(Ok(inviter))
    }
}

enum Inserted {
    /// Written in this transaction; `offered` says whether delivery was already tried.
    New {
        msg: Arc<Stored>,
        offered: bool,
    },
    /// Delivered to an online recipient and left unwritten for now ([`pending`]).
    Deferred(Arc<Stored>),
    Duplicate(u64),
    Refused(ErrorCode, String),
}

/// A send the store could not write, with its body handed back for the refusal.
type Unwritten = (StoreError, Vec<u8>);

/// The error code and words for a store failure.
fn classify(e: &StoreError) -> (ErrorCode, String) {
    let why = describe(e);
    let code = if why.starts_with("relay storage is full") {
        ErrorCode::StorageFull
    } else {
        ErrorCode::Internal
    };
    (code, why)
}

/// Words for a store failure that tell the sender what happened and that retrying is safe.
fn describe(e: &StoreError) -> String {
    match e {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
            if f.code == rusqlite::ErrorCode::DiskFull =>
        {
            "relay storage is full; the request was not stored and can be retried later".into()
        }
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            "relay database is locked by another process; retry later".into()
        }
        other => format!("relay store error ({other}); retry later"),
    }
}
