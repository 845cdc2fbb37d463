//! `tincan room open|status|stop` (and `tincan host`): a detached relay, an identity, a
//! single-use invite carrying the relay's reachable URL, and `serve` with a handler, in one
//! command.

mod state;
mod tunnel;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tincan_client::{Client, Home, now_secs};

use self::state::{RELAY, Room, SERVE, TUNNEL, log_tail, running, stop_process};
use crate::cli::parse_duration;
use crate::cmd::home_dir;
use crate::cmd::serve::{ServeLimits, Server};
use crate::output::{CliError, Out};

/// The `--max-turns` of the printed hand-off line when `room open` has none of its own.
const HANDOFF_MAX_TURNS: u64 = 20;

/// How long a stopped process has between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// `room` subcommands.
#[derive(Subcommand, Debug)]
pub enum RoomCmd {
    /// Start a relay in the background, make an invite and serve messages with a handler.
    Open(OpenArgs),
    /// List rooms: pids, relay URL, peers, uptime, message counts.
    Status,
    /// Stop a room's relay, tunnel and serve loop.
    Stop(StopArgs),
}

/// `room open` arguments.
#[derive(Args, Debug)]
pub struct OpenArgs {
    /// Command run through `sh -c` for each incoming message (as in `tincan serve`). Without it,
    /// the room opens and this command exits; use `tincan listen` to read.
    #[arg(long, value_name = "CMD", value_parser = crate::cmd::serve::parse_command)]
    pub on_message: Option<String>,
    /// Where the relay listens.
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,
    /// The URL the other agent reaches the relay at (a reverse proxy), put in the invite.
    #[arg(long, conflicts_with = "tunnel")]
    pub public_url: Option<String>,
    /// Expose the relay through a Cloudflare quick tunnel (needs cloudflared).
    #[arg(long)]
    pub tunnel: bool,
    /// How long the invite stays valid: e.g. 30m, 24h, 7d.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub ttl: u64,
    /// Handler limits.
    #[command(flatten)]
    pub limits: ServeLimits,
}

/// `room stop` arguments.
#[derive(Args, Debug)]
pub struct StopArgs {
    /// Stop every room of this home.
    #[arg(long, conflicts_with = "port")]
    pub all: bool,
    /// Stop the room whose relay uses this port.
    #[arg(long)]
    pub port: Option<u16>,
}

pub async fn run(home: Option<PathBuf>, cmd: RoomCmd, out: &Out) -> Result<ExitCode, CliError> {
    match cmd {
        RoomCmd::Open(a) => open(home, a, out).await,
        RoomCmd::Status => status(home, out),
        RoomCmd::Stop(a) => stop(home, a, out),
    }
}

