//! Raw relay connections for the relay-level parts: frames straight over a WebSocket, no client
//! SDK and no E2E crypto, so what is measured is the relay (routing and the durable store).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tincan_proto::frame::{ClientFrame, RelayFrame};
use tincan_proto::identity::Identity;
use tincan_proto::ids::{InviteId, MessageId};
use tincan_proto::labels;
use tokio_tungstenite::tungstenite::Message;

use crate::setup::STEP_TIMEOUT;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
pub type Sink = SplitSink<Ws, Message>;
pub type Stream = SplitStream<Ws>;

/// Connects to `relay_url` (`http://...`) and authenticates as `id`.
pub async fn connect(relay_url: &str, id: &Identity, receive: bool) -> Result<Ws> {
    let url = relay_url.replacen("http://", "ws://", 1) + "/v1/ws";
    let step = async {
        let (mut ws, _) =
            tokio_tungstenite::connect_async_with_config(url.as_str(), Some(ws_config()), true)
                .await
                .context("WebSocket connect")?;
        let nonce = match recv(&mut ws).await? {
            RelayFrame::Challenge { nonce, .. } => nonce,
            other => bail!("expected a challenge, got {other:?}"),
        };
        let signature = id.sign(labels::RELAY_CHALLENGE, &nonce);
        send(
            &mut ws,
            &ClientFrame::Auth {
                peer: id.peer_id(),
                signature,
                receive,
            },
        )
        .await?;
        match recv(&mut ws).await? {
            RelayFrame::AuthOk { .. } => Ok(ws),
            other => bail!("expected AuthOk, got {other:?}"),
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, step)
        .await
        .context("connect and authenticate: timed out")?
}

/// tungstenite zero-fills its whole read buffer (128 KiB by default) before every read; a
/// 4 KiB buffer (the relay's own size) keeps that memset from dominating a load generator that
/// reads small frames (16 KiB still cost 2.6% of the open loop's samples; docs/BENCHMARKS.md).
fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4 * 1024)
}

/// Pairs two authenticated connections: `inviter` registers an invite, `claimer` claims it.
pub async fn pair(inviter: &mut Ws, claimer: &mut Ws) -> Result<()> {
    let id = InviteId::from_bytes(unique_id());
    let expires_at = unix_secs() + 3600;
    send(
        inviter,
        &ClientFrame::RegisterInvite {
            req: 1,
            id,
            expires_at,
        },
    )
    .await?;
    match recv(inviter).await? {
        RelayFrame::InviteRegistered { .. } => {}
        other => bail!("expected InviteRegistered, got {other:?}"),
    }
    send(claimer, &ClientFrame::ClaimInvite { req: 1, id }).await?;
    match recv(claimer).await? {
        RelayFrame::InviteClaimed { .. } => Ok(()),
        other => bail!("expected InviteClaimed, got {other:?}"),
    }
}

/// Sends one frame and flushes.
pub async fn send(ws: &mut Ws, f: &ClientFrame) -> Result<()> {
    ws.send(Message::Binary(f.encode().into()))
        .await
        .context("WebSocket send")
}

/// Receives the next frame, within [`STEP_TIMEOUT`].
pub async fn recv(ws: &mut Ws) -> Result<RelayFrame> {
    loop {
        let msg = tokio::time::timeout(STEP_TIMEOUT, ws.next())
            .await
            .context("no frame from the relay in time")?
            .context("relay closed the connection")?
            .context("WebSocket receive")?;
        if let Some(f) = decode(msg)? {
            return Ok(f);
        }
    }
}

/// Decodes a WebSocket message into a frame; `None` for control messages.
pub fn decode(msg: Message) -> Result<Option<RelayFrame>> {
    match msg {
        Message::Binary(b) => Ok(Some(
            RelayFrame::decode(&b).context("undecodable relay frame")?,
        )),
        Message::Close(_) => bail!("relay closed the connection"),
        _ => Ok(None),
    }
}

/// A message id no other message of this process has.
pub fn message_id() -> MessageId {
    MessageId::from_bytes(unique_id())
}

/// 16 bytes unique within this process run: a counter beside the start time.
fn unique_id() -> [u8; 16] {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&unix_nanos().to_be_bytes());
    b[8..].copy_from_slice(&n.to_be_bytes());
    b
}

/// A body of `size` pseudo-random bytes, standing in for a sealed envelope.
pub fn random_body(size: usize, seed: u64) -> Vec<u8> {
    // splitmix64: incompressible enough for a store, and no RNG dependency.
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(size);
    out
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn unix_secs() -> u64 {
    unix_nanos() / 1_000_000_000
}

/// Runs `f(i)` for `i in 0..n` with at most `concurrency` at once; returns results in order.
pub async fn bounded_all<T, F, Fut>(n: usize, concurrency: usize, f: F) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut set = tokio::task::JoinSet::new();
    let mut next = 0;
    while next < n || !set.is_empty() {
        while next < n && set.len() < concurrency.max(1) {
            let fut = f(next);
            let i = next;
            set.spawn(async move { fut.await.map(|v| (i, v)) });
            next += 1;
        }
        if let Some(joined) = set.join_next().await {
            let (i, v) = joined.context("setup task panicked")??;
            out[i] = Some(v);
        }
    }
    Ok(out.into_iter().flatten().collect())
}
