//! Messages handed to an online recipient and not written yet (write-behind).
//!
//! A message whose recipient is connected is delivered at once; its row waits here for up to
//! `Config::write_behind`. If the recipient acknowledges it within that time (clients ack only
//! after their own commit), the message is never written to the relay's disk: the sender is
//! told `Sent` then, because the message is durable at its recipient. Otherwise it is written
//! with the next batch once due, and `Sent` follows that commit as for any other message. Until
//! one of the two, the sender has no `Sent`, so a relay crash loses nothing: the sender's outbox
//! sends it again, and the recipient recognises its id.
//!
//! Entries are kept in `seq` order, which is also the order they fall due (seqs and arrival
//! times both increase).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tincan_proto::ids::PeerId;

use super::{Responder, Stored};

/// One message waiting here.
pub(super) struct Entry {
    /// The message, as delivered.
    pub msg: Arc<Stored>,
    /// Its recipient.
    pub to: PeerId,
    /// The sender's request number, for its `Sent`.
    pub req: u32,
    /// Where the sender's `Sent` goes.
    pub respond: Responder,
    /// When it must be written if no ack came.
    pub due: Instant,
}

/// The waiting messages, by seq, and the bytes their bodies hold.
#[derive(Default)]
pub(super) struct Pending {
    by_seq: BTreeMap<u64, Entry>,
    bytes: usize,
}

impl Pending {
    pub(super) fn len(&self) -> usize {
        self.by_seq.len()
    }

    /// Body bytes held (the relay's memory bound for write-behind).
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(super) fn push(&mut self, entry: Entry) {
        self.bytes += entry.msg.body.len();
        if let Some(old) = self.by_seq.insert(entry.msg.seq, entry) {
            self.bytes -= old.msg.body.len();
        }
    }

    fn taken(&mut self, entry: Option<Entry>) -> Option<Entry> {
        if let Some(e) = &entry {
            self.bytes -= e.msg.body.len();
        }
        entry
    }

    /// The entry `seq` if it waits here for `recipient` (an ack from anyone else is ignored).
    pub(super) fn take_acked(&mut self, recipient: &PeerId, seq: u64) -> Option<Entry> {
        if self.by_seq.get(&seq)?.to != *recipient {
            return None;
        }
        let e = self.by_seq.remove(&seq);
        self.taken(e)
    }

    /// The entry `seq`, whoever it is for (a resend of it must be written now).
    pub(super) fn take(&mut self, seq: u64) -> Option<Entry> {
        let e = self.by_seq.remove(&seq);
        self.taken(e)
    }

    /// Every entry due at `now`, oldest first.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<Entry> {
        let mut out = Vec::new();
        while let Some(first) = self.by_seq.first_entry() {
            if first.get().due > now {
                break;
            }
            let e = first.remove();
            self.bytes -= e.msg.body.len();
            out.push(e);
        }
        out
    }

    /// Every entry for `recipient` (its connection reads the store: write them first).
    pub(super) fn take_for(&mut self, recipient: &PeerId) -> Vec<Entry> {
        let seqs: Vec<u64> = self
            .by_seq
            .iter()
            .filter(|(_, e)| e.to == *recipient)
            .map(|(s, _)| *s)
            .collect();
        let out: Vec<Entry> = seqs.iter().filter_map(|s| self.by_seq.remove(s)).collect();
        self.bytes -= out.iter().map(|e| e.msg.body.len()).sum::<usize>();
        out
    }

    /// Everything, oldest first (the relay is closing).
    pub(super) fn take_all(&mut self) -> Vec<Entry> {
        self.bytes = 0;
        std::mem::take(&mut self.by_seq).into_values().collect()
    }

    /// When the oldest entry falls due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.by_seq.first_key_value().map(|(_, e)| e.due)
    }

    /// The entries' (seq, recipient, sender, id), to rebuild the in-memory index after a
    /// rollback reloaded it from the table.
    pub(super) fn keys(
        &self,
    ) -> impl Iterator<Item = (u64, PeerId, PeerId, tincan_proto::ids::MessageId)> + '_ {
        self.by_seq
            .values()
            .map(|e| (e.msg.seq, e.to, e.msg.from, e.msg.id))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use tincan_proto::ids::MessageId;
    use tokio::sync::mpsc;

    use super::*;

    fn entry(seq: u64, to: u8, due: Instant) -> Entry {
        let (respond, _) = mpsc::unbounded_channel();
        Entry {
            msg: Arc::new(Stored {
                seq,
                from: PeerId::from_bytes([9; 32]),
                id: MessageId::from_bytes([seq as u8; 16]),
                stored_at: 0,
                body: vec![0; seq as usize],
            }),
            to: PeerId::from_bytes([to; 32]),
            req: seq as u32,
            respond,
            due,
        }
    }

    #[test]
    fn acks_due_times_and_recipients() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = Pending::default();
        for (seq, to) in [(1, 1), (2, 2), (3, 1), (4, 2)] {
            p.push(entry(seq, to, t0 + ms(seq * 10)));
        }
        assert_eq!(p.next_due(), Some(t0 + ms(10)));
        assert_eq!(p.bytes(), 1 + 2 + 3 + 4, "body bytes are counted");
        // Only the recipient's own ack takes an entry.
        assert!(p.take_acked(&PeerId::from_bytes([2; 32]), 1).is_none());
        assert_eq!(
            p.take_acked(&PeerId::from_bytes([1; 32]), 1)
                .unwrap()
                .msg
                .seq,
            1
        );
        assert!(
            p.take_acked(&PeerId::from_bytes([1; 32]), 1).is_none(),
            "once"
        );
        // Due entries come out oldest first, and only those.
        let due: Vec<u64> = p.take_due(t0 + ms(30)).iter().map(|e| e.msg.seq).collect();
        assert_eq!(due, [2, 3]);
        assert_eq!((p.len(), p.bytes()), (1, 4));
        p.push(entry(5, 1, t0 + ms(50)));
        let mine: Vec<u64> = p
            .take_for(&PeerId::from_bytes([2; 32]))
            .iter()
            .map(|e| e.msg.seq)
            .collect();
        assert_eq!(mine, [4]);
        assert_eq!(p.keys().map(|k| k.0).collect::<Vec<_>>(), [5]);
        assert_eq!(p.take(5).unwrap().msg.seq, 5);
        assert_eq!(p.bytes(), 0);
        p.push(entry(6, 1, t0));
        assert_eq!(p.take_all().len(), 1);
        assert!(p.next_due().is_none() && p.bytes() == 0);
    }
}
