//! `tincan audit show|verify|hook`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::output::{CliError, Out};

/// `audit` subcommands.
#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Print the audit log.
    Show,
}

pub async fn run(_home: Option<PathBuf>, _cmd: AuditCmd, _out: &Out) -> Result<ExitCode, CliError> {
    Err(CliError::new(
        "not_implemented",
        1,
        "`tincan audit` is not implemented yet",
    ))
}
