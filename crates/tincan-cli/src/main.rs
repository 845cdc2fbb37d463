//! The `tincan` binary: argument parsing and glue over tincan-client and tincan-relay.

mod cli;
mod cmd;
mod output;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::output::{CliError, Out};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version requests are not errors.
            let code = if e.use_stderr() { 2 } else { 0 };
            let json = std::env::args().any(|a| a == "--json");
            if json && e.use_stderr() {
                // The error paragraph (clap puts what is missing on the lines under the first),
                // without the usage line and the tip that follow it.
                let msg = e.render().to_string();
                let paragraph: Vec<&str> = msg
                    .lines()
                    .take_while(|l| !l.trim().is_empty())
                    .map(str::trim)
                    .collect();
                let message = paragraph.join(" ");
                let message = message.trim_start_matches("error: ");
                let message = if message.is_empty() {
                    "invalid arguments"
                } else {
                    message
                };
                crate::output::line(&format!(
                    "{}",
                    serde_json::json!({"error": {"code": "usage", "message": message}})
                ));
            } else {
                let _ = e.print();
            }
            return ExitCode::from(code);
        }
    };
    let out = Out::new(cli.json);
    // `version` runs without a runtime or logging, so it starts in a millisecond.
    if let Command::Version = cli.command {
        cmd::version::run(&out);
        return ExitCode::SUCCESS;
    }
    init_logging(&cli);
    let runtime = if serves_one_line(&cli.command) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
    .enable_all()
    .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => return out.fail(&CliError::internal(format!("cannot start runtime: {e}"))),
    };
    match runtime.block_on(cmd::dispatch(cli, &out)) {
        Ok(code) => code,
        Err(e) => out.fail(&e),
    }
}

/// Whether the command is one client's serve loop, which runs on one thread: each message
/// crosses the connection task, the loop and a handler task, and on a multi-thread runtime every
/// one of those hand-offs can be a wake-up of another thread (a serve turn measured ~0.25 ms
/// faster this way). The relay (and the demo, which embeds one) keeps a thread per core.
fn serves_one_line(command: &Command) -> bool {
    use cmd::room::RoomCmd;
    matches!(
        command,
        Command::Serve(_) | Command::Host(_) | Command::Room(RoomCmd::Open(_))
    )
}

/// Dependencies whose `trace` output carries payloads or credentials.
const QUIET_LIBRARIES: &[&str] = &[
    "tungstenite",
    "tokio_tungstenite",
    "hyper",
    "hyper_util",
    "h2",
    "reqwest",
    "axum",
    "tower_http",
    "rustls",
    "tokio_rustls",
];

/// Dependencies whose `debug` output already carries payloads: rmcp logs every request's
/// arguments (an invite URL given to `accept_invite`, the text given to `send_message`) and
/// every result (peer messages returned by `check_messages`) at `debug`. Always capped at `info`.
const QUIETER_LIBRARIES: &[&str] = &["rmcp"];

fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let default = if matches!(cli.command, Command::Relay(_)) {
        "info"
    } else {
        "warn"
    };
    let mut filter =
        EnvFilter::try_from_env("TINCAN_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // At `trace` these libraries log whole frames and headers (ciphertext, bearer tokens), and
    // rmcp logs tool arguments and results at `debug`. Cap each below the level that leaks
    // whenever TINCAN_LOG enables that level anywhere, so no setting can leak them. (Only then:
    // a `lib=debug` directive would otherwise make them *more* verbose than a `warn` default.)
    use tracing_subscriber::filter::LevelFilter;
    let enabled = filter.max_level_hint().unwrap_or(LevelFilter::TRACE);
    for (libs, leaks_at, cap) in [
        (QUIET_LIBRARIES, LevelFilter::TRACE, "debug"),
        (QUIETER_LIBRARIES, LevelFilter::DEBUG, "info"),
    ] {
        if enabled >= leaks_at {
            for lib in libs {
                if let Ok(d) = format!("{lib}={cap}").parse() {
                    filter = filter.add_directive(d);
                }
            }
        }
    }
    // Colour only for a person at a terminal: escape codes in a log file or journal are noise.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if cli.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
}