pub async fn open(home: Option<PathBuf>, args: OpenArgs, out: &Out) -> Result<ExitCode, CliError> {
    let flag = crate::cmd::home_flag(&home);
    let dir = home_dir(home)?;
    let mut h = crate::cmd::open_dir(&dir)?;
    let (keys, _) = h.setup()?;
    let cloudflared = if args.tunnel {
        Some(tunnel::find_cloudflared()?)
    } else {
        None
    };
    let listen = with_port(args.listen)?;
    let port = listen.port();
    // Connect over loopback when the relay listens on every interface.
    let local = if listen.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], port))
    } else {
        listen
    };
    ensure_port_free(&dir, listen)?;
    let room_dir = Room::dir_for(&dir, port);
    // A room that fails to open leaves nothing behind, unless its directory (an earlier room's
    // relay database) was there before.
    let fresh = !room_dir.exists();
    std::fs::create_dir_all(&room_dir).map_err(|e| {
        CliError::new(
            "io",
            1,
            format!("cannot create {}: {e}", room_dir.display()),
        )
    })?;
    let relay_pid = start_relay(&room_dir, listen, local)?;
    let mut room = Room {
        dir: room_dir.clone(),
        port,
        listen: listen.to_string(),
        relay_url: format!("http://{local}"),
        public_url: format!("http://{local}"),
        relay_pid,
        tunnel_pid: None,
        serve_pid: None,
        started_at: now_secs(),
    };
    room.save()?;
    let undo = |room: &Room| {
        if let Some(t) = room.tunnel_pid {
            stop_process(t, TUNNEL, true, STOP_GRACE);
        }
        stop_process(room.relay_pid, RELAY, true, STOP_GRACE);
        room.remove();
        if fresh {
            let _ = std::fs::remove_dir_all(&room.dir);
        }
    };
    if let Some(bin) = &cloudflared {
        match tunnel::start(bin, &local.to_string(), &room_dir.join("tunnel.log")) {
            Ok(t) => {
                room.tunnel_pid = Some(t.pid);
                room.public_url = t.url;
            }
            Err(e) => {
                undo(&room);
                return Err(e);
            }
        }
    } else if let Some(url) = &args.public_url {
        room.public_url = url.trim_end_matches('/').to_string();
    }
    room.serve_pid = args.on_message.is_some().then(std::process::id);
    room.save()?;

    let invite = async {
        // Receiving only when this command goes on to serve: a room opened without a handler
        // must not take messages (or the home's receiving lock) from a `listen` or another room.
        let options = if args.on_message.is_some() {
            crate::cmd::serve::serve_options()
        } else {
            tincan_client::ClientOptions::send_only()
        };
        let client = Client::connect(h, &room.relay_url, options, Duration::from_secs(10)).await?;
        let draft = client.create_invite_at(&room.public_url, args.ttl).await?;
        client.home().set_setting("relay", client.relay_url())?;
        Ok::<_, CliError>((client, draft.url()))
    }
    .await;
    let (client, url) = match invite {
        Ok(v) => v,
        Err(e) => {
            undo(&room);
            return Err(e);
        }
    };
    let handler = args
        .on_message
        .clone()
        .unwrap_or_else(|| "YOUR_HANDLER".into());
    let handoff = handoff_line(
        &url,
        &handler,
        args.limits.max_turns,
        args.limits.handler_timeout,
    );
    let fingerprint = keys.fingerprint();
    // Before the room is announced: a `room stop` right after it gets serve's clean shutdown.
    let shutdown = args
        .on_message
        .is_some()
        .then(crate::signals::Shutdown::install);
    out.print(
        json!({
            "event": "room_open", "invite": url, "handoff": handoff, "relay_url": room.relay_url,
            "public_url": room.public_url, "port": port, "relay_pid": room.relay_pid,
            "tunnel_pid": room.tunnel_pid, "id": keys.ed25519.to_string(),
            "fingerprint": fingerprint, "dir": room_dir.display().to_string(),
            "relay_log": room.relay_log().display().to_string(),
            "max_turns": args.limits.max_turns,
        }),
        || {
            format!(
                "Room open: relay {} (pid {}), reachable at {}\n\
                 fingerprint: {fingerprint}\n\n\
                 Invite (single use):\n  {url}\n\n\
                 Hand this line to the other agent:\n  {handoff}\n\n\
                 `tincan{flag} room status` shows it; `tincan{flag} room stop` ends it.",
                room.relay_url, room.relay_pid, room.public_url
            )
        },
    );
    match (args.on_message, shutdown) {
        (Some(cmd), Some(shutdown)) => {
            let served = Server::new(
                client,
                cmd,
                args.limits,
                out,
                Some(room_dir.join("serve.json")),
            )
            .run(None, shutdown)
            .await;
            // Serving ended (Ctrl-C, `--max-turns`), but the relay (and tunnel) stay up so the
            // other agent still gets what was sent to it: say so, and how to close the room.
            if room.relay_running() && !room.stopping() {
                let stop = format!("tincan{flag} room stop --port {port}");
                out.print(
                    json!({"event": "room_left_open", "port": port, "relay_pid": room.relay_pid, "tunnel_pid": room.tunnel_pid, "public_url": room.public_url, "stop": stop}),
                    || {
                        let what = if room.tunnel_pid.is_some() {
                            "relay and tunnel keep"
                        } else {
                            "relay keeps"
                        };
                        format!(
                            "serving stopped; the room's {what} running at {} for the other agent. Close it with `{stop}`.",
                            room.public_url
                        )
                    },
                );
            }
            served
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// The `serve --join` line printed for the other agent. It always carries `--max-turns`: two
/// handlers run as printed would otherwise answer each other forever (each turn a paid call when
/// they are LLMs). With our own `--max-turns` both sides count to the same number and stop
/// together; without it the guest stops after [`HANDOFF_MAX_TURNS`]. And `--idle-timeout`, so a
/// guest whose host stops answering (a failed handler, a closed room) ends instead of waiting
/// forever: twice the host's handler timeout, at least 30 minutes.
fn handoff_line(
    invite: &str,
    handler: &str,
    max_turns: Option<u64>,
    handler_timeout: u64,
) -> String {
    let idle_minutes = (handler_timeout.saturating_mul(2).div_ceil(60)).max(30);
    format!(
        "tincan serve --join {} --on-message {} --seed 'Hello!' --idle-timeout {idle_minutes}m --max-turns {}",
        crate::cmd::shell_quote(invite),
        crate::cmd::shell_quote(handler),
        max_turns.unwrap_or(HANDOFF_MAX_TURNS)
    )
}

/// Port 0 means "any free port": pick one now, since the room is keyed by its port.
fn with_port(addr: SocketAddr) -> Result<SocketAddr, CliError> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    let l = std::net::TcpListener::bind(addr)
        .map_err(|e| CliError::new("listen_failed", 1, format!("cannot listen on {addr}: {e}")))?;
    l.local_addr()
        .map_err(|e| CliError::internal(e.to_string()))
}

fn ensure_port_free(home: &Path, listen: SocketAddr) -> Result<(), CliError> {
    let port = listen.port();
    if let Some(r) = Room::list(home)
        .into_iter()
        .find(|r| r.port == port && r.relay_running())
    {
        return Err(CliError::new(
            "port_in_use",
            2,
            format!(
                "a room is already open on port {port} (relay pid {}); stop it with `tincan room stop --port {port}` or pick another port with --listen",
                r.relay_pid
            ),
        ));
    }
    std::net::TcpListener::bind(listen).map(drop).map_err(|e| {
        CliError::new(
            "port_in_use",
            2,
            format!("cannot listen on {listen}: {e}; another program uses it; pick another port with --listen 127.0.0.1:PORT"),
        )
    })
}

/// Starts `tincan relay` detached (own process group, no terminal, output in relay.log) and
/// waits until it accepts connections.
fn start_relay(room_dir: &Path, listen: SocketAddr, local: SocketAddr) -> Result<u32, CliError> {
    use std::os::unix::process::CommandExt;
    let log_path = room_dir.join("relay.log");
    let io = |e: std::io::Error| {
        CliError::new("io", 1, format!("cannot write {}: {e}", log_path.display()))
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io)?;
    let log2 = log.try_clone().map_err(io)?;
    let exe = std::env::current_exe()
        .map_err(|e| CliError::internal(format!("cannot find the tincan binary: {e}")))?;
    let mut child = Command::new(exe)
        .args([
            "--json",
            "--log-json",
            "relay",
            "--listen",
            &listen.to_string(),
            "--db",
        ])
        .arg(room_dir.join("relay.db"))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
        .map_err(|e| CliError::internal(format!("cannot start the relay: {e}")))?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect_timeout(&local, Duration::from_millis(200)).is_ok() {
            // Reaped when it ends, so it never lingers as a zombie of this process.
            std::thread::spawn(move || child.wait());
            return Ok(pid);
        }
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        if exited || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(CliError::new(
                "relay_failed",
                1,
                format!(
                    "the relay did not start on {listen}; its log ({}):\n{}",
                    log_path.display(),
                    log_tail(&log_path, 5)
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn status(home: Option<PathBuf>, out: &Out) -> Result<ExitCode, CliError> {
    let dir = home_dir(home)?;
    let peer_relays: Vec<String> = if dir.join("tincan.db").exists() {
        Home::open(&dir)?
            .peers()?
            .into_iter()
            .map(|p| p.relay_url)
            .collect()
    } else {
        Vec::new()
    };
    let now = now_secs();
    let rooms: Vec<_> = Room::list(&dir)
        .into_iter()
        .map(|r| {
            let stats = r.stats();
            let peers = r.peers_among(&peer_relays);
            json!({
                "port": r.port, "relay_url": r.relay_url, "public_url": r.public_url,
                "relay_pid": r.relay_pid, "running": r.relay_running(),
                "tunnel_pid": r.tunnel_pid,
                "tunnel_running": r.tunnel_pid.is_some_and(|p| running(p, TUNNEL)),
                "serve_pid": r.serve_pid, "serving": r.serving(),
                "started_at": r.started_at, "uptime_secs": now.saturating_sub(r.started_at),
                "peers": peers, "received": stats["received"].as_u64().unwrap_or(0),
                "replied": stats["replied"].as_u64().unwrap_or(0),
                "no_reply": stats["no_reply"].as_u64().unwrap_or(0),
                "handler_errors": stats["handler_errors"].as_u64().unwrap_or(0),
                "send_errors": stats["send_errors"].as_u64().unwrap_or(0),
                "deferred": stats["deferred"].as_u64().unwrap_or(0),
                "dropped": stats["dropped"].as_u64().unwrap_or(0),
                "withheld": stats["withheld"].as_u64().unwrap_or(0),
                "relay_log": r.relay_log().display().to_string(),
            })
        })
        .collect();
    out.print(json!({ "rooms": rooms }), || status_text(&rooms));
    Ok(ExitCode::SUCCESS)
}

/// The text form of `room status`: a block per room with every field the JSON has.
fn status_text(rooms: &[Value]) -> String {
    if rooms.is_empty() {
        return "no rooms; open one with `tincan room open --on-message CMD`".into();
    }
    let count = |r: &Value, key: &str, word: &str| {
        let n = r[key].as_u64().unwrap_or(0);
        format!("{n} {word}{}", if n == 1 { "" } else { "s" })
    };
    let state = |on: bool, yes: &str| {
        if on {
            yes.to_string()
        } else {
            "stopped".to_string()
        }
    };
    let blocks: Vec<String> = rooms
        .iter()
        .map(|r| {
            let public = r["public_url"].as_str().unwrap_or("");
            let local = r["relay_url"].as_str().unwrap_or("");
            let mut lines = vec![
                format!(
                    "room on port {} · up {} · {}",
                    r["port"],
                    uptime(r["uptime_secs"].as_u64().unwrap_or(0)),
                    count(r, "peers", "peer"),
                ),
                format!(
                    "  relay   pid {} {} · {public}{} · log {}",
                    r["relay_pid"],
                    state(r["running"] == true, "running"),
                    if local.is_empty() || local == public {
                        String::new()
                    } else {
                        format!(" (local {local})")
                    },
                    r["relay_log"].as_str().unwrap_or("?"),
                ),
                if r["serve_pid"].is_null() {
                    "  serve   none (opened without --on-message; read with `tincan listen`)"
                        .to_string()
                } else {
                    format!(
                        "  serve   pid {} {}",
                        r["serve_pid"],
                        state(r["serving"] == true, "serving"),
                    )
                },
            ];
            if !r["tunnel_pid"].is_null() {
                lines.push(format!(
                    "  tunnel  pid {} {}",
                    r["tunnel_pid"],
                    state(r["tunnel_running"] == true, "running"),
                ));
            }
            lines.push(format!(
                "  {} received, {} replied, {} without reply, {}, {}, {} deferred, {} dropped, {} withheld",
                r["received"],
                r["replied"],
                r["no_reply"].as_u64().unwrap_or(0),
                count(r, "handler_errors", "handler error"),
                count(r, "send_errors", "send error"),
                r["deferred"].as_u64().unwrap_or(0),
                r["dropped"],
                r["withheld"].as_u64().unwrap_or(0),
            ));
            lines.join("\n")
        })
        .collect();
    blocks.join("\n")
}

fn stop(home: Option<PathBuf>, args: StopArgs, out: &Out) -> Result<ExitCode, CliError> {
    let dir = home_dir(home)?;
    let rooms = Room::list(&dir);
    let targets: Vec<Room> = match (args.all, args.port) {
        (true, _) => rooms,
        (false, Some(p)) => rooms.into_iter().filter(|r| r.port == p).collect(),
        (false, None) if rooms.len() > 1 => {
            let ports: Vec<String> = rooms.iter().map(|r| r.port.to_string()).collect();
            return Err(CliError::new(
                "ambiguous_room",
                2,
                format!(
                    "{} rooms are open (ports {}); pass --port PORT or --all",
                    rooms.len(),
                    ports.join(", ")
                ),
            ));
        }
        (false, None) => rooms,
    };
    if targets.is_empty() {
        return Err(CliError::new(
            "no_room",
            3,
            "no room to stop; `tincan room status` lists them",
        ));
    }
    let mut stopped = Vec::new();
    for r in &targets {
        // The serve loop first (it flushes its replies), then the tunnel, then the relay.
        r.mark_stopping();
        let serve_clean = match r.serve_pid {
            Some(p) if r.serving() && p != std::process::id() => {
                stop_process(p, SERVE, false, STOP_GRACE)
            }
            _ => true,
        };
        let tunnel_clean = r
            .tunnel_pid
            .is_none_or(|p| stop_process(p, TUNNEL, true, STOP_GRACE));
        let relay_clean = stop_process(r.relay_pid, RELAY, true, STOP_GRACE);
        r.remove();
        stopped.push(json!({
            "port": r.port, "relay_pid": r.relay_pid, "clean": serve_clean && tunnel_clean && relay_clean,
        }));
    }
    out.print(json!({ "stopped": stopped }), || {
        let ports: Vec<String> = targets.iter().map(|r| r.port.to_string()).collect();
        format!("stopped room(s) on port {}", ports.join(", "))
    });
    Ok(ExitCode::SUCCESS)
}

/// `5s`, `12m 5s`, `3h 2m`, `2d 4h`: the two largest units.
fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_counts_in_the_singular_and_shows_every_field() {
        let room = |peers: u64, errors: u64, tunnel: Value| {
            json!({
                "port": 8787, "relay_pid": 42, "running": true, "public_url": "https://t.example",
                "relay_url": "http://127.0.0.1:8787", "relay_log": "/h/rooms/8787/relay.log",
                "serve_pid": 43, "tunnel_pid": tunnel, "tunnel_running": false,
                "uptime_secs": 5, "peers": peers, "received": 3, "replied": 2,
                "handler_errors": errors, "dropped": 1, "serving": true,
                "no_reply": 4, "send_errors": errors, "deferred": 6, "withheld": 7,
            })
        };
        assert_eq!(
            status_text(&[room(1, 1, json!(44)), room(2, 0, Value::Null)]),
            "room on port 8787 · up 5s · 1 peer\n\
             \x20 relay   pid 42 running · https://t.example (local http://127.0.0.1:8787) · log /h/rooms/8787/relay.log\n\
             \x20 serve   pid 43 serving\n\
             \x20 tunnel  pid 44 stopped\n\
             \x20 3 received, 2 replied, 4 without reply, 1 handler error, 1 send error, 6 deferred, 1 dropped, 7 withheld\n\
             room on port 8787 · up 5s · 2 peers\n\
             \x20 relay   pid 42 running · https://t.example (local http://127.0.0.1:8787) · log /h/rooms/8787/relay.log\n\
             \x20 serve   pid 43 serving\n\
             \x20 3 received, 2 replied, 4 without reply, 0 handler errors, 0 send errors, 6 deferred, 1 dropped, 7 withheld"
        );
    }

    #[test]
    fn a_room_without_a_handler_says_so_instead_of_a_null_pid() {
        let r = json!({
            "port": 1, "relay_pid": 2, "running": true, "public_url": "http://h:1",
            "relay_url": "http://h:1", "relay_log": "/l", "serve_pid": null, "tunnel_pid": null,
            "uptime_secs": 1, "peers": 0, "received": 0, "replied": 0, "handler_errors": 0,
            "dropped": 0, "serving": false, "no_reply": 0, "send_errors": 0, "deferred": 0,
        });
        let text = status_text(&[r]);
        assert!(!text.contains("null"), "{text}");
        assert!(text.contains("serve   none"), "{text}");
    }

    #[test]
    fn the_handoff_line_always_ends_the_conversation() {
        assert_eq!(
            handoff_line("http://h:1/invite#x", "cat", None, 300),
            "tincan serve --join 'http://h:1/invite#x' --on-message 'cat' --seed 'Hello!' --idle-timeout 30m --max-turns 20"
        );
        assert!(handoff_line("u", "cat", Some(10), 300).ends_with(" --max-turns 10"));
        // The guest waits at least twice as long as the host's handler may take.
        assert!(handoff_line("u", "cat", None, 3600).contains(" --idle-timeout 120m "));
    }

    #[test]
    fn uptime_reads_in_its_two_largest_units() {
        assert_eq!(uptime(5), "5s");
        assert_eq!(uptime(725), "12m 5s");
        assert_eq!(uptime(3 * 3600 + 125), "3h 2m");
        assert_eq!(uptime(2 * 86_400 + 4 * 3600 + 59), "2d 4h");
    }
}
