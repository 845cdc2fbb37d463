//! Bookkeeping writes that ride along with the next transaction a home runs anyway.
//!
//! Two records are not worth a commit of their own on the message path: "the application was
//! handed inbox entries up to seq N" (consumed marks) and "the relay acknowledged outbox row N"
//! (acks). Both are kept here in memory and written inside the next transaction that runs anyway:
//! a consumed mark in the next send or delivery, an ack in the next send only (it deletes an
//! outbox row and adds a `sent` row, pages a send writes anyway, where a delivery would write two
//! or three pages more), or alone by a flush when nothing else comes (the client's timers, and
//! its close). Losing them
//! in a crash is harmless: an entry not marked consumed is shown again (receivers deduplicate by
//! message id), an outbox row not marked sent is sent again (the relay deduplicates by message id,
//! and so does the recipient). Until they are written, readers in this process see them through
//! [`Deferred`] (`is_sent`, `outbox_len`); another process on the same home sees them late.

use rusqlite::{OptionalExtension, Transaction, params};
use tincan_proto::ids::MessageId;

use crate::error::ClientError;

/// A relay acknowledgement not yet written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ack {
    /// Local outbox seq.
    pub local: i64,
    /// The relay's seq for it.
    pub relay_seq: u64,
    /// The message id (for `is_sent` before the write).
    pub id: MessageId,
    /// When the relay's acknowledgement arrived (ms since the epoch).
    pub at_ms: u64,
}

/// Writes not yet made.
#[derive(Debug, Default)]
pub(super) struct Deferred {
    consumed: Option<i64>,
    /// Single entries the application has dealt with, out of order (see [`write_handled`]).
    handled: Vec<i64>,
    acks: Vec<Ack>,
}

/// What one transaction carried, so a commit can clear exactly that.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Carried {
    consumed: Option<i64>,
    handled: usize,
    acks: usize,
}

impl Deferred {
    pub(super) fn mark_consumed(&mut self, seq: i64) {
        self.consumed = Some(self.consumed.map_or(seq, |p| p.max(seq)));
    }

    pub(super) fn mark_handled(&mut self, seq: i64) {
        self.handled.push(seq);
    }

    pub(super) fn push_acks(&mut self, acks: impl IntoIterator<Item = Ack>) {
        self.acks.extend(acks);
    }

    pub(super) fn consumed_pending(&self) -> bool {
        self.consumed.is_some() || !self.handled.is_empty()
    }

    pub(super) fn acks_pending(&self) -> usize {
        self.acks.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.consumed.is_none() && self.handled.is_empty() && self.acks.is_empty()
    }

    /// Whether an unwritten ack covers message `id`.
    pub(super) fn acked(&self, id: &MessageId) -> bool {
        self.acks.iter().any(|a| a.id == *id)
    }

    /// Whether an unwritten ack covers local outbox row `local`.
    pub(super) fn acked_row(&self, local: i64) -> bool {
        self.acks.iter().any(|a| a.local == local)
    }

    /// Writes everything pending inside `tx`; pass the result to [`Deferred::committed`] once
    /// `tx` commits (if it rolls back, everything stays pending).
    pub(super) fn apply(&self, tx: &Transaction<'_>) -> Result<Carried, ClientError> {
        let carried = self.apply_mark(tx)?;
        if !self.acks.is_empty() {
            write_acks(
                tx,
                self.acks.iter().map(|a| (a.local, a.relay_seq, a.at_ms)),
            )?;
        }
        Ok(Carried {
            acks: self.acks.len(),
            ..carried
        })
    }

    /// Like [`Deferred::apply`], but writes only the consumed mark (for a delivery transaction,
    /// see the module docs); the acks stay pending.
    pub(super) fn apply_mark(&self, tx: &Transaction<'_>) -> Result<Carried, ClientError> {
        if let Some(seq) = self.consumed {
            write_consumed(tx, seq)?;
        }
        if !self.handled.is_empty() {
            write_handled(tx, &self.handled)?;
        }
        Ok(Carried {
            consumed: self.consumed,
            handled: self.handled.len(),
            acks: 0,
        })
    }

    /// A transaction that carried `c` committed.
    pub(super) fn committed(&mut self, c: Carried) {
        if c.consumed.is_some() && self.consumed == c.consumed {
            self.consumed = None;
        }
        self.handled.drain(..c.handled.min(self.handled.len()));
        self.acks.drain(..c.acks.min(self.acks.len()));
    }
}

/// Marks inbox entries up to and including `seq` as handed to the application: one watermark in
/// `meta` that only moves forward (home migration 4), not a flag on every row.
pub(super) fn write_consumed(conn: &rusqlite::Connection, seq: i64) -> Result<(), ClientError> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('consumed_through', ?1)
         ON CONFLICT (key) DO UPDATE
         SET value = MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
    )?
    .execute(params![seq])?;
    Ok(())
}

