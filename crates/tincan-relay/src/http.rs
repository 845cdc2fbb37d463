//! HTTP routes: the WebSocket endpoint, a health check and the page an invite link opens.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::response::{IntoResponse, Json};
use axum::routing::get;

use crate::Shared;

pub(crate) fn app(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/ws", get(ws))
        .route("/health", get(health))
        .route("/invite", get(invite_page))
        .with_state(shared)
}

async fn ws(
    upgrade: WebSocketUpgrade,
    State(shared): State<Arc<Shared>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
) -> impl IntoResponse {
    let max = shared.config.max_body + 1024;
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| crate::conn::serve(socket, shared, remote))
}

async fn health(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    Json(serde_json_like(shared.router.online()))
}

fn serde_json_like(online: usize) -> std::collections::BTreeMap<&'static str, String> {
    let mut m = std::collections::BTreeMap::new();
    m.insert("status", "ok".to_string());
    m.insert("connections", online.to_string());
    m.insert("version", env!("CARGO_PKG_VERSION").to_string());
    m
}

async fn invite_page() -> &'static str {
    "This is a tincan invite link. The invite itself is in the part after '#', which never reaches \
     this server.\n\nTo accept it, run:\n\n    tincan invite accept '<the whole link>'\n"
}
