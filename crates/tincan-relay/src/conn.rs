//! One task per WebSocket connection: authenticate, then route frames both ways.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tincan_proto::frame::{ClientFrame, ErrorCode, RelayFrame};
use tincan_proto::identity;
use tincan_proto::ids::PeerId;
use tincan_proto::{PROTOCOL_VERSION, labels};
use tokio::sync::{Notify, mpsc};

use crate::metrics::{self, Metrics};
use crate::router::{ConnHandle, DELIVERY_QUEUE};
use crate::store::Stored;
use crate::{Shared, now_ms};

/// Requests a connection may have waiting on the store before it stops reading new frames.
const MAX_IN_FLIGHT: usize = 4096;
/// Rows read from the store per catch-up round.
const FETCH_BATCH: usize = 512;
/// Frames written before a flush.
const MAX_UNFLUSHED: usize = 256;

type Sink = futures_util::stream::SplitSink<WebSocket, Message>;
type Stream = futures_util::stream::SplitStream<WebSocket>;

pub(crate) async fn serve(socket: WebSocket, shared: Arc<Shared>, remote: SocketAddr) {
    shared.router.conn_started();
    let (sink, stream) = socket.split();
    let mut conn = Conn {
        shared: shared.clone(),
        sink,
        unflushed: 0,
        rate_held: None,
    };
    match conn.authenticate(stream, remote).await {
        Some((peer, receive, stream)) => {
            tracing::debug!(%remote, %peer, receive, "authenticated");
            conn.run(peer, receive, stream).await;
        }
        None => tracing::debug!(%remote, "connection closed before authentication"),
    }
    let _ = conn.sink.close().await;
    shared.router.conn_finished();
}

struct Conn {
    shared: Arc<Shared>,
    sink: Sink,
    unflushed: usize,
    /// The message refused by the rate limit, if any: later sends on this connection are refused
    /// until it is resent, so a refusal never lets later messages overtake it.
    rate_held: Option<tincan_proto::ids::MessageId>,
}

impl Conn {
    async fn authenticate(
        &mut self,
        mut stream: Stream,
        remote: SocketAddr,
    ) -> Option<(PeerId, bool, Stream)> {
        let mut nonce = [0u8; 32];
        rand::rng().fill_bytes(&mut nonce);
        self.send_now(RelayFrame::Challenge {
            version: PROTOCOL_VERSION,
            nonce,
        })
        .await?;
        let first = tokio::time::timeout(self.shared.config.auth_timeout, stream.next()).await;
        let bytes = match first {
            Ok(Some(Ok(Message::Binary(b)))) => b,
            Ok(Some(Ok(_))) => {
                self.error(0, ErrorCode::BadFrame, "expected a binary Auth frame")
                    .await;
                return None;
            }
            Err(_) => {
                self.error(0, ErrorCode::AuthFailed, "authentication timed out")
                    .await;
                return None;
            }
            _ => return None,
        };
        let decoded = ClientFrame::decode(&bytes, 0);
        let counted = match &decoded {
            Ok(f) => frame_kind(f),
            Err(_) => "undecodable",
        };
        Metrics::inc(&self.shared.metrics.frames_in[metrics::in_kind(counted)]);
        let (peer, signature, receive) = match decoded {
            Ok(ClientFrame::Auth {
                peer,
                signature,
                receive,
            }) => (peer, signature, receive),
            Ok(_) => {
                self.error(
                    0,
                    ErrorCode::NotAuthenticated,
                    "authenticate first: answer the challenge with an Auth frame",
                )
                .await;
                return None;
            }
            Err(e) => {
                self.error(0, ErrorCode::BadFrame, &format!("cannot decode frame: {e}"))
                    .await;
                return None;
            }
        };
        // The nonce is used for this one attempt only; it lives in this stack frame and no other
        // connection can answer it.
        if identity::verify(&peer, labels::RELAY_CHALLENGE, &nonce, &signature).is_err() {
            Metrics::inc(&self.shared.metrics.auth_failures);
            let why = "challenge signature does not verify for that identity";
            crate::notice::auth_failed(&self.shared.notices, remote.ip(), why);
            self.error(0, ErrorCode::AuthFailed, why).await;
            return None;
        }
        Some((peer, receive, stream))
    }

