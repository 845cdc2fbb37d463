//! `tincan serve`: answer each incoming message by running a handler command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::output::{CliError, Out};

/// `serve` arguments.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Command run through `sh -c` for each incoming message.
    #[arg(long)]
    pub on_message: String,
}

pub async fn run(
    _home: Option<PathBuf>,
    _args: ServeArgs,
    _out: &Out,
) -> Result<ExitCode, CliError> {
    Err(CliError::new(
        "not_implemented",
        1,
        "`tincan serve` is not implemented yet",
    ))
}
