//! The tincan relay as a library.
//!
//! A relay authenticates agents by an Ed25519 challenge, stores sealed envelopes in SQLite until
//! their recipient acknowledges them, and forwards them in order. It never holds a key that could
//! open an envelope. [`run`] serves one listener until the shutdown future resolves; tests call
//! it on `127.0.0.1:0`. [`Relay::open`] followed by [`Relay::serve_tcp`] does the same in two
//! steps, for a caller that must know the store opened before it says the relay is up.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tincan_relay::RelayError> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let config = tincan_relay::Config::new("relay.db".into());
//! tincan_relay::run(listener, config, async { tokio::signal::ctrl_c().await.ok(); }).await
//! # }
//! ```

mod api;
mod conn;
mod extract;
mod http;
mod limits;
mod metrics;
mod notice;
mod router;
mod sockets;
pub mod store;
pub mod tls;
mod token;

pub use limits::Rate;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::router::Router;
use crate::store::Store;

/// The largest `max_body` a relay may be configured with: what clients accept in a delivery.
pub const MAX_BODY_LIMIT: usize = tincan_proto::frame::MAX_BODY;

/// Why a relay could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum RelayError {
    /// Opening or migrating the SQLite store failed.
    #[error("store error: {0}")]
    Store(#[from] store::StoreError),
    /// Socket I/O failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Relay settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// The SQLite database file.
    pub db_path: PathBuf,
    /// Largest sealed body accepted, in bytes.
    pub max_body: usize,
    /// Most unacknowledged messages kept for one recipient.
    pub queue_cap: u64,
    /// Most unacknowledged messages kept in all. The writer indexes queued messages in memory
    /// (70–150 bytes each), so this bounds the relay's memory however many identities pair.
    pub max_queued: u64,
    /// How long an undelivered message is kept.
    pub message_ttl: Duration,
    /// Refuse messages between identities that never paired through an invite on this relay.
    /// On by default; tests turn it off to exercise the client's own checks.
    pub require_pairing: bool,
    /// How long a new connection has to authenticate.
    pub auth_timeout: Duration,
    /// The longest an invite may stay open.
    pub max_invite_ttl: Duration,
    /// Open connections allowed in total.
    pub max_connections: usize,
    /// Open connections allowed from one IP address.
    pub max_connections_per_ip: usize,
    /// Messages (and invite requests) one identity may send; `per_sec` 0 means unlimited.
    pub rate_per_identity: Rate,
    /// New connections and HTTP requests from one IP address; `per_sec` 0 means unlimited.
    pub rate_per_ip: Rate,
    /// Invites one identity may have open (registered, unclaimed, unexpired) at once.
    pub max_open_invites: u32,
    /// Pairs the relay keeps in all (each ~400 bytes of memory, kept for good): claims beyond it
    /// are refused with `storage_full`.
    pub max_pairs: u64,
    /// Cap on the database size; when reached, sends get a retryable "storage full" error.
    pub max_db_bytes: Option<u64>,
    /// Lifetime of an HTTP API token.
    pub token_ttl: Duration,
    /// How often the token secret is replaced (the previous one verifies for one token lifetime).
    pub token_rotate_every: Duration,
    /// How long a message delivered to an online recipient may wait unwritten for its ack
    /// (write-behind, `store/pending.rs`); acked in time, it never reaches the relay's disk.
    /// Zero writes every message before anything else.
    pub write_behind: Duration,
}

impl Config {
    /// Defaults with the given database path.
    pub fn new(db_path: PathBuf) -> Self {
        Self {
            db_path,
            max_body: tincan_proto::frame::MAX_BODY,
            queue_cap: 10_000,
            max_queued: 1_000_000,
            message_ttl: Duration::from_secs(7 * 24 * 3600),
            require_pairing: true,
            auth_timeout: Duration::from_secs(10),
            max_invite_ttl: Duration::from_secs(30 * 24 * 3600),
            max_connections: 20_000,
            max_connections_per_ip: 1_000,
            rate_per_identity: Rate::new(1_000.0, 5_000.0),
            rate_per_ip: Rate::new(200.0, 1_000.0),
            max_open_invites: 100,
            max_pairs: 1_000_000,
            max_db_bytes: None,
            token_ttl: Duration::from_secs(3600),
            token_rotate_every: Duration::from_secs(24 * 3600),
            write_behind: Duration::from_millis(50),
        }
    }
}

/// State shared by every connection.
pub(crate) struct Shared {
    pub config: Config,
    pub store: Store,
    pub router: Arc<Router>,
    pub shutdown: watch::Receiver<bool>,
    pub metrics: Arc<metrics::Metrics>,
    pub conns: limits::ConnCounter,
    /// Every accepted socket (`sockets.rs`).
    pub sockets: Arc<limits::ConnCounter>,
    pub identity_rate: limits::Buckets<tincan_proto::ids::PeerId>,
    pub ip_rate: limits::Buckets<std::net::IpAddr>,
    pub tokens: token::TokenKeys,
    pub challenges: api::Challenges,
    /// Log lines for refusals, rate limited (`notice.rs`).
    pub notices: notice::Notices,
}

