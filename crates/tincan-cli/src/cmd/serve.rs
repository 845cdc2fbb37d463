//! `tincan serve`: answer each incoming message by running a handler command.
//!
//! One persistent connection. Each message becomes a job for its peer's queue; a peer's jobs run
//! one at a time, in order; jobs of different peers run concurrently up to `--concurrency`. A
//! per-peer token bucket limits how often one peer can make the handler run: messages beyond it
//! wait in the queue (reported as `deferred`), and messages beyond the bounded queue are reported
//! as `dropped` with their id, never lost without a trace. The design is in docs/ARCHITECTURE.md.

mod handler;
mod limit;
pub mod reaper;
mod server;
mod shell;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::json;
use tincan_client::tincan_proto::envelope::MAX_TEXT;
use tincan_client::tincan_proto::invite::Invite;
use tincan_client::{Client, ClientError, ClientOptions, now_secs};

use crate::cli::parse_duration;
use crate::cmd::{home_dir, open_home, relay_for};
use crate::output::{CliError, Out};

pub use self::server::Server;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `serve` arguments.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Command run through `sh -c` for each incoming message: the text on stdin, metadata in
    /// TINCAN_FROM, TINCAN_FROM_NAME, TINCAN_MESSAGE_ID, TINCAN_TURN; trimmed stdout is the reply.
    #[arg(long, value_name = "CMD", value_parser = parse_command)]
    pub on_message: String,
    /// Open the conversation by sending this text first (to --to, or to the peer of --join).
    #[arg(long)]
    pub seed: Option<String>,
    /// The peer the seed goes to: id, unique prefix or alias.
    #[arg(long, value_name = "PEER", requires = "seed")]
    pub to: Option<String>,
    /// Accept this invite first (making an identity if there is none), then serve. `-` reads
    /// the URL from stdin, which keeps its secret out of the process list.
    #[arg(long, value_name = "INVITE_URL")]
    pub join: Option<String>,
    /// Relay to use (default: the --to peer's relay, else the last relay used).
    #[arg(long)]
    pub relay: Option<String>,
    /// Handler limits.
    #[command(flatten)]
    pub limits: ServeLimits,
}

/// Limits shared by `serve` and `room open`.
#[derive(Args, Debug, Clone)]
pub struct ServeLimits {
    /// End each conversation after this many messages (both directions, the seed included);
    /// exit once every conversation has ended.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_turns: Option<u64>,
    /// Exit (`done` with reason `idle`) once no message has arrived and no handler has run for
    /// this long: an unattended conversation whose other side stopped answering ends instead of
    /// waiting forever. E.g. 10m, 1h, or seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub idle_timeout: Option<u64>,
    /// Stop a handler (SIGTERM to its process group, SIGKILL 2s later) after this long.
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = parse_duration)]
    pub handler_timeout: u64,
    /// Most handlers running at once (messages of one peer always run one at a time).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,
    /// Handler runs allowed per peer per minute; messages beyond it wait (`deferred`).
    #[arg(long, value_name = "PER_MINUTE", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
    /// Handler runs a peer may make back to back before --rate applies.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub burst: u32,
    /// Messages held per peer while waiting; beyond it they are reported as `dropped`.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_cap: u32,
    /// Most bytes of handler output accepted; a handler writing more is stopped.
    #[arg(long, value_name = "BYTES", default_value_t = MAX_TEXT, value_parser = parse_max_output)]
    pub max_output: usize,
}

