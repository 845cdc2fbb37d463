//! Invites made by this agent and invites it accepts.

use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};
use tincan_proto::identity::Identity;
use tincan_proto::ids::{InviteId, MessageId, PeerId};
use tincan_proto::invite::{Invite, InviteDraft, PendingInvite};
use tincan_proto::session::PeerSession;

use super::{Home, peers, random16};
use crate::error::ClientError;

fn accepted_key(id: &InviteId) -> String {
    format!("accepted_invite.{id}")
}

impl Home {
    /// Makes an invite valid for `ttl_secs`, storing its one-time key's secret in the account.
    pub fn create_invite(
        &mut self,
        relay_url: &str,
        ttl_secs: u64,
        now: u64,
    ) -> Result<InviteDraft, ClientError> {
        self.identity()?;
        let key = self.key.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut identity = load_identity_tx(&tx, &key)?;
        let draft = identity.create_invite(relay_url, random16(), now.saturating_add(ttl_secs));
        let p = draft.pending();
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'identity'",
            params![identity.pickle(&key)],
        )?;
        tx.execute(
            "INSERT INTO invites (id, one_time_key, expires_at, relay_url, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![p.id.to_string(), p.one_time_key.as_slice(), p.expires_at as i64, p.relay_url, now as i64],
        )?;
        tx.commit()?;
        Ok(draft)
    }

    /// Forgets an invite that never reached the relay.
    pub fn drop_invite(&self, id: &InviteId) -> Result<(), ClientError> {
        self.conn.execute(
            "DELETE FROM invites WHERE id = ?1 AND used_by IS NULL",
            params![id.to_string()],
        )?;
        Ok(())
    }

    /// Opens the session for an invite the relay has let this agent claim, and queues the join
    /// message in the outbox. Returns the join message's id.
    pub fn accept_invite(
        &mut self,
        invite: &Invite,
        now_ms: u64,
    ) -> Result<MessageId, ClientError> {
        let me = self.identity()?;
        if invite.inviter.ed25519 == me.peer_id() {
            return Err(ClientError::OwnInvite);
        }
        let msg_id = random16();
        let (session, join) = PeerSession::accept_invite(me, invite, msg_id, now_ms)?;
        let key = self.key.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let rev = peers::upsert_peer(
            &tx,
            &key,
            &peers::Paired {
                id: &invite.inviter.ed25519,
                curve25519: &invite.inviter.curve25519,
                relay_url: &invite.relay_url,
                features: invite.features.unwrap_or(0),
            },
            &session,
            now_ms / 1000,
        )?;
        super::messages::push_outbox(
            &tx,
            &invite.inviter.ed25519.to_string(),
            &MessageId::from_bytes(msg_id),
            &invite.relay_url,
            &join,
            now_ms,
        )?;
        // Which invite this home took, so running the same accept again can be told apart from
        // someone else having used it (`accepted_invite`).
        tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![accepted_key(&invite.id), invite.inviter.ed25519.to_string()],
        )?;
        tx.commit()?;
        self.sessions.put(rev, session);
        Ok(MessageId::from_bytes(msg_id))
    }

    /// The inviter of invite `id` if this home accepted it (and so the relay's `invite_used`
    /// for it means this home's own earlier claim, not someone else's).
    pub fn accepted_invite(&self, id: &InviteId) -> Result<Option<PeerId>, ClientError> {
        let v: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                params![accepted_key(id)],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.and_then(|v| v.parse().ok()))
    }

    /// Relay URLs of invites still waiting for an accepter.
    pub fn open_invite_relays(&self, now: u64) -> Result<Vec<String>, ClientError> {
        let mut stmt = self.conn.prepare(
            "SELECT DISTINCT relay_url FROM invites WHERE used_by IS NULL AND expires_at > ?1",
        )?;
        let rows = stmt.query_map(params![now as i64], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

pub(super) fn load_identity_tx(
    tx: &Transaction<'_>,
    key: &tincan_proto::identity::PickleKey,
) -> Result<Identity, ClientError> {
    let pickled: Option<String> = tx
        .query_row("SELECT value FROM meta WHERE key = 'identity'", [], |r| {
            r.get(0)
        })
        .optional()?;
    let p = pickled.ok_or(ClientError::NoIdentity)?;
    Identity::from_pickle(&p, key).map_err(|_| ClientError::BadKeyFile)
}

/// How long after its expiry an invite still opens a session. The relay refuses claims after
/// expiry, but the join can wait in the relay's queue while the inviter is offline; the one-time
/// key still opens at most one session.
const JOIN_GRACE_SECS: u64 = 7 * 24 * 3600;

/// The open invite whose one-time key is `otk`, if any.
pub(super) fn pending_by_otk(
    tx: &Transaction<'_>,
    otk: &[u8; 32],
    now: u64,
) -> Result<Option<PendingInvite>, ClientError> {
    let row: Option<(String, i64, String)> = tx
        .query_row(
            "SELECT id, expires_at, relay_url FROM invites WHERE one_time_key = ?1 AND used_by IS NULL AND expires_at > ?2",
            params![otk.as_slice(), now.saturating_sub(JOIN_GRACE_SECS) as i64],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    Ok(row.and_then(|(id, expires_at, relay_url)| {
        Some(PendingInvite {
            id: id.parse().ok()?,
            one_time_key: *otk,
            expires_at: expires_at as u64,
            relay_url,
        })
    }))
}

pub(super) fn mark_used(
    tx: &Transaction<'_>,
    id: &InviteId,
    by: &tincan_proto::ids::PeerId,
) -> Result<(), ClientError> {
    tx.execute(
        "UPDATE invites SET used_by = ?1 WHERE id = ?2",
        params![by.to_string(), id.to_string()],
    )?;
    Ok(())
}
