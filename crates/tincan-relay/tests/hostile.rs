//! The relay against input a well-behaved client never sends, over real WebSockets.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tincan_proto::frame::{ClientFrame, ErrorCode, MAX_BODY, RelayFrame};
use tincan_proto::identity::Identity;
use tincan_proto::ids::{InviteId, MessageId};
use tincan_proto::labels;
use tincan_relay::Config;
use tincan_testkit::InProcessRelay;
use tincan_testkit::raw::{RawConn, pair};

async fn relay(dir: &tempfile::TempDir, f: impl FnOnce(&mut Config)) -> InProcessRelay {
    let mut c = Config::new(dir.path().join("relay.db"));
    f(&mut c);
    InProcessRelay::start(c).await
}

#[tokio::test]
async fn malformed_and_unknown_frames_get_errors_and_the_relay_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay(&dir, |_| {}).await;
    let a = Identity::generate();
    let mut c = RawConn::authed(&r.url, &a, true).await;
    for bad in [
        vec![],
        vec![0x7f],
        vec![0x02, 0, 0],
        ClientFrame::Ack { seq: 1 }
            .encode()
            .into_iter()
            .chain([0])
            .collect(),
    ] {
        c.send_bytes(bad).await;
        match c.recv().await {
            Some(RelayFrame::Error {
                code: ErrorCode::BadFrame,
                ..
            }) => {}
            other => panic!("expected bad_frame, got {other:?}"),
        }
    }
    // Still serving: a ping is answered.
    c.send(&ClientFrame::Ping { nonce: 5 }).await;
    assert!(matches!(
        c.recv().await,
        Some(RelayFrame::Pong { nonce: 5 })
    ));
    r.stop().await;
}

#[tokio::test]
async fn frames_are_counted_by_their_own_type_in_each_direction() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay(&dir, |c| c.max_body = 1000).await;
    let (a, b) = (Identity::generate(), Identity::generate());
    pair(&r.url, &a, &b).await;
    let series = [
        ("in", "auth"),
        ("in", "send"),
        ("in", "undecodable"),
        ("out", "challenge"),
        ("out", "auth_ok"),
        ("out", "sent"),
        ("out", "error"),
    ];
    let read = |url: String| async move {
        let mut v = Vec::new();
        for (dir, kind) in series {
            let name = format!("tincan_frames_total{{dir=\"{dir}\",type=\"{kind}\"}}");
            v.push(tincan_testkit::metric(&url, &name).await);
        }
        v
    };
    let before = read(r.url.clone()).await;
    let mut c = RawConn::authed(&r.url, &a, false).await;
    let send = |req: u32, len: usize| ClientFrame::Send {
        req,
        id: MessageId::from_bytes([req as u8; 16]),
        to: b.peer_id(),
        body: vec![0; len],
    };
    c.send(&send(1, 10)).await;
    assert!(matches!(
        c.recv().await,
        Some(RelayFrame::Sent { req: 1, .. })
    ));
    c.send(&send(2, 1001)).await;
    assert!(matches!(
        c.recv().await,
        Some(RelayFrame::Error { req: 2, .. })
    ));
    let after = read(r.url.clone()).await;
    let delta: Vec<u64> = after.iter().zip(&before).map(|(x, y)| x - y).collect();
    // One of each: Auth in, Challenge and AuthOk out (not both "auth"), Send in and Sent out
    // (not "send" both ways), the oversized frame in as undecodable and its Error out.
    assert_eq!(delta, [1, 1, 1, 1, 1, 1, 1], "{series:?}");
    r.stop().await;
}

#[tokio::test]
async fn oversized_body_is_refused_with_its_request_number() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay(&dir, |c| c.max_body = 1000).await;
    let (a, b) = (Identity::generate(), Identity::generate());
    pair(&r.url, &a, &b).await;
    let mut c = RawConn::authed(&r.url, &a, false).await;
    c.send(&ClientFrame::Send {
        req: 77,
        id: MessageId::from_bytes([1; 16]),
        to: b.peer_id(),
        body: vec![0; 1001],
    })
    .await;
    match c.recv().await {
        Some(RelayFrame::Error {
            req: 77,
            code: ErrorCode::TooLarge,
            message,
            ..
        }) => assert!(message.contains("1000")),
        other => panic!("expected too_large, got {other:?}"),
    }
    const { assert!(MAX_BODY > 1000) };
    r.stop().await;
}