    async fn run(&mut self, peer: PeerId, receive: bool, mut stream: Stream) {
        let shared = self.shared.clone();
        let (deliver_tx, mut deliver_rx) = mpsc::channel::<Arc<Stored>>(DELIVERY_QUEUE);
        // A send-only connection never registers for deliveries and never reads the queue.
        let lagging = Arc::new(AtomicBool::new(receive));
        let kicked = Arc::new(Notify::new());
        let conn_id = shared.router.next_conn_id();
        if receive {
            shared.router.register(
                peer,
                ConnHandle {
                    id: conn_id,
                    deliveries: deliver_tx,
                    lagging: lagging.clone(),
                    kicked: kicked.clone(),
                },
            );
        }
        let (resp_tx, mut resp_rx) = mpsc::unbounded_channel::<RelayFrame>();
        let mut shutdown = shared.shutdown.clone();
        let mut in_flight = 0usize;
        let mut last_seq = 0u64;
        let ok = self.send_now(RelayFrame::AuthOk { peer }).await.is_some();
        let mut alive = ok;
        // Made once for the whole loop: a new `changed()`/`notified()` on every pass put this
        // connection into, and took it out of, the waiter list of a watch all connections share
        // (a lock each time; 2.5% of the relay's open-loop profile, docs/BENCHMARKS.md).
        let stopping = shutdown.changed();
        let replaced = kicked.notified();
        tokio::pin!(stopping, replaced);
        while alive {
            if lagging.swap(false, Ordering::SeqCst)
                && !self.catch_up(peer, &mut last_seq, &lagging).await
            {
                break;
            }
            tokio::select! {
                biased;
                _ = &mut stopping => {
                    self.error(0, ErrorCode::ShuttingDown, "relay is shutting down; reconnect later").await;
                    break;
                }
                _ = &mut replaced => {
                    self.error(0, ErrorCode::Replaced, "another connection authenticated as this identity").await;
                    break;
                }
                Some(frame) = resp_rx.recv() => {
                    in_flight = in_flight.saturating_sub(1);
                    alive = self.feed(frame).await;
                }
                Some(msg) = deliver_rx.recv() => {
                    if lagging.swap(false, Ordering::SeqCst) && !self.catch_up(peer, &mut last_seq, &lagging).await {
                        break;
                    }
                    if msg.seq > last_seq {
                        last_seq = msg.seq;
                        alive = self.feed_delivery(&msg).await;
                    }
                }
                incoming = stream.next(), if in_flight < MAX_IN_FLIGHT => {
                    match incoming {
                        Some(Ok(Message::Binary(bytes))) => {
                            match self.handle(peer, &bytes, &resp_tx).await {
                                Handled::Request => in_flight += 1,
                                Handled::Done => {}
                                Handled::Close => break,
                            }
                        }
                        Some(Ok(Message::Text(_))) => {
                            alive = self.feed(RelayFrame::Error { req: 0, code: ErrorCode::BadFrame, retry_after_ms: 0, message: "text frames are not part of the protocol; send binary frames".into() }).await;
                        }
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => {}
                    }
                }
            }
            // Flush once nothing else is immediately ready, so bursts share one write.
            if alive
                && self.unflushed > 0
                && (self.unflushed >= MAX_UNFLUSHED
                    || (resp_rx.is_empty() && deliver_rx.is_empty()))
            {
                alive = self.sink.flush().await.is_ok();
                self.unflushed = 0;
            }
        }
        let _ = self.sink.flush().await;
        if receive {
            shared.router.unregister(&peer, conn_id);
        }
    }

