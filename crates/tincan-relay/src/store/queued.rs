//! The writer's in-memory index of queued messages: which seqs each recipient is owed, in order,
//! and which (sender, message id) each queued seq carries.
//!
//! Layout 3 keeps `queue` as a plain rowid table in `seq` order with no secondary index: every
//! insert appends to the end of one B-tree and every ack deletes from its front, so a commit
//! writes the pages its messages occupy and little else. The two indexes layout 2 kept in SQLite
//! (`UNIQUE (sender, client_id)` and `(recipient, seq)`) scattered each commit's writes over
//! many index pages; they live here instead, rebuilt from the table when the store opens and
//! after any rolled-back transaction. Only the writer thread touches it, so it always matches
//! what the writer's own transaction sees.
//!
//! Memory: 70–150 bytes per queued message (the hash table grows in powers of two; 141 bytes
//! each measured with 1,000,000 queued), bounded by the per-recipient queue cap and
//! `max_db_bytes`; loading costs one scan of the table at start.

use std::collections::{BTreeSet, HashMap};

use rusqlite::Connection;
use tincan_proto::ids::{MessageId, PeerId};

type Fast = foldhash::fast::RandomState;

/// Queued messages by (sender, id) and by recipient.
#[derive(Default)]
pub(crate) struct Queued {
    by_key: HashMap<(PeerId, MessageId), u64, Fast>,
    by_recipient: HashMap<PeerId, BTreeSet<u64>, Fast>,
}

impl Queued {
    /// Reads the index from every row of `queue` (rows whose ids are malformed are skipped, as
    /// fetches skip them).
    pub(crate) fn load(conn: &Connection) -> rusqlite::Result<Self> {
        let mut q = Self::default();
        let mut stmt = conn.prepare("SELECT seq, recipient, sender, client_id FROM queue")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0)?;
            let to: Vec<u8> = row.get(1)?;
            let from: Vec<u8> = row.get(2)?;
            let id: Vec<u8> = row.get(3)?;
            if let (Some(to), Some(from), Some(id)) =
                (super::peer(&to), super::peer(&from), super::message_id(&id))
            {
                q.insert(seq as u64, to, from, id);
            }
        }
        Ok(q)
    }

    /// Records a stored message.
    pub(crate) fn insert(&mut self, seq: u64, to: PeerId, from: PeerId, id: MessageId) {
        self.by_key.insert((from, id), seq);
        self.by_recipient.entry(to).or_default().insert(seq);
    }

    /// Forgets a message that was acknowledged or expired.
    pub(crate) fn remove(&mut self, seq: u64, to: &PeerId, from: PeerId, id: MessageId) {
        if self.by_key.get(&(from, id)) == Some(&seq) {
            self.by_key.remove(&(from, id));
        }
        if let Some(seqs) = self.by_recipient.get_mut(to) {
            seqs.remove(&seq);
            if seqs.is_empty() {
                self.by_recipient.remove(to);
            }
        }
    }

    /// The seq of a queued message from `from` with id `id`.
    pub(crate) fn seq_of(&self, from: &PeerId, id: &MessageId) -> Option<u64> {
        self.by_key.get(&(*from, *id)).copied()
    }

    /// How many messages `to` is owed.
    pub(crate) fn len_for(&self, to: &PeerId) -> u64 {
        self.by_recipient.get(to).map_or(0, |s| s.len() as u64)
    }

    /// How many messages are queued in all.
    pub(crate) fn total(&self) -> u64 {
        self.by_key.len() as u64
    }

    /// The seqs `to` is owed above `after`, in order.
    pub(crate) fn after(&self, to: &PeerId, after: u64) -> impl Iterator<Item = u64> + '_ {
        self.by_recipient
            .get(to)
            .into_iter()
            .flat_map(move |s| s.range(after.saturating_add(1)..).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(b: u8) -> PeerId {
        PeerId::from_bytes([b; 32])
    }

    #[test]
    fn tracks_each_recipient_in_order_and_forgets_what_is_removed() {
        let mut q = Queued::default();
        let (a, b, s) = (peer(1), peer(2), peer(3));
        let ids: Vec<MessageId> = (0..4u8).map(|i| MessageId::from_bytes([i; 16])).collect();
        q.insert(7, a, s, ids[0]);
        q.insert(3, a, s, ids[1]);
        q.insert(5, b, s, ids[2]);
        q.insert(9, a, s, ids[3]);
        assert_eq!(q.total(), 4);
        assert_eq!(q.len_for(&a), 3);
        assert_eq!(q.after(&a, 0).collect::<Vec<_>>(), vec![3, 7, 9]);
        assert_eq!(q.after(&a, 3).collect::<Vec<_>>(), vec![7, 9]);
        assert_eq!(q.after(&a, u64::MAX).count(), 0);
        assert_eq!(q.seq_of(&s, &ids[2]), Some(5));
        q.remove(7, &a, s, ids[0]);
        assert_eq!(q.seq_of(&s, &ids[0]), None);
        assert_eq!(q.after(&a, 0).collect::<Vec<_>>(), vec![3, 9]);
        q.remove(5, &b, s, ids[2]);
        assert_eq!(q.len_for(&b), 0);
        assert_eq!(q.after(&b, 0).count(), 0);
        assert_eq!(q.total(), 2);
    }

    #[test]
    fn loads_what_the_table_holds() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(super::super::schema::QUEUE_TABLE)
            .unwrap();
        let (a, s) = (peer(1), peer(3));
        for (seq, i) in [(10i64, 1u8), (11, 2)] {
            conn.execute(
                "INSERT INTO queue VALUES (?1, ?2, ?3, ?4, x'00', 0, 0)",
                rusqlite::params![seq, a.as_bytes(), s.as_bytes(), [i; 16]],
            )
            .unwrap();
        }
        // A damaged row is skipped, not fatal.
        conn.execute(
            "INSERT INTO queue VALUES (12, x'01', x'02', x'03', x'00', 0, 0)",
            [],
        )
        .unwrap();
        let q = Queued::load(&conn).unwrap();
        assert_eq!(q.total(), 2);
        assert_eq!(q.after(&a, 0).collect::<Vec<_>>(), vec![10, 11]);
        assert_eq!(q.seq_of(&s, &MessageId::from_bytes([2; 16])), Some(11));
    }
}