#[tokio::test]
async fn requests_before_auth_and_bad_signatures_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay(&dir, |_| {}).await;
    let (mut c, _) = RawConn::connect(&r.url).await;
    c.send(&ClientFrame::Ping { nonce: 1 }).await;
    assert!(matches!(
        c.recv().await,
        Some(RelayFrame::Error {
            code: ErrorCode::NotAuthenticated,
            ..
        })
    ));

    // A signature over another connection's nonce (a replayed challenge answer) fails.
    let a = Identity::generate();
    let (mut c1, nonce1) = RawConn::connect(&r.url).await;
    let sig1 = a.sign(labels::RELAY_CHALLENGE, &nonce1);
    c1.send(&ClientFrame::Auth {
        peer: a.peer_id(),
        signature: sig1,
        receive: true,
    })
    .await;
    assert!(matches!(c1.recv().await, Some(RelayFrame::AuthOk { .. })));
    let (mut c2, _) = RawConn::connect(&r.url).await;
    c2.send(&ClientFrame::Auth {
        peer: a.peer_id(),
        signature: sig1,
        receive: true,
    })
    .await;
    assert!(matches!(
        c2.recv().await,
        Some(RelayFrame::Error {
            code: ErrorCode::AuthFailed,
            ..
        })
    ));

    // A signature without the domain label fails.
    let (mut c3, nonce3) = RawConn::connect(&r.url).await;
    let sig3 = a.sign(b"", &nonce3);
    c3.send(&ClientFrame::Auth {
        peer: a.peer_id(),
        signature: sig3,
        receive: true,
    })
    .await;
    assert!(matches!(
        c3.recv().await,
        Some(RelayFrame::Error {
            code: ErrorCode::AuthFailed,
            ..
        })
    ));
    r.stop().await;
}

#[tokio::test]
async fn queue_cap_is_enforced_with_a_clear_error_and_duplicates_are_not_stored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay(&dir, |c| c.queue_cap = 3).await;
    let (a, b) = (Identity::generate(), Identity::generate());
    pair(&r.url, &a, &b).await;
    let mut c = RawConn::authed(&r.url, &a, false).await;
    let mut seqs = Vec::new();
    for i in 0..3u8 {
        c.send(&ClientFrame::Send {
            req: u32::from(i) + 1,
            id: MessageId::from_bytes([i; 16]),
            to: b.peer_id(),
            body: vec![i],
        })
        .await;
        match c.recv().await {
            Some(RelayFrame::Sent { seq, .. }) => seqs.push(seq),
            other => panic!("expected sent, got {other:?}"),
        }
    }
    // A resend of an already stored message is acknowledged with the same seq, not stored again.
    c.send(&ClientFrame::Send {
        req: 10,
        id: MessageId::from_bytes([0; 16]),
        to: b.peer_id(),
        body: vec![0],
    })
    .await;
    assert!(matches!(c.recv().await, Some(RelayFrame::Sent { req: 10, seq }) if seq == seqs[0]));
    c.send(&ClientFrame::Send {
        req: 11,
        id: MessageId::from_bytes([9; 16]),
        to: b.peer_id(),
        body: vec![9],
    })
    .await;
    match c.recv().await {
        Some(RelayFrame::Error {
            req: 11,
            code: ErrorCode::QueueFull,
            retry_after_ms,
            message,
        }) => assert!(message.contains("cap 3") && retry_after_ms > 0),
        other => panic!("expected queue_full, got {other:?}"),
    }
    // The recipient gets exactly the three, in order; acking frees the queue.
    let mut rb = RawConn::authed(&r.url, &b, true).await;
    for (i, seq) in seqs.iter().enumerate() {
        match rb.recv().await {
            Some(RelayFrame::Deliver {
                seq: s, from, body, ..
            }) => {
                assert_eq!((s, from, body), (*seq, a.peer_id(), vec![i as u8]));
                rb.send(&ClientFrame::Ack { seq: s }).await;
            }
            other => panic!("expected deliver, got {other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.send(&ClientFrame::Send {
        req: 12,
        id: MessageId::from_bytes([9; 16]),
        to: b.peer_id(),
        body: vec![9],
    })
    .await;
    assert!(matches!(
        c.recv().await,
        Some(RelayFrame::Sent { req: 12, .. })
    ));
    assert_eq!(refused(&r.url, "queue_cap").await, 1);
    r.stop().await;
}

