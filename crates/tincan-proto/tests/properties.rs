//! Property tests for the protocol types: round trips, and "damaged input never panics".
//!
//! Failing cases are saved to `proptest-regressions/properties.txt` (next to `Cargo.toml`) and
//! replayed first on every run; commit that file when it appears.

use data_encoding::BASE64URL_NOPAD;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use tincan_proto::envelope::{Batch, BatchItem, Body, Envelope, JoinBody, MAX_TEXT};
use tincan_proto::identity::Identity;
use tincan_proto::ids::{InviteId, MessageId, PeerId};
use tincan_proto::invite::{Invite, InviteError};
use tincan_proto::session::{self, PeerSession};

const NOW: u64 = 1_800_000_000;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/properties.txt"
        )))),
        ..ProptestConfig::default()
    }
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        // Up to 3000 chars of any width: crosses the 256, 1024 and 4096 byte buckets.
        prop::collection::vec(any::<char>(), 0..3000)
            .prop_map(|chars| Body::Text(chars.into_iter().collect())),
        (
            any::<[u8; 16]>(),
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            any::<Option<u32>>()
        )
            .prop_map(|(id, curve25519, s1, s2, features)| {
                let mut signature = [0; 64];
                signature[..32].copy_from_slice(&s1);
                signature[32..].copy_from_slice(&s2);
                Body::Join(JoinBody {
                    invite_id: InviteId::from_bytes(id),
                    curve25519,
                    features,
                    signature,
                })
            }),
        (
            any::<String>(),
            prop::collection::vec((any::<[u8; 16]>(), any::<u64>(), any::<String>()), 0..12)
        )
            .prop_map(|(first, more)| Body::Batch(Batch {
                first,
                more: more
                    .into_iter()
                    .map(|(id, sent_at, text)| BatchItem {
                        id: MessageId::from_bytes(id),
                        sent_at,
                        text,
                    })
                    .collect(),
            })),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        any::<[u8; 16]>(),
        any::<u64>(),
        body(),
    )
        .prop_map(|(from, to, id, sent_at, body)| Envelope {
            from: PeerId::from_bytes(from),
            to: PeerId::from_bytes(to),
            id: MessageId::from_bytes(id),
            sent_at,
            body,
        })
}

/// Relay URLs as people write them: scheme, host, optional port and path, maybe a trailing slash.
fn relay_url() -> impl Strategy<Value = String> {
    "https?://[a-z0-9][a-z0-9.-]{0,30}(:[0-9]{1,5})?(/[a-zA-Z0-9._~-]{1,12}){0,3}/?"
}

/// A pair of sessions that have completed the invite handshake, as session/tests.rs builds them.
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
    let invite = Invite::parse(&draft.url(), NOW).expect("fresh invite parses");
    let (b, join) =
        PeerSession::accept_invite(&bob, &invite, [0; 16], NOW * 1000).expect("accept invite");
    let pending = draft.pending().clone();
    let (a, _) = PeerSession::open_inbound(&mut alice, &pending, bob.peer_id(), &join)
        .expect("inviter opens the session");
    Pair { alice, bob, a, b }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn envelope_round_trip(env in envelope()) {
        let bytes = env.encode().expect("bodies here are under MAX_TEXT");
        prop_assert_eq!(Some(bytes.len()), tincan_proto::envelope::padded_len(bytes.len()));
        prop_assert_eq!(Envelope::decode(&bytes).expect("own encoding decodes"), env);
    }

    #[test]
    fn truncated_envelope_never_panics(env in envelope(), cut in any::<prop::sample::Index>()) {
        let bytes = env.encode().expect("under MAX_TEXT");
        let n = cut.index(bytes.len());
        // Cutting only zero padding leaves a valid envelope; cutting anything else is an error.
        if let Ok(got) = Envelope::decode(&bytes[..n]) {
            prop_assert_eq!(got, env);
        }
    }

    #[test]
    fn corrupted_envelope_never_panics(
        env in envelope(),
        i in any::<prop::sample::Index>(),
        x in 1u8..,
    ) {
        let mut bytes = env.encode().expect("under MAX_TEXT");
        let i = i.index(bytes.len());
        bytes[i] ^= x;
        if let Ok(got) = Envelope::decode(&bytes) {
            // Whatever decodes must re-encode to something that decodes the same.
            let again = got.encode().expect("a decoded envelope is under MAX_TEXT");
            prop_assert_eq!(Envelope::decode(&again).expect("re-encoding decodes"), got);
        }
    }

    #[test]
    fn envelope_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::decode(&bytes);
    }

    #[test]
    fn invite_parse_arbitrary_text_never_panics(text in any::<String>(), now in any::<u64>()) {
        let _ = Invite::parse(&text, now);
        let _ = Invite::parse(&format!("http://relay.example/invite#{text}"), now);
    }

    #[test]
    fn invite_parse_arbitrary_bytes_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
        now in any::<u64>(),
    ) {
        let _ = Invite::parse(&String::from_utf8_lossy(&bytes), now);
        let token = format!("tincan1.{}", BASE64URL_NOPAD.encode(&bytes));
        // No key signed these bytes, so nothing may parse.
        prop_assert!(Invite::parse(&token, now).is_err());
        let url = format!("http://relay.example/invite#{token}");
        prop_assert!(Invite::parse(&url, now).is_err());
    }
}

