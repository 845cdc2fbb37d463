//! `tincan listen`: NDJSON events with --json.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use tincan_client::{Client, ClientOptions, Event};

use crate::cli::ListenArgs;
use crate::cmd::{open_home, relay_for};
use crate::output::{CliError, Out, terminal_safe};

pub async fn run(home: Option<PathBuf>, args: ListenArgs, out: &Out) -> Result<ExitCode, CliError> {
    let h = open_home(home)?;
    let named = args.relay.is_some();
    let relay = relay_for(&h, args.relay)?;
    if !named {
        crate::cmd::note_other_relays(&h, &relay);
    }
    let mut client = Client::start(h, &relay, ClientOptions::default())?;
    let deadline = args
        .timeout
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    // One pair of listeners for the whole run, made before it says it listens: a Ctrl-C (or
    // SIGTERM) at any point is seen and ends the run cleanly (the marks of what was shown are
    // written).
    let mut shutdown = crate::signals::Shutdown::install();
    if !out.json {
        crate::output::eprintln_safe(&format!("listening on {relay} (Ctrl-C to stop)"));
    }
    let mut connected = false;
    loop {
        let next = async {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, client.next_event()).await.ok(),
                None => Some(client.next_event().await),
            }
        };
        let event = tokio::select! {
            e = next => e,
            _ = shutdown.recv() => return Ok(ExitCode::SUCCESS),
        };
        let Some(event) = event else {
            // Timed out. Never having reached the relay is the failure to report, not the quiet.
            if !connected && let tincan_client::ConnState::Connecting(Some(reason)) = client.state()
            {
                return Err(tincan_client::ClientError::Unreachable {
                    url: relay.clone(),
                    reason,
                }
                .into());
            }
            if args.once {
                return Err(CliError::new(
                    "timeout",
                    6,
                    "no message or join arrived before the timeout",
                ));
            }
            return Ok(ExitCode::SUCCESS);
        };
        let Some(event) = event else {
            return Err(crate::cmd::stopped_error(&client));
        };
        connected |= matches!(event, Event::Connected);
        let done = match print_event(&client, &event, out) {
            Ok(done) => done,
            Err(e) => {
                // Whatever read the events has gone: this one was not handed over, so the next
                // `listen` shows it (the ones printed before stay handed over).
                client.give_back_last();
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(ExitCode::SUCCESS);
                }
                return Err(CliError::new(
                    "output_failed",
                    1,
                    format!("cannot write the event: {e}; it will be shown again"),
                ));
            }
        };
        if args.once && done {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// Prints one event; returns whether it counts for --once, or the write error.
fn print_event(client: &Client, event: &Event, out: &Out) -> std::io::Result<bool> {
    Ok(match event {
        Event::Message(m) => {
            out.try_print(
                json!({
                    "event": "message",
                    "from": m.from.to_string(),
                    "from_name": m.from_name,
                    "id": m.id.to_string(),
                    "text": m.text,
                    "sent_at": m.sent_at,
                    "received_at": m.received_at,
                }),
                || {
                    let name = m
                        .from_name
                        .clone()
                        .unwrap_or_else(|| m.from.to_string()[..12].to_string());
                    crate::output::tagged_lines(&format!("[{name}]"), &m.text)
                },
            )?;
            true
        }
        Event::PeerJoined { peer, fingerprint } => {
            out.try_print(json!({"event": "peer_joined", "peer": peer.to_string(), "fingerprint": fingerprint}), || {
                format!("peer joined: {peer}\nfingerprint: {fingerprint}  (compare it with theirs out of band)")
            })?;
            true
        }
        e @ Event::Withheld { .. } => {
            if let Some((value, text)) = crate::output::withheld(e) {
                out.try_print(value, || text)?;
            }
            false
        }
        Event::Rejected { from, reason } => {
            out.try_print(
                json!({"event": "rejected", "from": from.to_string(), "reason": reason}),
                || {
                    format!(
                        "rejected a message claiming to be from {from}: {}",
                        terminal_safe(reason)
                    )
                },
            )?;
            false
        }
        Event::SendDeferred {
            id,
            code,
            message,
            retry_after_ms,
        } => {
            out.try_print(
                json!({"event": "send_deferred", "id": id.to_string(), "code": code, "message": message, "retry_after_ms": retry_after_ms}),
                || format!("relay deferred message {id} ({code}); retrying in {retry_after_ms} ms"),
            )?;
            false
        }
        Event::SendFailed { id, code, message } => {
            out.try_print(json!({"event": "send_failed", "id": id.to_string(), "code": code, "message": message}), || {
                format!("relay refused message {id}: {}", terminal_safe(message))
            })?;
            false
        }
        Event::Connected => {
            if out.json {
                crate::output::print_line(&crate::output::json_line(
                    &json!({"event": "connected", "relay": client.relay_url()}),
                ))?;
            }
            false
        }
        Event::Disconnected { reason } => {
            out.try_print(json!({"event": "disconnected", "reason": reason}), || {
                format!("disconnected ({}); reconnecting", terminal_safe(reason))
            })?;
            false
        }
    })
}
