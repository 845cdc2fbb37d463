//! Erasing old message text (`tincan prune`): a home keeps every received text in the clear until
//! told otherwise, so a copy of its database is a copy of the conversation history. Pruning takes
//! the text out of the table *and* out of the files: freed space is zeroed (`secure_delete`), the
//! database is rebuilt from its current rows (`VACUUM`: pages reused as the tables grew can hold
//! stale copies of rows), and the WAL, which still holds the old pages, is truncated.

use rusqlite::{TransactionBehavior, params};

use super::Home;
use crate::error::ClientError;

/// What [`Home::prune`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Entries whose text was erased.
    pub erased: u64,
    /// Entries received before the cutoff that no reader has had yet: kept whole.
    pub kept_unread: u64,
    /// Send receipts (ids of messages the relay acknowledged) forgotten.
    pub receipts_forgotten: u64,
    /// Whether the WAL could be truncated. `false` when another process using this home (a
    /// `listen`, a `serve`) held a read transaction at that moment: the erased text may then
    /// remain in the `-wal` file until SQLite reuses that part of it.
    pub wal_truncated: bool,
}

/// Entries some reader has had: the event stream (`listen`, `serve`, the SDK: the
/// `consumed_through` watermark or a per-entry mark), or the MCP agent (`returned_at`).
const HANDED_OVER: &str = "(seq <= COALESCE(
        (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'consumed_through'), 0)
     OR consumed = 1 OR returned_at IS NOT NULL)";

