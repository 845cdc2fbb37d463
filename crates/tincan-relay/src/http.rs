//! HTTP routes: the WebSocket endpoint, health, metrics, and the page an invite link opens.

// Handlers return the ready HTTP error response as their `Err`; it is the rare path, and boxing
// it would only add an allocation to every error.
#![allow(clippy::result_large_err)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::Shared;
use crate::limits::ConnLimit;
use crate::metrics::{Gauges, Metrics};

pub(crate) fn app(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/ws", get(ws))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/invite", get(invite_page))
        .merge(crate::api::routes())
        .with_state(shared)
}

/// A JSON error body with a stable code, as every HTTP error of the relay has.
pub(crate) fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    retry_after_ms: u32,
) -> Response {
    let body = format!(
        "{{\"error\":{{\"code\":{},\"message\":{},\"retry_after_ms\":{retry_after_ms}}}}}",
        json_string(code),
        json_string(message)
    );
    let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if retry_after_ms > 0
        && let Ok(v) = header::HeaderValue::from_str(&retry_after_ms.div_ceil(1000).to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// Encodes a string as a JSON string literal.
pub(crate) fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Applies the per-IP request rate; `Err` is the response to send.
pub(crate) fn check_ip_rate(shared: &Shared, ip: IpAddr) -> Result<(), Response> {
    shared.ip_rate.take(ip, Instant::now()).map_err(|wait| {
        Metrics::inc(&shared.metrics.rate_limited_ip);
        let r = shared.config.rate_per_ip;
        if let Some(unlogged) = shared.notices.ip_rate.due(crate::now_ms()) {
            tracing::warn!(%ip, rate_per_ip = r.per_sec, burst_per_ip = r.burst, unlogged, "requests refused: over rate_per_ip (HTTP 429); unlogged = refusals of any address since the last such line");
        }
        error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            &format!(
                "rate limit: at most {} requests per second per IP address (burst {})",
                r.per_sec, r.burst
            ),
            (wait.as_millis() as u32).max(1),
        )
    })
}

/// Uncounts a connection when dropped, whether or not the upgrade ran.
struct ConnGuard {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.conns.close(self.ip);
    }
}

async fn ws(
    upgrade: WebSocketUpgrade,
    State(shared): State<Arc<Shared>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
) -> Response {
    let ip = remote.ip();
    if let Err(resp) = check_ip_rate(&shared, ip) {
        return resp;
    }
    if let Err(limit) = shared.conns.open(ip) {
        Metrics::inc(&shared.metrics.connections_refused);
        if let Some(unlogged) = shared.notices.connections.due(crate::now_ms()) {
            let (limit_name, n) = match limit {
                ConnLimit::Total(n) => ("max_connections", n),
                ConnLimit::PerIp(n) => ("max_connections_per_ip", n),
            };
            tracing::warn!(%ip, limit = limit_name, value = n, unlogged, "connection refused: at a connection limit (HTTP 503); unlogged = refusals since the last such line");
        }
        let message = match limit {
            ConnLimit::Total(n) => format!("relay is at its connection limit ({n}); retry later"),
            ConnLimit::PerIp(n) => {
                format!("too many connections from your address (limit {n}); close some first")
            }
        };
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            &message,
            1000,
        );
    }
    Metrics::inc(&shared.metrics.connections_total);
    let guard = ConnGuard {
        shared: shared.clone(),
        ip,
    };
    // Frames are read up to the protocol's largest body whatever `max_body` says, so a client
    // whose message is over a lowered `max_body` gets `too_large` tied to its request (and can
    // fail just that message) instead of a closed connection it would retry forever.
    let max = crate::MAX_BODY_LIMIT.max(shared.config.max_body) + 1024;
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(4096)
        .write_buffer_size(4096)
        .on_upgrade(move |socket| async move {
            crate::conn::serve(socket, shared, remote).await;
            drop(guard);
        })
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let store = tokio::time::timeout(Duration::from_secs(2), shared.store.stats()).await;
    let (status, store_text, queued) = match store {
        Ok(Ok(q)) => (StatusCode::OK, "ok".to_string(), q),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, e, 0),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "store did not answer within 2 s".to_string(),
            0,
        ),
    };
    let body = format!(
        "{{\"status\":{},\"store\":{},\"connections\":{},\"receivers_online\":{},\"queued\":{queued},\"version\":{}}}",
        json_string(if status == StatusCode::OK {
            "ok"
        } else {
            "degraded"
        }),
        json_string(&store_text),
        shared.conns.total(),
        shared.router.online(),
        json_string(env!("CARGO_PKG_VERSION")),
    );
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let gauges = Gauges {
        connections: shared.conns.total() as u64,
        online: shared.router.online() as u64,
        // As in `/health`: a stuck store must not hang the scrape (the gauge reads 0 then).
        queued: tokio::time::timeout(Duration::from_secs(2), shared.store.stats())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0),
        ..Gauges::default()
    }
    .with_store_files(&shared.config.db_path);
    let text = shared.metrics.render(&gauges);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn invite_page() -> &'static str {
    "This is a tincan invite link. The invite itself is in the part after '#', which never reaches \
     this server.\n\nTo accept it, run:\n\n    tincan invite accept '<the whole link>'\n"
}
