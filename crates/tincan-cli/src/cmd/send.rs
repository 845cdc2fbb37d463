//! `tincan send`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use tincan_client::{Client, ClientError, ClientOptions, now_ms};

use crate::cli::SendArgs;
use crate::cmd::open_home;
use crate::output::{CliError, Out};

pub async fn run(home: Option<PathBuf>, args: SendArgs, out: &Out) -> Result<ExitCode, CliError> {
    let mut h = open_home(home)?;
    if args.lines && args.text != "-" {
        return Err(CliError::new(
            "usage",
            2,
            "--lines reads the messages from stdin: give \"-\" as the message".to_string(),
        ));
    }
    let texts: Vec<String> = if args.text == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map_err(|e| {
            CliError::new(
                "bad_input",
                2,
                format!("cannot read the message from stdin: {e}"),
            )
        })?;
        if args.lines {
            s.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect()
        } else {
            vec![s.trim_end_matches('\n').to_string()]
        }
    } else {
        vec![args.text]
    };
    if texts.is_empty() {
        return Err(CliError::new(
            "bad_input",
            2,
            "stdin held no non-empty line: nothing to send".to_string(),
        ));
    }
    if texts.iter().any(|t| t.trim().is_empty()) {
        return Err(CliError::new(
            "bad_input",
            2,
            "the message is empty: give the text as an argument, or \"-\" to read it from stdin"
                .to_string(),
        ));
    }
    let peer = h.resolve_peer(&args.peer)?;
    // Sealed and queued before any network: a message is never lost to a relay outage. All or
    // nothing: a text over the size limit fails the command before anything is queued.
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ids = h.queue_texts(&peer.id, &refs, now_ms())?;
    let timeout = Duration::from_secs(args.timeout);
    let client = Client::start(h, &peer.relay_url, ClientOptions::send_only())?;
    let result = async {
        client.wait_connected(timeout).await?;
        for id in &ids {
            client.wait_sent(id, timeout).await?;
        }
        Ok::<_, ClientError>(())
    }
    .await;
    let id = ids[0];
    // `--lines` answers with every id; a single message with its own.
    let ids_json = |status: &str| {
        if args.lines {
            let list: Vec<String> = ids.iter().map(ToString::to_string).collect();
            json!({"ids": list, "status": status})
        } else {
            json!({"id": id.to_string(), "status": status})
        }
    };
    match result {
        Ok(()) => {
            let mut v = ids_json("sent");
            v["to"] = json!(peer.id.to_string());
            out.print(v, || match ids.len() {
                1 => format!("sent {id} to {}", peer.display_name()),
                n => format!("sent {n} messages to {}", peer.display_name()),
            });
            Ok(ExitCode::SUCCESS)
        }
        Err(
            e @ (ClientError::Unreachable { .. }
            | ClientError::Timeout(_)
            | ClientError::Deferred { .. }),
        ) => {
            let what = match ids.len() {
                1 => format!("the message is queued ({id}) and goes"),
                n => format!("the {n} messages are queued and go"),
            };
            let mut extra = ids_json("queued");
            // This process ends now, so the client's own retry does not happen here: say when a
            // next run may succeed instead.
            let deferred = match &e {
                ClientError::Deferred {
                    code,
                    message,
                    retry_after_ms,
                } => Some((code.as_str(), message.clone(), *retry_after_ms)),
                _ => None,
            };
            let err: CliError = e.into();
            let said = match deferred {
                Some((code, message, ms)) => {
                    extra["retry_after_ms"] = json!(ms);
                    format!(
                        "relay deferred the message: {message} ({code}); {what} out with the next \
                         `tincan send` or `tincan listen`, which the relay accepts in about {ms} ms"
                    )
                }
                None => format!(
                    "{}; {what} out with the next `tincan send` or `tincan listen`",
                    err.message
                ),
            };
            Err(CliError::new(&err.code, err.exit, said).with(extra))
        }
        Err(e) => Err(e.into()),
    }
}
