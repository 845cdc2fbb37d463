//! The connection task: connect, authenticate, pump the outbox, open deliveries, reconnect.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use tincan_proto::frame::{ClientFrame, ErrorCode, RelayFrame};
use tincan_proto::{PROTOCOL_VERSION, labels};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Cmd, ConnState, Event, Reply, RequestFrame, Shared, Stopped, entry_events};
use crate::error::ClientError;
use crate::home::{Incoming, OutboxEntry, Processed, Queued, now_ms};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type Events = mpsc::Sender<(Event, Option<i64>)>;

const PING_EVERY: Duration = Duration::from_secs(15);
const SILENCE_LIMIT: Duration = Duration::from_secs(45);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A connection that lasted this long was healthy: the next attempt starts the backoff over.
const STABLE: Duration = Duration::from_secs(1);
const OUTBOX_BATCH: usize = 512;
const MAX_DRAIN: usize = 512;
/// How long a relay acknowledgement may wait to share a transaction with a delivery or a send
/// before it is written alone.
const ACK_DELAY: Duration = Duration::from_millis(20);
/// Acknowledgements written at once however soon, bounding memory and the replay after a crash.
const MAX_PENDING_ACKS: usize = 4096;

/// The backoff before reconnecting after a session that lasted `lasted`: started over after a
/// healthy one, kept (and so still growing) after one the relay ended at once, so a connection
/// that dies right after it is made (a relay refusing something on every attempt) is not retried
/// in a tight loop.
pub(crate) fn after_session(backoff: Duration, lasted: Duration) -> Duration {
    if lasted >= STABLE {
        Duration::from_millis(50)
    } else {
        backoff
    }
}

/// The WebSocket URL for a relay URL.
pub(crate) fn ws_url(relay_url: &str) -> Result<String, ClientError> {
    let bad = || ClientError::BadRelayUrl(relay_url.to_string());
    let (scheme, rest) = relay_url.split_once("://").ok_or_else(bad)?;
    let ws_scheme = match scheme {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        _ => return Err(bad()),
    };
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || rest.contains(['#', '?', ' ']) {
        return Err(bad());
    }
    Ok(format!(
        "{ws_scheme}://{}/v1/ws",
        rest.trim_end_matches('/')
    ))
}

/// tungstenite zero-fills its whole read buffer before every read (128 KiB by default, a few
/// microseconds per read); 16 KiB still takes a burst of deliveries in few reads. Frames up to
/// the protocol's limit are accepted either way: a frame is assembled across reads.
fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(16 * 1024)
}

