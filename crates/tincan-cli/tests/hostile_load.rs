//! Hostile load against a relay process: a thousand concurrent claims of one invite, and a
//! connection flood. The relay answers each with a clear error, stays up, and its memory stays
//! bounded.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tincan_client::tincan_proto::frame::{ClientFrame, ErrorCode, RelayFrame};
use tincan_client::tincan_proto::identity::Identity;
use tincan_client::tincan_proto::ids::InviteId;
use tincan_testkit::raw::RawConn;

const BIN: &str = env!("CARGO_BIN_EXE_tincan");

/// A relay process with the given flags; killed on drop.
struct Relay {
    child: std::process::Child,
    url: String,
}

impl Relay {
    fn start(dir: &Path, flags: &[&str]) -> Self {
        let port = tincan_testkit::free_port();
        let child = std::process::Command::new(BIN)
            .args(["relay", "--listen", &format!("127.0.0.1:{port}"), "--db"])
            .arg(dir.join("relay.db"))
            .args(flags)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_claims_of_one_invite_have_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        &[
            "--rate-per-ip",
            "0",
            "--rate-per-identity",
            "0",
            "--max-connections-per-ip",
            "5000",
        ],
    );
    let inviter = Identity::generate();
    let mut c = RawConn::authed(&relay.url, &inviter, false).await;
    let id = InviteId::from_bytes([0x5a; 16]);
    let expires_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    c.send(&ClientFrame::RegisterInvite {
        req: 1,
        id,
        expires_at,
    })
    .await;
    assert!(matches!(
        c.recv().await,
        Some(RelayFrame::InviteRegistered { req: 1 })
    ));

    // Connect and authenticate all claimers first, then fire the claims together.
    let mut conns = Vec::new();
    for _ in 0..1000 {
        conns.push(RawConn::authed(&relay.url, &Identity::generate(), false).await);
    }
    let go = Arc::new(tokio::sync::Barrier::new(conns.len()));
    let (wins, used) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut tasks = Vec::new();
    for mut conn in conns {
        let (go, wins, used) = (go.clone(), wins.clone(), used.clone());
        tasks.push(tokio::spawn(async move {
            go.wait().await;
            conn.send(&ClientFrame::ClaimInvite { req: 7, id }).await;
            match conn.recv().await {
                Some(RelayFrame::InviteClaimed { req: 7, .. }) => {
                    wins.fetch_add(1, Ordering::SeqCst)
                }
                Some(RelayFrame::Error {
                    req: 7,
                    code: ErrorCode::InviteUsed,
                    ..
                }) => used.fetch_add(1, Ordering::SeqCst),
                other => panic!("unexpected answer to a claim: {other:?}"),
            };
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(wins.load(Ordering::SeqCst), 1, "exactly one claim wins");
    assert_eq!(
        used.load(Ordering::SeqCst),
        999,
        "every other claim is told the invite is used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_refused_clearly_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(
        dir.path(),
        &["--max-connections-per-ip", "200", "--rate-per-ip", "0"],
    );
    let before = relay.rss_kb();
    let ws_url = relay.url.replacen("http://", "ws://", 1) + "/v1/ws";
    // 200 connections are let in (and sit unauthenticated); the rest are refused at the door.
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..600 {
        match tokio_tungstenite::connect_async(ws_url.as_str()).await {
            Ok((ws, _)) => open.push(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 503);
                let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
                    .into_owned();
                assert!(
                    body.contains("too_many_connections") && body.contains("200"),
                    "{body}"
                );
                refused += 1;
            }
            Err(e) => panic!("unexpected connect failure: {e}"),
        }
    }
    assert_eq!(open.len(), 200);
    assert_eq!(refused, 400);
    // Unauthenticated connections are closed after the auth timeout; meanwhile the relay is up.
    assert!(relay.alive());
    let health = tincan_client::http_client()
        .get(format!("{}/health", relay.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let during = relay.rss_kb();
    assert!(
        during < before + 64 * 1024,
        "relay grew from {before} kB to {during} kB under the flood"
    );
    drop(open);
    // After the flood, an honest agent still gets in.
    let _ok = RawConn::authed(&relay.url, &Identity::generate(), true).await;
    // A flood of garbage frames on one authenticated connection: each answered, relay up.
    let mut c = RawConn::authed(&relay.url, &Identity::generate(), false).await;
    for i in 0..2000u32 {
        c.send_bytes(vec![0x7f, (i % 255) as u8]).await;
    }
    let mut errors = 0;
    while let Some(RelayFrame::Error {
        code: ErrorCode::BadFrame,
        ..
    }) = c.recv().await
    {
        errors += 1;
        if errors == 2000 {
            break;
        }
    }
    assert_eq!(errors, 2000);
    assert!(relay.alive());
}
