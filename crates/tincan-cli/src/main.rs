//! The `tincan` binary: argument parsing and glue over tincan-client and tincan-relay.

mod cli;
mod cmd;
mod output;
mod signals;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::output::{CliError, Out};

fn main() -> ExitCode {
    let cli = match Cli::try_parse().map_err(without_hidden) {
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
                let missing;
                let message = if e.kind()
                    == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                {
                    missing = missing_subcommand();
                    missing.as_str()
                } else {
                    message
                };
                let message = match env_note(&e) {
                    Some(note) => format!("{message} {note}"),
                    None => message.to_string(),
                };
                crate::output::line(&format!(
                    "{}",
                    serde_json::json!({"error": {"code": "usage", "message": message}})
                ));
            } else {
                let _ = e.print();
                if let Some(note) = env_note(&e) {
                    eprintln!("{note}");
                }
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
    // Every client this command starts takes its transport from here (`Client::start`).
    if let Err(message) = tincan_client::Transport::from_env() {
        return out.fail(&CliError::new("usage", 2, message));
    }
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

/// `e` without hidden subcommands (the internal `__reap`) among the valid ones it lists: clap
/// lists every subcommand in a "requires a subcommand" error, hidden or not.
fn without_hidden(mut e: clap::Error) -> clap::Error {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::Strings(names)) = e.get(ContextKind::ValidSubcommand) else {
        return e;
    };
    let mut hidden = Vec::new();
    hidden_subcommands(&Cli::command(), &mut hidden);
    let shown = names
        .iter()
        .filter(|n| !hidden.contains(n))
        .cloned()
        .collect();
    e.insert(ContextKind::ValidSubcommand, ContextValue::Strings(shown));
    e
}

/// The usage error for a command given without its subcommand (`tincan room`): clap shows the
/// help there, which under `--json` would leave just the command's description.
fn missing_subcommand() -> String {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let mut path = vec!["tincan".to_string()];
    for word in std::env::args().skip(1).filter(|a| !a.starts_with('-')) {
        match cmd.find_subcommand(&word) {
            Some(sub) => {
                path.push(word.clone());
                cmd = sub.clone();
            }
            // An option's value (`--home DIR`) or a word clap will reject anyway.
            None => continue,
        }
    }
    let subs: Vec<&str> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name())
        .collect();
    format!(
        "`{}` needs a subcommand: one of {}",
        path.join(" "),
        subs.join(", ")
    )
}

/// For a bad value of an option that is also an environment variable which is set: that the
/// value came (or may have come) from there, since clap names only the flag.
fn env_note(e: &clap::Error) -> Option<String> {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = arg.strip_prefix("--")?.split([' ', '=']).next()?;
    let mut found = None;
    env_of(&Cli::command(), long, &mut found);
    let var = found?;
    let value = std::env::var_os(&var)?;
    let shown = value.to_string_lossy();
    Some(if shown.trim().is_empty() {
        format!("({var} is set but empty: unset it, or give it a value)")
    } else {
        format!("(the value may come from {var}={shown:?})")
    })
}

/// The environment variable of the option `--long` anywhere under `cmd`.
fn env_of(cmd: &clap::Command, long: &str, found: &mut Option<String>) {
    for a in cmd.get_arguments() {
        if a.get_long() == Some(long)
            && let Some(env) = a.get_env()
        {
            *found = Some(env.to_string_lossy().into_owned());
            return;
        }
    }
    for sub in cmd.get_subcommands() {
        env_of(sub, long, found);
    }
}

/// The names of every hidden subcommand under `cmd`, at any depth.
fn hidden_subcommands(cmd: &clap::Command, into: &mut Vec<String>) {
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() {
            into.push(sub.get_name().to_string());
        }
        hidden_subcommands(sub, into);
    }
}

/// Whether the command is one client's serve loop, which runs on one thread: each message
/// crosses the connection task, the loop and a handler task, and on a multi-thread runtime every
/// one of those hand-offs can be a wake-up of another thread (a serve turn measured ~0.25 ms
/// faster this way). The relay (and the demo, which embeds one) keeps a thread per core. Serve's
/// reaper (`__reap`) only waits on one pipe.
fn serves_one_line(command: &Command) -> bool {
    use cmd::room::RoomCmd;
    matches!(
        command,
        Command::Serve(_) | Command::Host(_) | Command::Room(RoomCmd::Open(_)) | Command::Reap
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
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{EnvFilter, Layer};
    let default = if matches!(cli.command, Command::Relay(_)) {
        "info"
    } else {
        "warn"
    };
    let (filter, bad) = match EnvFilter::try_from_env("TINCAN_LOG") {
        Ok(f) => (f, None),
        // Unset is the default; a value that does not parse is said once it can be logged.
        Err(e) => (
            EnvFilter::new(default),
            std::env::var("TINCAN_LOG").ok().map(|v| (v, e.to_string())),
        ),
    };
    // At `trace` these libraries log whole frames and headers (ciphertext, bearer tokens), and
    // rmcp logs tool arguments and results at `debug`. A filter of its own drops those events
    // whatever TINCAN_LOG says: as directives in TINCAN_LOG's filter, a more specific one
    // (`tungstenite::protocol::frame=trace`) won over the cap.
    let cap = tracing_subscriber::filter::filter_fn(|meta| !leaks(meta.target(), *meta.level()));
    // Colour only for a person at a terminal: escape codes in a log file or journal are noise.
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let fmt = if cli.log_json {
        fmt.json().with_filter(cap).boxed()
    } else {
        fmt.with_filter(cap).boxed()
    };
    tracing_subscriber::registry().with(filter).with(fmt).init();
    if let Some((value, error)) = bad {
        tracing::warn!(
            "TINCAN_LOG={value:?} is not a log filter ({error}); using {default:?} (e.g. TINCAN_LOG=debug, or tincan_relay=debug,warn)"
        );
    }
}

/// Whether an event at `level` from `target` is one that can carry payloads or credentials.
fn leaks(target: &str, level: tracing::Level) -> bool {
    let from = |libs: &[&str]| {
        libs.iter().any(|lib| {
            target == *lib
                || target
                    .strip_prefix(lib)
                    .is_some_and(|rest| rest.starts_with("::"))
        })
    };
    (level == tracing::Level::TRACE && from(QUIET_LIBRARIES))
        || (level >= tracing::Level::DEBUG && from(QUIETER_LIBRARIES))
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use tracing::Level;

    use super::{Cli, leaks, without_hidden};

    #[test]
    fn a_missing_subcommand_lists_only_the_visible_ones() {
        for args in [&["tincan", "--json"][..], &["tincan", "--home", "/h"]] {
            let e = without_hidden(Cli::try_parse_from(args).unwrap_err());
            let text = e.render().to_string();
            assert!(text.contains("requires a subcommand"), "{text}");
            assert!(text.contains("setup") && text.contains("room"), "{text}");
            assert!(!text.contains("__reap"), "{text}");
        }
    }

    #[test]
    fn payload_carrying_events_are_dropped_whatever_the_directive() {
        assert!(leaks("tungstenite::protocol::frame", Level::TRACE));
        assert!(leaks("tokio_tungstenite", Level::TRACE));
        assert!(!leaks("tungstenite::protocol", Level::DEBUG));
        assert!(leaks("rmcp::service", Level::DEBUG));
        assert!(!leaks("rmcp", Level::INFO));
        assert!(!leaks("tincan_relay", Level::TRACE));
        assert!(!leaks("hyperion", Level::TRACE), "a prefix is not a module");
    }
}
