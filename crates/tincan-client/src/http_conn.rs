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
        body: Option<&serde_json::Value>,
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
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| CallError::Transport(with_causes(&e)))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| CallError::Transport(with_causes(&e)))?;
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

    /// [`Http::call`] with the token renewed once if the relay says it is no longer valid (it
    /// expires after the relay's `token_ttl`): a routine renewal, not a lost connection, and
    /// never a reason to fail a message.
    async fn authed_call(
        &mut self,
        shared: &Shared,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
        timeout: Duration,
    ) -> Result<serde_json::Value, CallError> {
        match self.call(method.clone(), path, body, timeout).await {
            Err(CallError::Relay {
                code: ErrorCode::NotAuthenticated,
                ..
            }) => {
                self.authenticate(shared).await?;
                self.call(method, path, body, timeout).await
            }
            other => other,
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
                Some(&body),
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

/// The HTTP base of a relay URL: `ws://` and `wss://` name the same relay as `http://` and
/// `https://` (as for the WebSocket transport, which maps the other way).
fn http_base(relay_url: &str) -> String {
    if let Some(rest) = relay_url.strip_prefix("ws://") {
        format!("http://{rest}")
    } else if let Some(rest) = relay_url.strip_prefix("wss://") {
        format!("https://{rest}")
    } else {
        relay_url.to_string()
    }
}

/// An error with the causes under it ("error sending request: …: Connection refused"), so the
/// reason (and the hint fitted to it) is not lost in reqwest's top-level message.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = c.source();
    }
    s
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
        base: http_base(&shared.relay_url),
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
    // While the relay has deferred a message, the outbox waits until then (sending it earlier
    // would only be refused again); receiving and requests go on meanwhile.
    let mut retry_at: Option<tokio::time::Instant> = None;
    for cmd in std::mem::take(pending) {
        if let Err(e) = handle_cmd(shared, events, http, cmd, &mut retry_at).await {
            return Some(e);
        }
    }
    match flush_outbox(shared, events, http).await {
        Ok(r) => retry_at = r,
        Err(e) => return Some(e),
    }
    let mut cursor = 0u64;
    loop {
        let poll = async {
            if receive {
                let path = format!("/v1/messages?after={cursor}&wait={POLL_WAIT_SECS}&limit=500");
                http.authed_call(
                    shared,
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
        let due = retry_at;
        let outcome = tokio::select! {
            cmd = cmd_rx.recv() => Err(Some(cmd)),
            _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => Err(None),
            r = poll => Ok(r),
        };
        match outcome {
            Err(Some(None)) => return None,
            Err(Some(Some(cmd))) => {
                if let Err(e) = handle_cmd(shared, events, http, cmd, &mut retry_at).await {
                    return Some(e);
                }
            }
            // The deferral is over: the outbox goes again.
            Err(None) => match flush_outbox(shared, events, http).await {
                Ok(r) => retry_at = r,
                Err(e) => return Some(e),
            },
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
                message,
                ..
            })) => return Some(format!("the relay refused a fresh token: {message}")),
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
    retry_at: &mut Option<tokio::time::Instant>,
) -> Result<(), String> {
    match cmd {
        // During a deferral the outbox waits for its time (see `session`).
        Cmd::Flush(_) if retry_at.is_some_and(|t| t > tokio::time::Instant::now()) => Ok(()),
        Cmd::Flush(_) => {
            *retry_at = flush_outbox(shared, events, http).await?;
            Ok(())
        }
        Cmd::Request { frame, reply } => {
            let result = match frame(0) {
                ClientFrame::RegisterInvite { id, expires_at, .. } => http
                    .authed_call(
                        shared,
                        reqwest::Method::POST,
                        "/v1/invites",
                        Some(&json!({"id": id.to_string(), "expires_at": expires_at})),
                        Duration::from_secs(10),
                    )
                    .await
                    .map(|_| RelayFrame::InviteRegistered { req: 0 }),
                ClientFrame::ClaimInvite { id, .. } => http
                    .authed_call(
                        shared,
                        reqwest::Method::POST,
                        "/v1/invites/claim",
                        Some(&json!({"id": id.to_string()})),
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

/// Sends the outbox in order, one request per message. A message the relay defers holds back
/// the later ones to its recipient (to every recipient for a rate limit, which is the sender's):
/// they are recorded as deferred with it, as the relay would answer them, and not sent. Returns
/// when to try again, if anything was deferred.
async fn flush_outbox(
    shared: &Shared,
    events: &Events,
    http: &mut Http,
) -> Result<Option<tokio::time::Instant>, String> {
    loop {
        let rows = shared
            .home()
            .outbox(&shared.relay_url, 0, 100)
            .map_err(|e| e.to_string())?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut held_for: std::collections::HashMap<tincan_proto::ids::PeerId, (ErrorCode, u32)> =
            std::collections::HashMap::new();
        let mut held_all: Option<(ErrorCode, u32)> = None;
        let mut reported = false;
        for row in rows {
            let held = held_all.or_else(|| held_for.get(&row.peer).copied());
            if let Some((code, retry)) = held {
                let _ = shared.home().outbox_deferred(
                    &row.id,
                    code.as_str(),
                    "held behind an earlier message that must be resent first",
                    retry.max(1),
                );
                shared.progress.send_modify(|n| *n += 1);
                continue;
            }
            let body = json!({"to": row.peer.to_string(), "id": row.id.to_string(), "body": BASE64URL_NOPAD.encode(&row.body)});
            match http
                .authed_call(
                    shared,
                    reqwest::Method::POST,
                    "/v1/messages",
                    Some(&body),
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
                    // One report per pause, for the first message refused (as on the WebSocket).
                    if !reported {
                        reported = true;
                        let _ = events
                            .try_send((deferred(row.id, code, message, retry_after_ms), None));
                    }
                    let at = tokio::time::Instant::now()
                        + Duration::from_millis(u64::from(retry_after_ms));
                    retry_at = Some(retry_at.map_or(at, |r| r.min(at)));
                    // Keep order: nothing after this message to its recipient goes before it.
                    if code == ErrorCode::RateLimited {
                        held_all = Some((code, retry_after_ms));
                    } else {
                        held_for.insert(row.peer, (code, retry_after_ms));
                    }
                }
                // Never a reason to fail a message: the token could not be renewed.
                Err(CallError::Relay {
                    code: code @ (ErrorCode::NotAuthenticated | ErrorCode::AuthFailed),
                    message,
                    ..
                }) => return Err(format!("{message} ({code})")),
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
        if retry_at.is_some() {
            return Ok(retry_at);
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
            Some(&json!({ "seqs": seqs })),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_urls_name_the_same_relay_over_http() {
        assert_eq!(http_base("ws://h:1"), "http://h:1");
        assert_eq!(http_base("wss://h"), "https://h");
        assert_eq!(http_base("https://h/x"), "https://h/x");
    }

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("error sending request")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_transport_error_keeps_the_cause_under_it() {
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused",
        ));
        assert_eq!(with_causes(&e), "error sending request: Connection refused");
    }
}