impl Home {
    /// Erases the text of every inbox entry received before `before_ms` that a reader has had,
    /// and forgets the receipts of sends acknowledged before it.
    ///
    /// An erased entry keeps its sender, id, kind and times, so a late redelivery of it is still
    /// recognised as a duplicate and never shown again; it is also marked returned, so the MCP
    /// agent is not offered an empty message. Entries no reader has had are kept whole, however
    /// old: pruning never drops an unread message. After the commit, a `TRUNCATE` checkpoint
    /// empties the WAL (see [`Pruned::wal_truncated`]).
    pub fn prune(&mut self, before_ms: u64, now_ms: u64) -> Result<Pruned, ClientError> {
        self.flush_deferred()?;
        let was: i64 = self
            .conn
            .query_row("PRAGMA secure_delete", [], |r| r.get(0))?;
        self.conn.pragma_update(None, "secure_delete", true)?;
        let result = self.prune_rows(before_ms as i64, now_ms as i64);
        self.conn.pragma_update(None, "secure_delete", was)?;
        let mut pruned = result?;
        // Zeroing what the erase freed is not enough: pages the tables split and reused as
        // they grew (long before this prune) can still hold stale copies of rows, text
        // included. VACUUM rebuilds the database from its current rows only, and the
        // checkpoint below writes that image over the file and cuts it to size. Run every time,
        // so a prune that failed here is finished by the next one.
        self.conn.execute_batch("VACUUM")?;
        // `busy` is 1 when a reader, or this home's own background checkpoint running at that
        // moment (which SQLite does not wait for), kept the checkpoint from finishing: a few
        // tries over half a second get past the latter.
        for attempt in 0..25 {
            let busy: i64 = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
            pruned.wal_truncated = busy == 0;
            if pruned.wal_truncated {
                break;
            }
            if attempt < 24 {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        Ok(pruned)
    }

    fn prune_rows(&mut self, before: i64, now: i64) -> Result<Pruned, ClientError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let erased = tx.execute(
            &format!(
                "UPDATE inbox SET text = NULL, returned_at = COALESCE(returned_at, ?2)
                 WHERE received_at < ?1 AND text IS NOT NULL AND {HANDED_OVER}"
            ),
            params![before, now],
        )?;
        let kept_unread: i64 = tx.query_row(
            "SELECT COUNT(*) FROM inbox WHERE received_at < ?1 AND text IS NOT NULL",
            params![before],
            |r| r.get(0),
        )?;
        let receipts = tx.execute("DELETE FROM sent WHERE acked_at < ?1", params![before])?;
        tx.commit()?;
        Ok(Pruned {
            erased: erased as u64,
            kept_unread: kept_unread as u64,
            receipts_forgotten: receipts as u64,
            wal_truncated: false,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::fixtures::{kinds, paired, take};
    use super::super::{InboxKind, Incoming, Processed, now_ms};

    /// Whether `needle` occurs in the home's database file or its WAL.
    fn on_disk(dir: &std::path::Path, needle: &str) -> bool {
        ["tincan.db", "tincan.db-wal"].iter().any(|f| {
            std::fs::read(dir.join(f))
                .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
                .unwrap_or(false)
        })
    }

    #[test]
    fn read_text_is_erased_from_the_files_and_unread_text_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = paired(dir.path());
        let bdir = dir.path().join("b");
        // Long enough to need an overflow page, short enough for one: both kinds of cell.
        let (old_read, old_unread) = ("OLD-READ-".repeat(600), "OLD-UNREAD-secret".to_string());
        t.a.queue_texts(&t.b_id, &[old_read.as_str()], now_ms())
            .unwrap();
        let rows = take(&mut t.a);
        assert_eq!(kinds(&mut t.b, t.a_id, &rows), [InboxKind::Message]);
        let read = t.b.unconsumed(10).unwrap();
        t.b.mark_consumed(read.last().unwrap().seq).unwrap();
        t.a.queue_texts(&t.b_id, &[old_unread.as_str()], now_ms())
            .unwrap();
        let rows = take(&mut t.a);
        kinds(&mut t.b, t.a_id, &rows);
        assert!(
            on_disk(&bdir, &old_read[..200]),
            "the text is on disk before"
        );

        let cutoff = now_ms() + 1;
        let p = t.b.prune(cutoff, cutoff).unwrap();
        assert_eq!((p.erased, p.kept_unread), (1, 1), "{p:?}");
        assert!(p.wal_truncated);
        assert!(
            !on_disk(&bdir, "OLD-READ-"),
            "erased text is gone from the files"
        );
        assert!(on_disk(&bdir, &old_unread), "unread text is kept");
        let unread = t.b.unconsumed(10).unwrap();
        assert_eq!(unread.len(), 1);
        assert_eq!(unread[0].text.as_deref(), Some(old_unread.as_str()));
        // The agent is not offered the erased entry.
        let pending = t.b.agent_pending(None, 10).unwrap();
        assert_eq!(pending.len(), 1, "only the unread message");
    }

    #[test]
    fn erased_text_is_gone_from_pages_that_table_growth_split_and_reused_earlier() {
        // Enough rows that the inbox table splits its pages several times as it grows: a page
        // that held rows and was reused (an interior page, a freed page) kept stale copies of
        // their text, which erasing the rows themselves did not reach.
        let dir = tempfile::tempdir().unwrap();
        let mut t = paired(dir.path());
        let bdir = dir.path().join("b");
        let texts: Vec<String> = (0..120)
            .map(|i| format!("SPLIT-SECRET-{i:03}-{}", "p".repeat(90)))
            .collect();
        for chunk in texts.chunks(10) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            t.a.queue_texts(&t.b_id, &refs, now_ms()).unwrap();
            let rows = take(&mut t.a);
            kinds(&mut t.b, t.a_id, &rows);
        }
        let read = t.b.unconsumed(1000).unwrap();
        assert_eq!(read.len(), 120);
        t.b.mark_consumed(read.last().unwrap().seq).unwrap();
        let cutoff = now_ms() + 1;
        let p = t.b.prune(cutoff, cutoff).unwrap();
        assert_eq!(p.erased, 120, "{p:?}");
        assert!(p.wal_truncated);
        assert!(
            !on_disk(&bdir, "SPLIT-SECRET-"),
            "erased text is gone from every page of the files"
        );
    }

    #[test]
    fn an_erased_message_delivered_again_is_still_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = paired(dir.path());
        t.a.queue_texts(&t.b_id, &["once"], now_ms()).unwrap();
        let rows = take(&mut t.a);
        kinds(&mut t.b, t.a_id, &rows);
        let seq = t.b.unconsumed(10).unwrap().last().unwrap().seq;
        t.b.mark_consumed(seq).unwrap();
        let p = t.b.prune(now_ms() + 1, now_ms()).unwrap();
        assert!(p.erased >= 1);
        // The relay delivers the same envelope again (its ack was lost): nothing new appears.
        let again: Vec<Incoming> = rows
            .iter()
            .map(|r| Incoming {
                relay_seq: r.seq as u64,
                from: t.a_id,
                id: r.id,
                body: r.body.clone(),
            })
            .collect();
        let out = t.b.process_incoming(&again, now_ms()).unwrap();
        assert!(matches!(out.as_slice(), [Processed::Duplicate]), "{out:?}");
        assert!(t.b.unconsumed(10).unwrap().is_empty());
    }

    #[test]
    fn newer_entries_and_receipts_are_untouched_and_older_receipts_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = paired(dir.path());
        let ids = t.a.queue_texts(&t.b_id, &["recent"], now_ms()).unwrap();
        let rows = take(&mut t.a);
        kinds(&mut t.b, t.a_id, &rows);
        let seq = t.b.unconsumed(10).unwrap().last().unwrap().seq;
        t.b.mark_consumed(seq).unwrap();
        let an_hour_ago = now_ms() - 3_600_000;
        assert_eq!(t.b.prune(an_hour_ago, now_ms()).unwrap().erased, 0);
        assert_eq!(
            t.a.prune(an_hour_ago, now_ms()).unwrap().receipts_forgotten,
            0
        );
        assert!(t.a.is_sent(&ids[0]).unwrap());
        let p = t.a.prune(now_ms() + 1, now_ms()).unwrap();
        assert_eq!(p.receipts_forgotten, 1, "the text's receipt");
        assert!(!t.a.is_sent(&ids[0]).unwrap());
    }
}
