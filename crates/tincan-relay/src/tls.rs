//! TLS termination in the relay itself (rustls with the ring provider), for a relay exposed
//! without a reverse proxy: [`run_tls`] serves the same relay as [`crate::run`] over TLS.
//!
//! Handshakes run in their own tasks with a deadline, so a client that stalls its handshake
//! never holds up the accept loop; only finished handshakes reach the HTTP server.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

use crate::{Config, RelayError};

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in flight at once; beyond it new connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 256;
/// Most handshakes in flight from one address; beyond it its new connections are closed at once.
const MAX_HANDSHAKES_PER_IP: usize = 16;

/// Why the certificate or key could not be used.
#[derive(Debug, Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no PEM certificate.
    #[error("cannot read certificate chain {path}: {reason}")]
    Cert {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The key file could not be read or holds no PEM private key.
    #[error("cannot read private key {path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("unusable certificate or key: {0}")]
    Config(#[from] tokio_rustls::rustls::Error),
}

/// Loads a PEM certificate chain and private key into a server configuration (TLS 1.2 and
/// 1.3, ALPN http/1.1).
pub fn load_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: cert.display().to_string(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no PEM certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves the relay over TLS on `listener` until `shutdown` resolves; see [`crate::run`].
pub async fn run_tls(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RelayError> {
    crate::Relay::open(config)?
        .serve_tls(listener, tls, shutdown)
        .await
}

impl crate::Relay {
    /// [`crate::Relay::serve`] with TLS terminated here (rustls), on a TCP listener.
    pub async fn serve_tls(
        self,
        listener: TcpListener,
        tls: Arc<ServerConfig>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), RelayError> {
        let listener = TlsListener::new(listener, TlsAcceptor::from(tls))?;
        self.serve(listener, shutdown).await
    }
}

/// A listener that yields connections whose TLS handshake has completed.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    task: JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsListener {
    /// Starts accepting on `listener`, handshaking with `acceptor`.
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let task = tokio::spawn(accept_loop(listener, acceptor, tx));
        Ok(Self { local, ready, task })
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let mut handshakes = JoinSet::new();
    // Handshakes in progress per address: one address cannot take every slot and stall the TLS
    // clients of all the others for the handshake timeout.
    let mut per_ip: std::collections::HashMap<std::net::IpAddr, usize> =
        std::collections::HashMap::new();
    loop {
        tokio::select! {
            Some(done) = handshakes.join_next(), if !handshakes.is_empty() => {
                if let Ok(ip) = done
                    && let Some(n) = per_ip.get_mut(&ip)
                {
                    *n -= 1;
                    if *n == 0 {
                        per_ip.remove(&ip);
                    }
                }
            }
            accepted = listener.accept(), if handshakes.len() < MAX_HANDSHAKES => match accepted {
                Ok((tcp, remote)) => {
                    let ip = remote.ip();
                    let n = per_ip.entry(ip).or_insert(0);
                    if *n >= MAX_HANDSHAKES_PER_IP {
                        // Closed at once (dropped): its TLS client sees the connection reset.
                        tracing::debug!(%remote, "too many TLS handshakes in progress from this address");
                        continue;
                    }
                    *n += 1;
                    let _ = tcp.set_nodelay(true);
                    let (acceptor, tx) = (acceptor.clone(), tx.clone());
                    handshakes.spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => {
                                let _ = tx.send((tls, remote)).await;
                            }
                            Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                        }
                        ip
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
