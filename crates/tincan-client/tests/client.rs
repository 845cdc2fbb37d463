//! The client SDK against an in-process relay over real WebSockets, including a relay that
//! routes anything (pairing checks off), to show the client's own defences.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tincan_client::tincan_proto::frame::{ClientFrame, RelayFrame};
use tincan_client::tincan_proto::identity::Identity;
use tincan_client::tincan_proto::ids::MessageId;
use tincan_client::tincan_proto::invite::Invite;
use tincan_client::tincan_proto::session::PeerSession;
use tincan_client::{Client, ClientOptions, Event, Home, now_ms, now_secs};
use tincan_relay::Config;
use tincan_testkit::InProcessRelay;
use tincan_testkit::raw::RawConn;

const T: Duration = Duration::from_secs(10);

async fn next_matching(c: &mut Client, want: impl Fn(&Event) -> bool) -> Event {
    tokio::time::timeout(T, async {
        loop {
            let e = c.next_event().await.expect("client closed");
            if want(&e) {
                return e;
            }
        }
    })
    .await
    .expect("event did not arrive")
}

async fn home(dir: &tempfile::TempDir, name: &str) -> Home {
    let mut h = Home::open(&dir.path().join(name)).unwrap();
    h.setup().unwrap();
    h
}

async fn open_relay(dir: &tempfile::TempDir, pairing: bool) -> InProcessRelay {
    let mut c = Config::new(dir.path().join("relay.db"));
    c.require_pairing = pairing;
    InProcessRelay::start(c).await
}

/// Clients A and B on `relay_url`, B paired through A's invite; returns A's record of B's id too
/// (from A's `PeerJoined`) and B's record of A.
async fn paired_clients(
    dir: &tempfile::TempDir,
    relay_url: &str,
) -> (
    Client,
    Client,
    tincan_client::tincan_proto::ids::PeerId,
    tincan_client::PeerRecord,
) {
    let connect = |h| Client::connect(h, relay_url, ClientOptions::default(), T);
    let mut a = connect(home(dir, "a").await).await.unwrap();
    let b = connect(home(dir, "b").await).await.unwrap();
    let draft = a.create_invite(60).await.unwrap();
    let invite = Invite::parse(&draft.url(), now_secs()).unwrap();
    let peer = b.accept_invite(&invite, T).await.unwrap();
    let b_id = match next_matching(&mut a, |e| matches!(e, Event::PeerJoined { .. })).await {
        Event::PeerJoined { peer, .. } => peer,
        _ => unreachable!(),
    };
    (a, b, b_id, peer)
}