struct Pending {
    requests: Vec<(RequestFrame, Reply)>,
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
    let mut pending = Pending {
        requests: Vec::new(),
    };
    let mut backoff = Duration::from_millis(50);
    let mut failing = Failing::default();
    loop {
        match connect(&shared, opts.receive).await {
            Ok(ws) => {
                let up = std::time::Instant::now();
                failing = Failing::default();
                report_connected(&shared, &events);
                let end = Session::new(&shared, &events, opts.receive)
                    .run(ws, &mut cmd_rx, &mut pending)
                    .await;
                match end {
                    End::Stop => return,
                    End::Replaced => {
                        let reason = "another process (listen, serve or an MCP server on this home, or a copy of this identity) is now receiving for this identity on this relay; the newest one receives, so this one stopped".to_string();
                        tracing::warn!("{reason}");
                        report_stopped(&shared, &events, Stopped::Replaced(reason));
                        return;
                    }
                    End::Lost(reason) => {
                        tracing::info!(reason = %reason, "disconnected from relay");
                        report_lost(&shared, &events, reason);
                        backoff = after_session(backoff, up.elapsed());
                    }
                    End::Broken(reason) => {
                        tracing::error!(reason = %reason, "stopped");
                        report_stopped(&shared, &events, Stopped::BrokenStore(reason));
                        return;
                    }
                }
            }
            Err(ClientError::Relay {
                code: code @ (ErrorCode::AuthFailed | ErrorCode::UnsupportedVersion),
                message,
            }) => {
                let reason = format!("relay refused authentication: {message} ({code})");
                shared
                    .state
                    .send_replace(ConnState::Failed(Stopped::AuthRefused(reason.clone())));
                for (_, reply) in pending.requests.drain(..) {
                    let _ = reply.send(Err(ClientError::Relay {
                        code,
                        message: message.clone(),
                    }));
                }
                return;
            }
            Err(e) => {
                let reason = match e {
                    ClientError::Unreachable { reason, .. } => reason,
                    e => e.to_string(),
                };
                failing.report(&shared, &events, reason);
            }
        }
        // Wait out the backoff, still taking requests so none is lost.
        let jitter = Duration::from_millis(u64::from(rand::random::<u8>()) % 50);
        let sleep = tokio::time::sleep(backoff + jitter);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                cmd = cmd_rx.recv() => match cmd {
                    None => return,
                    Some(Cmd::Flush(_)) => {}
                    Some(Cmd::Request { frame, reply }) => pending.requests.push((frame, reply)),
                },
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

pub(crate) async fn emit_unconsumed(shared: &Shared, events: &Events, after: i64) -> i64 {
    let entries = {
        let home = shared.home();
        match home.unconsumed(10_000) {
            Ok(e) => entry_events(&home, e.into_iter().filter(|e| e.seq > after)),
            Err(e) => {
                tracing::error!(error = %e, "cannot read inbox");
                Vec::new()
            }
        }
    };
    let mut last = after;
    for (event, seq) in entries {
        last = seq;
        if let Some(event) = event {
            let _ = events.send((event, Some(seq))).await;
        }
    }
    last
}

async fn connect(shared: &Shared, receive: bool) -> Result<Ws, ClientError> {
    let url = ws_url(&shared.relay_url)?;
    let unreachable = |reason: String| ClientError::Unreachable {
        url: shared.relay_url.clone(),
        reason,
    };
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        // Nagle off: small frames (acks, replies) must not wait for the peer's ACK.
        tokio_tungstenite::connect_async_with_config(url.as_str(), Some(ws_config()), true),
    )
    .await
    .map_err(|_| unreachable("connect timed out".into()))?
    .map_err(|e| unreachable(handshake_failure(e)))?;
    let nonce = match next_frame(&mut ws).await? {
        RelayFrame::Challenge { version, nonce } if version == PROTOCOL_VERSION => nonce,
        RelayFrame::Challenge { version, .. } => {
            return Err(ClientError::Relay {
                code: ErrorCode::UnsupportedVersion,
                message: format!(
                    "relay speaks protocol version {version}, this tincan speaks {PROTOCOL_VERSION}"
                ),
            });
        }
        other => return Err(unreachable(format!("unexpected first frame {other:?}"))),
    };
    let (peer, signature) = {
        let home = shared.home();
        let id = home.identity()?;
        (id.peer_id(), id.sign(labels::RELAY_CHALLENGE, &nonce))
    };
    ws.send(Message::Binary(
        ClientFrame::Auth {
            peer,
            signature,
            receive,
        }
        .encode()
        .into(),
    ))
    .await
    .map_err(|e| unreachable(e.to_string()))?;
    match next_frame(&mut ws).await? {
        RelayFrame::AuthOk { .. } => Ok(ws),
        RelayFrame::Error { code, message, .. } => Err(ClientError::Relay { code, message }),
        other => Err(unreachable(format!("unexpected frame {other:?}"))),
    }
}

/// Why the WebSocket handshake failed. A relay that turns a connection away before the upgrade
/// (a connection limit, the per-address rate) answers with a JSON error body; its code and
/// message say more than the HTTP status line alone.
fn handshake_failure(e: tokio_tungstenite::tungstenite::Error) -> String {
    if let tokio_tungstenite::tungstenite::Error::Http(response) = &e
        && let Some(body) = response.body()
        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
        && let (Some(code), Some(message)) =
            (v["error"]["code"].as_str(), v["error"]["message"].as_str())
    {
        let retry = v["error"]["retry_after_ms"]
            .as_u64()
            .map(|ms| format!("; retry after {ms} ms"))
            .unwrap_or_default();
        return format!(
            "the relay turned the connection away (HTTP {}): {message} ({code}{retry})",
            response.status().as_u16()
        );
    }
    e.to_string()
}

async fn next_frame(ws: &mut Ws) -> Result<RelayFrame, ClientError> {
    let lost = |r: String| ClientError::Unreachable {
        url: String::new(),
        reason: r,
    };
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .map_err(|_| lost("relay did not answer".into()))?;
        match msg {
            Some(Ok(Message::Binary(b))) => {
                return RelayFrame::decode(&b)
                    .map_err(|e| lost(format!("bad frame from relay: {e}")));
            }
            Some(Ok(Message::Close(_))) | None => return Err(lost("connection closed".into())),
            Some(Err(e)) => return Err(lost(e.to_string())),
            Some(Ok(_)) => {}
        }
    }
}