proptest! {
    // Each case generates a fresh identity (an Olm account), so fewer cases.
    #![proptest_config(config(64))]

    #[test]
    fn invite_round_trip(
        url in relay_url(),
        id in any::<[u8; 16]>(),
        ttl in 1u64..=u64::from(u32::MAX),
    ) {
        let mut inviter = Identity::generate();
        let draft = inviter.create_invite(&url, id, NOW + ttl);
        let parsed = Invite::parse(&draft.url(), NOW).expect("fresh invite parses");
        prop_assert_eq!(&parsed, draft.invite());
        prop_assert_eq!(parsed.expires_at, NOW + ttl);
        prop_assert_eq!(parsed.inviter.ed25519, inviter.peer_id());
        prop_assert_eq!(
            Invite::parse(&draft.url(), NOW + ttl),
            Err(InviteError::Expired { expired_at: NOW + ttl, now: NOW + ttl })
        );
    }

    #[test]
    fn sealed_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(msg) = session::parse_sealed(&bytes) {
            let (kind, body) = msg.to_parts();
            let mut again = vec![u8::try_from(kind).expect("message types are 0 or 1")];
            again.extend_from_slice(&body);
            prop_assert_eq!(session::parse_sealed(&again).expect("re-encoding parses"), msg);
        }
        let _ = session::session_start_key(&bytes);
    }

    #[test]
    fn out_of_order_within_window_decrypts(
        order in (1usize..=30).prop_flat_map(|n| Just((0..n).collect::<Vec<_>>()).prop_shuffle()),
    ) {
        let mut p = pair();
        let sealed: Vec<Vec<u8>> = (0..order.len())
            .map(|i| {
                let body = Body::Text(format!("message {i}"));
                let id = [u8::try_from(i).expect("at most 30 messages"); 16];
                p.a.seal(&p.alice, body, id, NOW * 1000).expect("seal")
            })
            .collect();
        for i in order {
            let env = p.b.open(&p.bob, p.alice.peer_id(), &sealed[i]).expect("opens out of order");
            prop_assert_eq!(env.body, Body::Text(format!("message {i}")));
            // A message already opened does not open twice.
            prop_assert!(p.b.open(&p.bob, p.alice.peer_id(), &sealed[i]).is_err());
        }
    }
}

#[test]
fn longest_text_round_trips() {
    let env = Envelope {
        from: PeerId::from_bytes([1; 32]),
        to: PeerId::from_bytes([2; 32]),
        id: MessageId::from_bytes([3; 16]),
        sent_at: 4,
        body: Body::Text("é".repeat(MAX_TEXT / 2)),
    };
    let bytes = env.encode().expect("exactly MAX_TEXT bytes fits");
    assert_eq!(Envelope::decode(&bytes).expect("decodes"), env);
}
