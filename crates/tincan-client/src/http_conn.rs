//! The HTTP transport: the same client over the relay's HTTP API (token auth, POST to send,
//! long-poll to receive, explicit ack), for networks where WebSockets do not get through.

use std::sync::Arc;
use std::time::Duration;

use data_encoding::BASE64URL_NOPAD;
use serde::Deserialize;
use serde_json::json;
use tincan_proto::frame::{ClientFrame, ErrorCode, RelayFrame};
use tincan_proto::ids::MessageId;
use tincan_proto::labels;
use tokio::sync::mpsc;

use crate::client::{Cmd, ConnState, Event, Shared, Stopped};
use crate::conn::{
    Failing, broken_store, emit_unconsumed, hand_over_ready, hand_over_rest, open_batch,
    report_connected, report_lost, report_stopped,
};
use crate::error::ClientError;
use crate::home::{Incoming, now_ms};

type Events = mpsc::Sender<(Event, Option<i64>)>;

const POLL_WAIT_SECS: u64 = 25;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
    #[serde(default)]
    retry_after_ms: u32,
}

#[derive(Deserialize)]
struct Received {
    messages: Vec<ReceivedRow>,
}

#[derive(Deserialize)]
struct ReceivedRow {
    seq: u64,
    from: String,
    id: String,
    body: String,
}

/// A relay-level refusal or a transport failure.
enum CallError {
    Relay {
        code: ErrorCode,
        message: String,
        retry_after_ms: u32,
    },
    Transport(String),
}

struct Http {
    base: String,
    client: reqwest::Client,
    token: Option<String>,
}

