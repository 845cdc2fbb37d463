//! `tincan launch`: Claude Code with the tincan MCP server registered.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::output::{CliError, Out};

/// `launch` arguments.
#[derive(Args, Debug)]
pub struct LaunchArgs {
    /// Arguments passed to `claude` after `--`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub async fn run(
    _home: Option<PathBuf>,
    _args: LaunchArgs,
    _out: &Out,
) -> Result<ExitCode, CliError> {
    Err(CliError::new(
        "not_implemented",
        1,
        "`tincan launch` is not implemented yet",
    ))
}
