//! Batches: several texts to one peer sealed in one envelope (PROTOCOL.md §7), when the peer's
//! feature bits say it reads them. One Olm encryption, one outbox row, one relay row and one
//! delivery carry them all; the receiver stores one inbox entry per text. The outbox row is
//! known by its first text's id; the others are listed in its `members` column, so every text's
//! own id still answers `is_sent`, `send_failure` and `send_deferral`.

use rusqlite::{OptionalExtension, params};
use tincan_proto::envelope::{BATCH_ITEM_OVERHEAD, Batch};
use tincan_proto::ids::MessageId;

use super::Home;
use crate::error::ClientError;

/// The largest batch [`Home::queue`](super::Home::queue) seals, in envelope bytes before padding. Far below the
/// relay's default message size (70 KiB), so a relay with a tighter limit still takes it, and
/// large enough that sealing and storing are shared by ~14 texts of 1 KiB.
pub const BATCH_BYTES: usize = 16 * 1024;

/// How many of `texts` (at least one) go into the next envelope: as many as fit in
/// [`BATCH_BYTES`] when the peer takes batches, else one.
pub(super) fn next_batch(texts: &[&str], batches: bool) -> usize {
    let Some(first) = texts.first() else {
        return 0;
    };
    if !batches {
        return 1;
    }
    let mut len = Batch::envelope_len(first.len(), []);
    let mut n = 1;
    for t in &texts[1..] {
        len += BATCH_ITEM_OVERHEAD + t.len();
        if len > BATCH_BYTES {
            break;
        }
        n += 1;
    }
    n
}

