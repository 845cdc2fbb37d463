//! `tincan room open|status|stop` (and `tincan host`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::output::{CliError, Out};

/// `room` subcommands.
#[derive(Subcommand, Debug)]
pub enum RoomCmd {
    /// Start a relay in the background, make an invite and serve messages with a handler.
    Open(OpenArgs),
}

/// `room open` arguments.
#[derive(Args, Debug)]
pub struct OpenArgs {
    /// Command run through `sh -c` for each incoming message.
    #[arg(long)]
    pub on_message: Option<String>,
}

pub async fn run(home: Option<PathBuf>, cmd: RoomCmd, out: &Out) -> Result<ExitCode, CliError> {
    match cmd {
        RoomCmd::Open(a) => open(home, a, out).await,
    }
}

pub async fn open(
    _home: Option<PathBuf>,
    _args: OpenArgs,
    _out: &Out,
) -> Result<ExitCode, CliError> {
    Err(CliError::new(
        "not_implemented",
        1,
        "`tincan room open` is not implemented yet",
    ))
}
