//! A raw relay connection that sends whatever frames a test wants.

use futures_util::{SinkExt, StreamExt};
use tincan_proto::frame::{ClientFrame, RelayFrame};
use tincan_proto::identity::Identity;
use tincan_proto::labels;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket to a relay, speaking frames directly.
pub struct RawConn {
    ws: Ws,
}

impl RawConn {
    /// Connects without authenticating; returns the connection and the challenge nonce.
    pub async fn connect(relay_url: &str) -> (Self, [u8; 32]) {
        let url = relay_url.replacen("http://", "ws://", 1) + "/v1/ws";
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), None, true)
            .await
            .expect("connect");
        let mut c = Self { ws };
        match c.recv().await {
            Some(RelayFrame::Challenge { nonce, .. }) => (c, nonce),
            other => panic!("expected challenge, got {other:?}"),
        }
    }

    /// Connects and authenticates as `id`.
    pub async fn authed(relay_url: &str, id: &Identity, receive: bool) -> Self {
        let (mut c, nonce) = Self::connect(relay_url).await;
        let signature = id.sign(labels::RELAY_CHALLENGE, &nonce);
        c.send(&ClientFrame::Auth {
            peer: id.peer_id(),
            signature,
            receive,
        })
        .await;
        match c.recv().await {
            Some(RelayFrame::AuthOk { .. }) => c,
            other => panic!("expected AuthOk, got {other:?}"),
        }
    }

    /// Sends a frame.
    pub async fn send(&mut self, f: &ClientFrame) {
        self.send_bytes(f.encode()).await;
    }

    /// Sends raw bytes as one binary message.
    pub async fn send_bytes(&mut self, b: Vec<u8>) {
        self.ws.send(Message::Binary(b.into())).await.expect("send");
    }

    /// Receives the next frame (None when closed or after 5 s).
    pub async fn recv(&mut self) -> Option<RelayFrame> {
        loop {
            let msg = tokio::time::timeout(std::time::Duration::from_secs(5), self.ws.next())
                .await
                .ok()??;
            match msg {
                Ok(Message::Binary(b)) => return RelayFrame::decode(&b).ok(),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

/// Pairs `inviter` and `claimer` on the relay the way the SDK does: the inviter registers an
/// invite (expiring in 10 minutes), the claimer claims it. Panics if either step is refused.
pub async fn pair(relay_url: &str, inviter: &Identity, claimer: &Identity) {
    let mut id = [0u8; 16];
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    id.copy_from_slice(&nanos.to_le_bytes());
    id[15] ^= inviter.peer_id().as_bytes()[0];
    let id = tincan_proto::ids::InviteId::from_bytes(id);
    let expires_at = (nanos / 1_000_000_000) as u64 + 600;
    let mut a = RawConn::authed(relay_url, inviter, false).await;
    a.send(&ClientFrame::RegisterInvite {
        req: 1,
        id,
        expires_at,
    })
    .await;
    match a.recv().await {
        Some(RelayFrame::InviteRegistered { req: 1 }) => {}
        other => panic!("invite not registered: {other:?}"),
    }
    let mut b = RawConn::authed(relay_url, claimer, false).await;
    b.send(&ClientFrame::ClaimInvite { req: 2, id }).await;
    match b.recv().await {
        Some(RelayFrame::InviteClaimed { req: 2, .. }) => {}
        other => panic!("invite not claimed: {other:?}"),
    }
}