/// `tincan_refused_total{limit="<limit>"}` from the relay's /metrics.
async fn refused(url: &str, limit: &str) -> u64 {
    let text = tincan_client::http_client()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let key = format!("tincan_refused_total{{limit=\"{limit}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .unwrap_or_else(|| panic!("no {key} in /metrics"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn the_total_of_queued_messages_is_capped_without_reordering_or_losing_any() {
    // Three identities write to two recipients; the relay holds at most three messages in all.
    let dir = tempfile::tempdir().unwrap();
    let r = relay(&dir, |c| c.max_queued = 3).await;
    let (a, b, d) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    pair(&r.url, &a, &b).await;
    pair(&r.url, &a, &d).await;
    let mut c = RawConn::authed(&r.url, &a, false).await;
    let send = |req: u32, id: u8, to: &Identity| ClientFrame::Send {
        req,
        id: MessageId::from_bytes([id; 16]),
        to: to.peer_id(),
        body: vec![id],
    };
    for (req, to) in [(1, &b), (2, &b), (3, &d)] {
        c.send(&send(req, req as u8, to)).await;
        assert!(matches!(c.recv().await, Some(RelayFrame::Sent { req: r, .. }) if r == req));
    }
    c.send(&send(4, 4, &d)).await;
    match c.recv().await {
        Some(RelayFrame::Error {
            req: 4,
            code: ErrorCode::StorageFull,
            retry_after_ms,
            message,
        }) => assert!(
            message.contains("max_queued 3") && retry_after_ms > 0,
            "{message}"
        ),
        other => panic!("expected storage_full, got {other:?}"),
    }
    // A later message on the same path must not overtake the refused one.
    c.send(&send(5, 5, &d)).await;
    assert!(matches!(
        c.recv().await,
        Some(RelayFrame::Error {
            req: 5,
            code: ErrorCode::StorageFull,
            ..
        })
    ));
    // Both refusals count against the limit: the held one waits behind a `max_queued` refusal.
    assert_eq!(refused(&r.url, "max_queued").await, 2);
    // One delivery acked frees one place: the refused message goes in, then the next.
    let mut rb = RawConn::authed(&r.url, &b, true).await;
    match rb.recv().await {
        Some(RelayFrame::Deliver { seq, body, .. }) => {
            assert_eq!(body, vec![1]);
            rb.send(&ClientFrame::Ack { seq }).await;
        }
        other => panic!("expected deliver, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.send(&send(6, 4, &d)).await;
    assert!(matches!(
        c.recv().await,
        Some(RelayFrame::Sent { req: 6, .. })
    ));
    let mut rd = RawConn::authed(&r.url, &d, true).await;
    for want in [3u8, 4] {
        match rd.recv().await {
            Some(RelayFrame::Deliver { body, .. }) => assert_eq!(body, vec![want]),
            other => panic!("expected deliver, got {other:?}"),
        }
    }
    r.stop().await;
}

#[tokio::test]
async fn unacked_messages_are_redelivered_after_reconnect_and_acked_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay(&dir, |_| {}).await;
    let (a, b) = (Identity::generate(), Identity::generate());
    pair(&r.url, &a, &b).await;
    let mut c = RawConn::authed(&r.url, &a, false).await;
    for i in 0..2u8 {
        c.send(&ClientFrame::Send {
            req: 1,
            id: MessageId::from_bytes([i; 16]),
            to: b.peer_id(),
            body: vec![i],
        })
        .await;
        assert!(matches!(c.recv().await, Some(RelayFrame::Sent { .. })));
    }
    let mut rb = RawConn::authed(&r.url, &b, true).await;
    let Some(RelayFrame::Deliver { seq: first, .. }) = rb.recv().await else {
        panic!("no delivery")
    };
    rb.send(&ClientFrame::Ack { seq: first }).await;
    let Some(RelayFrame::Deliver { body, .. }) = rb.recv().await else {
        panic!("no delivery")
    };
    assert_eq!(body, vec![1]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(rb);
    // The second was never acked: it comes again, alone.
    let mut rb = RawConn::authed(&r.url, &b, true).await;
    match rb.recv().await {
        Some(RelayFrame::Deliver { body, .. }) => assert_eq!(body, vec![1]),
        other => panic!("expected redelivery, got {other:?}"),
    }
    r.stop().await;
}

#[tokio::test]
async fn an_invite_id_registered_by_another_identity_stays_theirs_and_the_second_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay(&dir, |_| {}).await;
    let (a, m) = (Identity::generate(), Identity::generate());
    let expires_at = tincan_relay_now() + 3600;
    let register = |req| ClientFrame::RegisterInvite {
        req,
        id: InviteId::from_bytes([9; 16]),
        expires_at,
    };
    let mut ca = RawConn::authed(&r.url, &a, false).await;
    ca.send(&register(1)).await;
    assert!(matches!(
        ca.recv().await,
        Some(RelayFrame::InviteRegistered { req: 1 })
    ));
    // The same inviter again (its answer lost, say): fine.
    ca.send(&register(2)).await;
    assert!(matches!(
        ca.recv().await,
        Some(RelayFrame::InviteRegistered { req: 2 })
    ));
    // Someone else with the same id: refused, and the invite is still A's.
    let mut cm = RawConn::authed(&r.url, &m, false).await;
    cm.send(&register(3)).await;
    assert!(matches!(
        cm.recv().await,
        Some(RelayFrame::Error {
            req: 3,
            code: ErrorCode::InviteUsed,
            ..
        })
    ));
    let b = Identity::generate();
    let mut cb = RawConn::authed(&r.url, &b, false).await;
    cb.send(&ClientFrame::ClaimInvite {
        req: 4,
        id: InviteId::from_bytes([9; 16]),
    })
    .await;
    match cb.recv().await {
        Some(RelayFrame::InviteClaimed { req: 4, inviter }) => assert_eq!(inviter, a.peer_id()),
        other => panic!("expected A's invite, got {other:?}"),
    }
    r.stop().await;
}

#[tokio::test]
async fn absurd_invite_expiry_is_refused_and_does_not_hurt_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay(&dir, |_| {}).await;
    let a = Identity::generate();
    let mut c = RawConn::authed(&r.url, &a, false).await;
    for expires_at in [u64::MAX, u64::MAX / 2, 0, 1] {
        c.send(&ClientFrame::RegisterInvite {
            req: 3,
            id: InviteId::from_bytes([3; 16]),
            expires_at,
        })
        .await;
        assert!(matches!(
            c.recv().await,
            Some(RelayFrame::Error {
                req: 3,
                code: ErrorCode::InviteExpired,
                ..
            })
        ));
    }
    // Claiming an unknown invite is refused; the relay still answers.
    c.send(&ClientFrame::ClaimInvite {
        req: 4,
        id: InviteId::from_bytes([3; 16]),
    })
    .await;
    assert!(matches!(
        c.recv().await,
        Some(RelayFrame::Error {
            req: 4,
            code: ErrorCode::InviteUnknown,
            ..
        })
    ));
    r.stop().await;
}

#[tokio::test]
async fn a_new_receiving_connection_replaces_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay(&dir, |_| {}).await;
    let a = Identity::generate();
    let mut old = RawConn::authed(&r.url, &a, true).await;
    let _new = RawConn::authed(&r.url, &a, true).await;
    assert!(matches!(
        old.recv().await,
        Some(RelayFrame::Error {
            code: ErrorCode::Replaced,
            ..
        })
    ));
    r.stop().await;
}

