//! `tincan mcp`: the MCP server, and `tincan mcp install`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::output::{CliError, Out};

/// `mcp` arguments.
#[derive(Args, Debug)]
pub struct McpArgs {
    /// Serve Streamable HTTP on this address instead of stdio.
    #[arg(long)]
    pub http: Option<String>,
}

pub async fn run(_home: Option<PathBuf>, _args: McpArgs, _out: &Out) -> Result<ExitCode, CliError> {
    Err(CliError::new(
        "not_implemented",
        1,
        "`tincan mcp` is not implemented yet",
    ))
}
