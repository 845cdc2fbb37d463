//! The writer's message path: inserting, holding, writing, acknowledging, fetching and
//! expiring queued messages.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{OptionalExtension, params};
use tincan_proto::frame::{ErrorCode, RelayFrame};
use tincan_proto::ids::{MessageId, PeerId};

use super::{
    ACK_CHUNK, ACK_SQL, Effects, HOLD_MS, Held, HeldBy, MAX_PENDING, MAX_PENDING_BYTES, Worker,
};
use crate::metrics::Metrics;
use crate::store::{
    Cmd, FETCH_MAX_BYTES, Fetched, NewMessage, Responder, StoreError, Stored, classify, message_id,
    pair_key, peer, pending, queued, retry_after,
};

impl Worker {
    /// Deletes acknowledged messages, up to [`ACK_CHUNK`] per statement for each recipient. An
    /// ack affects only rows addressed to the identity that sent it; a failed delete only means
    /// the message is delivered again.
    pub(super) fn apply_acks(&mut self, acks: Vec<Cmd>, fx: &mut Effects) {
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

    // The error hands the message back (as `apply` does the command): the rare path.
    #[allow(clippy::result_large_err)]
    pub(super) fn insert_message(&mut self, m: NewMessage) -> Result<Inserted, Unwritten> {
        let (sender, id, to, now_ms) = (m.sender, m.id, m.to, m.now_ms);
        if let Some(h) = self.held.get(&(sender, to)) {
            if h.id != id && now_ms < h.until_ms {
                match h.by {
                    HeldBy::QueueCap => Metrics::inc(&self.metrics.refused_queue_full),
                    HeldBy::MaxQueued => Metrics::inc(&self.metrics.refused_max_queued),
                    HeldBy::Store => {}
                }
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
        let result = self.insert_message_inner(m)?;
        if let Inserted::Refused(code @ (ErrorCode::QueueFull | ErrorCode::StorageFull), message) =
            &result
        {
            // Here a full queue is the recipient's cap and storage is full by `max_queued`.
            let by = if *code == ErrorCode::QueueFull {
                HeldBy::QueueCap
            } else {
                HeldBy::MaxQueued
            };
            self.hold(sender, to, id, (*code, message, by), now_ms);
        }
        Ok(result)
    }

    pub(super) fn hold(
        &mut self,
        sender: PeerId,
        to: PeerId,
        id: MessageId,
        (code, message, by): (ErrorCode, &str, HeldBy),
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
                by,
            },
        );
    }

    #[allow(clippy::result_large_err)]
    fn insert_message_inner(&mut self, m: NewMessage) -> Result<Inserted, Unwritten> {
        let NewMessage {
            sender,
            id,
            to,
            body,
            now_ms,
        } = m;
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
            return Err((
                e.into(),
                NewMessage {
                    sender,
                    id,
                    to,
                    body,
                    now_ms,
                },
            ));
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
    pub(super) fn written(
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
    pub(super) fn write_pending(&mut self, entries: Vec<pending::Entry>, fx: &mut Effects) {
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
    pub(super) fn ack_pending(&mut self, batch: &mut Vec<Cmd>) {
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

    /// Deletes expired messages. Rows are stored in `seq` order with one TTL, so the expired ones
    /// are the oldest: walk from the lowest seq to the first unexpired row and delete up to it.
    /// (A row stored a few milliseconds out of order, or under a longer TTL before a restart,
    /// may wait for a later sweep; expired rows are never delivered either way.)
    pub(super) fn sweep_queue(&mut self, now_ms: u64) -> rusqlite::Result<usize> {
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
    pub(super) fn reload_index(&mut self) {
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
    pub(super) fn fetch(
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
}

pub(super) enum Inserted {
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

/// A send the store could not write, handed back whole for the refusal.
type Unwritten = (StoreError, NewMessage);
