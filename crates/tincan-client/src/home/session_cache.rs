//! Sessions kept unpickled between transactions.
//!
//! Unpickling a session (decrypt + decode) and pickling it again cost more than the message they
//! protect. The stored pickle stays the only source of truth: every save still writes it, in the
//! same transaction as the outbox or inbox rows, together with a fresh random revision. A cached
//! session is used only while the stored revision is the one it was saved under, so a change made
//! by another connection (a `tincan send` while `tincan listen` runs) is always picked up.
//!
//! A session is taken out of the cache for the length of a transaction and put back only after
//! the commit succeeded, so a rolled-back transaction can never leave an advanced ratchet behind.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, Transaction, params};
use tincan_proto::identity::PickleKey;
use tincan_proto::ids::PeerId;
use tincan_proto::session::PeerSession;

use crate::error::ClientError;

/// Cached sessions by peer, each with the revision it was stored under.
#[derive(Default)]
pub(super) struct SessionCache {
    map: HashMap<PeerId, (i64, PeerSession)>,
}

/// A peer's session, taken for one transaction.
pub(super) struct Taken {
    pub session: PeerSession,
    /// The relay the peer uses.
    pub relay_url: String,
    /// Whether a re-pairing left a prior session (see `prior`).
    pub has_prior: bool,
    /// The peer's feature bits.
    pub features: u32,
}

