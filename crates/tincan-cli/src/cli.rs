//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// tincan: a private, end-to-end encrypted line between AI agents.
#[derive(Parser, Debug)]
#[command(name = "tincan", version, about, long_about = None)]
pub struct Cli {
    /// Home directory holding this agent's identity and state [env: TINCAN_HOME; empty counts as
    /// unset]
    #[arg(long, global = true)]
    pub home: Option<PathBuf>,
    /// Machine-readable output: one JSON object per line; errors as {"error": {"code", "message"}}.
    #[arg(long, global = true)]
    pub json: bool,
    /// Write logs (stderr) as NDJSON.
    #[arg(long, global = true)]
    pub log_json: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create this home's identity (idempotent).
    Setup,
    /// Show this agent's id and fingerprint.
    Whoami,
    /// Create or accept invites.
    #[command(subcommand)]
    Invite(InviteCmd),
    /// List peers, or set an alias with `peers alias <peer> <name>`.
    Peers(PeersArgs),
    /// Send a message to a peer.
    Send(SendArgs),
    /// Receive messages (NDJSON events with --json).
    Listen(ListenArgs),
    /// Run a relay.
    Relay(RelayArgs),
    /// Run the whole flow on this machine: a relay, two agents, pairing and messages.
    Demo,
    /// Answer messages automatically by running a handler command for each.
    Serve(crate::cmd::serve::ServeArgs),
    /// Rooms: a background relay plus an invite plus `serve`, in one command.
    #[command(subcommand)]
    Room(crate::cmd::room::RoomCmd),
    /// Alias of `room open`.
    Host(crate::cmd::room::OpenArgs),
    /// Run the MCP server (stdio, or Streamable HTTP with --http), or install it into a client.
    Mcp(crate::cmd::mcp::McpArgs),
    /// Start Claude Code with the tincan MCP server and live message push.
    Launch(crate::cmd::launch::LaunchArgs),
    /// The local, hash-chained audit log of peer messages and the tool calls that followed.
    #[command(subcommand)]
    Audit(crate::cmd::audit::AuditCmd),
    /// Erase the text of messages read longer ago than --older-than (unread ones are kept).
    Prune(crate::cmd::prune::PruneArgs),
    /// Print the version.
    Version,
    /// Internal: stops a killed `serve`'s handlers (started by `serve` itself).
    #[command(name = "__reap", hide = true)]
    Reap,
}