#[tokio::test]
async fn sdk_pairs_sends_and_receives_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let relay = open_relay(&dir, true).await;
    let (mut a, mut b, b_id, peer) = paired_clients(&dir, &relay.url).await;
    let texts: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    // Fifty short texts to a peer that reads batches travel as one sealed envelope; each keeps
    // its own id, and waiting on the last one works like waiting on a single send.
    let ids = b.send_many(&peer.id.to_string(), &refs).await.unwrap();
    assert_eq!(ids.len(), 50);
    b.wait_sent(&ids[49], T).await.unwrap();
    assert!(b.home().is_sent(&ids[0]).unwrap());
    for (t, id) in texts.iter().zip(&ids) {
        match next_matching(&mut a, |e| matches!(e, Event::Message(_))).await {
            Event::Message(m) => {
                assert_eq!(&m.text, t);
                assert_eq!(m.from, b_id);
                assert_eq!(&m.id, id);
            }
            _ => unreachable!(),
        }
    }
    let id = a.send(&b_id.to_string(), "back").await.unwrap();
    a.wait_sent(&id, T).await.unwrap();
    match next_matching(&mut b, |e| matches!(e, Event::Message(_))).await {
        Event::Message(m) => assert_eq!(m.text, "back"),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn outbox_survives_a_relay_outage() {
    let dir = tempfile::tempdir().unwrap();
    let relay = open_relay(&dir, true).await;
    let url = relay.url.clone();
    let mut a = Client::connect(home(&dir, "a").await, &url, ClientOptions::default(), T)
        .await
        .unwrap();
    let b = Client::connect(home(&dir, "b").await, &url, ClientOptions::default(), T)
        .await
        .unwrap();
    let invite = Invite::parse(&a.create_invite(60).await.unwrap().url(), now_secs()).unwrap();
    b.accept_invite(&invite, T).await.unwrap();
    let a_id = invite.inviter.ed25519.to_string();
    next_matching(&mut a, |e| matches!(e, Event::PeerJoined { .. })).await;
    relay.stop().await;
    // Queued while the relay is down.
    let id = b.send(&a_id, "while down").await.unwrap();
    assert!(b.wait_sent(&id, Duration::from_millis(300)).await.is_err());
    // Same port, same database: the clients reconnect and the outbox drains.
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(tincan_relay::run(
        listener,
        Config::new(dir.path().join("relay.db")),
        async {
            let _ = rx.await;
        },
    ));
    b.wait_sent(&id, T).await.unwrap();
    match next_matching(&mut a, |e| matches!(e, Event::Message(_))).await {
        Event::Message(m) => assert_eq!(m.text, "while down"),
        _ => unreachable!(),
    }
    let _ = stop.send(());
    let _ = task.await;
}

/// With the relay's pairing check off, an identity that never held an invite reaches the
/// agent's connection; the agent's client still refuses it and shows no text.
#[tokio::test]
async fn uninvited_sender_is_rejected_by_the_client_even_if_the_relay_routes_it() {
    let dir = tempfile::tempdir().unwrap();
    let relay = open_relay(&dir, false).await;
    let a_home = home(&dir, "a").await;
    let a_keys = a_home.identity().unwrap().keys();
    let mut a = Client::connect(a_home, &relay.url, ClientOptions::default(), T)
        .await
        .unwrap();
    // A has an open invite, but Mallory does not hold it: she builds one from A's public keys
    // with a one-time key of her own making.
    let real = a.create_invite(60).await.unwrap();
    let mut forged = real.invite().clone();
    forged.one_time_key = Identity::generate().keys().curve25519;
    let mallory = Identity::generate();
    let (_, join) = PeerSession::accept_invite(&mallory, &forged, [4; 16], now_ms()).unwrap();
    let mut conn = RawConn::authed(&relay.url, &mallory, false).await;
    conn.send(&ClientFrame::Send {
        req: 1,
        id: MessageId::from_bytes([4; 16]),
        to: a_keys.ed25519,
        body: join,
    })
    .await;
    assert!(matches!(conn.recv().await, Some(RelayFrame::Sent { .. })));
    match next_matching(&mut a, |e| {
        matches!(
            e,
            Event::Rejected { .. } | Event::Message(_) | Event::PeerJoined { .. }
        )
    })
    .await
    {
        Event::Rejected { from, .. } => assert_eq!(from, mallory.peer_id()),
        other => panic!("uninvited sender got through: {other:?}"),
    }
    assert!(a.home().peers().unwrap().is_empty());
    // The real invite is still usable afterwards: the forgery did not burn it.
    let b = Client::connect(
        home(&dir, "b").await,
        &relay.url,
        ClientOptions::default(),
        T,
    )
    .await
    .unwrap();
    b.accept_invite(&Invite::parse(&real.url(), now_secs()).unwrap(), T)
        .await
        .unwrap();
    next_matching(&mut a, |e| matches!(e, Event::PeerJoined { .. })).await;
}

/// A message sealed by a real peer but replayed, or re-sent under another identity, is refused.
#[tokio::test]
async fn replayed_and_impersonated_deliveries_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let relay = open_relay(&dir, false).await;
    let mut a = Client::connect(
        home(&dir, "a").await,
        &relay.url,
        ClientOptions::default(),
        T,
    )
    .await
    .unwrap();
    let b = Client::connect(
        home(&dir, "b").await,
        &relay.url,
        ClientOptions::default(),
        T,
    )
    .await
    .unwrap();
    let invite = Invite::parse(&a.create_invite(60).await.unwrap().url(), now_secs()).unwrap();
    b.accept_invite(&invite, T).await.unwrap();
    next_matching(&mut a, |e| matches!(e, Event::PeerJoined { .. })).await;
    drop(a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A is offline: the sealed message waits in the relay's store, where we copy it.
    let a_id = invite.inviter.ed25519;
    let id = b.send(&a_id.to_string(), "only once").await.unwrap();
    b.wait_sent(&id, T).await.unwrap();
    let body: Vec<u8> = rusqlite::Connection::open(dir.path().join("relay.db"))
        .unwrap()
        .query_row(
            "SELECT body FROM queue ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let mut a = Client::connect(
        Home::open(&dir.path().join("a")).unwrap(),
        &relay.url,
        ClientOptions::default(),
        T,
    )
    .await
    .unwrap();
    match next_matching(&mut a, |e| matches!(e, Event::Message(_))).await {
        Event::Message(m) => assert_eq!(m.text, "only once"),
        _ => unreachable!(),
    }
    // Replay by the real sender under a fresh message id: the message key is spent.
    let b_home = Home::open(&dir.path().join("b")).unwrap();
    let mut as_b = RawConn::authed(&relay.url, b_home.identity().unwrap(), false).await;
    as_b.send(&ClientFrame::Send {
        req: 1,
        id: MessageId::from_bytes([7; 16]),
        to: a_id,
        body: body.clone(),
    })
    .await;
    assert!(matches!(as_b.recv().await, Some(RelayFrame::Sent { .. })));
    match next_matching(&mut a, |e| {
        matches!(e, Event::Rejected { .. } | Event::Message(_))
    })
    .await
    {
        Event::Rejected { from, .. } => assert_eq!(from, b_home.identity().unwrap().peer_id()),
        other => panic!("replay got through: {other:?}"),
    }
    // The same ciphertext from another identity.
    let mallory = Identity::generate();
    let mut conn = RawConn::authed(&relay.url, &mallory, false).await;
    conn.send(&ClientFrame::Send {
        req: 1,
        id: MessageId::from_bytes([8; 16]),
        to: a_id,
        body,
    })
    .await;
    assert!(matches!(conn.recv().await, Some(RelayFrame::Sent { .. })));
    match next_matching(&mut a, |e| {
        matches!(e, Event::Rejected { .. } | Event::Message(_))
    })
    .await
    {
        Event::Rejected { from, .. } => assert_eq!(from, mallory.peer_id()),
        other => panic!("impersonation got through: {other:?}"),
    }
    // B's session still works after all that.
    let id = b.send(&a_id.to_string(), "still fine").await.unwrap();
    b.wait_sent(&id, T).await.unwrap();
    match next_matching(&mut a, |e| matches!(e, Event::Message(_))).await {
        Event::Message(m) => assert_eq!(m.text, "still fine"),
        _ => unreachable!(),
    }
}

/// The same client over the HTTP API (token, POST, long-poll, ack) talks to a WebSocket client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_transport_pairs_sends_and_receives() {
    use tincan_client::Transport;
    let dir = tempfile::tempdir().unwrap();
    let relay = open_relay(&dir, true).await;
    let mut a = Client::connect(
        home(&dir, "a").await,
        &relay.url,
        ClientOptions::default(),
        T,
    )
    .await
    .unwrap();
    let mut b = Client::start_with(
        home(&dir, "b").await,
        &relay.url,
        ClientOptions::default(),
        Transport::Http,
    )
    .unwrap();
    b.wait_connected(T).await.unwrap();
    let invite = Invite::parse(&a.create_invite(60).await.unwrap().url(), now_secs()).unwrap();
    let peer = b.accept_invite(&invite, T).await.unwrap();
    let b_id = match next_matching(&mut a, |e| matches!(e, Event::PeerJoined { .. })).await {
        Event::PeerJoined { peer, .. } => peer,
        _ => unreachable!(),
    };
    let ids = b
        .send_many(&peer.id.to_string(), &["over http 1", "over http 2"])
        .await
        .unwrap();
    b.wait_sent(&ids[1], T).await.unwrap();
    for want in ["over http 1", "over http 2"] {
        match next_matching(&mut a, |e| matches!(e, Event::Message(_))).await {
            Event::Message(m) => assert_eq!(m.text, want),
            _ => unreachable!(),
        }
    }
    // Long-poll delivery the other way, in order.
    a.send_many(&b_id.to_string(), &["back 1", "back 2", "back 3"])
        .await
        .unwrap();
    for want in ["back 1", "back 2", "back 3"] {
        match next_matching(&mut b, |e| matches!(e, Event::Message(_))).await {
            Event::Message(m) => assert_eq!(m.text, want),
            _ => unreachable!(),
        }
    }
}

