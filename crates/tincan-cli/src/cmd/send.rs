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
    let text = if args.text == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map_err(|e| {
            CliError::new(
                "bad_input",
                2,
                format!("cannot read the message from stdin: {e}"),
            )
        })?;
        s.trim_end_matches('\n').to_string()
    } else {
        args.text
    };
    let peer = h.resolve_peer(&args.peer)?;
    // Sealed and queued before any network: a message is never lost to a relay outage.
    let id = h.queue_texts(&peer.id, &[&text], now_ms())?[0];
    let timeout = Duration::from_secs(args.timeout);
    let client = Client::start(h, &peer.relay_url, ClientOptions { receive: false })?;
    let result = async {
        client.wait_connected(timeout).await?;
        client.wait_sent(&id, timeout).await
    }
    .await;
    match result {
        Ok(()) => {
            out.print(
                json!({"id": id.to_string(), "to": peer.id.to_string(), "status": "sent"}),
                || format!("sent {id} to {}", peer.display_name()),
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(
            e @ (ClientError::Unreachable { .. }
            | ClientError::Timeout(_)
            | ClientError::Deferred { .. }),
        ) => {
            let err: CliError = e.into();
            Err(CliError::new(
                &err.code,
                err.exit,
                format!("{}; the message is queued ({id}) and goes out with the next `tincan send` or `tincan listen`", err.message),
            )
            .with(json!({"id": id.to_string(), "status": "queued"})))
        }
        Err(e) => Err(e.into()),
    }
}