enum End {
    Stop,
    Lost(String),
    /// The home cannot go on (its database is corrupt or unwritable): stop instead of
    /// reconnecting and failing again forever.
    Broken(String),
    /// Another connection authenticated as this identity to receive: do not fight over it.
    Replaced,
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

struct Session<'a> {
    shared: &'a Shared,
    events: &'a Events,
    receive: bool,
    next_req: u32,
    /// req → local outbox seq of the message it carries.
    sends: HashMap<u32, (i64, tincan_proto::ids::MessageId)>,
    /// Set after a retryable refusal: the outbox waits until then, then resends from there.
    paused_until: Option<tokio::time::Instant>,
    requests: HashMap<u32, oneshot::Sender<Result<RelayFrame, ClientError>>>,
    last_outbox: i64,
    /// When deferred acknowledgements must be written if nothing else carried them.
    acks_due: Option<tokio::time::Instant>,
}

impl<'a> Session<'a> {
    fn new(shared: &'a Shared, events: &'a Events, receive: bool) -> Self {
        Self {
            shared,
            events,
            receive,
            next_req: 1,
            sends: HashMap::new(),
            paused_until: None,
            requests: HashMap::new(),
            last_outbox: 0,
            acks_due: None,
        }
    }

    fn req(&mut self) -> u32 {
        let r = self.next_req;
        self.next_req = self.next_req.wrapping_add(1).max(1);
        r
    }

    async fn run(
        mut self,
        mut ws: Ws,
        cmd_rx: &mut mpsc::UnboundedReceiver<Cmd>,
        pending: &mut Pending,
    ) -> End {
        let end = self.run_inner(&mut ws, cmd_rx, pending).await;
        self.write_deferred();
        for (_, reply) in self.requests.drain() {
            let _ = reply.send(Err(ClientError::Disconnected));
        }
        let _ = ws.close(None).await;
        end
    }

    async fn run_inner(
        &mut self,
        ws: &mut Ws,
        cmd_rx: &mut mpsc::UnboundedReceiver<Cmd>,
        pending: &mut Pending,
    ) -> End {
        for (frame, reply) in pending.requests.drain(..) {
            if let Err(e) = self.send_request(ws, frame, reply).await {
                return End::Lost(e);
            }
        }
        if let Err(e) = self.flush_outbox(ws, None).await {
            return End::Lost(e);
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                cmd = cmd_rx.recv() => {
                    let r = match cmd {
                        None => return End::Stop,
                        Some(Cmd::Flush(queued)) => self.flush_outbox(ws, queued).await,
                        Some(Cmd::Request { frame, reply }) => self.send_request(ws, frame, reply).await,
                    };
                    if let Err(e) = r {
                        return End::Lost(e);
                    }
                }
                msg = ws.next() => {
                    last_heard = Instant::now();
                    let mut frames = Vec::new();
                    match read(msg) {
                        Ok(Some(f)) => frames.push(f),
                        Ok(None) => {}
                        Err(e) => return End::Lost(e),
                    }
                    // Take whatever else is already here, so one transaction covers the burst.
                    // A close after frames still gets them handled first: the relay's last
                    // word (`replaced`, `shutting_down`) comes just before it.
                    let mut closed = None;
                    while frames.len() < MAX_DRAIN {
                        match ws.next().now_or_never() {
                            Some(msg) => match read(msg) {
                                Ok(Some(f)) => frames.push(f),
                                Ok(None) => {}
                                Err(e) => {
                                    closed = Some(e);
                                    break;
                                }
                            },
                            None => break,
                        }
                    }
                    if let Err(e) = self.handle(ws, frames).await {
                        return e;
                    }
                    if let Some(e) = closed {
                        return End::Lost(e);
                    }
                }
                _ = sleep_until_opt(self.acks_due) => self.write_deferred(),
                _ = sleep_until_opt(self.paused_until) => {
                    self.paused_until = None;
                    if let Err(e) = self.flush_outbox(ws, None).await {
                        return End::Lost(e);
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > SILENCE_LIMIT {
                        return End::Lost("relay stopped answering".into());
                    }
                    let nonce = now_ms();
                    if let Err(e) = ws.send(Message::Binary(ClientFrame::Ping { nonce }.encode().into())).await {
                        return End::Lost(e.to_string());
                    }
                }
            }
        }
    }