/// Marks single inbox entries as dealt with, in any order (an application that handles
/// messages concurrently, `serve`): each gets its `consumed` flag, and the watermark moves up to
/// just below the oldest entry above it still unflagged, so it never passes one that is not
/// dealt with yet, and the flags above it stay few.
pub(super) fn write_handled(conn: &rusqlite::Connection, seqs: &[i64]) -> Result<(), ClientError> {
    for seq in seqs {
        conn.prepare_cached("UPDATE inbox SET consumed = 1 WHERE seq = ?1")?
            .execute(params![seq])?;
    }
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('consumed_through', 0) ON CONFLICT (key) DO NOTHING",
    )?
    .execute([])?;
    conn.prepare_cached(
        "UPDATE meta SET value = COALESCE(
             (SELECT MIN(seq) - 1 FROM inbox
               WHERE seq > CAST(meta.value AS INTEGER) AND consumed = 0),
             (SELECT MAX(seq) FROM inbox),
             value)
         WHERE key = 'consumed_through'",
    )?
    .execute([])?;
    Ok(())
}

/// Records relay acknowledgements, `(local seq, relay seq, acknowledged at ms)`: each row moves
/// from the outbox to `sent`.
pub(super) fn write_acks(
    tx: &Transaction<'_>,
    acks: impl IntoIterator<Item = (i64, u64, u64)>,
) -> Result<(), ClientError> {
    // Deferrals are rare: look for them once per batch, not once per message.
    let deferred: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM outbox_deferred)")?
        .query_row([], |r| r.get(0))?;
    for (local, relay_seq, at_ms) in acks {
        // One statement reads and removes the row; a batch row also names its later texts.
        let row: Option<(String, String, Option<Vec<u8>>)> = tx
            .prepare_cached("DELETE FROM outbox WHERE seq = ?1 RETURNING msg_id, peer, members")?
            .query_row(params![local], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let Some((msg_id, peer, members)) = row else {
            continue;
        };
        let later = members.unwrap_or_default();
        let ids = std::iter::once(msg_id.clone()).chain(
            later
                .chunks_exact(16)
                .filter_map(|m| m.try_into().ok())
                .map(|m: [u8; 16]| MessageId::from_bytes(m).to_string()),
        );
        for id in ids {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO sent (msg_id, peer, relay_seq, acked_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![id, peer, relay_seq as i64, at_ms as i64])?;
        }
        if deferred {
            tx.prepare_cached("DELETE FROM outbox_deferred WHERE msg_id = ?1")?
                .execute(params![msg_id])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tincan_proto::ids::PeerId;

    use super::super::InboxKind;
    use super::super::fixtures::{RELAY, accepted, kinds, paired, take};
    use super::super::{Home, OutboxEntry, now_ms};

    /// B accepted A's invite, so B's outbox holds one row (the join). Returns (A's id, B, row).
    fn joined(dir: &std::path::Path) -> (PeerId, Home, OutboxEntry) {
        let t = accepted(dir);
        let mut rows = t.b.outbox(RELAY, 0, 10).unwrap();
        assert_eq!(rows.len(), 1);
        (t.a_id, t.b, rows.remove(0))
    }

    #[test]
    fn entries_handled_out_of_order_are_hidden_and_the_watermark_waits_for_the_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = paired(dir.path());
        t.a.queue_texts(&t.b_id, &["one", "two", "three", "four"], now_ms())
            .unwrap();
        let rows = take(&mut t.a);
        kinds(&mut t.b, t.a_id, &rows);
        let seqs: Vec<i64> = t.b.unconsumed(10).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs.len(), 4);
        let watermark = |h: &Home| -> i64 {
            h.conn
                .query_row(
                    "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'consumed_through'",
                    [],
                    |r| r.get(0),
                )
                .unwrap()
        };
        let shown =
            |h: &Home| -> Vec<i64> { h.unconsumed(10).unwrap().iter().map(|e| e.seq).collect() };
        let start = watermark(&t.b);
        // "three" first: hidden, but the watermark may not pass "one" and "two".
        t.b.mark_handled_later(seqs[2]);
        assert!(t.b.consumed_pending());
        t.b.flush_deferred().unwrap();
        assert_eq!(shown(&t.b), [seqs[0], seqs[1], seqs[3]]);
        assert_eq!(watermark(&t.b), start);
        t.b.mark_handled_later(seqs[0]);
        t.b.flush_deferred().unwrap();
        assert_eq!(watermark(&t.b), seqs[0]);
        // "two" closes the gap: the watermark moves over "three" too, up to "four".
        t.b.mark_handled_later(seqs[1]);
        t.b.flush_deferred().unwrap();
        assert_eq!(watermark(&t.b), seqs[2]);
        assert_eq!(shown(&t.b), [seqs[3]]);
        // Not written before a crash: shown again.
        t.b.mark_handled_later(seqs[3]);
        std::mem::forget(t.b);
        let b = Home::open(&dir.path().join("b")).unwrap();
        assert_eq!(shown(&b), [seqs[3]]);
    }

    #[test]
    fn a_deferred_ack_counts_at_once_and_rides_along_with_the_next_send() {
        let dir = tempfile::tempdir().unwrap();
        let (a_id, mut b, row) = joined(dir.path());
        b.outbox_acked_later(&[(row.seq, 7, row.id)], now_ms());
        assert_eq!(b.acks_pending(), 1);
        assert!(b.is_sent(&row.id).unwrap());
        assert_eq!(b.outbox_len().unwrap(), 0);
        assert!(b.outbox(RELAY, 0, 10).unwrap().is_empty());
        // Not written yet: another handle on the same home still has the row queued.
        let other = Home::open(&dir.path().join("b")).unwrap();
        assert!(!other.is_sent(&row.id).unwrap());
        assert_eq!(other.outbox_len().unwrap(), 1);
        // The next send's transaction writes it.
        let sent = b.queue_texts(&a_id, &["hello"], now_ms()).unwrap();
        assert_eq!(b.acks_pending(), 0);
        assert!(other.is_sent(&row.id).unwrap());
        let queued: Vec<_> = other
            .outbox(RELAY, 0, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(queued, sent);
    }

    /// A delivery writes a pending consumed mark but leaves acks to the next send, whose
    /// transaction writes the outbox pages anyway (two or three pages fewer per round trip).
    #[test]
    fn a_delivery_leaves_the_ack_for_the_next_send() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = paired(dir.path());
        let first = t.b.queue_texts(&t.a_id, &["ping"], now_ms()).unwrap();
        let row =
            t.b.outbox(RELAY, 0, 10)
                .unwrap()
                .into_iter()
                .find(|r| r.id == first[0])
                .unwrap();
        t.b.outbox_acked_later(&[(row.seq, 9, row.id)], now_ms());
        t.b.mark_consumed_later(1);
        // A's answer arrives and is stored.
        t.a.queue_texts(&t.b_id, &["pong"], now_ms()).unwrap();
        let answer = take(&mut t.a);
        assert_eq!(kinds(&mut t.b, t.a_id, &answer), [InboxKind::Message]);
        assert_eq!(t.b.acks_pending(), 1, "the delivery left the ack pending");
        assert!(
            !t.b.consumed_pending(),
            "the delivery wrote the consumed mark"
        );
        let other = Home::open(&dir.path().join("b")).unwrap();
        assert!(!other.is_sent(&row.id).unwrap());
        // B's next message writes it.
        t.b.queue_texts(&t.a_id, &["ping again"], now_ms()).unwrap();
        assert_eq!(t.b.acks_pending(), 0);
        assert!(other.is_sent(&row.id).unwrap());
    }

    #[test]
    fn a_crash_before_the_write_leaves_the_row_to_send_again() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut b, row) = joined(dir.path());
        b.outbox_acked_later(&[(row.seq, 7, row.id)], now_ms());
        std::mem::forget(b); // no Drop: as if the process died here
        let b = Home::open(&dir.path().join("b")).unwrap();
        assert!(!b.is_sent(&row.id).unwrap());
        let again: Vec<_> = b.outbox(RELAY, 0, 10).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].id, &again[0].body), (row.id, &row.body));
    }

    #[test]
    fn closing_a_home_writes_what_it_deferred() {
        let dir = tempfile::tempdir().unwrap();
        let (_, mut b, row) = joined(dir.path());
        b.outbox_acked_later(&[(row.seq, 7, row.id)], now_ms());
        drop(b);
        let b = Home::open(&dir.path().join("b")).unwrap();
        assert!(b.is_sent(&row.id).unwrap());
        assert_eq!(b.outbox_len().unwrap(), 0);
    }

    #[test]
    fn a_rolled_back_transaction_keeps_the_ack_pending() {
        let dir = tempfile::tempdir().unwrap();
        let (a_id, mut b, row) = joined(dir.path());
        b.outbox_acked_later(&[(row.seq, 7, row.id)], now_ms());
        b.conn
            .execute_batch(
                "CREATE TEMP TRIGGER no_outbox BEFORE INSERT ON main.outbox BEGIN SELECT RAISE(ABORT, 'disk says no'); END;",
            )
            .unwrap();
        assert!(b.queue_texts(&a_id, &["lost"], now_ms()).is_err());
        assert_eq!(b.acks_pending(), 1, "the ack must survive the rollback");
        b.flush_deferred().unwrap();
        assert_eq!(b.acks_pending(), 0);
        let other = Home::open(&dir.path().join("b")).unwrap();
        assert!(other.is_sent(&row.id).unwrap());
    }
}
