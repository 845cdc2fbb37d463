//! The relay terminating TLS itself: a self-signed certificate made with the `openssl` CLI, a
//! rustls client that trusts only it, and a stalled handshake that must not block others.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

fn self_signed(dir: &Path) {
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("the openssl CLI is needed to make a test certificate");
    assert!(status.success());
}

fn client_config(cert: &Path) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

async fn get_health(addr: std::net::SocketAddr, tls: Arc<ClientConfig>) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut s = TlsConnector::from(tls).connect(name, tcp).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

type Stop = tokio::sync::oneshot::Sender<()>;
type Running = tokio::task::JoinHandle<Result<(), tincan_relay::RelayError>>;

/// A relay terminating TLS with a fresh self-signed certificate in `dir`, on a free port.
async fn tls_relay(dir: &Path) -> (std::net::SocketAddr, Stop, Running) {
    self_signed(dir);
    let server =
        tincan_relay::tls::load_config(&dir.join("cert.pem"), &dir.join("key.pem")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(tincan_relay::tls::run_tls(
        listener,
        server,
        tincan_relay::Config::new(dir.join("relay.db")),
        async {
            let _ = stopped.await;
        },
    ));
    (addr, stop, relay)
}

#[tokio::test]
async fn relay_serves_over_tls_and_a_stalled_handshake_blocks_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop, relay) = tls_relay(dir.path()).await;

    // A client that connects and never starts its handshake.
    let _stalled = TcpStream::connect(addr).await.unwrap();
    let tls = client_config(&dir.path().join("cert.pem"));
    let answer = tokio::time::timeout(Duration::from_secs(5), get_health(addr, tls.clone()))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut out)).await;
    assert!(!String::from_utf8_lossy(&out).contains("200 OK"));

    let _ = stop.send(());
    relay.await.unwrap().unwrap();
}

#[tokio::test]
async fn one_address_cannot_hold_every_handshake_slot() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop, relay) = tls_relay(dir.path()).await;
    // Sixteen connections from this address that never start their handshake take its share.
    let mut stalled = Vec::new();
    for _ in 0..16 {
        stalled.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The next one is closed at once instead of holding a slot for the handshake timeout.
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(3), extra.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the 17th stalled handshake from one address was kept: {read:?}"
    );
    // Once they go, the address is served again.
    drop(stalled);
    let tls = client_config(&dir.path().join("cert.pem"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let answer = tokio::time::timeout(Duration::from_secs(2), async {
            let tcp = TcpStream::connect(addr).await.ok()?;
            let name = ServerName::try_from("localhost").unwrap();
            let mut s = TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .ok()?;
            s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            Some(String::from_utf8_lossy(&out).into_owned())
        })
        .await;
        if let Ok(Some(a)) = &answer
            && a.starts_with("HTTP/1.1 200")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not served again: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    relay.await.unwrap().unwrap();
}

#[test]
fn unreadable_or_mismatched_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing =
        tincan_relay::tls::load_config(&dir.path().join("nope.pem"), &dir.path().join("key.pem"));
    assert!(
        matches!(missing, Err(tincan_relay::tls::TlsError::Cert { .. })),
        "{missing:?}"
    );
    self_signed(dir.path());
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    let no_key =
        tincan_relay::tls::load_config(&dir.path().join("cert.pem"), &dir.path().join("empty.pem"));
    assert!(
        matches!(no_key, Err(tincan_relay::tls::TlsError::Key { .. })),
        "{no_key:?}"
    );
}
