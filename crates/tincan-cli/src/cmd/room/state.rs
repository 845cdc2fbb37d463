//! A room on disk: `HOME/rooms/PORT/` holds `room.json` (pids and URLs), `relay.pid`,
//! `relay.log`, `relay.db`, `tunnel.log` and `serve.json` (the serve loop's counters).

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tincan_client::tincan_proto::invite::normalize_relay_url;

use crate::output::CliError;

/// Arguments that mark our processes (checked against /proc so a recycled pid is never signalled).
pub const RELAY: &[&str] = &["relay"];
/// See [`RELAY`].
pub const SERVE: &[&str] = &["room", "host"];
/// See [`RELAY`].
pub const TUNNEL: &[&str] = &["tunnel"];

/// What `room open` recorded.
#[derive(Clone, Debug)]
pub struct Room {
    /// Its directory.
    pub dir: PathBuf,
    /// The relay's port.
    pub port: u16,
    /// Where the relay listens.
    pub listen: String,
    /// The URL this machine uses.
    pub relay_url: String,
    /// The URL in the invite.
    pub public_url: String,
    /// The detached relay.
    pub relay_pid: u32,
    /// The detached tunnel, if any.
    pub tunnel_pid: Option<u32>,
    /// The `room open` process serving messages, if any.
    pub serve_pid: Option<u32>,
    /// Unix seconds.
    pub started_at: u64,
}

impl Room {
    /// All rooms recorded under `home`, by port.
    pub fn list(home: &Path) -> Vec<Room> {
        let Ok(entries) = std::fs::read_dir(home.join("rooms")) else {
            return Vec::new();
        };
        let mut rooms: Vec<Room> = entries
            .filter_map(Result::ok)
            .filter_map(|e| Room::load(&e.path()))
            .collect();
        rooms.sort_by_key(|r| r.port);
        rooms
    }

    /// The room directory for `port`.
    pub fn dir_for(home: &Path, port: u16) -> PathBuf {
        home.join("rooms").join(port.to_string())
    }

    fn load(dir: &Path) -> Option<Room> {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("room.json")).ok()?).ok()?;
        let pid = |k: &str| v[k].as_u64().and_then(|p| u32::try_from(p).ok());
        Some(Room {
            dir: dir.to_path_buf(),
            port: u16::try_from(v["port"].as_u64()?).ok()?,
            listen: v["listen"].as_str()?.to_string(),
            relay_url: v["relay_url"].as_str()?.to_string(),
            public_url: v["public_url"].as_str()?.to_string(),
            relay_pid: pid("relay_pid")?,
            tunnel_pid: pid("tunnel_pid"),
            serve_pid: pid("serve_pid"),
            started_at: v["started_at"].as_u64().unwrap_or(0),
        })
    }

    /// Writes `room.json` and `relay.pid`.
    pub fn save(&self) -> Result<(), CliError> {
        let v = json!({
            "port": self.port, "listen": self.listen, "relay_url": self.relay_url,
            "public_url": self.public_url, "relay_pid": self.relay_pid,
            "tunnel_pid": self.tunnel_pid, "serve_pid": self.serve_pid,
            "started_at": self.started_at,
        });
        // A mark left by a `room stop` that died half-way would hide the next room's notice.
        let _ = std::fs::remove_file(self.dir.join("stopping"));
        write_atomic(&self.dir.join("room.json"), &v.to_string())?;
        write_atomic(
            &self.dir.join("relay.pid"),
            &format!("{}\n", self.relay_pid),
        )
    }

    /// Forgets the room's processes; keeps its database and logs.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(self.dir.join("room.json"));
        let _ = std::fs::remove_file(self.dir.join("relay.pid"));
        let _ = std::fs::remove_file(self.dir.join("serve.json"));
        let _ = std::fs::remove_file(self.dir.join("stopping"));
    }

    /// Marks the room as being closed by `room stop`, before its serve is stopped, so that serve
    /// does not tell the user the room is still open.
    pub fn mark_stopping(&self) {
        let _ = std::fs::write(self.dir.join("stopping"), b"");
    }

    /// Whether `room stop` is closing the room (or has closed it).
    pub fn stopping(&self) -> bool {
        self.dir.join("stopping").exists() || !self.dir.exists()
    }

    /// Whether its relay is still running.
    pub fn relay_running(&self) -> bool {
        running(self.relay_pid, RELAY)
    }

    /// Whether the process serving its messages is still running.
    pub fn serving(&self) -> bool {
        self.serve_pid.is_some_and(|p| running(p, SERVE))
    }

    /// The serve loop's counters, if it wrote any.
    pub fn stats(&self) -> Value {
        std::fs::read_to_string(self.dir.join("serve.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null)
    }

    /// The relay log file.
    pub fn relay_log(&self) -> PathBuf {
        self.dir.join("relay.log")
    }

    /// How many of the home's peers, given by their stored relay URLs, are this room's: paired
    /// through its invite URL (`public_url`) or reached at its local one. Other rooms and relays
    /// of the same home are not counted.
    pub fn peers_among(&self, peer_relays: &[String]) -> usize {
        let own = [
            normalize_relay_url(&self.relay_url),
            normalize_relay_url(&self.public_url),
        ];
        peer_relays
            .iter()
            .filter(|r| own.contains(&normalize_relay_url(r)))
            .count()
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<(), CliError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| CliError::new("io", 1, format!("cannot write {}: {e}", path.display())))
}

/// Whether `pid` is a live (not zombie) process with one of `needles` among its arguments. The
/// command-line check keeps a recycled pid from being taken for ours.
pub fn running(pid: u32, needles: &[&str]) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if kill(Pid::from_raw(raw), None).is_err() {
        return false;
    }
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if !Path::new("/proc/self").exists() {
        return true;
    }
    let zombie = std::fs::read_to_string(proc_dir.join("stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true);
    let ours = std::fs::read(proc_dir.join("cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .any(|arg| needles.iter().any(|n| arg == n.as_bytes()))
        })
        .unwrap_or(false);
    !zombie && ours
}

/// SIGTERM (to its whole process group if `group`: a detached relay or tunnel leads its own),
/// wait up to `grace`, then SIGKILL. Returns whether it ended on SIGTERM.
pub fn stop_process(pid: u32, needles: &[&str], group: bool, grace: Duration) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return true;
    };
    if !running(pid, needles) {
        return true;
    }
    let signal = |s: Signal| {
        let _ = if group {
            killpg(Pid::from_raw(raw), s)
        } else {
            kill(Pid::from_raw(raw), s)
        };
    };
    signal(Signal::SIGTERM);
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if !running(pid, needles) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    signal(Signal::SIGKILL);
    // Not clean, but gone before we answer: its port and database are free once we return.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while running(pid, needles) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// The last `n` lines of a log file, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_counts_only_the_peers_of_its_own_relay() {
        let room = Room {
            dir: PathBuf::from("/h/rooms/8788"),
            port: 8788,
            listen: "127.0.0.1:8788".into(),
            relay_url: "http://127.0.0.1:8788".into(),
            public_url: "https://quiet-river.trycloudflare.com".into(),
            relay_pid: 1,
            tunnel_pid: None,
            serve_pid: None,
            started_at: 0,
        };
        let peers = [
            "https://quiet-river.trycloudflare.com/",
            "http://127.0.0.1:8788",
            "http://127.0.0.1:8787",
            "https://relay.example.org",
        ]
        .map(String::from);
        assert_eq!(room.peers_among(&peers), 2);
        assert_eq!(room.peers_among(&[]), 0);
    }
}
