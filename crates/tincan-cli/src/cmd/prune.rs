//! `tincan prune --older-than DURATION`: erase the text of old messages that were read.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::json;
use tincan_client::now_ms;

use crate::cmd::open_home;
use crate::output::{CliError, Out};

/// `prune` arguments.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Erase messages received longer ago than this, e.g. 7d, 12h, 30m (required).
    #[arg(long, value_parser = crate::cli::parse_duration)]
    pub older_than: u64,
}

pub fn run(home: Option<PathBuf>, args: PruneArgs, out: &Out) -> Result<ExitCode, CliError> {
    let mut h = open_home(home)?;
    let now = now_ms();
    let before = now.saturating_sub(args.older_than.saturating_mul(1000));
    let p = h.prune(before, now)?;
    out.print(
        json!({
            "erased": p.erased,
            "kept_unread": p.kept_unread,
            "receipts_forgotten": p.receipts_forgotten,
            "wal_truncated": p.wal_truncated,
            "before": before,
        }),
        || {
            let mut lines = vec![format!(
                "erased the text of {} message(s) received more than {} ago",
                p.erased,
                crate::cmd::human_secs(args.older_than)
            )];
            if p.kept_unread > 0 {
                lines.push(format!(
                    "kept {} older message(s) that nothing has read yet (read them with `tincan listen`, then prune again)",
                    p.kept_unread
                ));
            }
            if p.receipts_forgotten > 0 {
                lines.push(format!(
                    "forgot {} send receipt(s) of the same age",
                    p.receipts_forgotten
                ));
            }
            if !p.wal_truncated {
                lines.push(
                    "another process using this home was reading it, so the old text may stay in tincan.db-wal until it is reused; run prune again later".into(),
                );
            }
            lines.join("\n")
        },
    );
    Ok(ExitCode::SUCCESS)
}