    /// Re-reads undelivered messages from the store, after `last_seq`, until none are left.
    async fn catch_up(&mut self, peer: PeerId, last_seq: &mut u64, lagging: &AtomicBool) -> bool {
        loop {
            let fetched = match self
                .shared
                .store
                .fetch(peer, *last_seq, FETCH_BATCH, now_ms())
                .await
            {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(error = %e, "catch-up read failed");
                    lagging.store(true, Ordering::SeqCst);
                    return false;
                }
            };
            for row in fetched.rows {
                *last_seq = (*last_seq).max(row.seq);
                if !self.feed_delivery(&row).await {
                    return false;
                }
            }
            if !fetched.more {
                if self.unflushed > 0 {
                    self.unflushed = 0;
                    return self.sink.flush().await.is_ok();
                }
                return true;
            }
        }
    }

    async fn handle(
        &mut self,
        peer: PeerId,
        bytes: &[u8],
        resp: &mpsc::UnboundedSender<RelayFrame>,
    ) -> Handled {
        let max = self.shared.config.max_body;
        let frame = match ClientFrame::decode(bytes, max) {
            Ok(f) => f,
            Err(e) => {
                // Tie the error to the request when the frame got as far as its req number.
                let req = if matches!(bytes.first(), Some(0x02 | 0x04 | 0x05)) && bytes.len() >= 5 {
                    u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]])
                } else {
                    0
                };
                Metrics::inc(&self.shared.metrics.frames_in[metrics::in_kind("undecodable")]);
                let (code, message) = match e {
                    tincan_proto::codec::DecodeError::TooLong { len, max, .. } => (
                        {
                            Metrics::inc(&self.shared.metrics.refused_too_large);
                            ErrorCode::TooLarge
                        },
                        format!("message body is {len} bytes, over the relay's limit of {max}"),
                    ),
                    e => (ErrorCode::BadFrame, format!("cannot decode frame: {e}")),
                };
                return if self
                    .feed(RelayFrame::Error {
                        req,
                        code,
                        retry_after_ms: 0,
                        message,
                    })
                    .await
                {
                    Handled::Done
                } else {
                    Handled::Close
                };
            }
        };
        Metrics::inc(&self.shared.metrics.frames_in[metrics::in_kind(frame_kind(&frame))]);
        let held_back = match (&frame, self.rate_held) {
            (ClientFrame::Send { id, .. }, Some(h)) if *id != h => true,
            (ClientFrame::Send { .. }, Some(_)) => {
                self.rate_held = None;
                false
            }
            _ => false,
        };
        if let ClientFrame::Send { req, .. }
        | ClientFrame::RegisterInvite { req, .. }
        | ClientFrame::ClaimInvite { req, .. } = &frame
            && let Err(wait) = if held_back {
                Err(std::time::Duration::from_millis(1))
            } else {
                self.shared
                    .identity_rate
                    .take(peer, std::time::Instant::now())
            }
        {
            if let ClientFrame::Send { id, .. } = &frame
                && self.rate_held.is_none()
            {
                self.rate_held = Some(*id);
            }
            Metrics::inc(&self.shared.metrics.rate_limited_identity);
            let rate = self.shared.config.rate_per_identity;
            let err = RelayFrame::Error {
                req: *req,
                code: ErrorCode::RateLimited,
                retry_after_ms: (wait.as_millis() as u32).max(1),
                message: format!(
                    "rate limit: at most {} requests per second per identity (burst {})",
                    rate.per_sec, rate.burst
                ),
            };
            return if self.feed(err).await {
                Handled::Done
            } else {
                Handled::Close
            };
        }
        let store = &self.shared.store;
        match frame {
            ClientFrame::Send { req, id, to, body } => {
                store.send(peer, req, id, to, body, now_ms(), resp.clone());
                Handled::Request
            }
            ClientFrame::Ack { seq } => {
                store.ack(peer, seq);
                Handled::Done
            }
            ClientFrame::RegisterInvite {
                req,
                id,
                expires_at,
            } => {
                let max = self.shared.config.max_invite_ttl;
                if let Some(message) =
                    crate::limits::invite_expiry_refusal(expires_at, now_ms() / 1000, max)
                {
                    let err = RelayFrame::Error {
                        req,
                        code: ErrorCode::InviteExpired,
                        retry_after_ms: 0,
                        message,
                    };
                    return if self.feed(err).await {
                        Handled::Done
                    } else {
                        Handled::Close
                    };
                }
                store.register_invite(peer, req, id, expires_at, resp.clone());
                Handled::Request
            }
            ClientFrame::ClaimInvite { req, id } => {
                store.claim_invite(peer, req, id, now_ms(), resp.clone());
                Handled::Request
            }
            ClientFrame::Ping { nonce } => {
                if self.feed(RelayFrame::Pong { nonce }).await {
                    Handled::Done
                } else {
                    Handled::Close
                }
            }
            ClientFrame::Auth { .. } => {
                if self
                    .feed(RelayFrame::Error {
                        req: 0,
                        code: ErrorCode::BadFrame,
                        retry_after_ms: 0,
                        message: "already authenticated".into(),
                    })
                    .await
                {
                    Handled::Done
                } else {
                    Handled::Close
                }
            }
        }
    }

    async fn feed(&mut self, frame: RelayFrame) -> bool {
        self.feed_encoded(out_kind(&frame), frame.encode()).await
    }

    /// A stored message, encoded straight from the store's copy of its body.
    async fn feed_delivery(&mut self, msg: &Stored) -> bool {
        self.feed_encoded("deliver", msg.encode()).await
    }

    /// Queues an encoded frame of `kind` (a metrics label) for the next flush.
    async fn feed_encoded(&mut self, kind: &str, bytes: Vec<u8>) -> bool {
        self.unflushed += 1;
        let m = &self.shared.metrics;
        Metrics::inc(&m.frames_out[metrics::out_kind(kind)]);
        if kind == "deliver" {
            Metrics::inc(&m.messages_delivered);
        }
        self.sink.feed(Message::Binary(bytes.into())).await.is_ok()
    }

    async fn send_now(&mut self, frame: RelayFrame) -> Option<()> {
        Metrics::inc(&self.shared.metrics.frames_out[metrics::out_kind(out_kind(&frame))]);
        self.sink
            .send(Message::Binary(frame.encode().into()))
            .await
            .ok()
    }

    async fn error(&mut self, req: u32, code: ErrorCode, message: &str) {
        let _ = self
            .send_now(RelayFrame::Error {
                req,
                code,
                retry_after_ms: 0,
                message: message.into(),
            })
            .await;
    }
}

enum Handled {
    /// A request went to the store; its reply will come back on the response queue.
    Request,
    Done,
    Close,
}

/// The `tincan_frames_total{dir="out"}` label of a frame the relay sends: the request kind it
/// answers, or what it is.
fn out_kind(f: &RelayFrame) -> &'static str {
    match f {
        RelayFrame::Challenge { .. } => "challenge",
        RelayFrame::AuthOk { .. } => "auth_ok",
        RelayFrame::Sent { .. } => "sent",
        RelayFrame::Deliver { .. } => "deliver",
        RelayFrame::InviteRegistered { .. } => "invite_registered",
        RelayFrame::InviteClaimed { .. } => "invite_claimed",
        RelayFrame::Error { .. } => "error",
        RelayFrame::Pong { .. } => "pong",
    }
}

fn frame_kind(f: &ClientFrame) -> &'static str {
    match f {
        ClientFrame::Auth { .. } => "auth",
        ClientFrame::Send { .. } => "send",
        ClientFrame::Ack { .. } => "ack",
        ClientFrame::RegisterInvite { .. } => "register_invite",
        ClientFrame::ClaimInvite { .. } => "claim_invite",
        ClientFrame::Ping { .. } => "ping",
    }
}