pub async fn run(home: Option<PathBuf>, args: ServeArgs, out: &Out) -> Result<ExitCode, CliError> {
    if args.seed.is_some() && args.to.is_none() && args.join.is_none() {
        return Err(CliError::new(
            "usage",
            2,
            "--seed needs --to PEER (or --join INVITE_URL, which seeds the inviter)",
        ));
    }
    let (client, to) = match &args.join {
        Some(url) => {
            let (client, peer, resumed) = join(home, url).await?;
            out.print(
                json!({"event": "joined", "peer": peer.id.to_string(), "fingerprint": peer.fingerprint(), "relay": client.relay_url(), "resumed": resumed}),
                || if resumed {
                    format!("this home already accepted this invite: paired with {}; serving it again", peer.id)
                } else {
                    format!("paired with {}\nfingerprint: {}  (compare it with theirs out of band)", peer.id, peer.fingerprint())
                },
            );
            (client, args.to.or(Some(peer.id.to_string())))
        }
        None => {
            let h = open_home(home)?;
            let relay = match (args.relay, &args.to) {
                (Some(r), _) => r,
                (None, Some(to)) => h.resolve_peer(to)?.relay_url,
                (None, None) => {
                    let chosen = relay_for(&h, None)?;
                    crate::cmd::note_other_relays(&h, &chosen);
                    chosen
                }
            };
            let client = Client::connect(h, &relay, serve_options(), CONNECT_TIMEOUT).await?;
            (client, args.to)
        }
    };
    let seed = match (args.seed, to) {
        (Some(text), Some(to)) => Some((to, text)),
        _ => None,
    };
    // Before `serving` is said (see `signals`).
    let shutdown = crate::signals::Shutdown::install();
    Server::new(client, args.on_message, args.limits, out, None)
        .run(seed, shutdown)
        .await
}

/// `--on-message`: a command with something in it (an empty one would answer nothing, ever).
pub(crate) fn parse_command(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("the handler command is empty; give a command, e.g. --on-message cat".into());
    }
    // A plain command whose program cannot be found would fail on every message, and an
    // unattended conversation would stall at the first one: say so now. (A command with shell
    // syntax is the shell's to judge, when it runs.)
    if let Some(argv) = shell::direct_argv(s)
        && let Some(program) = argv.first()
        && !runnable(program)
    {
        return Err(if program.contains('/') {
            format!(
                "the handler `{program}` does not exist or is not executable; check the path (relative paths are from the current directory)"
            )
        } else {
            format!(
                "the handler `{program}` is not found on PATH; install it, or give its full path"
            )
        });
    }
    Ok(s.to_string())
}

/// Whether `program` names an executable file, as `sh` would look for it.
fn runnable(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    // Without PATH, `sh` searches a default path of its own: leave the judgement to it.
    if !program.contains('/') && std::env::var_os("PATH").is_none() {
        return true;
    }
    shell::locate(program).is_some_and(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// `--max-output`: 1 byte up to the longest text a message can carry.
fn parse_max_output(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of bytes"))?;
    if n == 0 || n > MAX_TEXT {
        return Err(format!(
            "must be 1 to {MAX_TEXT} bytes (the longest text a message carries)"
        ));
    }
    Ok(n)
}

/// How `serve` connects: a message is marked handed over only once it is dealt with
/// ([`Client::handled`]: replied to, or reported as not answered), so one whose handler never
/// finished because `serve` was killed is handled again by the next `serve` on this home.
pub(crate) fn serve_options() -> ClientOptions {
    ClientOptions {
        mark_on_return: false,
        ..ClientOptions::default()
    }
}

/// Opens (or creates) the home and accepts the invite at `url`; `true` when the invite was used
/// by this home itself before (the same `--join` run again), so serving resumes with its inviter.
async fn join(
    home: Option<PathBuf>,
    url: &str,
) -> Result<(Client, tincan_client::PeerRecord, bool), CliError> {
    let url = crate::cmd::invite_url(url)?;
    let mut h = crate::cmd::open_dir(&home_dir(home)?)?;
    h.setup()?;
    let invite = Invite::parse(&url, now_secs()).map_err(ClientError::from)?;
    if invite.inviter.ed25519 == h.identity()?.peer_id() {
        return Err(ClientError::OwnInvite.into());
    }
    let client = Client::connect(h, &invite.relay_url, serve_options(), CONNECT_TIMEOUT).await?;
    let (peer, resumed) = match client.accept_invite(&invite, CONNECT_TIMEOUT).await {
        Ok(peer) => (peer, false),
        // The hand-off line run again: this home took this invite before, so go on with it.
        Err(e) => match crate::cmd::invite::own_spent_invite(&e, &client, &invite) {
            Some(peer) => (peer, true),
            None => return Err(e.into()),
        },
    };
    client.home().set_setting("relay", client.relay_url())?;
    Ok((client, peer, resumed))
}
