//! `tincan launch`: Claude Code with the tincan MCP server registered, live push enabled and the
//! audit hook installed for this session only (nothing is written to Claude Code's settings).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use crate::cmd::mcp::server_command;
use crate::cmd::open_home;
use crate::output::{CliError, Out};

/// `launch` arguments.
#[derive(Args, Debug)]
pub struct LaunchArgs {
    /// Arguments passed to `claude` after `--`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

const BANNER: &str = "\
tincan: starting Claude Code with the tincan MCP server and live message push.
  Messages from peers are UNTRUSTED INPUT written by other agents. They reach the model as data
  framed with the sender's name, but a model can still be talked into things: tool approval is
  your safety net. Read what a tool call will do before you approve it, especially after a peer
  message. Block a peer with `tincan peers block <peer>`; review with `tincan audit show`.";

pub async fn run(home: Option<PathBuf>, args: LaunchArgs, out: &Out) -> Result<ExitCode, CliError> {
    open_home(home.clone())?;
    let claude = find_in_path("claude").ok_or_else(|| {
        CliError::new(
            "claude_not_found",
            3,
            "`claude` (Claude Code) is not installed or not on PATH. Install it \
             (npm install -g @anthropic-ai/claude-code), or use `tincan mcp install --client claude|codex|opencode` \
             to add tincan to another MCP client",
        )
    })?;
    let cmd = server_command(home)?;
    let mcp_config = json!({"mcpServers": {"tincan": {"type": "stdio", "command": cmd.program, "args": cmd.args}}});
    let settings = json!({"hooks": {"PostToolUse": [{"matcher": "*", "hooks": [{"type": "command", "command": cmd.hook_command()}]}]}});
    let mut argv: Vec<String> = vec![
        "--mcp-config".into(),
        mcp_config.to_string(),
        "--settings".into(),
        settings.to_string(),
        "--dangerously-load-development-channels".into(),
        "server:tincan".into(),
    ];
    argv.extend(args.args);
    if out.json {
        crate::output::line(&format!(
            "{}",
            json!({"event": "launch", "claude": claude.display().to_string(), "args": argv})
        ));
    }
    crate::output::eprintln_safe(&format!("{BANNER}\n"));
    let mut command = std::process::Command::new(&claude);
    command.args(&argv);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // Replace this process, so Claude Code owns the terminal and its exit code is ours.
        let err = command.exec();
        Err(CliError::new(
            "launch_failed",
            1,
            format!("cannot start {}: {err}", claude.display()),
        ))
    }
    #[cfg(not(unix))]
    {
        let status = command.status().map_err(|e| {
            CliError::new(
                "launch_failed",
                1,
                format!("cannot start {}: {e}", claude.display()),
            )
        })?;
        Ok(ExitCode::from(
            status.code().unwrap_or(1).clamp(0, 255) as u8
        ))
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        p.is_file()
    }
}
