use super::*;

const NOW: u64 = 1_800_000_000;

struct Pair {
    alice: Identity,
    bob: Identity,
    a: PeerSession,
    b: PeerSession,
}

fn pair() -> Pair {
    let mut alice = Identity::generate();
    let bob = Identity::generate();
    let draft = alice.create_invite("http://127.0.0.1:1", [5; 16], NOW + 10);
    let invite = Invite::parse(&draft.url(), NOW).unwrap();
    let (b, join) = PeerSession::accept_invite(&bob, &invite, [0; 16], NOW * 1000).unwrap();
    let pending = draft.pending().clone();
    let (a, env) = PeerSession::open_inbound(&mut alice, &pending, bob.peer_id(), &join).unwrap();
    assert!(matches!(env.body, Body::Join(_)));
    Pair { alice, bob, a, b }
}

fn text(s: &str) -> Body {
    Body::Text(s.into())
}

#[test]
fn both_directions() {
    let mut p = pair();
    let m = p.a.seal(&p.alice, text("to bob"), [1; 16], 1).unwrap();
    assert_eq!(
        p.b.open(&p.bob, p.alice.peer_id(), &m).unwrap().body,
        text("to bob")
    );
    let m = p.b.seal(&p.bob, text("to alice"), [2; 16], 2).unwrap();
    assert_eq!(
        p.a.open(&p.alice, p.bob.peer_id(), &m).unwrap().body,
        text("to alice")
    );
}

#[test]
fn replay_is_rejected() {
    let mut p = pair();
    let m = p.a.seal(&p.alice, text("once"), [1; 16], 1).unwrap();
    p.b.open(&p.bob, p.alice.peer_id(), &m).unwrap();
    assert!(matches!(
        p.b.open(&p.bob, p.alice.peer_id(), &m),
        Err(SessionError::Decrypt(_))
    ));
}

#[test]
fn tampering_is_rejected_everywhere() {
    let mut p = pair();
    let m = p.a.seal(&p.alice, text("x"), [1; 16], 1).unwrap();
    for i in 0..m.len() {
        let mut t = m.clone();
        t[i] ^= 0x80;
        assert!(p.b.open(&p.bob, p.alice.peer_id(), &t).is_err(), "byte {i}");
    }
    // The untouched message still decrypts: failed attempts did not break the session.
    assert_eq!(
        p.b.open(&p.bob, p.alice.peer_id(), &m).unwrap().body,
        text("x")
    );
}

#[test]
fn wrong_sender_and_wrong_session() {
    let mut p = pair();
    let m = p.a.seal(&p.alice, text("x"), [1; 16], 1).unwrap();
    let mallory = Identity::generate();
    assert!(matches!(
        p.b.open(&p.bob, mallory.peer_id(), &m),
        Err(SessionError::WrongSender)
    ));
    // A message from another pair's session does not open here.
    let mut q = pair();
    let other = q.a.seal(&q.alice, text("y"), [1; 16], 1).unwrap();
    assert!(p.b.open(&p.bob, p.alice.peer_id(), &other).is_err());
    let _ = q.b.open(&q.bob, q.alice.peer_id(), &other).unwrap();
}

/// The relay reports the right sender and the session decrypts it, but the sealed envelope
/// names someone else: the check after decryption refuses it (a peer cannot speak in a third
/// party's name over its own session).
#[test]
fn a_sealed_sender_that_is_not_the_session_peer_is_refused_after_decryption() {
    let mut p = pair();
    let mallory = Identity::generate();
    let m =
        p.a.seal(&mallory, text("I am mallory"), [7; 16], 1)
            .unwrap();
    assert!(matches!(
        p.b.open(&p.bob, p.alice.peer_id(), &m),
        Err(SessionError::WrongSender)
    ));
}

#[test]
fn wrong_recipient() {
    let mut p = pair();
    let m = p.a.seal(&p.alice, text("x"), [1; 16], 1).unwrap();
    let carol = Identity::generate();
    assert!(matches!(
        p.b.open(&carol, p.alice.peer_id(), &m),
        Err(SessionError::WrongRecipient)
    ));
}

#[test]
fn out_of_order_within_window() {
    let mut p = pair();
    let msgs: Vec<_> = (0..10u8)
        .map(|i| {
            p.a.seal(&p.alice, text(&i.to_string()), [i; 16], 1)
                .unwrap()
        })
        .collect();
    for i in [3usize, 0, 9, 1, 2, 8, 4, 7, 5, 6] {
        assert_eq!(
            p.b.open(&p.bob, p.alice.peer_id(), &msgs[i]).unwrap().body,
            text(&i.to_string())
        );
    }
}

#[test]
fn uninvited_session_start_is_refused() {
    let mut alice = Identity::generate();
    let draft = alice.create_invite("http://r", [5; 16], NOW + 10);
    let pending = draft.pending().clone();
    // Mallory knows Alice's public keys but not the invite: she makes her own one-time key up.
    let mallory = Identity::generate();
    let mut fake = draft.invite().clone();
    fake.one_time_key = Identity::generate().keys().curve25519;
    let (_, join) = PeerSession::accept_invite(&mallory, &fake, [0; 16], 1).unwrap();
    assert!(matches!(
        PeerSession::open_inbound(&mut alice, &pending, mallory.peer_id(), &join),
        Err(SessionError::NotInvited)
    ));
}

