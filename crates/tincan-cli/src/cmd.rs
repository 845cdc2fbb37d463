//! One module per command.

pub mod audit;
pub mod demo;
pub mod invite;
pub mod launch;
pub mod listen;
pub mod mcp;
pub mod peers;
pub mod prune;
pub mod relay;
pub mod room;
pub mod send;
pub mod serve;
pub mod setup;
pub mod version;

use std::path::PathBuf;
use std::process::ExitCode;

use tincan_client::Home;

use crate::cli::{Cli, Command};
use crate::output::{CliError, Out};

pub async fn dispatch(cli: Cli, out: &Out) -> Result<ExitCode, CliError> {
    let home = cli.home.clone().or_else(env_home);
    match cli.command {
        Command::Setup => setup::setup(home, out),
        Command::Whoami => setup::whoami(home, out),
        Command::Invite(c) => invite::run(home, c, out).await,
        Command::Peers(a) => peers::run(home, a, out),
        Command::Send(a) => send::run(home, a, out).await,
        Command::Listen(a) => listen::run(home, a, out).await,
        Command::Relay(a) => relay::run(home, a, out).await,
        Command::Demo => demo::run(out).await,
        Command::Serve(a) => serve::run(home, a, out).await,
        Command::Room(c) => room::run(home, c, out).await,
        Command::Host(a) => room::open(home, a, out).await,
        Command::Mcp(a) => mcp::run(home, a, out).await,
        Command::Launch(a) => launch::run(home, a, out).await,
        Command::Audit(c) => audit::run(home, c, out).await,
        Command::Prune(a) => prune::run(home, a, out),
        Command::Reap => Ok(serve::reaper::run().await),
        Command::Version => {
            version::run(out);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `$TINCAN_HOME`, unless it is unset or empty (as `TINCAN_HOME= tincan …` means "the default").
pub fn env_home() -> Option<PathBuf> {
    std::env::var_os("TINCAN_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The home directory: --home, else $TINCAN_HOME (see [`env_home`]), else the platform config dir.
pub fn home_dir(home: Option<PathBuf>) -> Result<PathBuf, CliError> {
    if let Some(h) = home {
        return Ok(h);
    }
    directories::ProjectDirs::from("", "", "tincan")
        .map(|d| d.config_dir().to_path_buf())
        .ok_or_else(|| {
            CliError::new(
                "no_home",
                3,
                "cannot find a config directory; pass --home DIR or set TINCAN_HOME",
            )
        })
}

/// Opens the home, requiring an identity.
pub fn open_home(home: Option<PathBuf>) -> Result<Home, CliError> {
    let flag = home_flag(&home);
    let dir = home_dir(home)?;
    match std::fs::metadata(dir.join("tincan.db")) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CliError::new(
                "no_identity",
                3,
                format!(
                    "no identity in {}; run `tincan{flag} setup` first",
                    dir.display()
                ),
            ));
        }
        // A home this user cannot enter is not a home without an identity.
        Err(e) => return Err(home_unusable(&dir, &e)),
    }
    let home = open_dir(&dir)?;
    match home.identity() {
        Ok(_) => Ok(home),
        Err(tincan_client::ClientError::NoIdentity) => Err(CliError::new(
            "no_identity",
            3,
            format!(
                "no identity in {}; run `tincan{flag} setup` first",
                dir.display()
            ),
        )),
        Err(e) => Err(e.into()),
    }
}

/// [`Home::open`], naming the directory when its files cannot be read or written.
pub fn open_dir(dir: &std::path::Path) -> Result<Home, CliError> {
    Home::open(dir).map_err(|e| match e {
        tincan_client::ClientError::Io(io) => home_unusable(dir, &io),
        e => e.into(),
    })
}

fn home_unusable(dir: &std::path::Path, e: &std::io::Error) -> CliError {
    CliError::new(
        "home_unusable",
        3,
        format!(
            "cannot use the home {}: {e}; it must be a directory this user owns and can write \
             (tincan keeps it at mode 0700)",
            dir.display()
        ),
    )
}

/// An invite URL as given on the command line, or read from stdin for `-` (first non-empty line),
/// so its secret need not sit in the process's argument list, which other local users can read.
pub fn invite_url(arg: &str) -> Result<String, CliError> {
    if arg != "-" {
        return Ok(arg.to_string());
    }
    // Line by line, up to the first non-empty one: a URL pasted at a terminal is taken when
    // Enter is pressed, without waiting for the end of input.
    use std::io::{BufRead, Read};
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    loop {
        line.clear();
        let n = Read::take(&mut stdin, 64 * 1024)
            .read_line(&mut line)
            .map_err(|e| {
                CliError::new(
                    "bad_input",
                    2,
                    format!("cannot read the invite URL from stdin: {e}"),
                )
            })?;
        if n == 0 {
            return Err(CliError::new(
                "bad_input",
                2,
                "stdin held no invite URL: pipe the link in, as in `printf '%s\\n' '<url>' | tincan invite accept -`",
            ));
        }
        if !line.trim().is_empty() {
            return Ok(line.trim().to_string());
        }
    }
}

/// The relay to use: the flag, else the home's last relay.
pub fn relay_for(home: &Home, flag: Option<String>) -> Result<String, CliError> {
    match flag {
        Some(r) => Ok(r),
        None => home.default_relay()?.ok_or_else(|| {
            CliError::new(
                "no_relay",
                2,
                "no relay known yet; pass --relay http://HOST:PORT (e.g. from `tincan relay`)",
            )
        }),
    }
}

/// A note on stderr when peers of this home use other relays than `relay`: one connection reads
/// one relay, so their messages wait there (a second `room open` in a home moves its default).
pub fn note_other_relays(home: &Home, relay: &str) {
    use tincan_client::tincan_proto::invite::normalize_relay_url;
    let here = normalize_relay_url(relay);
    let Ok(peers) = home.peers() else { return };
    let mut others: Vec<String> = peers
        .into_iter()
        .map(|p| normalize_relay_url(&p.relay_url))
        .filter(|r| *r != here)
        .collect();
    if others.is_empty() {
        return;
    }
    let n = others.len();
    others.sort();
    others.dedup();
    crate::output::eprintln_safe(&format!(
        "note: {n} peer{} of this home use{} another relay ({}); this reads only {here}: run it again with --relay URL to read theirs",
        if n == 1 { "" } else { "s" },
        if n == 1 { "s" } else { "" },
        others.join(", ")
    ));
}

/// ` --home DIR` for a command line this command suggests, unless the suggested command would
/// reach that home without it (no `--home` given, or the same dir as `TINCAN_HOME`, which it
/// inherits); else nothing. A `--home` given over a different `TINCAN_HOME` is named.
pub fn home_flag(home: &Option<PathBuf>) -> String {
    match home {
        Some(dir) if env_home().as_ref() != Some(dir) => {
            let d = dir.display().to_string();
            if d.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-~".contains(c))
            {
                format!(" --home {d}")
            } else {
                format!(" --home {}", shell_quote(&d))
            }
        }
        _ => String::new(),
    }
}

/// The error for a client whose event stream ended: why it stopped for good (the relay refused
/// this identity: `auth_failed`, exit 7; the home cannot store: `home_unusable`, exit 3).
pub fn stopped_error(client: &tincan_client::Client) -> CliError {
    match client.state() {
        tincan_client::ConnState::Failed(why) => tincan_client::ClientError::Stopped(why).into(),
        _ => CliError::new("stopped", 1, "the client stopped"),
    }
}

/// Why listening on `addr` (given as `flag`) failed, with what to do: a taken port
/// (`port_in_use`, 2), something that is not an address (`usage`, 2), anything else
/// (`listen_failed`, 1).
pub fn bind_error(e: &std::io::Error, addr: &str, flag: &str) -> CliError {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => CliError::new(
            "port_in_use",
            2,
            format!(
                "cannot listen on {addr}: the port is in use (another relay or server?); stop it or choose another {flag} port"
            ),
        ),
        std::io::ErrorKind::InvalidInput => CliError::new(
            "usage",
            2,
            format!(
                "{flag} {addr} is not an address to listen on ({e}); use host:port, e.g. 127.0.0.1:8787"
            ),
        ),
        _ => CliError::new("listen_failed", 1, format!("cannot listen on {addr}: {e}")),
    }
}

/// `s` as one single-quoted word for `sh`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A duration in seconds in its largest whole unit: `604800` as `7d`, `5400` as `90m`.
pub fn human_secs(s: u64) -> String {
    match s {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::human_secs;

    #[test]
    fn a_suggested_command_names_the_home_the_user_chose() {
        if super::env_home().is_some() {
            return; // the suggestion would rightly leave it out
        }
        assert_eq!(super::home_flag(&None), "");
        let plain = Some(std::path::PathBuf::from("/tmp/agent-b"));
        assert_eq!(super::home_flag(&plain), " --home /tmp/agent-b");
        let spaced = Some(std::path::PathBuf::from("/tmp/my agent's home"));
        assert_eq!(
            super::home_flag(&spaced),
            " --home '/tmp/my agent'\\''s home'"
        );
    }

    #[test]
    fn durations_print_in_their_largest_whole_unit() {
        assert_eq!(human_secs(604_800), "7d");
        assert_eq!(human_secs(5_400), "90m");
        assert_eq!(human_secs(7_200), "2h");
        assert_eq!(human_secs(61), "61s");
    }
}