impl Http {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        timeout: Duration,
    ) -> Result<serde_json::Value, CallError> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .timeout(timeout);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| CallError::Transport(e.to_string()))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| CallError::Transport(format!("bad response: {e}")));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(b) => Err(CallError::Relay {
                code: ErrorCode::from_str_code(&b.error.code),
                message: b.error.message,
                retry_after_ms: b.error.retry_after_ms,
            }),
            Err(_) => Err(CallError::Transport(format!("HTTP {status}"))),
        }
    }

    async fn authenticate(&mut self, shared: &Shared) -> Result<(), CallError> {
        self.token = None;
        let ch = self
            .call(
                reqwest::Method::POST,
                "/v1/auth/challenge",
                None,
                Duration::from_secs(10),
            )
            .await?;
        let nonce = ch["nonce"]
            .as_str()
            .and_then(|n| BASE64URL_NOPAD.decode(n.as_bytes()).ok())
            .ok_or_else(|| CallError::Transport("relay sent no nonce".into()))?;
        let (peer, sig) = {
            let home = shared.home();
            let id = home
                .identity()
                .map_err(|e| CallError::Transport(e.to_string()))?;
            (id.peer_id(), id.sign(labels::RELAY_CHALLENGE, &nonce))
        };
        let body = json!({
            "peer": peer.to_string(),
            "nonce": BASE64URL_NOPAD.encode(&nonce),
            "signature": BASE64URL_NOPAD.encode(&sig),
        });
        let t = self
            .call(
                reqwest::Method::POST,
                "/v1/auth/token",
                Some(body),
                Duration::from_secs(10),
            )
            .await?;
        self.token = t["token"].as_str().map(str::to_string);
        if self.token.is_none() {
            return Err(CallError::Transport("relay sent no token".into()));
        }
        Ok(())
    }
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    mut cmd_rx: mpsc::UnboundedReceiver<Cmd>,
    events: Events,
    opts: crate::ClientOptions,
) {
    if opts.receive {
        emit_unconsumed(&shared, &events, 0).await;
    }
    let mut http = Http {
        base: shared.relay_url.clone(),
        client: crate::tls::http_client(),
        token: None,
    };
    let mut backoff = Duration::from_millis(50);
    let mut pending: Vec<Cmd> = Vec::new();
    let mut failing = Failing::default();
    loop {
        match http.authenticate(&shared).await {
            Ok(()) => {
                let up = std::time::Instant::now();
                failing = Failing::default();
                report_connected(&shared, &events);
                let reason = session(
                    &shared,
                    &events,
                    &mut http,
                    &mut cmd_rx,
                    &mut pending,
                    opts.receive,
                )
                .await;
                match reason {
                    None => return,
                    Some(reason) => {
                        report_lost(&shared, &events, reason);
                        backoff = crate::conn::after_session(backoff, up.elapsed());
                    }
                }
            }
            Err(CallError::Relay {
                code: code @ (ErrorCode::AuthFailed | ErrorCode::NotAuthenticated),
                message,
                ..
            }) => {
                shared
                    .state
                    .send_replace(ConnState::Failed(Stopped::AuthRefused(format!(
                        "relay refused authentication: {message} ({code})"
                    ))));
                return;
            }
            Err(CallError::Relay { message, code, .. }) => {
                failing.report(&shared, &events, format!("{message} ({code})"));
            }
            Err(CallError::Transport(e)) => {
                failing.report(&shared, &events, e);
            }
        }
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                cmd = cmd_rx.recv() => match cmd {
                    None => return,
                    Some(Cmd::Flush(_)) => {}
                    Some(c) => pending.push(c),
                },
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One authenticated period; returns `None` to stop for good, or why it ended.
async fn session(
    shared: &Shared,
    events: &Events,
    http: &mut Http,
    cmd_rx: &mut mpsc::UnboundedReceiver<Cmd>,
    pending: &mut Vec<Cmd>,
    receive: bool,
) -> Option<String> {
    for cmd in std::mem::take(pending) {
        if let Err(e) = handle_cmd(shared, events, http, cmd).await {
            return Some(e);
        }
    }
    if let Err(e) = flush_outbox(shared, events, http).await {
        return Some(e);
    }
    let mut cursor = 0u64;
    loop {
        let poll = async {
            if receive {
                let path = format!("/v1/messages?after={cursor}&wait={POLL_WAIT_SECS}&limit=500");
                http.call(
                    reqwest::Method::GET,
                    &path,
                    None,
                    Duration::from_secs(POLL_WAIT_SECS + 10),
                )
                .await
            } else {
                std::future::pending().await
            }
        };
        let outcome = tokio::select! {
            cmd = cmd_rx.recv() => Err(cmd),
            r = poll => Ok(r),
        };
        match outcome {
            Err(None) => return None,
            Err(Some(cmd)) => {
                if let Err(e) = handle_cmd(shared, events, http, cmd).await {
                    return Some(e);
                }
            }
            Ok(Ok(v)) => match serde_json::from_value::<Received>(v) {
                Ok(r) => match open_rows(shared, events, http, r.messages).await {
                    Ok(Some(last)) => cursor = last,
                    Ok(None) => {}
                    Err(RowsError::Broken) => return None,
                    Err(RowsError::Lost(e)) => return Some(e),
                },
                Err(e) => return Some(format!("bad response from relay: {e}")),
            },
            Ok(Err(CallError::Relay {
                code: ErrorCode::NotAuthenticated,
                ..
            })) => return Some("token expired".into()),
            Ok(Err(CallError::Relay {
                message,
                code,
                retry_after_ms,
            })) => {
                tokio::time::sleep(Duration::from_millis(u64::from(retry_after_ms.max(500)))).await;
                tracing::warn!(code = %code, reason = %message, "receive refused");
            }
            Ok(Err(CallError::Transport(e))) => return Some(e),
        }
    }
}

async fn handle_cmd(
    shared: &Shared,
    events: &Events,
    http: &mut Http,
    cmd: Cmd,
) -> Result<(), String> {
    match cmd {
        Cmd::Flush(_) => flush_outbox(shared, events, http).await,
        Cmd::Request { frame, reply } => {
            let result = match frame(0) {
                ClientFrame::RegisterInvite { id, expires_at, .. } => http
                    .call(
                        reqwest::Method::POST,
                        "/v1/invites",
                        Some(json!({"id": id.to_string(), "expires_at": expires_at})),
                        Duration::from_secs(10),
                    )
                    .await
                    .map(|_| RelayFrame::InviteRegistered { req: 0 }),
                ClientFrame::ClaimInvite { id, .. } => http
                    .call(
                        reqwest::Method::POST,
                        "/v1/invites/claim",
                        Some(json!({"id": id.to_string()})),
                        Duration::from_secs(10),
                    )
                    .await
                    .and_then(|v| {
                        v["inviter"]
                            .as_str()
                            .and_then(|s| s.parse().ok())
                            .map(|inviter| RelayFrame::InviteClaimed { req: 0, inviter })
                            .ok_or_else(|| CallError::Transport("relay sent no inviter".into()))
                    }),
                other => Err(CallError::Transport(format!(
                    "{other:?} is not available over HTTP"
                ))),
            };
            match result {
                Ok(f) => drop(reply.send(Ok(f))),
                Err(CallError::Relay {
                    code,
                    message,
                    retry_after_ms,
                }) => drop(reply.send(Ok(RelayFrame::Error {
                    req: 0,
                    code,
                    retry_after_ms,
                    message,
                }))),
                Err(CallError::Transport(e)) => {
                    let _ = reply.send(Err(ClientError::Disconnected));
                    return Err(e);
                }
            }
            Ok(())
        }
    }
}

/// Sends the outbox in order, one request per message; stops at a deferral.
async fn flush_outbox(shared: &Shared, events: &Events, http: &mut Http) -> Result<(), String> {
    loop {
        let rows = shared
            .home()
            .outbox(&shared.relay_url, 0, 100)
            .map_err(|e| e.to_string())?;
        if rows.is_empty() {
            return Ok(());
        }
        for row in rows {
            let body = json!({"to": row.peer.to_string(), "id": row.id.to_string(), "body": BASE64URL_NOPAD.encode(&row.body)});
            match http
                .call(
                    reqwest::Method::POST,
                    "/v1/messages",
                    Some(body),
                    Duration::from_secs(30),
                )
                .await
            {
                Ok(v) => {
                    let seq = v["seq"].as_u64().unwrap_or(0);
                    if let Err(e) = shared.home().outbox_acked(&[(row.seq, seq)], now_ms()) {
                        tracing::error!(error = %e, "cannot record acknowledgement");
                    }
                }
                Err(CallError::Relay {
                    code,
                    message,
                    retry_after_ms,
                }) if retry_after_ms > 0 => {
                    let _ = shared.home().outbox_deferred(
                        &row.id,
                        code.as_str(),
                        &message,
                        retry_after_ms,
                    );
                    let _ =
                        events.try_send((deferred(row.id, code, message, retry_after_ms), None));
                    shared.progress.send_modify(|n| *n += 1);
                    // Keep order: nothing after this message goes before it.
                    tokio::time::sleep(Duration::from_millis(u64::from(retry_after_ms))).await;
                    break;
                }
                Err(CallError::Relay { code, message, .. }) => {
                    let _ = shared
                        .home()
                        .outbox_failed(row.seq, code.as_str(), &message);
                    let _ = events.try_send((
                        Event::SendFailed {
                            id: row.id,
                            code: code.as_str().to_string(),
                            message,
                        },
                        None,
                    ));
                }
                Err(CallError::Transport(e)) => return Err(e),
            }
            shared.progress.send_modify(|n| *n += 1);
        }
    }
}

fn deferred(id: MessageId, code: ErrorCode, message: String, retry_after_ms: u32) -> Event {
    Event::SendDeferred {
        id,
        code: code.as_str().to_string(),
        message,
        retry_after_ms,
    }
}

/// Why `open_rows` did not finish.
enum RowsError {
    /// The home cannot store deliveries at all: the client has already stopped (state
    /// `Failed`), and the session ends for good.
    Broken,
    /// The session ends and the client reconnects.
    Lost(String),
}

impl From<String> for RowsError {
    fn from(reason: String) -> Self {
        Self::Lost(reason)
    }
}

/// Opens received rows in one transaction, hands over the events that fit, acks the rows, then
/// hands over the rest. Returns the last seq.
async fn open_rows(
    shared: &Shared,
    events: &Events,
    http: &mut Http,
    rows: Vec<ReceivedRow>,
) -> Result<Option<u64>, RowsError> {
    let mut batch = Vec::with_capacity(rows.len());
    let mut seqs = Vec::with_capacity(rows.len());
    for r in rows {
        seqs.push(r.seq);
        let (Ok(from), Ok(id), Ok(body)) = (
            r.from.parse(),
            r.id.parse(),
            BASE64URL_NOPAD.decode(r.body.as_bytes()),
        ) else {
            tracing::warn!(seq = r.seq, "skipping a malformed delivery");
            continue;
        };
        batch.push(Incoming {
            relay_seq: r.seq,
            from,
            id,
            body,
        });
    }
    let last = seqs.last().copied();
    if seqs.is_empty() {
        return Ok(last);
    }
    let opened = match open_batch(shared, &batch) {
        Ok(opened) => opened,
        // As on the WebSocket (`conn.rs`): nothing was stored or acked, and retrying cannot help.
        Err(e) if e.is_broken_store() => {
            let reason = broken_store(&e);
            tracing::error!(reason = %reason, "stopped");
            report_stopped(shared, events, Stopped::BrokenStore(reason));
            return Err(RowsError::Broken);
        }
        Err(e) => return Err(RowsError::Lost(e.to_string())),
    };
    // Committed: the application may have what fits in its queue while the ack is on its way.
    let rest =
        hand_over_ready(events, opened).map_err(|_| RowsError::Lost("client closed".into()))?;
    let acked = http
        .call(
            reqwest::Method::POST,
            "/v1/ack",
            Some(json!({ "seqs": seqs })),
            Duration::from_secs(10),
        )
        .await;
    // Committed either way: the events go to the application even if the ack did not (a
    // redelivery is then a duplicate and shows nothing).
    hand_over_rest(events, rest)
        .await
        .map_err(|_| RowsError::Lost("client closed".into()))?;
    acked.map_err(|e| match e {
        CallError::Relay { message, .. } | CallError::Transport(message) => message,
    })?;
    Ok(last)
}