#[test]
fn invite_opens_exactly_one_session() {
    let mut alice = Identity::generate();
    let draft = alice.create_invite("http://r", [5; 16], NOW + 10);
    let pending = draft.pending().clone();
    let bob = Identity::generate();
    let carol = Identity::generate();
    let (_, j1) = PeerSession::accept_invite(&bob, draft.invite(), [0; 16], 1).unwrap();
    let (_, j2) = PeerSession::accept_invite(&carol, draft.invite(), [0; 16], 1).unwrap();
    PeerSession::open_inbound(&mut alice, &pending, bob.peer_id(), &j1).unwrap();
    // The one-time key is gone: the second accepter cannot open a session.
    assert!(matches!(
        PeerSession::open_inbound(&mut alice, &pending, carol.peer_id(), &j2),
        Err(SessionError::Open(_))
    ));
}

#[test]
fn impersonated_sender_in_join_is_refused_and_does_not_burn_invite() {
    let mut alice = Identity::generate();
    let draft = alice.create_invite("http://r", [5; 16], NOW + 10);
    let pending = draft.pending().clone();
    let bob = Identity::generate();
    let mallory = Identity::generate();
    let (_, join) = PeerSession::accept_invite(&bob, draft.invite(), [0; 16], 1).unwrap();
    // The relay (or a network attacker) claims the join came from Mallory.
    assert!(matches!(
        PeerSession::open_inbound(&mut alice, &pending, mallory.peer_id(), &join),
        Err(SessionError::WrongSender)
    ));
    // The real join still works afterwards.
    PeerSession::open_inbound(&mut alice, &pending, bob.peer_id(), &join).unwrap();
}

#[test]
fn session_pickle_round_trip() {
    let mut p = pair();
    let key = PickleKey::from_bytes([7; 32]);
    let stored = p.b.pickle(&key);
    let mut b2 = PeerSession::from_pickle(p.alice.peer_id(), &stored, &key).unwrap();
    let m =
        p.a.seal(&p.alice, text("after restart"), [1; 16], 1)
            .unwrap();
    assert_eq!(
        b2.open(&p.bob, p.alice.peer_id(), &m).unwrap().body,
        text("after restart")
    );
    assert!(
        PeerSession::from_pickle(p.alice.peer_id(), &stored, &PickleKey::from_bytes([1; 32]))
            .is_err()
    );
}

#[test]
fn a_batch_seals_and_opens_as_one_message() {
    let mut p = pair();
    let body = Body::Batch(crate::envelope::Batch {
        first: "one".into(),
        more: vec![crate::envelope::BatchItem {
            id: MessageId::from_bytes([9; 16]),
            sent_at: 7,
            text: "two".into(),
        }],
    });
    let m = p.a.seal(&p.alice, body.clone(), [1; 16], 5).unwrap();
    let env = p.b.open(&p.bob, p.alice.peer_id(), &m).unwrap();
    assert_eq!(env.body, body);
    assert_eq!(env.id, MessageId::from_bytes([1; 16]));
}

#[test]
fn features_travel_with_a_v2_invite_and_its_join_and_not_with_v1() {
    // Version 2: the invite carries the inviter's bits, the join the accepter's (signed).
    let mut alice = Identity::generate();
    let bob = Identity::generate();
    let draft = alice.create_invite("http://r", [5; 16], NOW + 10);
    let invite = Invite::parse(&draft.url(), NOW).unwrap();
    assert_eq!(invite.features, Some(crate::features::SUPPORTED));
    let (_, join) = PeerSession::accept_invite(&bob, &invite, [0; 16], 1).unwrap();
    let (_, env) =
        PeerSession::open_inbound(&mut alice, draft.pending(), bob.peer_id(), &join).unwrap();
    let Body::Join(j) = env.body else {
        panic!("not a join")
    };
    assert_eq!(j.features, Some(crate::features::SUPPORTED));
    // The bits are under the accepter's signature: other bits do not verify.
    let forged = JoinBody::signed_part(&j.invite_id, &alice.peer_id(), &j.curve25519, Some(0));
    assert!(identity::verify(&bob.peer_id(), labels::JOIN, &forged, &j.signature).is_err());

    // Version 1: no bits either way, and the join is the version-1 kind a v1 inviter reads.
    let mut carol = Identity::generate();
    let old = carol.create_invite_v1("http://r", [6; 16], NOW + 10);
    let invite = Invite::parse(&old.url(), NOW).unwrap();
    assert_eq!(invite.features, None);
    let (_, join) = PeerSession::accept_invite(&bob, &invite, [0; 16], 1).unwrap();
    let (_, env) =
        PeerSession::open_inbound(&mut carol, old.pending(), bob.peer_id(), &join).unwrap();
    let Body::Join(j) = env.body else {
        panic!("not a join")
    };
    assert_eq!(j.features, None);
}
