//! The store's writer thread: its loop, and how it applies a batch of commands in one
//! transaction.

mod invites;
mod messages;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use rusqlite::{Connection, params};
use tincan_proto::frame::{ErrorCode, RelayFrame};
use tincan_proto::ids::{MessageId, PeerId};
use tokio::sync::oneshot;

use tincan_sqlite::Checkpointer;

use super::{
    Cmd, Fetched, Recent, Responder, StoreError, Stored, classify, fail, pair_key, pending, queued,
    retry_after, schema,
};
use crate::metrics::Metrics;
use crate::router::Router;
use messages::Inserted;

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

pub(super) struct Worker {
    pub(super) conn: Connection,
    pub(super) router: Arc<Router>,
    pub(super) pairs: HashSet<(PeerId, PeerId)>,
    pub(super) max_pairs: u64,
    pub(super) queue_cap: u64,
    pub(super) max_queued: u64,
    pub(super) ttl_ms: u64,
    pub(super) require_pairing: bool,
    pub(super) max_open_invites: u32,
    pub(super) metrics: Arc<Metrics>,
    /// Ordering guard: after a retryable refusal of message `id` from a sender to a recipient,
    /// later messages on that path are refused too until `id` itself is resent, so a refusal in
    /// the middle of a pipelined burst can never let later messages overtake it.
    pub(super) held: HashMap<(PeerId, PeerId), Held>,
    /// Stored, unacknowledged messages by recipient and by (sender, id); matches the committed
    /// table plus this transaction's changes, reloaded after a rollback.
    pub(super) index: queued::Queued,
    /// The sequence number the next stored message gets.
    pub(super) next_seq: u64,
    /// The highest sequence number recorded in `meta` as handed out.
    pub(super) seq_reserved: u64,
    /// Recently acknowledged messages, for deduplicating late resends.
    pub(super) recent: Recent,
    /// Delivered to an online recipient, not written yet (write-behind, [`pending`]).
    pub(super) pending: pending::Pending,
    /// How long an entry may wait in `pending`.
    pub(super) write_behind: std::time::Duration,
    /// The relay is closing: write everything pending with this batch.
    pub(super) closing: bool,
    pub(super) _checkpoints: Checkpointer,
    /// Held (an exclusive advisory lock on `<db>.lock`) for as long as the store is open.
    pub(super) _lock: std::fs::File,
}

/// Most messages, and most body bytes, waiting unwritten at once (their bodies are in memory);
/// past either, new messages are written at once. Entries leave after `write_behind` at the
/// latest, so in practice this holds one hold time of traffic.
const MAX_PENDING: usize = 65_536;
const MAX_PENDING_BYTES: usize = 64 << 20;

pub(super) struct Held {
    id: MessageId,
    code: ErrorCode,
    message: String,
    until_ms: u64,
    by: HeldBy,
}

/// What refused the message a path is held behind: a limit (whose refusal counter also counts
/// the later messages held behind it) or a failed write.
#[derive(Clone, Copy)]
pub(super) enum HeldBy {
    QueueCap,
    MaxQueued,
    Store,
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
pub(super) const WAL_LIMIT: u64 = 256 << 20;

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
    pub(super) fn run(mut self, rx: std_mpsc::Receiver<Cmd>) {
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
                    self.hold(
                        msg.from,
                        *to,
                        msg.id,
                        (code, &why, HeldBy::Store),
                        msg.stored_at,
                    );
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
            Cmd::Send { msg, req, respond } => {
                let to = msg.to;
                match self.insert_message(msg) {
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
                    Err((e, msg)) => return Err((Cmd::Send { msg, req, respond }, e)),
                }
            }
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
                // Nothing inserted: the id exists. The same inviter again (a retry whose answer
                // was lost) is fine; another identity's invite stays theirs, and this one is told.
                let taken = matches!(r, Ok(0))
                    && self
                        .conn
                        .prepare_cached("SELECT inviter FROM invites WHERE id = ?1")
                        .and_then(|mut s| {
                            s.query_row(params![id.as_bytes()], |r| r.get::<_, Vec<u8>>(0))
                        })
                        .is_ok_and(|owner| owner.as_slice() != inviter.as_bytes());
                match r {
                    Ok(_) if taken => fx.replies.push((
                        respond,
                        RelayFrame::Error {
                            req,
                            code: ErrorCode::InviteUsed,
                            retry_after_ms: 0,
                            message: "that invite id is already registered by another identity; make a new invite".into(),
                        },
                    )),
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

    /// Answers a command the store could not apply, holding its path if it was a send.
    fn refuse(&mut self, cmd: Cmd, e: &StoreError) {
        let (code, why) = classify(e);
        if let Cmd::Send { msg: m, .. } = &cmd {
            self.hold(m.sender, m.to, m.id, (code, &why, HeldBy::Store), m.now_ms);
        }
        fail(cmd, code, &why);
    }
}
