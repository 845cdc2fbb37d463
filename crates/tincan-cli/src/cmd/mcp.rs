//! `tincan mcp`: the MCP server, and `tincan mcp install`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use tincan_mcp::install::{self, Change, ClientKind, Dirs, ServerCommand};
use tincan_mcp::{Hub, HubConfig, McpError, PushLimit};

use crate::cmd::{home_dir, open_home};
use crate::output::{CliError, Out};

/// `mcp` arguments.
#[derive(Args, Debug)]
pub struct McpArgs {
    /// Serve Streamable HTTP on this address (PORT or HOST:PORT, at path /mcp) instead of stdio.
    #[arg(long)]
    pub http: Option<String>,
    /// Allow --http on a non-loopback address (the server has no authentication of its own).
    #[arg(long)]
    pub allow_remote: bool,
    /// Relay to use (default: the home's last relay).
    #[arg(long)]
    pub relay: Option<String>,
    /// Pushes a peer may get at once before flood control holds the rest for check_messages.
    #[arg(long, default_value_t = 5)]
    pub push_burst: u32,
    /// Sustained pushes per peer per minute.
    #[arg(long, default_value_t = 10)]
    pub push_per_minute: u32,
    /// When another process (a `tincan listen` on this home) takes the relay's receiving
    /// connection, take it back after this many seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub retake_after: u64,
    /// Install into an MCP client instead of serving.
    #[command(subcommand)]
    pub action: Option<McpAction>,
}

/// `mcp` subcommands.
#[derive(Subcommand, Debug)]
pub enum McpAction {
    /// Add the tincan server to an MCP client's configuration, keeping what is there.
    Install(InstallArgs),
}

/// `mcp install` arguments.
#[derive(Args, Debug)]
pub struct InstallArgs {
    /// The client.
    #[arg(long, value_enum)]
    pub client: Client,
    /// Print what would be added instead of writing it.
    #[arg(long)]
    pub print: bool,
}

/// MCP clients.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Client {
    /// Claude Code (~/.claude.json, plus the audit hook in ~/.claude/settings.json).
    Claude,
    /// Codex (~/.codex/config.toml).
    Codex,
    /// OpenCode (~/.config/opencode/opencode.json).
    Opencode,
}

