//! One module per command.

pub mod audit;
pub mod demo;
pub mod invite;
pub mod launch;
pub mod listen;
pub mod mcp;
pub mod peers;
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
    let home = cli.home.clone();
    match cli.command {
        Command::Setup => setup::setup(home, out),
        Command::Whoami => setup::whoami(home, out),
        Command::Invite(c) => invite::run(home, c, out).await,
        Command::Peers(a) => peers::run(home, a, out),
        Command::Send(a) => send::run(home, a, out).await,
        Command::Listen(a) => listen::run(home, a, out).await,
        Command::Relay(a) => relay::run(a, out).await,
        Command::Demo => demo::run(out).await,
        Command::Serve(a) => serve::run(home, a, out).await,
        Command::Room(c) => room::run(home, c, out).await,
        Command::Host(a) => room::open(home, a, out).await,
        Command::Mcp(a) => mcp::run(home, a, out).await,
        Command::Launch(a) => launch::run(home, a, out).await,
        Command::Audit(c) => audit::run(home, c, out).await,
        Command::Version => {
            version::run(out);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The home directory: --home, else $TINCAN_HOME (clap reads it), else the platform config dir.
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
    let dir = home_dir(home)?;
    if !dir.join("tincan.db").exists() {
        return Err(CliError::new(
            "no_identity",
            3,
            format!("no identity in {}; run `tincan setup` first", dir.display()),
        ));
    }
    let home = Home::open(&dir)?;
    home.identity()?;
    Ok(home)
}

/// The relay to use: the flag, else the home's last relay.
pub fn relay_for(home: &Home, flag: Option<String>) -> Result<String, CliError> {
    match flag {
        Some(r) => Ok(r),
        None => home.setting("relay")?.ok_or_else(|| {
            CliError::new(
                "no_relay",
                2,
                "no relay known yet; pass --relay http://HOST:PORT (e.g. from `tincan relay`)",
            )
        }),
    }
}
