//! Transports: stdio, and Streamable HTTP on a loopback address.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use rmcp::ServiceExt;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::net::TcpListener;

use crate::error::McpError;
use crate::hub::Hub;
use crate::server::TincanMcp;

/// Serves one session on stdin/stdout until the client closes it.
pub async fn serve_stdio(hub: Arc<Hub>) -> Result<(), McpError> {
    // Lines that are not JSON are answered with -32700 on the way in (`stdio`).
    let io = crate::stdio::checked(tokio::io::stdin(), tokio::io::stdout());
    let running = TincanMcp::new(hub)
        .serve((io.reader, io.writer))
        .await
        .map_err(|e| McpError::Transport(e.to_string()))?;
    let done = running
        .waiting()
        .await
        .map_err(|e| McpError::Transport(e.to_string()));
    // rmcp has dropped its end: the last answers are written once the output task drains it.
    let _ = io.output.await;
    done?;
    Ok(())
}

/// Parses `--http`: `PORT`, `HOST:PORT`. Anything but a loopback address needs `allow_remote`,
/// since the server has no authentication of its own.
pub fn http_addr(spec: &str, allow_remote: bool) -> Result<SocketAddr, McpError> {
    let spec = spec.trim();
    let addr: SocketAddr = if let Ok(port) = spec.parse::<u16>() {
        SocketAddr::from(([127, 0, 0, 1], port))
    } else {
        let s = spec.replace("localhost:", "127.0.0.1:");
        s.parse().map_err(|_| {
            McpError::BadAddress(format!(
                "'{spec}' is not an address; use PORT or HOST:PORT, e.g. 127.0.0.1:8799"
            ))
        })?
    };
    if !addr.ip().is_loopback() && !allow_remote {
        return Err(McpError::BadAddress(format!(
            "{addr} is not a loopback address; the MCP server has no authentication, so anyone \
             who reaches it can read and send your messages. Use 127.0.0.1, or pass \
             --allow-remote if a proxy in front of it authenticates callers"
        )));
    }
    Ok(addr)
}

/// Serves Streamable HTTP at `/mcp` on `listener` until `shutdown` completes.
pub async fn serve_http(
    listener: TcpListener,
    hub: Arc<Hub>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), McpError> {
    let local = listener.local_addr()?;
    let mut config = StreamableHttpServerConfig::default();
    if !local.ip().is_loopback() {
        config = config.disable_allowed_hosts();
    }
    let ct = config.cancellation_token.clone();
    let service = StreamableHttpService::new(
        move || Ok(TincanMcp::new(hub.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let router = axum::Router::new().nest_service("/mcp", service);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            ct.cancel();
        })
        .await?;
    Ok(())
}
