//! Who may reach the agent: blocked peers, allowed peers and allowlist-only mode.
//!
//! The policy is enforced where inbox entries become events ([`Home::admit`]): an entry from a
//! peer the policy refuses is marked withheld (with the reason) and consumed, recorded in the
//! audit log, and never handed to the application, the `listen` command or an agent. It stays in
//! the inbox for the user to review; lifting a block later does not release it.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, params};
use serde_json::json;
use tincan_proto::ids::PeerId;

use super::messages::{InboxEntry, InboxKind};
use super::{Home, now_ms};
use crate::error::ClientError;

const ALLOWLIST_ONLY: &str = "allowlist_only";

/// A peer's standing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PeerPolicy {
    /// Nothing set: messages are shown unless allowlist-only mode is on.
    #[default]
    Default,
    /// Never shown.
    Blocked,
    /// Shown, also in allowlist-only mode.
    Allowed,
}

impl PeerPolicy {
    /// Stable name: `default`, `blocked`, `allowed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Blocked => "blocked",
            Self::Allowed => "allowed",
        }
    }

    fn column(self) -> Option<&'static str> {
        match self {
            Self::Default => None,
            Self::Blocked => Some("blocked"),
            Self::Allowed => Some("allowed"),
        }
    }

    fn from_column(c: Option<&str>) -> Self {
        match c {
            Some("blocked") => Self::Blocked,
            Some("allowed") => Self::Allowed,
            _ => Self::Default,
        }
    }
}

impl Home {
    /// Sets a peer's policy.
    pub fn set_peer_policy(&self, id: &PeerId, policy: PeerPolicy) -> Result<(), ClientError> {
        let n = self.conn.execute(
            "UPDATE peers SET policy = ?1 WHERE id = ?2",
            params![policy.column(), id.to_string()],
        )?;
        if n == 0 {
            return Err(ClientError::UnknownPeer(id.to_string()));
        }
        Ok(())
    }

    /// A peer's policy ([`PeerPolicy::Default`] for an unknown peer).
    pub fn peer_policy(&self, id: &PeerId) -> Result<PeerPolicy, ClientError> {
        Ok(self.peer_policies()?.remove(id).unwrap_or_default())
    }

    /// Every peer's policy.
    pub fn peer_policies(&self) -> Result<HashMap<PeerId, PeerPolicy>, ClientError> {
        let mut stmt = self.conn.prepare_cached("SELECT id, policy FROM peers")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
        })?;
        let mut out = HashMap::new();
        for row in rows {
            let (id, policy) = row?;
            if let Ok(id) = id.parse() {
                out.insert(id, PeerPolicy::from_column(policy.as_deref()));
            }
        }
        Ok(out)
    }

    /// Turns allowlist-only mode on or off: when on, only peers marked allowed are shown.
    pub fn set_allowlist_only(&self, on: bool) -> Result<(), ClientError> {
        self.set_setting(ALLOWLIST_ONLY, if on { "1" } else { "0" })
    }

    /// Whether allowlist-only mode is on.
    pub fn allowlist_only(&self) -> Result<bool, ClientError> {
        Ok(self.setting(ALLOWLIST_ONLY)?.as_deref() == Some("1"))
    }

    /// Why the policy refuses `kind` from `from`, if it does.
    pub fn refusal(
        &self,
        from: &PeerId,
        kind: InboxKind,
    ) -> Result<Option<&'static str>, ClientError> {
        let policy = self.peer_policy(from)?;
        refusal(policy, kind, || self.allowlist_only())
    }

    /// A peer's alias, Curve25519 key and policy in one read: what turning its inbox entries
    /// into events needs. `None` for an unknown peer.
    pub fn standing(&self, id: &PeerId) -> Result<Option<PeerStanding>, ClientError> {
        Ok(self
            .conn
            .prepare_cached("SELECT alias, curve25519, policy FROM peers WHERE id = ?1")?
            .query_row(params![id.to_string()], |r| {
                let curve: Vec<u8> = r.get(1)?;
                let curve25519 = curve.as_slice().try_into().map_err(|_| {
                    rusqlite::Error::InvalidColumnType(
                        1,
                        "curve25519".into(),
                        rusqlite::types::Type::Blob,
                    )
                })?;
                Ok(PeerStanding {
                    alias: r.get(0)?,
                    curve25519,
                    policy: PeerPolicy::from_column(r.get::<_, Option<String>>(2)?.as_deref()),
                })
            })
            .optional()?)
    }

    /// Applies the policy to an inbox entry about to become an event. Returns whether it may be
    /// shown; a refused entry is marked withheld and consumed, and the audit log records it once.
    pub fn admit(&self, e: &InboxEntry) -> Result<bool, ClientError> {
        let reason = self.refusal(&e.from, e.kind)?;
        Ok(self.admit_or_withhold(e, reason)?.is_none())
    }

    /// [`Home::admit`] with the sender's policy already read (see [`Home::standing`]);
    /// `allowlist_only` is asked only when it matters. Returns why the entry is withheld, or
    /// `None` when it may be shown.
    pub fn admit_with(
        &self,
        e: &InboxEntry,
        policy: PeerPolicy,
        allowlist_only: impl FnOnce() -> Result<bool, ClientError>,
    ) -> Result<Option<&'static str>, ClientError> {
        let reason = refusal(policy, e.kind, allowlist_only)?;
        self.admit_or_withhold(e, reason)
    }

    fn admit_or_withhold(
        &self,
        e: &InboxEntry,
        reason: Option<&'static str>,
    ) -> Result<Option<&'static str>, ClientError> {
        let Some(reason) = reason else {
            return Ok(None);
        };
        let n = self.conn.execute(
            "UPDATE inbox SET withheld = ?1, consumed = 1 WHERE seq = ?2 AND withheld IS NULL",
            params![reason, e.seq],
        )?;
        if n == 1 {
            tracing::info!(from = %e.from, reason, "withheld an inbox entry by policy");
            self.audit_append(
                "withheld",
                json!({
                    "peer": e.from.to_string(),
                    "message_id": e.id.to_string(),
                    "kind": e.kind.as_str(),
                    "reason": reason,
                    "received_at": e.received_at,
                }),
                now_ms(),
            )?;
        }
        Ok(Some(reason))
    }
}

/// A peer as [`Home::standing`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStanding {
    /// A local name, if set.
    pub alias: Option<String>,
    /// The peer's Curve25519 key.
    pub curve25519: [u8; 32],
    /// Its policy.
    pub policy: PeerPolicy,
}

impl PeerStanding {
    /// The fingerprint to compare out of band.
    pub fn fingerprint(&self, id: &PeerId) -> String {
        tincan_proto::ids::fingerprint(id.as_bytes(), &self.curve25519)
    }
}

fn refusal(
    policy: PeerPolicy,
    kind: InboxKind,
    allowlist_only: impl FnOnce() -> Result<bool, ClientError>,
) -> Result<Option<&'static str>, ClientError> {
    Ok(match (policy, kind) {
        (PeerPolicy::Blocked, _) => Some("peer is blocked"),
        // A join is shown in allowlist-only mode, so the user learns whom to allow.
        (PeerPolicy::Default, InboxKind::Message) if allowlist_only()? => {
            Some("allowlist-only mode and the peer is not allowed")
        }
        _ => None,
    })
}
