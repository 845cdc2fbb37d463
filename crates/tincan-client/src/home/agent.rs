//! What an agent has been shown: the inbox as an AI agent's tools see it.
//!
//! An agent sees a message in two ways: pushed into its context when it arrives (best effort, rate
//! limited), and returned by an explicit check. These are tracked per inbox entry
//! (`pushed_at`, `returned_at`) and independently of `consumed` (which only means the event was
//! handed to a [`crate::Client`]): a message is returned by a check exactly once, whether or not
//! it was pushed, so a client that ignores pushes loses nothing.

use rusqlite::params;
use tincan_proto::ids::{MessageId, PeerId};

use super::Home;
use crate::error::ClientError;

/// A message as shown to an agent.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentMessage {
    /// Local order.
    pub seq: i64,
    /// Sender.
    pub from: PeerId,
    /// Sender's alias here, if any.
    pub from_name: Option<String>,
    /// Message id.
    pub id: MessageId,
    /// The text: untrusted input from the peer.
    pub text: String,
    /// Sender's clock, unix ms.
    pub sent_at: u64,
    /// When it arrived here, unix ms.
    pub received_at: u64,
    /// Whether it was already pushed into the agent's context.
    pub pushed: bool,
}

impl std::fmt::Debug for AgentMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMessage")
            .field("seq", &self.seq)
            .field("from", &self.from)
            .field("id", &self.id)
            .field("pushed", &self.pushed)
            .finish_non_exhaustive()
    }
}

/// Messages not yet returned to the agent, with the peer policy applied at query time (an entry
/// may be stored before [`Home::admit`] has seen it).
const PENDING: &str = "
    FROM inbox i LEFT JOIN peers p ON p.id = i.peer
    WHERE i.kind = 'message' AND i.withheld IS NULL AND i.returned_at IS NULL
      AND (p.policy IS NULL OR p.policy != 'blocked')
      AND (?1 = 0 OR p.policy = 'allowed')
      AND (?2 IS NULL OR i.peer = ?2)";

impl Home {
    /// Messages the agent has not been given by a check yet, oldest first.
    pub fn agent_pending(
        &self,
        from: Option<&PeerId>,
        limit: usize,
    ) -> Result<Vec<AgentMessage>, ClientError> {
        let allowlist = i64::from(self.allowlist_only()?);
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT i.seq, i.peer, p.alias, i.msg_id, i.text, i.sent_at, i.received_at, i.pushed_at IS NOT NULL
             {PENDING} ORDER BY i.seq LIMIT ?3"
        ))?;
        let from = from.map(ToString::to_string);
        let rows = stmt.query_map(params![allowlist, from, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, bool>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, peer, alias, id, text, sent_at, received_at, pushed) = row?;
            if let (Ok(from), Ok(id)) = (peer.parse(), id.parse()) {
                out.push(AgentMessage {
                    seq,
                    from,
                    from_name: alias,
                    id,
                    text: text.unwrap_or_default(),
                    sent_at: sent_at as u64,
                    received_at: received_at as u64,
                    pushed,
                });
            }
        }
        Ok(out)
    }

    /// How many messages wait for a check (from one peer, or from all).
    pub fn agent_pending_count(&self, from: Option<&PeerId>) -> Result<u64, ClientError> {
        let allowlist = i64::from(self.allowlist_only()?);
        let from = from.map(ToString::to_string);
        let n: i64 = self.conn.query_row(
            &format!("SELECT COUNT(*) {PENDING}"),
            params![allowlist, from],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Messages waiting for a check that were never pushed and will not be (they were handed to
    /// a client before this one started, so no event comes for them again): what a restarted
    /// server tells the agent about, since no push will.
    pub fn agent_unannounced_count(&self) -> Result<u64, ClientError> {
        let allowlist = i64::from(self.allowlist_only()?);
        let n: i64 = self.conn.query_row(
            &format!(
                "SELECT COUNT(*) {PENDING} AND i.pushed_at IS NULL
                 AND NOT (i.consumed = 0 AND i.seq > COALESCE(
                     (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'consumed_through'), 0))"
            ),
            params![allowlist, Option::<String>::None],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Records that a check returned these entries.
    pub fn mark_returned(&mut self, seqs: &[i64], now_ms: u64) -> Result<(), ClientError> {
        let tx = self.conn.transaction()?;
        for seq in seqs {
            tx.prepare_cached(
                "UPDATE inbox SET returned_at = ?2 WHERE seq = ?1 AND returned_at IS NULL",
            )?
            .execute(params![seq, now_ms as i64])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Claims the right to push a message: true once, and only while a check has not returned it
    /// yet (pushing what the agent already read would repeat it in its context).
    pub fn claim_push(
        &self,
        from: &PeerId,
        id: &MessageId,
        now_ms: u64,
    ) -> Result<bool, ClientError> {
        let n = self.conn.execute(
            "UPDATE inbox SET pushed_at = ?3 WHERE peer = ?1 AND msg_id = ?2
             AND pushed_at IS NULL AND returned_at IS NULL AND withheld IS NULL",
            params![from.to_string(), id.to_string(), now_ms as i64],
        )?;
        Ok(n == 1)
    }
}
