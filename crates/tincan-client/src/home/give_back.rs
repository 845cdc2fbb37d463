//! Giving handed-over inbox entries back: an application that took messages and then could not
//! deal with them (`serve` stopped with messages still queued or their handlers cut short)
//! returns them, and the next reader of the home gets them again.
//!
//! "Handed over" is a watermark (`meta.consumed_through`) plus a per-entry `consumed` flag; an
//! entry is shown when it is above the watermark and not flagged. Giving entries back lowers the
//! watermark to just below the oldest of them and flags every other entry between the new and
//! the old watermark, so only the given-back ones (and what was never handed over) are shown.

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use tincan_proto::ids::{MessageId, PeerId};

use super::Home;
use crate::error::ClientError;

impl Home {
    /// Makes these entries (sender, message id) unread again; returns how many were found.
    /// Entries withheld by the peer policy stay withheld.
    pub fn give_back(&mut self, entries: &[(PeerId, MessageId)]) -> Result<usize, ClientError> {
        self.flush_deferred()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut seqs = Vec::new();
        for (from, id) in entries {
            let seq: Option<i64> = tx
                .prepare_cached(
                    "SELECT seq FROM inbox WHERE peer = ?1 AND msg_id = ?2 AND withheld IS NULL",
                )?
                .query_row(params![from.to_string(), id.to_string()], |r| r.get(0))
                .optional()?;
            seqs.extend(seq);
        }
        let Some(&oldest) = seqs.iter().min() else {
            return Ok(0);
        };
        let mark: i64 = tx.query_row(
            "SELECT COALESCE((SELECT CAST(value AS INTEGER) FROM meta
                   WHERE key = 'consumed_through'), 0)",
            [],
            |r| r.get(0),
        )?;
        tx.execute(
            "UPDATE inbox SET consumed = 1 WHERE seq >= ?1 AND seq <= ?2",
            params![oldest, mark],
        )?;
        for seq in &seqs {
            tx.execute("UPDATE inbox SET consumed = 0 WHERE seq = ?1", params![seq])?;
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('consumed_through', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![(oldest - 1).min(mark)],
        )?;
        tx.commit()?;
        Ok(seqs.len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::fixtures::{kinds, paired, take};
    use super::super::now_ms;

    #[test]
    fn given_back_entries_are_shown_again_and_the_others_between_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = paired(dir.path());
        let ids =
            t.a.queue_texts(&t.b_id, &["one", "two", "three", "four"], now_ms())
                .unwrap();
        let rows = take(&mut t.a);
        kinds(&mut t.b, t.a_id, &rows);
        let all = t.b.unconsumed(10).unwrap();
        assert_eq!(all.len(), 4);
        // The application took the first three, handled "one" and "three", not "two".
        t.b.mark_consumed(all[2].seq).unwrap();
        let n = t.b.give_back(&[(t.a_id, ids[1])]).unwrap();
        assert_eq!(n, 1);
        let texts: Vec<String> =
            t.b.unconsumed(10)
                .unwrap()
                .into_iter()
                .map(|e| e.text.unwrap())
                .collect();
        assert_eq!(texts, ["two", "four"], "given back, then never handed over");
        // Handing them over again works as before.
        let again = t.b.unconsumed(10).unwrap();
        t.b.mark_consumed(again.last().unwrap().seq).unwrap();
        assert!(t.b.unconsumed(10).unwrap().is_empty());
        // An id that is not in the inbox is no one's.
        let stranger = tincan_proto::ids::MessageId::from_bytes([3; 16]);
        assert_eq!(t.b.give_back(&[(t.a_id, stranger)]).unwrap(), 0);
    }
}