impl Home {
    /// The outbox row `(seq, message id)` that carries message `id` as a text after the first
    /// of a batch, if any. Rare (a caller waiting on such a text before its row is acknowledged),
    /// so a scan of the rows that carry batches is fine.
    pub(super) fn batch_row(&self, id: &MessageId) -> Result<Option<(i64, String)>, ClientError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, msg_id, members FROM outbox WHERE members IS NOT NULL AND instr(members, ?1) > 0",
        )?;
        let rows = stmt.query_map(params![id.as_bytes().as_slice()], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        for row in rows {
            let (seq, outer, members) = row?;
            // instr matches at any byte offset; only a whole 16-byte id counts.
            if members.chunks_exact(16).any(|m| m == id.as_bytes()) {
                return Ok(Some((seq, outer)));
            }
        }
        Ok(None)
    }

    /// The outbox message id under which the relay knows message `id`: its own, or its batch's.
    pub(super) fn outbox_key(&self, id: &MessageId) -> Result<String, ClientError> {
        let own: Option<i64> = self
            .conn
            .prepare_cached("SELECT 1 FROM outbox WHERE msg_id = ?1")?
            .query_row(params![id.to_string()], |r| r.get(0))
            .optional()?;
        if own.is_some() {
            return Ok(id.to_string());
        }
        Ok(self
            .batch_row(id)?
            .map_or_else(|| id.to_string(), |(_, outer)| outer))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rusqlite::params;
    use tincan_proto::envelope::{Batch, BatchItem, Body};
    use tincan_proto::features;
    use tincan_proto::ids::{MessageId, PeerId};

    use super::super::fixtures::{RELAY, kinds, paired, take};
    use super::super::{Home, InboxKind, Incoming, Processed, now_ms, session_cache};
    use super::*;

    fn texts(h: &Home, n: usize) -> Vec<(MessageId, String)> {
        h.unconsumed(n + 10)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == InboxKind::Message)
            .map(|e| (e.id, e.text.unwrap()))
            .collect()
    }

    #[test]
    fn pairing_records_both_sides_features() {
        let dir = tempfile::tempdir().unwrap();
        let t = paired(dir.path());
        assert_eq!(
            t.a.peer(&t.b_id).unwrap().unwrap().features,
            features::SUPPORTED
        );
        assert_eq!(
            t.b.peer(&t.a_id).unwrap().unwrap().features,
            features::SUPPORTED
        );
    }

    #[test]
    fn texts_to_a_peer_that_reads_batches_share_one_row_and_arrive_one_entry_each() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = paired(dir.path());
        let sent = ["one", "two", "three"];
        let ids = t.a.queue_texts(&t.b_id, &sent, now_ms()).unwrap();
        assert_eq!(ids.len(), 3);
        let rows = take(&mut t.a);
        assert_eq!(rows.len(), 1, "one envelope for three texts");
        assert_eq!(
            rows[0].id, ids[0],
            "the row is known by its first text's id"
        );
        assert_eq!(kinds(&mut t.b, t.a_id, &rows), [InboxKind::Message; 3]);
        let got = texts(&t.b, 3);
        let want: Vec<(MessageId, String)> =
            ids.iter().copied().zip(sent.map(String::from)).collect();
        assert_eq!(got, want, "every text with its own id, in order");
        // Every text counts as sent once the row is acknowledged.
        for id in &ids {
            assert!(t.a.is_sent(id).unwrap());
        }
        // A redelivery of the batch is one duplicate, and adds nothing.
        let again = Incoming {
            relay_seq: 99,
            from: t.a_id,
            id: rows[0].id,
            body: rows[0].body.clone(),
        };
        let out = t.b.process_incoming(&[again], now_ms()).unwrap();
        assert!(matches!(out.as_slice(), [Processed::Duplicate]));
        assert_eq!(texts(&t.b, 3).len(), 3);
    }

    #[test]
    fn a_peer_paired_under_version_1_gets_one_row_per_text() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = paired(dir.path());
        // What migration 5 leaves for a peer paired before feature bits existed.
        t.a.conn
            .execute("UPDATE peers SET features = 0", [])
            .unwrap();
        t.a.queue_texts(&t.b_id, &["one", "two", "three"], now_ms())
            .unwrap();
        let rows = take(&mut t.a);
        assert_eq!(rows.len(), 3);
        assert_eq!(kinds(&mut t.b, t.a_id, &rows), [InboxKind::Message; 3]);
    }

    #[test]
    fn batches_are_cut_to_size_and_order_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = paired(dir.path());
        let big = "k".repeat(1024);
        let mut sent: Vec<String> = (0..40).map(|i| format!("{i}:{big}")).collect();
        sent.push("x".repeat(BATCH_BYTES)); // larger than a batch: goes alone
        sent.push("last".into());
        let refs: Vec<&str> = sent.iter().map(String::as_str).collect();
        t.a.queue_texts(&t.b_id, &refs, now_ms()).unwrap();
        let rows = take(&mut t.a);
        assert!(rows.len() >= 4 && rows.len() < 10, "{} rows", rows.len());
        kinds(&mut t.b, t.a_id, &rows);
        let got: Vec<String> = texts(&t.b, 50).into_iter().map(|(_, s)| s).collect();
        assert_eq!(got, sent);
        assert_eq!(next_batch(&[], true), 0);
        assert_eq!(next_batch(&["a", "b"], false), 1);
        assert_eq!(next_batch(&["a", "b"], true), 2);
    }

    #[test]
    fn a_later_text_of_a_batch_reports_its_rows_fate() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = paired(dir.path());
        let ids = t.a.queue_texts(&t.b_id, &["one", "two"], now_ms()).unwrap();
        let row = t.a.outbox(RELAY, 0, 10).unwrap().remove(0);
        assert!(!t.a.is_sent(&ids[1]).unwrap());
        // Acknowledged but not yet written: already sent for this process.
        t.a.outbox_acked_later(&[(row.seq, 7, row.id)], now_ms());
        assert!(t.a.is_sent(&ids[1]).unwrap());
        t.a.flush_deferred().unwrap();
        assert!(t.a.is_sent(&ids[1]).unwrap());

        // A refused batch: each text names the refusal; a deferral too.
        let ids =
            t.a.queue_texts(&t.b_id, &["three", "four"], now_ms())
                .unwrap();
        let row = t.a.outbox(RELAY, 0, 10).unwrap().remove(0);
        t.a.outbox_deferred(&row.id, "rate_limited", "slow down", 500)
            .unwrap();
        let d = t.a.send_deferral(&ids[1]).unwrap().unwrap();
        assert_eq!((d.0.as_str(), d.2), ("rate_limited", 500));
        t.a.outbox_failed(row.seq, "too_large", "too big").unwrap();
        assert_eq!(
            t.a.send_failure(&ids[1]).unwrap(),
            Some(("too_large".into(), "too big".into()))
        );
        assert!(!t.a.is_sent(&ids[1]).unwrap());
        // An id that is in no batch is not taken for one.
        let stranger = MessageId::from_bytes([1; 16]);
        assert_eq!(t.a.send_failure(&stranger).unwrap(), None);
        assert_eq!(t.a.batch_row(&stranger).unwrap(), None);
    }

    /// Seals `body` on A's session to B the way `queue` does, without the outbox.
    fn seal(h: &mut Home, peer: &PeerId, body: Body, id: [u8; 16]) -> Vec<u8> {
        let tx = h.conn.transaction().unwrap();
        let mut taken = h.sessions.take(&tx, &h.key, peer).unwrap().unwrap();
        let me = h.identity.as_ref().unwrap();
        let sealed = taken.session.seal(me, body, id, now_ms()).unwrap();
        let rev = session_cache::save(&tx, &h.key, &taken.session).unwrap();
        tx.commit().unwrap();
        h.sessions.put(rev, taken.session);
        sealed
    }

    #[test]
    fn a_batch_that_repeats_an_id_stores_each_id_once_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = paired(dir.path());
        let ids = t.a.queue_texts(&t.b_id, &["seen"], now_ms()).unwrap();
        let rows = take(&mut t.a);
        kinds(&mut t.b, t.a_id, &rows);
        // A hostile (or buggy) peer repeats an id already delivered and one inside the batch.
        let item = |id: MessageId, text: &str| BatchItem {
            id,
            sent_at: 1,
            text: text.into(),
        };
        let fresh = MessageId::from_bytes([9; 16]);
        let body = Body::Batch(Batch {
            first: "first".into(),
            more: vec![
                item(ids[0], "replayed id"),
                item(fresh, "new"),
                item(fresh, "repeated"),
            ],
        });
        let sealed = seal(&mut t.a, &t.b_id, body, [8; 16]);
        let d = Incoming {
            relay_seq: 5,
            from: t.a_id,
            id: MessageId::from_bytes([8; 16]),
            body: sealed,
        };
        let out = t.b.process_incoming(&[d], now_ms()).unwrap();
        let [Processed::Batch(entries)] = out.as_slice() else {
            panic!("{out:?}")
        };
        let texts: Vec<&str> = entries.iter().map(|e| e.text.as_deref().unwrap()).collect();
        assert_eq!(texts, ["first", "new"]);
        let n: i64 =
            t.b.conn
                .query_row(
                    "SELECT COUNT(*) FROM inbox WHERE kind = 'message'",
                    params![],
                    |r| r.get(0),
                )
                .unwrap();
        assert_eq!(n, 3, "seen + first + new");
    }
}