#[tokio::test]
async fn slow_reader_catches_up_in_order_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay(&dir, |_| {}).await;
    let (a, b) = (Identity::generate(), Identity::generate());
    pair(&r.url, &a, &b).await;
    // B is online but reads nothing while A sends more than its in-memory queue holds.
    let mut rb = RawConn::authed(&r.url, &b, true).await;
    let mut c = RawConn::authed(&r.url, &a, false).await;
    let n = 3000u32;
    for i in 0..n {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        c.send(&ClientFrame::Send {
            req: i + 1,
            id: MessageId::from_bytes(id),
            to: b.peer_id(),
            body: i.to_be_bytes().to_vec(),
        })
        .await;
    }
    for _ in 0..n {
        assert!(matches!(c.recv().await, Some(RelayFrame::Sent { .. })));
    }
    for i in 0..n {
        match rb.recv().await {
            Some(RelayFrame::Deliver { body, .. }) => {
                assert_eq!(body, i.to_be_bytes().to_vec(), "out of order at {i}")
            }
            other => panic!("expected delivery {i}, got {other:?}"),
        }
    }
    r.stop().await;
}

/// A refused message holds back the later ones on the same path until it is resent, so a
/// refusal in the middle of a pipelined burst never reorders messages (Olm would then drop
/// them as out of its skipped-key window).
#[tokio::test]
async fn a_refused_message_is_never_overtaken_by_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay(&dir, |c| c.queue_cap = 2).await;
    let (a, b) = (Identity::generate(), Identity::generate());
    pair(&r.url, &a, &b).await;
    let mut c = RawConn::authed(&r.url, &a, false).await;
    let send = |i: u8| ClientFrame::Send {
        req: u32::from(i),
        id: MessageId::from_bytes([i; 16]),
        to: b.peer_id(),
        body: vec![i],
    };
    for i in 0..2 {
        c.send(&send(i)).await;
        assert!(matches!(c.recv().await, Some(RelayFrame::Sent { .. })));
    }
    c.send(&send(2)).await;
    assert!(matches!(
        c.recv().await,
        Some(RelayFrame::Error {
            req: 2,
            code: ErrorCode::QueueFull,
            ..
        })
    ));
    // The recipient frees space by acking message 0.
    let mut rb = RawConn::authed(&r.url, &b, true).await;
    let Some(RelayFrame::Deliver { seq, .. }) = rb.recv().await else {
        panic!("no delivery")
    };
    rb.send(&ClientFrame::Ack { seq }).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Message 3 would fit now, but 2 must go first.
    c.send(&send(3)).await;
    match c.recv().await {
        Some(RelayFrame::Error {
            req: 3,
            code: ErrorCode::QueueFull,
            message,
            retry_after_ms,
        }) => {
            assert!(
                message.contains("held behind") && retry_after_ms > 0,
                "{message}"
            )
        }
        other => panic!("expected message 3 to be held, got {other:?}"),
    }
    // The held message counts as refused by the queue cap too, like the one it waits behind.
    assert_eq!(refused(&r.url, "queue_cap").await, 2);
    c.send(&send(2)).await;
    assert!(matches!(
        c.recv().await,
        Some(RelayFrame::Sent { req: 2, .. })
    ));
    // In order from here on: 1 (still unacked), 2, then 3 once there is room.
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let Some(RelayFrame::Deliver { seq, body, .. }) = rb.recv().await else {
            panic!("no delivery")
        };
        bodies.push(body[0]);
        rb.send(&ClientFrame::Ack { seq }).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.send(&send(3)).await;
    assert!(matches!(
        c.recv().await,
        Some(RelayFrame::Sent { req: 3, .. })
    ));
    let Some(RelayFrame::Deliver { body, .. }) = rb.recv().await else {
        panic!("no delivery")
    };
    bodies.push(body[0]);
    assert_eq!(bodies, vec![1, 2, 3]);
    r.stop().await;
}

