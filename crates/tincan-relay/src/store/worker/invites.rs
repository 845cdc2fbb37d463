//! The writer's invite claims: spending an invite and recording the pair it makes.

use rusqlite::{OptionalExtension, params};
use tincan_proto::frame::ErrorCode;
use tincan_proto::ids::{InviteId, PeerId};

use super::Worker;
use crate::metrics::Metrics;
use crate::store::{StoreError, pair_key, peer};

impl Worker {
    pub(super) fn claim(
        &mut self,
        claimer: PeerId,
        id: InviteId,
        now_ms: u64,
    ) -> Result<Result<PeerId, (ErrorCode, &'static str)>, StoreError> {
        let row: Option<(Vec<u8>, i64, Option<Vec<u8>>)> = self
            .conn
            .prepare_cached("SELECT inviter, expires_at, claimed_by FROM invites WHERE id = ?1")?
            .query_row(params![id.as_bytes()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let Some((inviter, expires_at, claimed_by)) = row else {
            return Ok(Err((
                ErrorCode::InviteUnknown,
                "this relay does not know the invite: it was never registered here, or it expired and was removed",
            )));
        };
        let Some(inviter) = peer(&inviter) else {
            return Ok(Err((ErrorCode::InviteUnknown, "invite record is damaged")));
        };
        if claimed_by.is_some() {
            return Ok(Err((
                ErrorCode::InviteUsed,
                "invite already used; ask the inviter for a new one",
            )));
        }
        if (expires_at as u64).saturating_mul(1000) <= now_ms {
            return Ok(Err((
                ErrorCode::InviteExpired,
                "invite expired; ask the inviter for a new one",
            )));
        }
        if inviter == claimer {
            return Ok(Err((
                ErrorCode::InviteUnknown,
                "you cannot accept your own invite",
            )));
        }
        // Before the invite is spent: a refused claim leaves it usable on a relay with room.
        if self.pairs.len() as u64 >= self.max_pairs
            && !self.pairs.contains(&pair_key(inviter, claimer))
        {
            Metrics::inc(&self.metrics.refused_max_pairs);
            return Ok(Err((
                ErrorCode::StorageFull,
                "this relay keeps no more pairs (max_pairs); ask its operator, or pair on another relay",
            )));
        }
        let claimed = self
            .conn
            .prepare_cached(
                "UPDATE invites SET claimed_by = ?1 WHERE id = ?2 AND claimed_by IS NULL",
            )?
            .execute(params![claimer.as_bytes(), id.as_bytes()])?;
        // The check above and this update run in the one writer, so this cannot lose a race
        // today; it is what makes the claim single-use on its own if that ever changes.
        if claimed != 1 {
            return Ok(Err((
                ErrorCode::InviteUsed,
                "invite already used; ask the inviter for a new one",
            )));
        }
        let (a, b) = pair_key(inviter, claimer);
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO pairs (a, b) VALUES (?1, ?2)")?
            .execute(params![a.as_bytes(), b.as_bytes()])?;
        Ok(Ok(inviter))
    }
}