    async fn send_request(
        &mut self,
        ws: &mut Ws,
        frame: Box<dyn FnOnce(u32) -> ClientFrame + Send>,
        reply: oneshot::Sender<Result<RelayFrame, ClientError>>,
    ) -> Result<(), String> {
        let req = self.req();
        self.requests.insert(req, reply);
        ws.send(Message::Binary(frame(req).encode().into()))
            .await
            .map_err(|e| e.to_string())
    }

    /// Sends the outbox rows after `last_outbox`. `queued` are rows just committed: when they
    /// follow on from the last row sent, they go out as they are, without reading the outbox.
    async fn flush_outbox(&mut self, ws: &mut Ws, queued: Option<Queued>) -> Result<(), String> {
        if self.paused_until.is_some() {
            return Ok(());
        }
        if let Some(q) = queued
            && q.relay_url == self.shared.relay_url
            && q.entries.first().map(|e| e.seq) == Some(self.last_outbox + 1)
        {
            self.send_rows(ws, q.entries).await?;
            return ws.flush().await.map_err(|e| e.to_string());
        }
        // Reading the outbox back: acknowledged rows must be gone from it first.
        self.write_deferred();
        loop {
            let rows = match self.shared.home().outbox(
                &self.shared.relay_url,
                self.last_outbox,
                OUTBOX_BATCH,
            ) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read outbox");
                    return Ok(());
                }
            };
            let n = rows.len();
            self.send_rows(ws, rows).await?;
            ws.flush().await.map_err(|e| e.to_string())?;
            if n < OUTBOX_BATCH {
                return Ok(());
            }
        }
    }

    async fn send_rows(&mut self, ws: &mut Ws, rows: Vec<OutboxEntry>) -> Result<(), String> {
        for row in rows {
            let req = self.req();
            self.sends.insert(req, (row.seq, row.id));
            self.last_outbox = row.seq;
            let frame = ClientFrame::Send {
                req,
                id: row.id,
                to: row.peer,
                body: row.body,
            };
            ws.feed(Message::Binary(frame.encode().into()))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    async fn handle(&mut self, ws: &mut Ws, frames: Vec<RelayFrame>) -> Result<(), End> {
        let mut deliveries = Vec::new();
        let mut acked = Vec::new();
        let mut progress = false;
        for frame in frames {
            match frame {
                RelayFrame::Deliver {
                    seq,
                    from,
                    id,
                    body,
                    ..
                } if self.receive => deliveries.push(Incoming {
                    relay_seq: seq,
                    from,
                    id,
                    body,
                }),
                RelayFrame::Sent { req, seq } => {
                    if let Some((local, id)) = self.sends.remove(&req) {
                        acked.push((local, seq, id));
                    } else if let Some(reply) = self.requests.remove(&req) {
                        let _ = reply.send(Ok(RelayFrame::Sent { req, seq }));
                    }
                }
                RelayFrame::Error {
                    req,
                    code,
                    retry_after_ms,
                    message,
                } if req != 0 => {
                    if let Some((local, id)) = self.sends.remove(&req) {
                        if retry_after_ms > 0 {
                            // Retryable (rate limit, full queue, relay store trouble): pause the
                            // outbox and resend from this message once the relay says it may work.
                            tracing::info!(code = %code, retry_after_ms, "relay deferred a message");
                            if let Err(e) = self.shared.home().outbox_deferred(
                                &id,
                                code.as_str(),
                                &message,
                                retry_after_ms,
                            ) {
                                tracing::error!(error = %e, "cannot record deferral");
                            }
                            // One event per pause: the sends already in flight behind this one
                            // are refused too (held back so none overtakes it), and an event for
                            // each would repeat the same news on every round.
                            if self.paused_until.is_none() {
                                let _ = self.events.try_send((
                                    Event::SendDeferred {
                                        id,
                                        code: code.as_str().to_string(),
                                        message,
                                        retry_after_ms,
                                    },
                                    None,
                                ));
                            }
                            progress = true;
                            self.last_outbox = self.last_outbox.min(local - 1);
                            let until = tokio::time::Instant::now()
                                + Duration::from_millis(u64::from(retry_after_ms));
                            self.paused_until =
                                Some(self.paused_until.map_or(until, |p| p.max(until)));
                        } else {
                            tracing::warn!(code = %code, "relay refused a message");
                            let home = self.shared.home();
                            if let Err(e) = home.outbox_failed(local, code.as_str(), &message) {
                                tracing::error!(error = %e, "cannot record refusal");
                            }
                            drop(home);
                            let _ = self.events.try_send((
                                Event::SendFailed {
                                    id,
                                    code: code.as_str().to_string(),
                                    message,
                                },
                                None,
                            ));
                            progress = true;
                        }
                    } else if let Some(reply) = self.requests.remove(&req) {
                        let _ = reply.send(Ok(RelayFrame::Error {
                            req,
                            code,
                            retry_after_ms,
                            message,
                        }));
                    }
                }
                RelayFrame::Error {
                    code: ErrorCode::Replaced,
                    ..
                } => return Err(End::Replaced),
                RelayFrame::Error { code, message, .. } => {
                    return Err(End::Lost(format!(
                        "relay closed the connection: {message} ({code})"
                    )));
                }
                RelayFrame::InviteRegistered { req } | RelayFrame::InviteClaimed { req, .. } => {
                    if let Some(reply) = self.requests.remove(&req) {
                        let _ = reply.send(Ok(frame));
                    }
                }
                RelayFrame::Pong { .. } | RelayFrame::Deliver { .. } => {}
                RelayFrame::Challenge { .. } | RelayFrame::AuthOk { .. } => {}
            }
        }
        if !acked.is_empty() {
            // Written with the deliveries below, or the next send, or alone after ACK_DELAY;
            // until then this home already counts them as sent.
            let pending = {
                let mut home = self.shared.home();
                home.outbox_acked_later(&acked, now_ms());
                home.acks_pending()
            };
            if pending >= MAX_PENDING_ACKS {
                self.write_deferred();
            } else if self.acks_due.is_none() {
                self.acks_due = Some(tokio::time::Instant::now() + ACK_DELAY);
            }
            progress = true;
        }
        if progress {
            self.shared.progress.send_modify(|n| *n += 1);
        }
        if !deliveries.is_empty() {
            self.open_deliveries(ws, deliveries).await?;
        }
        Ok(())
    }

    /// Writes deferred acknowledgements (and consumed marks) now, if any wait.
    fn write_deferred(&mut self) {
        self.acks_due = None;
        if let Err(e) = self.shared.home().flush_deferred() {
            // The relay deduplicates by message id, so a resend after this is harmless.
            tracing::error!(error = %e, "cannot record acknowledgements");
        }
    }

    async fn open_deliveries(&mut self, ws: &mut Ws, deliveries: Vec<Incoming>) -> Result<(), End> {
        let result = open_batch(self.shared, &deliveries);
        let events = match result {
            Ok(ev) => ev,
            Err(e) => {
                // Nothing was stored, nothing is acked: the relay redelivers after reconnect.
                tracing::error!(error = %e, "cannot store incoming messages");
                if e.is_broken_store() {
                    return Err(End::Broken(broken_store(&e)));
                }
                return Err(End::Lost(e.to_string()));
            }
        };
        if self.acks_due.is_some() && self.shared.home().acks_pending() == 0 {
            self.acks_due = None; // the deliveries' transaction carried them
        }
        // The transaction is committed: the application may have the messages now, while the
        // acknowledgements are written (a reply can be sealing on the other core meanwhile).
        let rest = hand_over_ready(self.events, events).map_err(|_| End::Stop)?;
        let acked = async {
            for d in &deliveries {
                ws.feed(Message::Binary(
                    ClientFrame::Ack { seq: d.relay_seq }.encode().into(),
                ))
                .await?;
            }
            ws.flush().await
        }
        .await;
        // The rows are committed either way: their events go to the application even if the
        // acks did not (a redelivery is then a duplicate and shows nothing).
        hand_over_rest(self.events, rest)
            .await
            .map_err(|_| End::Stop)?;
        acked.map_err(|e| End::Lost(e.to_string()))
    }
}

/// The application's event queue is closed.
pub(crate) struct EventsClosed;

/// Gives the application every event of a committed batch that fits in its queue now, and
/// returns the rest (in order) for [`hand_over_rest`]. So acknowledgements need not wait for
/// an application that is already at work, and a slow one does not hold them back either: they
/// go out between the two calls. Shared by both transports.
pub(crate) fn hand_over_ready(
    events: &Events,
    opened: Vec<(Option<Event>, i64)>,
) -> Result<std::vec::IntoIter<(Option<Event>, i64)>, EventsClosed> {
    let mut opened = opened.into_iter();
    while let Some((event, seq)) = opened.next() {
        let Some(event) = event else { continue };
        match events.try_send((event, Some(seq))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full((event, _))) => {
                // Put it back in front: collect it with what follows.
                let mut rest = vec![(Some(event), seq)];
                rest.extend(opened);
                return Ok(rest.into_iter());
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(EventsClosed),
        }
    }
    Ok(Vec::new().into_iter())
}

/// Gives the application what [`hand_over_ready`] left, waiting for room in its queue.
pub(crate) async fn hand_over_rest(
    events: &Events,
    rest: std::vec::IntoIter<(Option<Event>, i64)>,
) -> Result<(), EventsClosed> {
    for (event, seq) in rest {
        if let Some(event) = event
            && events.send((event, Some(seq))).await.is_err()
        {
            return Err(EventsClosed);
        }
    }
    Ok(())
}

fn read(
    msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Result<Option<RelayFrame>, String> {
    match msg {
        Some(Ok(Message::Binary(b))) => match RelayFrame::decode(&b) {
            Ok(f) => Ok(Some(f)),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring undecodable frame from relay");
                Ok(None)
            }
        },
        Some(Ok(Message::Close(_))) | None => Err("connection closed by relay".into()),
        Some(Err(e)) => Err(e.to_string()),
        Some(Ok(_)) => Ok(None),
    }
}

/// Opens a batch of deliveries in one home transaction and returns the events to emit with their
/// inbox sequence numbers (duplicates yield nothing). Shared by both transports.
pub(crate) fn open_batch(
    shared: &Shared,
    batch: &[Incoming],
) -> Result<Vec<(Option<Event>, i64)>, ClientError> {
    let mut home = shared.home();
    let out = home.process_incoming(batch, now_ms())?;
    let new = out.into_iter().flat_map(Processed::into_entries);
    Ok(entry_events(&home, new))
}

/// Records that the connection is up and tells the application. Shared by both transports.
pub(crate) fn report_connected(shared: &Shared, events: &Events) {
    shared.state.send_replace(ConnState::Connected);
    let _ = events.try_send((Event::Connected, None));
}

/// Failed connection attempts in a row. The application hears of the first, and of each change
/// of reason, as [`Event::Disconnected`] (so a `listen` against a relay that is down says so
/// instead of waiting in silence); every attempt updates the state. Shared by both transports.
#[derive(Default)]
pub(crate) struct Failing {
    last: Option<String>,
}

impl Failing {
    pub(crate) fn report(&mut self, shared: &Shared, events: &Events, reason: String) {
        shared
            .state
            .send_replace(ConnState::Connecting(Some(reason.clone())));
        if self.last.as_ref() != Some(&reason) {
            tracing::info!(reason = %reason, "cannot connect to the relay; retrying");
            self.last = Some(reason.clone());
            let _ = events.try_send((Event::Disconnected { reason }, None));
        }
    }
}

/// Why the client stops when its home cannot store deliveries (see
/// [`ClientError::is_broken_store`]). Shared by both transports.
pub(crate) fn broken_store(e: &ClientError) -> String {
    format!(
        "{e}: this home cannot store messages; nothing was lost (the relay keeps them), but the \
         database needs repair or restoring from a backup"
    )
}

/// Records that the client stopped for good and tells the application why.
pub(crate) fn report_stopped(shared: &Shared, events: &Events, why: Stopped) {
    let reason = why.to_string();
    shared.state.send_replace(ConnState::Failed(why));
    let _ = events.try_send((Event::Disconnected { reason }, None));
}

/// Records that the connection dropped (the task reconnects) and tells the application.
pub(crate) fn report_lost(shared: &Shared, events: &Events, reason: String) {
    shared
        .state
        .send_replace(ConnState::Connecting(Some(reason.clone())));
    let _ = events.try_send((Event::Disconnected { reason }, None));
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn a_session_the_relay_ends_at_once_keeps_the_backoff_growing_and_a_healthy_one_resets_it() {
        let b = Duration::from_millis(800);
        assert_eq!(super::after_session(b, Duration::from_millis(20)), b);
        assert_eq!(
            super::after_session(b, Duration::from_secs(30)),
            Duration::from_millis(50)
        );
    }
}