#[tokio::test]
async fn rate_limited_sends_hold_back_later_ones_until_resent() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay(&dir, |c| {
        c.rate_per_identity = tincan_relay::Rate::new(5.0, 2.0)
    })
    .await;
    let (a, b) = (Identity::generate(), Identity::generate());
    pair(&r.url, &a, &b).await;
    let mut c = RawConn::authed(&r.url, &a, false).await;
    let send = |i: u8| ClientFrame::Send {
        req: u32::from(i),
        id: MessageId::from_bytes([i; 16]),
        to: b.peer_id(),
        body: vec![i],
    };
    // Registering the invite used one token of the burst of 2; message 0 takes the other.
    c.send(&send(0)).await;
    assert!(matches!(
        c.recv().await,
        Some(RelayFrame::Sent { req: 0, .. })
    ));
    c.send(&send(1)).await;
    let wait = match c.recv().await {
        Some(RelayFrame::Error {
            req: 1,
            code: ErrorCode::RateLimited,
            retry_after_ms,
            ..
        }) => retry_after_ms,
        other => panic!("expected rate_limited, got {other:?}"),
    };
    tokio::time::sleep(Duration::from_millis(u64::from(wait) + 50)).await;
    // Message 2 is held even though a token is available now: 1 goes first.
    c.send(&send(2)).await;
    assert!(matches!(
        c.recv().await,
        Some(RelayFrame::Error {
            req: 2,
            code: ErrorCode::RateLimited,
            ..
        })
    ));
    c.send(&send(1)).await;
    assert!(matches!(
        c.recv().await,
        Some(RelayFrame::Sent { req: 1, .. })
    ));
    r.stop().await;
}