/// `invite` subcommands.
#[derive(Subcommand, Debug)]
pub enum InviteCmd {
    /// Create a single-use invite link.
    Create {
        /// Relay URL both agents will use, e.g. http://127.0.0.1:8787 (default: the last relay used).
        #[arg(long)]
        relay: Option<String>,
        /// How long the invite stays valid: e.g. 90s, 30m, 24h, 7d, or seconds (at most 30d).
        #[arg(long, default_value = "24h", value_parser = parse_invite_ttl)]
        ttl: u64,
    },
    /// Accept an invite link and pair with its maker.
    Accept {
        /// The invite URL (quote it: it contains '#'), or `-` to read it from stdin, which keeps
        /// its secret out of the process list that other local users can read.
        url: String,
        /// Seconds to wait for the relay.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
}

/// `peers` arguments.
#[derive(Args, Debug)]
pub struct PeersArgs {
    /// Optional action.
    #[command(subcommand)]
    pub action: Option<PeersAction>,
}

/// `peers` actions.
#[derive(Subcommand, Debug)]
pub enum PeersAction {
    /// Give a peer a local name.
    Alias {
        /// Peer id, unique prefix or current alias.
        peer: String,
        /// The new name (letters, digits, '-', '_', '.').
        name: String,
    },
    /// Block a peer: its messages are withheld from you and your agent (kept in the inbox).
    Block {
        /// Peer id, unique prefix or alias.
        peer: String,
    },
    /// Lift a block or an allow: the peer is back to the default.
    Unblock {
        /// Peer id, unique prefix or alias.
        peer: String,
    },
    /// Allow a peer: its messages are shown also in allowlist-only mode.
    Allow {
        /// Peer id, unique prefix or alias.
        peer: String,
    },
    /// Show, or turn on/off, allowlist-only mode (only allowed peers' messages are shown).
    Allowlist {
        /// on or off; omit to show the current mode.
        #[arg(value_parser = ["on", "off"])]
        state: Option<String>,
    },
}

/// `send` arguments.
#[derive(Args, Debug)]
pub struct SendArgs {
    /// Peer id, unique prefix or alias.
    pub peer: String,
    /// The message; "-" reads it from stdin.
    pub text: String,
    /// With "-": every non-empty line of stdin is a message of its own. All are queued in one
    /// transaction and, to a peer that reads batches, sealed together up to 16 KiB per envelope.
    #[arg(long)]
    pub lines: bool,
    /// Seconds to wait for the relay to store the message.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

/// `listen` arguments.
#[derive(Args, Debug)]
pub struct ListenArgs {
    /// Exit after the first message or peer_joined event.
    #[arg(long)]
    pub once: bool,
    /// Stop after this many seconds.
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Relay to listen on (default: the last relay used).
    #[arg(long)]
    pub relay: Option<String>,
}

/// `relay` arguments. Every limit can also come from the environment (`TINCAN_RELAY_<NAME>`) or
/// a TOML config file (`--config`, keys named like the flags with `_`); flags win over the
/// environment, which wins over the file.
#[derive(Args, Debug, Default)]
pub struct RelayArgs {
    /// Address to listen on. Loopback unless told otherwise.
    #[arg(long, env = "TINCAN_RELAY_LISTEN")]
    pub listen: Option<String>,
    /// SQLite database file, which also keeps the token secrets (default: relay.db in the home
    /// when --home or TINCAN_HOME is given, unless only the platform data dir has one; else in
    /// the platform data dir).
    #[arg(long, env = "TINCAN_RELAY_DB")]
    pub db: Option<PathBuf>,
    /// Terminate TLS in the relay: PEM certificate chain (with --tls-key).
    #[arg(long, env = "TINCAN_RELAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "TINCAN_RELAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// TOML file with any of these settings.
    #[arg(long, env = "TINCAN_RELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Largest sealed message body in bytes (default 71680).
    #[arg(long, env = "TINCAN_RELAY_MAX_BODY")]
    pub max_body: Option<usize>,
    /// Most undelivered messages kept per recipient (default 10000).
    #[arg(long, env = "TINCAN_RELAY_QUEUE_CAP")]
    pub queue_cap: Option<u64>,
    /// Most undelivered messages kept in all, across recipients (default 1000000); bounds the
    /// relay's memory (70-150 bytes per queued message).
    #[arg(long, env = "TINCAN_RELAY_MAX_QUEUED")]
    pub max_queued: Option<u64>,
    /// How long undelivered messages are kept, e.g. 7d (default 7d).
    #[arg(long, env = "TINCAN_RELAY_MESSAGE_TTL", value_parser = parse_duration)]
    pub message_ttl: Option<u64>,
    /// Open connections in total (default 20000).
    #[arg(long, env = "TINCAN_RELAY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Open connections per IP address (default 1000).
    #[arg(long, env = "TINCAN_RELAY_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Messages per second one identity may send, 0 = unlimited (default 1000).
    #[arg(long, env = "TINCAN_RELAY_RATE_PER_IDENTITY")]
    pub rate_per_identity: Option<f64>,
    /// Burst allowed above that rate (default 5000).
    #[arg(long, env = "TINCAN_RELAY_BURST_PER_IDENTITY")]
    pub burst_per_identity: Option<f64>,
    /// New connections and HTTP requests per second from one IP, 0 = unlimited (default 200).
    #[arg(long, env = "TINCAN_RELAY_RATE_PER_IP")]
    pub rate_per_ip: Option<f64>,
    /// Burst allowed above that rate (default 1000).
    #[arg(long, env = "TINCAN_RELAY_BURST_PER_IP")]
    pub burst_per_ip: Option<f64>,
    /// Invites one identity may have open at once (default 100).
    #[arg(long, env = "TINCAN_RELAY_MAX_OPEN_INVITES")]
    pub max_open_invites: Option<u32>,
    /// Pairs the relay keeps in all, ~400 bytes of memory each (default 1000000).
    #[arg(long, env = "TINCAN_RELAY_MAX_PAIRS")]
    pub max_pairs: Option<u64>,
    /// Cap on the database size in bytes; sends get a retryable error when it is reached.
    #[arg(long, env = "TINCAN_RELAY_MAX_DB_BYTES")]
    pub max_db_bytes: Option<u64>,
    /// Milliseconds a message delivered to an online recipient may wait unwritten for its ack;
    /// acked in time it never reaches the relay's disk (default 50; 0 writes every message first).
    #[arg(long, env = "TINCAN_RELAY_WRITE_BEHIND_MS")]
    pub write_behind_ms: Option<u64>,
    /// Lifetime of HTTP API tokens, e.g. 1h (default 1h).
    #[arg(long, env = "TINCAN_RELAY_TOKEN_TTL", value_parser = parse_duration)]
    pub token_ttl: Option<u64>,
    /// How often the token secret rotates, e.g. 24h (default 24h).
    #[arg(long, env = "TINCAN_RELAY_TOKEN_ROTATE", value_parser = parse_duration)]
    pub token_rotate: Option<u64>,
}

/// Parses `90`, `90s`, `30m`, `24h`, `7d` into seconds.
/// The longest invite lifetime a relay accepts (`tincan_relay::Config::max_invite_ttl`).
pub const MAX_INVITE_TTL: u64 = 30 * 86_400;

/// `--ttl` of `invite create`: a duration of at most [`MAX_INVITE_TTL`].
pub fn parse_invite_ttl(s: &str) -> Result<u64, String> {
    let secs = parse_duration(s)?;
    if secs > MAX_INVITE_TTL {
        return Err(
            "an invite may stay open at most 30d (relays refuse longer); use e.g. --ttl 7d".into(),
        );
    }
    Ok(secs)
}

pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration; use e.g. 90s, 30m, 24h or 7d"))?;
    let secs = n
        .checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too long"))?;
    if secs == 0 {
        return Err("duration must be greater than zero".into());
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invite_ttl_is_refused_above_what_a_relay_accepts() {
        let relay_max = tincan_relay::Config::new("unused.db".into()).max_invite_ttl;
        assert_eq!(MAX_INVITE_TTL, relay_max.as_secs());
        assert_eq!(parse_invite_ttl("30d"), Ok(MAX_INVITE_TTL));
        let err = parse_invite_ttl("31d").unwrap_err();
        assert!(err.contains("at most 30d"), "{err}");
        assert!(parse_invite_ttl("0").is_err());
        assert_eq!(parse_invite_ttl("90s"), Ok(90));
    }
}
