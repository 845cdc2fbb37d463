//! The session a re-pairing replaced, kept to open what the peer sealed before it switched.
//!
//! Pairing again with a peer you are already paired with (accepting a second invite from it, or
//! it accepting one from you) replaces the pairwise session on both sides, but not at the same
//! instant: what the peer sent on the old session before it saw the new one is still on its way.
//! Those messages would fail to open with the new session and be lost. So the replaced session is
//! kept as `peers.prior_session` and tried when the current one cannot open a message.
//!
//! It is kept only as long as such messages can exist. The relay delivers one sender's messages in
//! order, so once a message from the peer opens with the current session, nothing sealed on the
//! old one can follow, and the prior session is deleted ([`retire`]). And it is never kept past
//! [`WINDOW_MS`] (the relay's default message lifetime), so a forgotten re-pairing does not leave
//! an old session usable forever: re-pairing is also how a user starts over after suspecting a
//! session leaked.

use rusqlite::{OptionalExtension, Transaction, params};
use tincan_proto::envelope::Envelope;
use tincan_proto::identity::{Identity, PickleKey};
use tincan_proto::ids::PeerId;
use tincan_proto::session::PeerSession;

use super::messages::Incoming;
use crate::error::ClientError;

/// How long a replaced session may still open messages (7 days, the relay's default TTL).
pub(super) const WINDOW_MS: u64 = 7 * 24 * 3600 * 1000;

/// Tries `d` with `d.from`'s prior session. On success the prior session's advanced state is
/// stored in `tx` and the envelope returned; `None` if there is none, it expired, or it fails.
pub(super) fn open(
    tx: &Transaction<'_>,
    key: &PickleKey,
    me: &Identity,
    d: &Incoming,
    now_ms: u64,
) -> Result<Option<Envelope>, ClientError> {
    let row: Option<(Option<String>, Option<i64>)> = tx
        .prepare_cached("SELECT prior_session, prior_until FROM peers WHERE id = ?1")?
        .query_row(params![d.from.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((Some(pickled), until)) = row else {
        return Ok(None);
    };
    if until.is_none_or(|u| u < now_ms as i64) {
        retire(tx, &d.from)?;
        return Ok(None);
    }
    let Ok(mut prior) = PeerSession::from_pickle(d.from, &pickled, key) else {
        return Ok(None);
    };
    let Ok(env) = prior.open(me, d.from, &d.body) else {
        return Ok(None);
    };
    tx.prepare_cached("UPDATE peers SET prior_session = ?1 WHERE id = ?2")?
        .execute(params![prior.pickle(key), d.from.to_string()])?;
    Ok(Some(env))
}

/// Deletes `peer`'s prior session: the peer has moved to the current one.
pub(super) fn retire(tx: &Transaction<'_>, peer: &PeerId) -> Result<(), ClientError> {
    tx.prepare_cached(
        "UPDATE peers SET prior_session = NULL, prior_until = NULL WHERE id = ?1 AND prior_session IS NOT NULL",
    )?
    .execute(params![peer.to_string()])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rusqlite::params;
    use tincan_proto::ids::PeerId;

    use super::super::fixtures::{accept, kinds, paired, take};
    use super::super::{Home, InboxKind, now_ms};

    /// Pairs again: B accepts a further invite from A, A opens the join.
    fn pair_again(t: &mut super::super::fixtures::Two) {
        accept(t);
        let join = take(&mut t.b);
        assert_eq!(kinds(&mut t.a, t.b_id, &join), [InboxKind::PeerJoined]);
    }

    fn prior_kept(h: &Home, peer: &PeerId) -> bool {
        h.conn
            .query_row(
                "SELECT prior_session IS NOT NULL FROM peers WHERE id = ?1",
                params![peer.to_string()],
                |r| r.get(0),
            )
            .unwrap()
    }

    #[test]
    fn pairing_again_loses_nothing_sealed_on_the_old_session() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = paired(dir.path());
        // Both sides talk on the first session; A has two more on the way when B pairs again.
        t.a.queue_texts(&t.b_id, &["first"], now_ms()).unwrap();
        let rows = take(&mut t.a);
        assert_eq!(kinds(&mut t.b, t.a_id, &rows), [InboxKind::Message]);
        // (Queued one by one: two rows, not one batch.)
        for text in ["old 1", "old 2"] {
            t.a.queue_texts(&t.b_id, &[text], now_ms()).unwrap();
        }
        let old = take(&mut t.a);
        pair_again(&mut t); // B accepts a second invite from A: both sides replace the session
        assert!(prior_kept(&t.a, &t.b_id) && prior_kept(&t.b, &t.a_id));
        // B opens what A sealed before it saw the new session.
        assert_eq!(
            kinds(&mut t.b, t.a_id, &old[..1]),
            [InboxKind::Message],
            "a message sealed on the replaced session must not be lost"
        );
        // The new session works both ways; its first message retires the prior session.
        t.a.queue_texts(&t.b_id, &["new"], now_ms()).unwrap();
        let new = take(&mut t.a);
        assert_eq!(kinds(&mut t.b, t.a_id, &new), [InboxKind::Message]);
        assert!(!prior_kept(&t.b, &t.a_id));
        // After that, the old session opens nothing (a relay holding one back gains nothing).
        assert_eq!(kinds(&mut t.b, t.a_id, &old[1..]), [InboxKind::Rejected]);
        t.b.queue_texts(&t.a_id, &["back"], now_ms()).unwrap();
        let back = take(&mut t.b);
        assert_eq!(kinds(&mut t.a, t.b_id, &back), [InboxKind::Message]);
        assert!(!prior_kept(&t.a, &t.b_id));
        let texts: Vec<_> =
            t.b.unconsumed(10)
                .unwrap()
                .into_iter()
                .filter(|e| e.kind == InboxKind::Message)
                .filter_map(|e| e.text)
                .collect();
        assert_eq!(texts, ["first", "old 1", "new"]);
    }

    #[test]
    fn an_expired_prior_session_opens_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = paired(dir.path());
        t.a.queue_texts(&t.b_id, &["old"], now_ms()).unwrap();
        let old = take(&mut t.a);
        pair_again(&mut t);
        t.b.conn
            .execute(
                "UPDATE peers SET prior_until = ?1 WHERE id = ?2",
                params![now_ms() as i64 - 1, t.a_id.to_string()],
            )
            .unwrap();
        assert_eq!(kinds(&mut t.b, t.a_id, &old), [InboxKind::Rejected]);
        assert!(
            !prior_kept(&t.b, &t.a_id),
            "an expired prior session is deleted"
        );
    }
}