/// A on the HTTP transport, B (send-only, WebSocket) paired with it through A's invite, on a
/// relay set up by `config`; returns B's id as A knows it and A's as B knows it.
async fn http_and_ws(
    dir: &tempfile::TempDir,
    config: impl FnOnce(&mut Config),
) -> (
    InProcessRelay,
    Client,
    Client,
    tincan_client::tincan_proto::ids::PeerId,
    tincan_client::PeerRecord,
) {
    use tincan_client::Transport;
    let mut c = Config::new(dir.path().join("relay.db"));
    config(&mut c);
    let relay = InProcessRelay::start(c).await;
    let mut a = Client::start_with(
        home(dir, "a").await,
        &relay.url,
        ClientOptions::default(),
        Transport::Http,
    )
    .unwrap();
    a.wait_connected(T).await.unwrap();
    let b = Client::connect(
        home(dir, "b").await,
        &relay.url,
        ClientOptions::send_only(),
        T,
    )
    .await
    .unwrap();
    let invite = Invite::parse(&a.create_invite(60).await.unwrap().url(), now_secs()).unwrap();
    let peer = b.accept_invite(&invite, T).await.unwrap();
    let b_id = match next_matching(&mut a, |e| matches!(e, Event::PeerJoined { .. })).await {
        Event::PeerJoined { peer, .. } => peer,
        _ => unreachable!(),
    };
    (relay, a, b, b_id, peer)
}

