//! The relay's tables, and the migration from older layouts.
//!
//! Layout 3 (this one) keeps only what is still owed to a recipient in `queue`, a plain rowid
//! table in `seq` order with no secondary index; an ack deletes the row, so the relay keeps no
//! record of who wrote to whom once a message is delivered. Which seqs each recipient is owed and
//! which (sender, message id) each queued seq carries are indexed in the writer's memory
//! ([`super::queued`]): a resend of a queued message is recognised there, and after its ack by
//! the writer's in-memory window and the recipient's own check (docs/PROTOCOL.md). There is no
//! expiry index: rows are stored in `seq` order with a fixed TTL, so the sweep walks the oldest
//! rows. Sequence numbers are assigned by the writer and never reused: a ceiling above every one
//! handed out is kept in `meta` (reserved 4,096 at a time), so they keep increasing even after
//! every row that carried them is gone (HTTP cursors and redelivery depend on that).
//!
//! Layout 2 had the same table with `UNIQUE (sender, client_id)` and an index on
//! `(recipient, seq)`; it is migrated by copying the table once on open.
//! Layout 1 (the first release) kept every message in `messages`, acked ones without a body, and
//! is migrated in one transaction on open.

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;

/// `PRAGMA user_version` of this layout.
pub(super) const VERSION: i64 = 3;

/// Page size of a new relay database. Each commit writes whole pages; a commit of many 1 KiB
/// messages costs less CPU in 16 KiB pages than in 4 KiB ones (docs/BENCHMARKS.md). SQLite
/// applies it only to a database that has no tables yet.
pub(super) const PAGE_SIZE: i64 = 16_384;

/// How many invites one inviter (`?1`) has open at `?2` (unix seconds); served by the
/// `invites_open` index.
pub(super) const OPEN_INVITES: &str = "SELECT COUNT(*) FROM invites
    WHERE inviter = ?1 AND claimed_by IS NULL AND expires_at > ?2";

/// The queue table of layout 3.
pub(super) const QUEUE_TABLE: &str = "
CREATE TABLE IF NOT EXISTS queue (
    seq INTEGER PRIMARY KEY,
    recipient BLOB NOT NULL,
    sender BLOB NOT NULL,
    client_id BLOB NOT NULL,
    body BLOB NOT NULL,
    stored_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS invites (
    id BLOB PRIMARY KEY,
    inviter BLOB NOT NULL,
    expires_at INTEGER NOT NULL,
    claimed_by BLOB
);
-- The open-invite count of one inviter (max_open_invites), asked on every RegisterInvite: without
-- it that count scanned every invite ever registered, inside the single writer.
CREATE INDEX IF NOT EXISTS invites_open ON invites (inviter, expires_at) WHERE claimed_by IS NULL;
CREATE TABLE IF NOT EXISTS pairs (
    a BLOB NOT NULL,
    b BLOB NOT NULL,
    PRIMARY KEY (a, b)
) WITHOUT ROWID;
";

/// Creates or migrates the tables; returns the next sequence number to hand out.
pub(super) fn prepare(conn: &mut Connection) -> Result<u64, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > VERSION {
        return Err(StoreError::NewerLayout {
            found: version,
            supported: VERSION,
        });
    }
    tx.execute_batch(QUEUE_TABLE)?;
    tx.execute_batch(SCHEMA)?;
    if version == 2 {
        migrate_from_2(&tx)?;
    }
    let legacy: bool = tx
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if legacy {
        migrate_from_1(&tx)?;
    }
    tx.pragma_update(None, "user_version", VERSION)?;
    let last = last_seq(&tx)?;
    tx.commit()?;
    Ok(last + 1)
}

/// Layout 2 → 3: the queue is copied into a table without its two indexes, in `seq` order.
fn migrate_from_2(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch("ALTER TABLE queue RENAME TO queue_layout2;")?;
    tx.execute_batch(QUEUE_TABLE)?;
    tx.execute_batch(
        "INSERT INTO queue (seq, recipient, sender, client_id, body, stored_at, expires_at)
             SELECT seq, recipient, sender, client_id, body, stored_at, expires_at
             FROM queue_layout2 ORDER BY seq;
         DROP TABLE queue_layout2;",
    )?;
    tracing::info!("relay store migrated from layout 2 to layout {VERSION}");
    Ok(())
}

/// Layout 1 → 3: unacked messages move to `queue`; records of delivered ones are dropped.
fn migrate_from_1(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    let carried: Option<i64> = tx.query_row("SELECT MAX(seq) FROM messages", [], |r| r.get(0))?;
    tx.execute_batch(
        "INSERT INTO queue (seq, recipient, sender, client_id, body, stored_at, expires_at)
             SELECT seq, recipient, sender, client_id, body, stored_at, expires_at
             FROM messages WHERE acked = 0 AND body IS NOT NULL;
         DROP TABLE messages;",
    )?;
    if let Some(max) = carried {
        record_seq(tx, max as u64)?;
    }
    tracing::info!("relay store migrated from layout 1 to layout {VERSION}");
    Ok(())
}

/// The highest sequence number ever handed out (0 if none).
fn last_seq(tx: &rusqlite::Transaction<'_>) -> Result<u64, StoreError> {
    let recorded: Option<i64> = tx
        .query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
            r.get(0)
        })
        .optional()?;
    let in_queue: Option<i64> = tx.query_row("SELECT MAX(seq) FROM queue", [], |r| r.get(0))?;
    Ok([recorded, in_queue]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0)
        .max(0) as u64)
}

/// Records that sequence numbers up to `seq` have been handed out.
pub(super) fn record_seq(conn: &Connection, seq: u64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('last_seq', ?1)
         ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
    )?
    .execute(params![seq as i64])?;
    Ok(())
}

#[cfg(test)]
mod index_tests {
    use super::*;

    #[test]
    fn the_open_invite_count_uses_its_index_not_a_scan() {
        let mut conn = Connection::open_in_memory().unwrap();
        prepare(&mut conn).unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {OPEN_INVITES}"))
            .unwrap()
            .query_map(params![vec![0u8; 32], 0i64], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|step| step.contains("invites_open")),
            "{plan:?}"
        );
    }
}
