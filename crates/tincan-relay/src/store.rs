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
mod private;
mod queued;
mod recent;
mod schema;
mod worker;

pub(crate) use recent::Recent;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::thread;

use rusqlite::Connection;
use thiserror::Error;
use tincan_proto::frame::{ErrorCode, RelayFrame};
use tincan_proto::ids::{InviteId, MessageId, PeerId};
use tokio::sync::{mpsc, oneshot};

use tincan_sqlite::Checkpointer;

use crate::Config;
use crate::metrics::Metrics;
use crate::router::Router;
use worker::{WAL_LIMIT, Worker};

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
    /// The database files could not be created or made private to this user.
    #[error("cannot make {path} private to this user (it holds the token secret): {error}")]
    Private {
        /// The file.
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

/// A message a sender handed the relay: what the store checks, writes and routes. Handed back
/// whole when it cannot be written, so the send can be refused.
struct NewMessage {
    sender: PeerId,
    id: MessageId,
    to: PeerId,
    body: Vec<u8>,
    now_ms: u64,
}

enum Cmd {
    Send {
        msg: NewMessage,
        req: u32,
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
        for path in private::make_private(&config.db_path)? {
            tracing::warn!(
                path = %path.display(),
                "this database file was readable by other users; made it readable by this user only (it holds the token secret)"
            );
        }
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
            msg: NewMessage {
                sender,
                id,
                to,
                body,
                now_ms,
            },
            req,
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
