//! A bounded memory of recently acknowledged messages, so a sender that resends a message after
//! it was delivered (its `Sent` was lost with its connection) gets the original `Sent` back and
//! the recipient does not get the message twice.
//!
//! The window is bounded in entries and in age; it is empty after a restart. Beyond it the
//! recipient's client deduplicates by (sender, message id), which every client must do anyway
//! (docs/PROTOCOL.md, "Redelivery").

use std::collections::{HashMap, VecDeque};

use tincan_proto::ids::{MessageId, PeerId};

/// Most entries remembered (about 100 bytes each).
pub(crate) const CAPACITY: usize = 65_536;
/// Longest an entry is remembered, in milliseconds.
pub(crate) const MAX_AGE_MS: u64 = 10 * 60 * 1000;

/// (sender, id) → seq of recently acknowledged messages, oldest evicted first. Keys are
/// authenticated sender ids and their own message ids, so a fast seeded hash (foldhash) is
/// enough; the map is bounded either way.
#[derive(Default)]
pub(crate) struct Recent {
    map: HashMap<(PeerId, MessageId), u64, foldhash::fast::RandomState>,
    order: VecDeque<((PeerId, MessageId), u64)>,
}

impl Recent {
    /// Remembers that message `id` from `sender`, stored as `seq`, was acknowledged at `now_ms`.
    pub(crate) fn insert(&mut self, sender: PeerId, id: MessageId, seq: u64, now_ms: u64) {
        self.expire(now_ms);
        if self.order.len() >= CAPACITY
            && let Some((key, _)) = self.order.pop_front()
        {
            self.map.remove(&key);
        }
        if self.map.insert((sender, id), seq).is_none() {
            self.order.push_back(((sender, id), now_ms));
        }
    }

    /// The seq of message `id` from `sender` if it was acknowledged within the window.
    pub(crate) fn get(&self, sender: &PeerId, id: &MessageId) -> Option<u64> {
        self.map.get(&(*sender, *id)).copied()
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some((key, at)) = self.order.front()
            && at.saturating_add(MAX_AGE_MS) <= now_ms
        {
            self.map.remove(key);
            self.order.pop_front();
        }
    }

    /// Number of entries.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn key(n: u32) -> (PeerId, MessageId) {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&n.to_be_bytes());
        (PeerId::from_bytes([1; 32]), MessageId::from_bytes(id))
    }

    #[test]
    fn remembers_within_the_window_and_forgets_by_age() {
        let mut r = Recent::default();
        let (p, id) = key(1);
        r.insert(p, id, 42, 1_000);
        assert_eq!(r.get(&p, &id), Some(42));
        assert_eq!(r.get(&p, &key(2).1), None);
        let (p2, id2) = key(2);
        r.insert(p2, id2, 43, 1_000 + MAX_AGE_MS);
        assert_eq!(r.get(&p, &id), None, "older than the window");
        assert_eq!(r.get(&p2, &id2), Some(43));
    }

    #[test]
    fn is_bounded_in_entries_evicting_the_oldest() {
        let mut r = Recent::default();
        for n in 0..(CAPACITY as u32 + 10) {
            let (p, id) = key(n);
            r.insert(p, id, u64::from(n), 5);
        }
        assert_eq!(r.len(), CAPACITY);
        let (p, id) = key(0);
        assert_eq!(r.get(&p, &id), None);
        let (p, id) = key(CAPACITY as u32 + 9);
        assert_eq!(r.get(&p, &id), Some(u64::from(CAPACITY as u32 + 9)));
    }
}