impl SessionCache {
    /// Takes `peer`'s current session inside `tx`: the cached one if the stored revision still
    /// matches it, otherwise the stored pickle. `None` for an unknown peer.
    pub(super) fn take(
        &mut self,
        tx: &Transaction<'_>,
        key: &PickleKey,
        peer: &PeerId,
    ) -> Result<Option<Taken>, ClientError> {
        let cached = self.map.remove(peer);
        let cached_rev = cached.as_ref().map(|(rev, _)| *rev);
        let row: Option<(String, Option<String>, bool, i64)> = tx
            .prepare_cached(
                "SELECT relay_url, CASE WHEN session_rev IS ?2 THEN NULL ELSE session END, prior_session IS NOT NULL, features FROM peers WHERE id = ?1",
            )?
            .query_row(params![peer.to_string(), cached_rev], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        let Some((relay_url, pickled, has_prior, features)) = row else {
            return Ok(None);
        };
        let session = match (pickled, cached) {
            (None, Some((_, s))) => s,
            (Some(p), _) => PeerSession::from_pickle(*peer, &p, key)?,
            // The revision matched, so a cached session exists; kept total without a panic.
            (None, None) => return Ok(None),
        };
        Ok(Some(Taken {
            session,
            relay_url,
            has_prior,
            features: features as u32,
        }))
    }

    /// Puts a session back after the transaction that saved it under `rev` committed.
    pub(super) fn put(&mut self, rev: i64, session: PeerSession) {
        self.map.insert(session.peer(), (rev, session));
    }
}

/// Stores a peer's session inside a transaction under a fresh revision, which it returns.
pub(super) fn save(
    tx: &Transaction<'_>,
    key: &PickleKey,
    s: &PeerSession,
) -> Result<i64, ClientError> {
    let rev = new_rev();
    tx.prepare_cached("UPDATE peers SET session = ?1, session_rev = ?2 WHERE id = ?3")?
        .execute(params![s.pickle(key), rev, s.peer().to_string()])?;
    Ok(rev)
}

/// A fresh revision: random, so a peer deleted and paired again never reuses an old one.
pub(super) fn new_rev() -> i64 {
    // Zero is what rows written before revisions existed hold until their first save.
    rand::random::<i64>() | 1
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rusqlite::params;
    use tincan_proto::ids::PeerId;

    use super::super::fixtures::{self, kinds, take};
    use super::super::{Home, InboxKind, now_ms};

    /// A and B paired offline; returns (A, B, B's id).
    fn paired(dir: &std::path::Path) -> (Home, Home, PeerId) {
        let t = fixtures::paired(dir);
        (t.a, t.b, t.b_id)
    }

    /// Moves everything in `from`'s outbox into `to` and checks each opens as `kind`.
    fn deliver(from: &mut Home, to: &mut Home, from_id: PeerId, kind: InboxKind) -> usize {
        let rows = take(from);
        for k in kinds(to, from_id, &rows) {
            assert_eq!(k, kind);
        }
        rows.len()
    }

    fn stored_rev(h: &Home, peer: &PeerId) -> i64 {
        h.conn
            .query_row(
                "SELECT session_rev FROM peers WHERE id = ?1",
                params![peer.to_string()],
                |r| r.get(0),
            )
            .unwrap()
    }

    #[test]
    fn a_session_advanced_by_another_handle_on_the_same_home_is_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, mut b, b_id) = paired(dir.path());
        let a_id = a.identity().unwrap().peer_id();
        // B's first handle caches the session; a second handle (another process, say) then
        // advances the stored one. Reusing the cached copy would reuse a message key, which A
        // would reject as a replay.
        b.queue_texts(&a_id, &["one"], now_ms()).unwrap();
        assert!(b.sessions.map.contains_key(&a_id));
        let mut b2 = Home::open(&dir.path().join("b")).unwrap();
        b2.queue_texts(&a_id, &["two"], now_ms()).unwrap();
        b.queue_texts(&a_id, &["three"], now_ms()).unwrap();
        assert_eq!(deliver(&mut b, &mut a, b_id, InboxKind::Message), 3);
        let texts: Vec<_> = a
            .unconsumed(10)
            .unwrap()
            .into_iter()
            .filter_map(|e| e.text)
            .collect();
        assert_eq!(texts, ["one", "two", "three"]);
        // And the other way round, through A's cache after B's replies advanced its ratchet.
        a.queue_texts(&b_id, &["back"], now_ms()).unwrap();
        deliver(&mut a, &mut b2, a_id, InboxKind::Message);
        b.queue_texts(&a_id, &["after the turn"], now_ms()).unwrap();
        deliver(&mut b, &mut a, b_id, InboxKind::Message);
    }

    #[test]
    fn a_failed_transaction_drops_the_cached_session() {
        let dir = tempfile::tempdir().unwrap();
        let (a, mut b, _) = paired(dir.path());
        let a_id = a.identity().unwrap().peer_id();
        b.queue_texts(&a_id, &["one"], now_ms()).unwrap();
        let rev = stored_rev(&b, &a_id);
        assert_eq!(b.sessions.map.get(&a_id).map(|(r, _)| *r), Some(rev));
        // Make the outbox insert fail after the session advanced in memory.
        b.conn
            .execute_batch(
                "CREATE TEMP TRIGGER no_outbox BEFORE INSERT ON main.outbox BEGIN SELECT RAISE(ABORT, 'disk says no'); END;",
            )
            .unwrap();
        assert!(b.queue_texts(&a_id, &["lost"], now_ms()).is_err());
        assert!(
            !b.sessions.map.contains_key(&a_id),
            "the advanced session must not outlive its rolled-back transaction"
        );
        assert_eq!(stored_rev(&b, &a_id), rev);
        b.conn.execute_batch("DROP TRIGGER no_outbox;").unwrap();
        b.queue_texts(&a_id, &["two"], now_ms()).unwrap();
        assert_ne!(stored_rev(&b, &a_id), rev);
    }

    #[test]
    fn a_write_that_sets_no_revision_gets_a_fresh_one() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, _) = paired(dir.path());
        let a_id = a.identity().unwrap().peer_id();
        let rev = stored_rev(&b, &a_id);
        // As an older tincan would write it.
        b.conn
            .execute(
                "UPDATE peers SET session = session WHERE id = ?1",
                params![a_id.to_string()],
            )
            .unwrap();
        assert_ne!(stored_rev(&b, &a_id), rev);
    }
}
