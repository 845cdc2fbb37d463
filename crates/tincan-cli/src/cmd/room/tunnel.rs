//! `--tunnel`: a Cloudflare quick tunnel (`cloudflared tunnel --url`) in front of the relay.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::output::CliError;

/// How long cloudflared has to report its public URL.
const URL_TIMEOUT: Duration = Duration::from_secs(30);

/// A started tunnel.
pub struct Tunnel {
    /// Its process (leader of its own process group).
    pub pid: u32,
    /// The public https URL it reported.
    pub url: String,
}

/// `$TINCAN_CLOUDFLARED`, else `cloudflared` on PATH; a clear error if neither exists.
pub fn find_cloudflared() -> Result<PathBuf, CliError> {
    if let Some(p) = std::env::var_os("TINCAN_CLOUDFLARED") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(missing(&format!(
            "TINCAN_CLOUDFLARED points to {}, which does not exist",
            p.display()
        )));
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("cloudflared"))
        .find(|p| p.is_file())
        .ok_or_else(|| missing("cloudflared is not on PATH"))
}

fn missing(why: &str) -> CliError {
    CliError::new(
        "no_cloudflared",
        2,
        format!(
            "--tunnel needs cloudflared, but {why}. Install it (macOS: `brew install cloudflared`; \
             Linux: the cloudflared package or release binary from Cloudflare), or set \
             TINCAN_CLOUDFLARED=/path/to/cloudflared, or skip the tunnel and pass \
             --public-url https://your.host behind your own reverse proxy"
        ),
    )
}

/// Starts `cloudflared tunnel --url http://TARGET`, detached with its output in `log`, and
/// waits for the https URL it prints.
pub fn start(bin: &Path, target: &str, log: &Path) -> Result<Tunnel, CliError> {
    let io =
        |e: std::io::Error| CliError::new("io", 1, format!("cannot write {}: {e}", log.display()));
    let out = std::fs::File::create(log).map_err(io)?;
    let err = out.try_clone().map_err(io)?;
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(bin)
        .args(["tunnel", "--url", &format!("http://{target}")])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| {
            CliError::new(
                "tunnel_failed",
                1,
                format!("cannot start {}: {e}", bin.display()),
            )
        })?;
    let pid = child.id();
    let deadline = Instant::now() + URL_TIMEOUT;
    loop {
        if let Some(url) = find_url(&std::fs::read_to_string(log).unwrap_or_default()) {
            // Reap it whenever it ends so it never lingers as a zombie of this process.
            std::thread::spawn(move || child.wait());
            return Ok(Tunnel { pid, url });
        }
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() > deadline {
            // The whole group (it leads its own): cloudflared may have started helpers that
            // would outlive it.
            if let Ok(pgid) = i32::try_from(pid) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pgid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill();
            let _ = child.wait();
            return Err(CliError::new(
                "tunnel_failed",
                1,
                failure(exited, &super::state::log_tail(log, 10)),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Why no tunnel came up: how cloudflared ended (`exited`, or still running at the deadline)
/// and the `tail` of its log, or that it printed nothing. The log's path is not named: a room
/// that fails to open removes its new directory, log included.
fn failure(exited: Option<ExitStatus>, tail: &str) -> String {
    use std::os::unix::process::ExitStatusExt;
    let why = match exited {
        Some(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with status {code} before reporting a URL"),
            (None, Some(signal)) => format!("was killed by signal {signal} before reporting a URL"),
            (None, None) => format!("ended ({status}) before reporting a URL"),
        },
        None => format!("gave no URL within {}s", URL_TIMEOUT.as_secs()),
    };
    if tail.trim().is_empty() {
        format!("cloudflared {why}, and printed nothing")
    } else {
        format!("cloudflared {why}; its output ended with:\n{tail}")
    }
}

/// The first `https://NAME.trycloudflare.com` in cloudflared's output.
fn find_url(text: &str) -> Option<String> {
    text.match_indices("https://").find_map(|(i, _)| {
        let rest = &text[i + "https://".len()..];
        let host: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
            .collect();
        let name = host.strip_suffix(".trycloudflare.com")?;
        (!name.is_empty() && name != "api").then(|| format!("https://{host}"))
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn a_failure_names_the_exit_status_and_whether_anything_was_printed() {
        assert_eq!(
            failure(Some(ExitStatus::from_raw(1 << 8)), ""),
            "cloudflared exited with status 1 before reporting a URL, and printed nothing"
        );
        assert_eq!(
            failure(Some(ExitStatus::from_raw(1 << 8)), "failed to connect"),
            "cloudflared exited with status 1 before reporting a URL; its output ended with:\nfailed to connect"
        );
        assert!(failure(None, "").starts_with("cloudflared gave no URL within 30s"));
    }

    #[test]
    fn finds_the_quick_tunnel_url_in_cloudflared_output() {
        let log = "2026-01-01T00:00:00Z INF Requesting new quick Tunnel on trycloudflare.com...\n\
            2026-01-01T00:00:01Z INF +----------------------------------------------+\n\
            2026-01-01T00:00:01Z INF |  Your quick Tunnel has been created! Visit it at (it may take some time to be reachable):  |\n\
            2026-01-01T00:00:01Z INF |  https://seven-words-like-this.trycloudflare.com                    |\n";
        assert_eq!(
            find_url(log).as_deref(),
            Some("https://seven-words-like-this.trycloudflare.com")
        );
        assert_eq!(
            find_url("https://api.trycloudflare.com/tunnel failed"),
            None
        );
        assert_eq!(find_url("https://example.com"), None);
    }
}