pub async fn run(home: Option<PathBuf>, args: McpArgs, out: &Out) -> Result<ExitCode, CliError> {
    if let Some(McpAction::Install(i)) = args.action {
        return install_cmd(home, i, out);
    }
    let dir = home_dir(home.clone())?;
    open_home(home)?;
    let config = HubConfig {
        home_dir: dir,
        relay: args.relay,
        push_limit: PushLimit {
            burst: args.push_burst.max(1),
            per_minute: args.push_per_minute.max(1),
        },
        retake_after: std::time::Duration::from_secs(args.retake_after),
    };
    let http = match &args.http {
        Some(spec) => Some(tincan_mcp::http_addr(spec, args.allow_remote).map_err(mcp_err)?),
        None => None,
    };
    let hub = Hub::start(config).await?;
    match http {
        None => tincan_mcp::serve_stdio(hub).await.map_err(mcp_err)?,
        Some(addr) => {
            let shutdown = crate::signals::Shutdown::install();
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| crate::cmd::bind_error(&e, &addr.to_string(), "--http"))?;
            let local = listener
                .local_addr()
                .map_err(|e| CliError::internal(e.to_string()))?;
            // The actual address on stderr, so a caller that asked for port 0 can find it.
            crate::output::eprintln_safe(&format!(
                "tincan mcp: Streamable HTTP on http://{local}/mcp"
            ));
            tincan_mcp::serve_http(listener, hub, shutdown.wait())
                .await
                .map_err(mcp_err)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn mcp_err(e: McpError) -> CliError {
    match e {
        McpError::Client(c) => c.into(),
        McpError::BadAddress(m) => CliError::new("usage", 2, m),
        other => CliError::new("mcp", 1, other.to_string()),
    }
}

/// The command an MCP client runs to start this server for `home`.
pub fn server_command(home: Option<PathBuf>) -> Result<ServerCommand, CliError> {
    let program = std::env::current_exe()
        .map_err(|e| CliError::internal(format!("cannot find the tincan binary: {e}")))?;
    let dir = home_dir(home)?;
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    Ok(ServerCommand {
        program: program.display().to_string(),
        args: vec!["--home".into(), dir.display().to_string(), "mcp".into()],
    })
}

fn install_cmd(home: Option<PathBuf>, args: InstallArgs, out: &Out) -> Result<ExitCode, CliError> {
    let kind = match args.client {
        Client::Claude => ClientKind::Claude,
        Client::Codex => ClientKind::Codex,
        Client::Opencode => ClientKind::Opencode,
    };
    let user_home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .ok_or_else(|| {
            CliError::new(
                "no_home",
                3,
                "HOME is not set: set it to your home directory (the MCP clients' configuration files live under it; XDG_CONFIG_HOME and CODEX_HOME move them)",
            )
        })?;
    let dirs = Dirs {
        home: user_home,
        // The XDG spec: empty or relative means unset. An empty CODEX_HOME likewise (else the
        // config would be written relative to the current directory).
        xdg_config: env_dir(std::env::var_os("XDG_CONFIG_HOME"), true),
        codex_home: env_dir(std::env::var_os("CODEX_HOME"), false),
    };
    let cmd = server_command(home.clone())?;
    // The server the client will start needs an identity: make one now (as `setup` would), so
    // the client does not just show a failed server.
    let created = if args.print {
        None
    } else {
        let mut h = crate::cmd::open_dir(&home_dir(home)?)?;
        let (keys, created) = h.setup()?;
        Some((keys.ed25519.to_string(), created))
    };
    let changes = install::plan(kind, &dirs, &cmd)
        .map_err(|e| CliError::new("config_unusable", 3, e.to_string()))?;
    let backups = if args.print {
        BTreeMap::new()
    } else {
        install::apply(&changes).map_err(|e| CliError::new("local_store", 1, e.to_string()))?
    };
    let files: Vec<_> = changes
        .iter()
        .map(|c| json!({"path": c.path.display().to_string(), "changed": c.changed, "snippet": c.snippet}))
        .collect();
    let identity_created = created.as_ref().is_some_and(|c| c.1);
    out.print(json!({"client": format!("{kind:?}").to_lowercase(), "written": !args.print, "files": files, "identity_created": identity_created}), || {
        let mut text = install_text(&changes, &backups, args.print);
        if let Some((id, true)) = &created {
            text.push_str(&format!("\nmade an identity for this home (it had none): {id}"));
        }
        text
    });
    Ok(ExitCode::SUCCESS)
}

/// The text report of `mcp install`: a backup is mentioned only where one was written.
fn install_text(changes: &[Change], backups: &BTreeMap<PathBuf, PathBuf>, print: bool) -> String {
    let mut s = String::new();
    for c in changes {
        let path = c.path.display();
        if print {
            s.push_str(&format!("# {path} would get:\n{}\n", c.snippet.trim_end()));
        } else if !c.changed {
            s.push_str(&format!("{path} already up to date\n"));
        } else if let Some(bak) = backups.get(&c.path) {
            s.push_str(&format!(
                "updated {path} (previous version in {})\n",
                bak.display()
            ));
        } else {
            s.push_str(&format!("created {path}\n"));
        }
    }
    s.trim_end().to_string()
}

/// A directory from an environment variable's value: `None` when unset or empty, or when
/// `absolute_only` and it is relative.
fn env_dir(value: Option<std::ffi::OsString>, absolute_only: bool) -> Option<PathBuf> {
    let dir = PathBuf::from(value.filter(|v| !v.is_empty())?);
    (!absolute_only || dir.is_absolute()).then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(path: &str, changed: bool) -> Change {
        Change {
            path: PathBuf::from(path),
            contents: String::new(),
            snippet: String::new(),
            changed,
        }
    }

    #[test]
    fn install_text_mentions_a_backup_only_when_one_was_written() {
        let changes = [
            change("/h/new.json", true),
            change("/h/old.json", true),
            change("/h/same.json", false),
        ];
        let backups = BTreeMap::from([(
            PathBuf::from("/h/old.json"),
            PathBuf::from("/h/old.json.bak"),
        )]);
        assert_eq!(
            install_text(&changes, &backups, false),
            "created /h/new.json\nupdated /h/old.json (previous version in /h/old.json.bak)\n/h/same.json already up to date"
        );
    }

    #[test]
    fn an_empty_or_relative_config_dir_counts_as_unset() {
        let v = |s: &str| Some(std::ffi::OsString::from(s));
        assert_eq!(env_dir(None, true), None);
        assert_eq!(env_dir(v(""), true), None);
        assert_eq!(env_dir(v(""), false), None);
        assert_eq!(env_dir(v("rel/dir"), true), None);
        assert_eq!(env_dir(v("rel/dir"), false), Some(PathBuf::from("rel/dir")));
        assert_eq!(env_dir(v("/x/y"), true), Some(PathBuf::from("/x/y")));
    }
}