#[tokio::test]
async fn over_http_a_deferred_send_holds_back_the_later_ones_but_not_receiving() {
    let dir = tempfile::tempdir().unwrap();
    // B never reads, so one message fills its queue and the next is deferred for good.
    let (_relay, mut a, b, b_id, a_rec) = http_and_ws(&dir, |c| c.queue_cap = 1).await;
    let to_b = b_id.to_string();
    let first = a.send(&to_b, "fills the queue").await.unwrap();
    a.wait_sent(&first, T).await.unwrap();
    let second = a.send(&to_b, "deferred").await.unwrap();
    assert!(matches!(
        a.wait_sent(&second, T).await,
        Err(tincan_client::ClientError::Deferred { .. })
    ));
    let third = a.send(&to_b, "held behind it").await.unwrap();
    assert!(matches!(
        a.wait_sent(&third, T).await,
        Err(tincan_client::ClientError::Deferred { .. })
    ));
    // Meanwhile A still receives: the deferral used to keep its client in the send loop.
    let id = b
        .send(&a_rec.id.to_string(), "while deferred")
        .await
        .unwrap();
    b.wait_sent(&id, T).await.unwrap();
    match next_matching(&mut a, |e| matches!(e, Event::Message(_))).await {
        Event::Message(m) => assert_eq!(m.text, "while deferred"),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn over_http_an_expired_token_is_renewed_quietly_and_fails_no_message() {
    let dir = tempfile::tempdir().unwrap();
    let (_relay, mut a, b, b_id, a_rec) =
        http_and_ws(&dir, |c| c.token_ttl = Duration::from_secs(1)).await;
    // Past the token's life, both a poll and a send renew it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let id = a.send(&b_id.to_string(), "after expiry").await.unwrap();
    a.wait_sent(&id, T).await.unwrap();
    let id = b
        .send(&a_rec.id.to_string(), "to a after expiry")
        .await
        .unwrap();
    b.wait_sent(&id, T).await.unwrap();
    let seen = tokio::time::timeout(T, async {
        let mut seen = Vec::new();
        loop {
            let e = a.next_event().await.unwrap();
            let done = matches!(&e, Event::Message(m) if m.text == "to a after expiry");
            seen.push(e);
            if done {
                return seen;
            }
        }
    })
    .await
    .unwrap();
    assert!(
        !seen.iter().any(|e| matches!(e, Event::Disconnected { .. })),
        "a renewal is not a lost connection: {seen:?}"
    );
}

#[tokio::test]
async fn a_rate_limited_burst_is_reported_once_per_pause_and_delivered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("relay.db"));
    config.rate_per_identity = tincan_relay::Rate::new(10.0, 6.0);
    let relay = InProcessRelay::start(config).await;
    let (mut a, mut b, _, peer) = paired_clients(&dir, &relay.url).await;
    // Twenty separate sends (each its own envelope) against 10 per second, burst 6: most are
    // refused at first, each send in flight behind a refused one too.
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            b.send(&peer.id.to_string(), &format!("r{i}"))
                .await
                .unwrap(),
        );
    }
    let mut reports = 0;
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if b.home().is_sent(&ids[19]).unwrap() {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(50), b.next_event()).await {
                Ok(Some(Event::SendDeferred { .. })) => reports += 1,
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => panic!("client stopped"),
            }
        }
    })
    .await;
    assert!(waited.is_ok(), "the burst was not delivered in time");
    assert!(reports >= 1, "the limit was hit and reported");
    assert!(
        reports <= 20,
        "{reports} deferral reports for 20 messages: one per pause, not one per send in flight"
    );
    for i in 0..20 {
        match next_matching(&mut a, |e| matches!(e, Event::Message(_))).await {
            Event::Message(m) => assert_eq!(m.text, format!("r{i}")),
            _ => unreachable!(),
        }
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_a_home_that_cannot_store_deliveries_stops_the_client() {
    use tincan_client::{ConnState, Transport};
    let dir = tempfile::tempdir().unwrap();
    let relay = open_relay(&dir, true).await;
    let (a, b, b_id, _) = paired_clients(&dir, &relay.url).await;
    drop(b);
    let id = a
        .send(&b_id.to_string(), "waits at the relay")
        .await
        .unwrap();
    a.wait_sent(&id, T).await.unwrap();
    // Overwrite the pages of B's inbox table in place.
    tincan_testkit::corrupt_table(&dir.path().join("b").join("tincan.db"), "inbox");
    let home = Home::open(&dir.path().join("b")).unwrap();
    let mut b =
        Client::start_with(home, &relay.url, ClientOptions::default(), Transport::Http).unwrap();
    let stopped = tokio::time::timeout(T, async {
        let mut said = None;
        while let Some(e) = b.next_event().await {
            if let Event::Disconnected { reason } = e {
                said = Some(reason);
            }
        }
        said
    })
    .await
    .expect("the client stopped instead of retrying");
    assert!(
        stopped.unwrap().contains("cannot store messages"),
        "the reason is reported"
    );
    assert!(matches!(b.state(), ConnState::Failed(_)));
    relay.stop().await;
}