#[tokio::test]
async fn plain_sockets_count_against_the_connection_cap_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    // WebSocket cap 4 per IP; bare sockets get 64 more for plain HTTP requests, so 68.
    let r = relay(&dir, |c| {
        c.max_connections_per_ip = 4;
        c.rate_per_ip = tincan_relay::Rate::new(0.0, 0.0);
    })
    .await;
    let addr = r.url.trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    for _ in 0..68 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // Sockets that never send a byte (or send half a request) used to hold a file descriptor each
    // without limit; one more is now closed as soon as it is accepted.
    let mut extra = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("the relay neither closed nor answered the socket over the cap");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    // Closing them frees their places.
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    r.stop().await;
}

#[tokio::test]
async fn pairs_beyond_max_pairs_are_refused_and_the_invite_is_not_spent() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay(&dir, |c| c.max_pairs = 2).await;
    for _ in 0..2 {
        pair(&r.url, &Identity::generate(), &Identity::generate()).await;
    }
    // A third pair would grow the relay's memory past its cap: refused, clearly.
    let (inviter, claimer) = (Identity::generate(), Identity::generate());
    let id = InviteId::from_bytes([9; 16]);
    let mut a = RawConn::authed(&r.url, &inviter, false).await;
    a.send(&ClientFrame::RegisterInvite {
        req: 1,
        id,
        expires_at: tincan_relay_now() + 600,
    })
    .await;
    assert!(matches!(
        a.recv().await,
        Some(RelayFrame::InviteRegistered { req: 1 })
    ));
    let mut b = RawConn::authed(&r.url, &claimer, false).await;
    b.send(&ClientFrame::ClaimInvite { req: 2, id }).await;
    match b.recv().await {
        Some(RelayFrame::Error {
            req: 2,
            code: ErrorCode::StorageFull,
            message,
            ..
        }) => assert!(message.contains("max_pairs"), "{message}"),
        other => panic!("expected storage_full, got {other:?}"),
    }
    assert_eq!(
        tincan_testkit::metric(&r.url, "tincan_refused_total{limit=\"max_pairs\"}").await,
        1
    );
    r.stop().await;

    // The refused claim did not spend the invite: with room, the same claim succeeds.
    let r = relay(&dir, |c| c.max_pairs = 3).await;
    let mut b = RawConn::authed(&r.url, &claimer, false).await;
    b.send(&ClientFrame::ClaimInvite { req: 3, id }).await;
    assert!(
        matches!(
            b.recv().await,
            Some(RelayFrame::InviteClaimed { req: 3, .. })
        ),
        "the invite was spent by the refused claim"
    );
    r.stop().await;
}

fn tincan_relay_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
