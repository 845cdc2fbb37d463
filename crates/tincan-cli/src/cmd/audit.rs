//! `tincan audit show|verify|hook`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tincan_client::home::text_digest;
use tincan_client::now_ms;

use crate::cmd::open_home;
use crate::output::{CliError, Out, terminal_safe};

/// `audit` subcommands.
#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Print the audit log (one JSON object per line with --json).
    Show(ShowArgs),
    /// Check that no line was edited or removed.
    Verify,
    /// Record a tool call: a Claude Code PostToolUse hook (reads the hook's JSON on stdin).
    Hook,
}

/// `audit show` arguments.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Only the last N entries.
    #[arg(long)]
    pub last: Option<usize>,
}

/// How much of a tool's input the log keeps in clear (the rest is covered by its digest).
const PREVIEW: usize = 200;

pub async fn run(home: Option<PathBuf>, cmd: AuditCmd, out: &Out) -> Result<ExitCode, CliError> {
    match cmd {
        AuditCmd::Show(a) => show(home, a, out),
        AuditCmd::Verify => verify(home, out),
        AuditCmd::Hook => Ok(hook(home)),
    }
}

fn show(home: Option<PathBuf>, args: ShowArgs, out: &Out) -> Result<ExitCode, CliError> {
    let h = open_home(home)?;
    let entries = h.audit_entries()?;
    let skip = args.last.map_or(0, |n| entries.len().saturating_sub(n));
    for e in entries.iter().skip(skip) {
        if out.json {
            crate::output::line(&format!("{e}"));
        } else {
            crate::output::line(&terminal_safe(&human(e)));
        }
    }
    if !out.json && entries.is_empty() {
        crate::output::line("the audit log is empty");
    }
    Ok(ExitCode::SUCCESS)
}

fn human(e: &Value) -> String {
    let mut rest = e.as_object().cloned().unwrap_or_default();
    let seq = rest.remove("seq").unwrap_or_default();
    let at = rest.remove("at").and_then(|v| v.as_u64()).unwrap_or(0);
    let event = rest.remove("event").unwrap_or_default();
    rest.remove("prev");
    rest.remove("hash");
    let fields: Vec<String> = rest
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    format!(
        "{seq:>5} {} {} {}",
        tincan_mcp::framing::rfc3339(at),
        event.as_str().unwrap_or("?"),
        fields.join(" ")
    )
}

fn verify(home: Option<PathBuf>, out: &Out) -> Result<ExitCode, CliError> {
    let h = open_home(home)?;
    let v = h.audit_verify()?;
    match v.problem {
        None => {
            out.print(json!({"ok": true, "entries": v.entries, "path": h.audit_path().display().to_string()}), || {
                format!("audit log intact: {} entries, hash chain verified", v.entries)
            });
            Ok(ExitCode::SUCCESS)
        }
        Some((line, why)) => Err(CliError::new(
            "audit_tampered",
            8,
            format!(
                "audit log {} fails verification at line {line}: {why}",
                h.audit_path().display()
            ),
        )
        .with(json!({"line": line, "entries": v.entries}))),
    }
}

/// Records one tool call. A hook must never get in the agent's way: every failure is reported on
/// stderr and the exit code is 0.
fn hook(home: Option<PathBuf>) -> ExitCode {
    if let Err(e) = hook_inner(home) {
        crate::output::eprintln_safe(&format!("tincan audit hook: {}", e.message));
    }
    ExitCode::SUCCESS
}

fn hook_inner(home: Option<PathBuf>) -> Result<(), CliError> {
    let mut input = String::new();
    std::io::stdin()
        .take(4 * 1024 * 1024)
        .read_to_string(&mut input)
        .map_err(|e| CliError::internal(format!("cannot read the hook input: {e}")))?;
    let hook: Value = serde_json::from_str(&input)
        .map_err(|e| CliError::new("usage", 2, format!("hook input is not JSON: {e}")))?;
    let h = open_home(home)?;
    // Only tool calls made after a peer message reached the agent are of interest.
    let Some(last) = h.audit_note("last_delivered")? else {
        return Ok(());
    };
    let after: Value = serde_json::from_str(&last).unwrap_or(Value::Null);
    let tool_input = hook
        .get("tool_input")
        .map(Value::to_string)
        .unwrap_or_default();
    let preview: String = tool_input.chars().take(PREVIEW).collect();
    h.audit_append(
        "tool_call",
        json!({
            "tool": hook.get("tool_name").and_then(Value::as_str).unwrap_or("?"),
            "session_id": hook.get("session_id").and_then(Value::as_str),
            "hook_event": hook.get("hook_event_name").and_then(Value::as_str),
            "input_sha256": text_digest(&tool_input),
            "input_preview": preview,
            "input_truncated": tool_input.chars().count() > PREVIEW,
            "after": after,
        }),
        now_ms(),
    )?;
    Ok(())
}
