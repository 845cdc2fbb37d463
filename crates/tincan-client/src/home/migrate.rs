//! Schema migrations for homes made by older versions, keyed by `PRAGMA user_version`.
//!
//! `SCHEMA` creates missing tables with `CREATE TABLE IF NOT EXISTS`, which cannot add a column to
//! a table that already exists. Each step here runs once, in order, inside one transaction with
//! the version bump, so a home is never left half-migrated.

use rusqlite::{Connection, TransactionBehavior};

use crate::error::ClientError;

/// Step `i` takes a home from version `i` to `i + 1`.
const STEPS: &[&str] = &[
    // 1: peer policy (block / allow) and the agent-facing state of inbox entries.
    "ALTER TABLE peers ADD COLUMN policy TEXT;
     ALTER TABLE inbox ADD COLUMN withheld TEXT;
     ALTER TABLE inbox ADD COLUMN pushed_at INTEGER;
     ALTER TABLE inbox ADD COLUMN returned_at INTEGER;
     UPDATE inbox SET returned_at = received_at WHERE consumed = 1;
     CREATE INDEX IF NOT EXISTS inbox_agent ON inbox (returned_at, seq);",
    // 2: a revision for each stored session, so a process can keep the session unpickled in
    // memory and reload it only when another writer changed it (see `session_cache`). The
    // triggers give a fresh revision to any write that did not set one itself (an older tincan
    // sharing this home), so a stale cached session is always noticed.
    "ALTER TABLE peers ADD COLUMN session_rev INTEGER NOT NULL DEFAULT 0;
     UPDATE peers SET session_rev = random();
     CREATE TRIGGER IF NOT EXISTS peers_session_rev_insert AFTER INSERT ON peers
       WHEN NEW.session_rev = 0
       BEGIN UPDATE peers SET session_rev = random() WHERE id = NEW.id; END;
     CREATE TRIGGER IF NOT EXISTS peers_session_rev_update AFTER UPDATE OF session ON peers
       WHEN NEW.session_rev IS OLD.session_rev
       BEGIN UPDATE peers SET session_rev = random() WHERE id = NEW.id; END;",
    // 3: the session a re-pairing replaced, until the peer has moved on (see `prior`).
    "ALTER TABLE peers ADD COLUMN prior_session TEXT;
     ALTER TABLE peers ADD COLUMN prior_until INTEGER;",
];

/// Brings the database up to the newest version.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), ClientError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let from = usize::try_from(version).unwrap_or(usize::MAX);
    for (i, step) in STEPS.iter().enumerate().skip(from) {
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_old_home_gains_the_new_columns_and_keeps_its_rows() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(super::super::schema::SCHEMA).unwrap();
        conn.execute(
            "INSERT INTO inbox (peer, msg_id, kind, text, sent_at, received_at, consumed) VALUES ('p', 'm', 'message', 't', 1, 2, 1)",
            [],
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap(); // idempotent
        let (returned, withheld): (Option<i64>, Option<String>) = conn
            .query_row("SELECT returned_at, withheld FROM inbox", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(
            returned,
            Some(2),
            "history already shown is not shown again"
        );
        assert_eq!(withheld, None);
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, STEPS.len() as i64);
    }
}