/// Serves the relay on `listener` until `shutdown` resolves, then closes connections cleanly and
/// flushes the store.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RelayError> {
    Relay::open(config)?.serve_tcp(listener, shutdown).await
}

/// [`run`] on any listener (the TLS listener in [`tls`] uses this).
pub async fn run_listener(
    listener: impl axum::serve::Listener<Addr = std::net::SocketAddr>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RelayError> {
    Relay::open(config)?.serve(listener, shutdown).await
}

/// A relay whose store and token secret are open, not yet serving: [`Relay::open`] fails on a
/// database another relay holds, a corrupt or unreadable one, before anything listens or says
/// it is ready.
pub struct Relay {
    shared: Arc<Shared>,
    stop_tx: watch::Sender<bool>,
}

impl Relay {
    /// Opens (creating or migrating) the store at `config.db_path` and loads the token secret.
    pub fn open(config: Config) -> Result<Self, RelayError> {
        let router = Arc::new(Router::default());
        let metrics = Arc::new(metrics::Metrics::default());
        let store = Store::open(&config, router.clone(), metrics.clone())?;
        let tokens = token::TokenKeys::load(&config.db_path, config.token_ttl, now_ms() / 1000)
            .map_err(store::StoreError::from)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            tokens,
            challenges: api::Challenges::default(),
            notices: notice::Notices::default(),
            conns: limits::ConnCounter::new(config.max_connections, config.max_connections_per_ip),
            sockets: {
                let (total, per_ip) =
                    sockets::caps(config.max_connections, config.max_connections_per_ip);
                Arc::new(limits::ConnCounter::new(total, per_ip))
            },
            identity_rate: limits::Buckets::new(config.rate_per_identity),
            ip_rate: limits::Buckets::new(config.rate_per_ip),
            config,
            store,
            router,
            shutdown: stop_rx,
            metrics,
        });
        Ok(Self { shared, stop_tx })
    }

    /// Serves plain WebSocket and HTTP on `listener` until `shutdown` resolves, then closes
    /// connections cleanly and closes the store.
    pub async fn serve(
        self,
        listener: impl axum::serve::Listener<Addr = std::net::SocketAddr>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), RelayError> {
        let Self { shared, stop_tx } = self;
        let (store, router) = (shared.store.clone(), shared.router.clone());
        let sweeper = tokio::spawn(sweep_loop(shared.clone()));
        let served = async {
            let addr = listener.local_addr()?;
            tracing::info!(%addr, "relay listening");
            let app = http::app(shared.clone());
            let stop_for_serve = stop_tx.clone();
            let graceful = async move {
                shutdown.await;
                tracing::info!("relay shutting down");
                let _ = stop_for_serve.send(true);
            };
            // Every socket counted and idle-limited; `tap_io` gives any listener (plain TCP or
            // TLS, see `tls`) the peer address as ConnectInfo.
            let listener =
                sockets::Limited::new(listener, shared.sockets.clone(), shared.metrics.clone());
            axum::serve(
                axum::serve::ListenerExt::tap_io(listener, |_| ()),
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(graceful)
            .await
        };
        let result = served.await;
        let _ = stop_tx.send(true);
        router.wait_idle(Duration::from_secs(5)).await;
        sweeper.abort();
        drop(shared);
        store.close().await;
        tracing::info!("relay stopped");
        result.map_err(RelayError::from)
    }

    /// [`Relay::serve`] on a TCP listener, with Nagle's algorithm off on every connection.
    pub async fn serve_tcp(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), RelayError> {
        // Small frames must leave at once: Nagle's algorithm would hold them for the peer's ACK.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        self.serve(listener, shutdown).await
    }
}

/// Makes a new token key when the current one is `token_rotate_every` old (checked at start and
/// on every sweep, so at most a minute late, and across restarts).
fn rotate_if_due(shared: &Shared) {
    let now_s = now_ms() / 1000;
    if shared.tokens.rotation_due(
        now_s,
        shared
            .config
            .token_rotate_every
            .max(Duration::from_secs(60)),
    ) {
        if let Err(e) = shared.tokens.rotate(now_s) {
            tracing::warn!(error = %e, "token secret rotation failed; keeping the current one");
        } else {
            tracing::info!("token secret rotated");
        }
    }
}

async fn sweep_loop(shared: Arc<Shared>) {
    rotate_if_due(&shared);
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        shared.store.sweep(now_ms());
        let now = std::time::Instant::now();
        shared.identity_rate.sweep(now);
        shared.ip_rate.sweep(now);
        rotate_if_due(&shared);
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
