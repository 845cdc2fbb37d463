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
    // 4: fewer pages written per message. "Handed to the application up to seq N" becomes one
    // watermark in `meta` instead of a flag rewritten on every inbox row (and the index on it);
    // `consumed = 1` stays only on rows set aside individually (withheld). `sent` is keyed by
    // message id alone (WITHOUT ROWID: one B-tree instead of a table plus its index). Rows are
    // copied as they are. (The outbox keeps AUTOINCREMENT: the connection reads it with a
    // cursor, so a seq must never come back after its row is gone.)
    "INSERT OR REPLACE INTO meta (key, value) VALUES ('consumed_through', COALESCE(
         (SELECT MIN(seq) - 1 FROM inbox WHERE consumed = 0), (SELECT MAX(seq) FROM inbox), 0));
     DROP INDEX IF EXISTS inbox_unconsumed;
     CREATE TABLE sent_v4 (
         msg_id TEXT PRIMARY KEY,
         peer TEXT NOT NULL,
         relay_seq INTEGER NOT NULL,
         acked_at INTEGER NOT NULL
     ) WITHOUT ROWID;
     INSERT INTO sent_v4 SELECT msg_id, peer, relay_seq, acked_at FROM sent;
     DROP TABLE sent;
     ALTER TABLE sent_v4 RENAME TO sent;",
    // 5: peer capabilities and batches. `features`: the bits the peer announced at pairing
    // (0 for peers paired under version 1). `members`: the ids of the texts after the first in
    // a batch row (16 bytes each), NULL for a row that carries one message.
    "ALTER TABLE peers ADD COLUMN features INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE outbox ADD COLUMN members BLOB;",
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

    /// Inbox seqs `unconsumed` would return (its WHERE clause).
    fn unconsumed(conn: &Connection) -> Vec<i64> {
        let mut stmt = conn
            .prepare(
                "SELECT seq FROM inbox WHERE seq > COALESCE(
                     (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'consumed_through'), 0)
                   AND consumed = 0 ORDER BY seq",
            )
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn a_version_3_home_keeps_what_was_consumed_and_its_sent_records() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(super::super::schema::SCHEMA).unwrap();
        // The tables as version 3 had them: a consumed flag per row with its index, `sent` as a
        // rowid table.
        conn.execute_batch(
            "DROP TABLE sent;
             CREATE TABLE sent (msg_id TEXT PRIMARY KEY, peer TEXT NOT NULL,
                 relay_seq INTEGER NOT NULL, acked_at INTEGER NOT NULL);
             CREATE INDEX inbox_unconsumed ON inbox (consumed, seq);",
        )
        .unwrap();
        for step in &STEPS[..3] {
            conn.execute_batch(step).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        // 1 and 2 shown, 3 not yet, 4 set aside (withheld) on its own.
        for (seq, consumed) in [(1, 1), (2, 1), (3, 0), (4, 1), (5, 0)] {
            conn.execute(
                "INSERT INTO inbox (seq, peer, msg_id, kind, text, sent_at, received_at, consumed)
                 VALUES (?1, 'p', ?1, 'message', 't', 1, 2, ?2)",
                rusqlite::params![seq, consumed],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO sent (msg_id, peer, relay_seq, acked_at) VALUES ('m', 'p', 7, 9)",
            [],
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        assert_eq!(unconsumed(&conn), vec![3, 5]);
        let relay_seq: i64 = conn
            .query_row("SELECT relay_seq FROM sent WHERE msg_id = 'm'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(relay_seq, 7);
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name IN ('inbox', 'sent')")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            !indexes
                .iter()
                .any(|n| n == "inbox_unconsumed" || n.starts_with("sqlite_autoindex_sent")),
            "{indexes:?}"
        );
        // The watermark only moves forward.
        super::super::deferred::write_consumed(&conn, 3).unwrap();
        assert_eq!(unconsumed(&conn), vec![5]);
        super::super::deferred::write_consumed(&conn, 1).unwrap();
        assert_eq!(unconsumed(&conn), vec![5]);
        super::super::deferred::write_consumed(&conn, 5).unwrap();
        assert!(unconsumed(&conn).is_empty());
    }

    #[test]
    fn a_new_home_starts_with_nothing_consumed() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(super::super::schema::SCHEMA).unwrap();
        migrate(&mut conn).unwrap();
        conn.execute(
            "INSERT INTO inbox (peer, msg_id, kind, text, sent_at, received_at) VALUES ('p', 'm', 'message', 't', 1, 2)",
            [],
        )
        .unwrap();
        assert_eq!(unconsumed(&conn), vec![1]);
    }
}
