use proptest::prelude::*;

use super::*;

fn peer(b: u8) -> PeerId {
    PeerId::from_bytes([b; 32])
}

#[test]
fn snapshots() {
    assert_eq!(
        hex::encode(ClientFrame::Ack { seq: 258 }.encode()),
        "030000000000000102"
    );
    assert_eq!(
        hex::encode(ClientFrame::Ping { nonce: 1 }.encode()),
        "060000000000000001"
    );
    assert_eq!(
        hex::encode(
            ClientFrame::Send {
                req: 7,
                id: MessageId::from_bytes([0xaa; 16]),
                to: peer(0xbb),
                body: vec![1, 2]
            }
            .encode()
        ),
        format!(
            "0200000007{}{}00000002{}",
            "aa".repeat(16),
            "bb".repeat(32),
            "0102"
        )
    );
    assert_eq!(
        hex::encode(RelayFrame::Sent { req: 1, seq: 2 }.encode()),
        "83000000010000000000000002"
    );
    assert_eq!(
        hex::encode(
            RelayFrame::Error {
                req: 3,
                code: ErrorCode::QueueFull,
                retry_after_ms: 1000,
                message: "full".into()
            }
            .encode()
        ),
        "87000000030008000003e80004".to_string() + &hex::encode("full")
    );
    assert_eq!(
        hex::encode(
            RelayFrame::Challenge {
                version: 1,
                nonce: [0x11; 32]
            }
            .encode()
        ),
        format!("8101{}", "11".repeat(32))
    );
}

#[test]
fn trailing_bytes_rejected() {
    let mut b = ClientFrame::Ack { seq: 1 }.encode();
    b.push(0);
    assert_eq!(
        ClientFrame::decode(&b, MAX_BODY),
        Err(DecodeError::TrailingBytes(1))
    );
    let mut b = RelayFrame::Pong { nonce: 1 }.encode();
    b.push(0);
    assert_eq!(RelayFrame::decode(&b), Err(DecodeError::TrailingBytes(1)));
}

#[test]
fn oversized_body_rejected_before_copy() {
    let b = ClientFrame::Send {
        req: 1,
        id: MessageId::from_bytes([0; 16]),
        to: peer(1),
        body: vec![0; 100],
    }
    .encode();
    assert!(matches!(
        ClientFrame::decode(&b, 99),
        Err(DecodeError::TooLong { .. })
    ));
    assert!(ClientFrame::decode(&b, 100).is_ok());
}

#[test]
fn unknown_tags() {
    assert!(matches!(
        ClientFrame::decode(&[0x7f], MAX_BODY),
        Err(DecodeError::UnknownTag { .. })
    ));
    assert!(matches!(
        RelayFrame::decode(&[0x01]),
        Err(DecodeError::UnknownTag { .. })
    ));
    assert!(matches!(
        RelayFrame::decode(&[]),
        Err(DecodeError::Truncated { .. })
    ));
}

#[test]
fn error_codes_round_trip() {
    for n in 0..20u16 {
        assert_eq!(ErrorCode::from_u16(n).to_u16(), n);
    }
}

#[test]
fn debug_hides_bodies_and_secrets() {
    let f = ClientFrame::Send {
        req: 1,
        id: MessageId::from_bytes([0; 16]),
        to: peer(1),
        body: b"SECRETBODY".to_vec(),
    };
    assert!(!format!("{f:?}").contains("SECRETBODY"));
    assert!(!format!("{f:?}").contains("83"));
}

pub(crate) fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            any::<bool>()
        )
            .prop_map(|(p, s1, s2, receive)| {
                let mut signature = [0; 64];
                signature[..32].copy_from_slice(&s1);
                signature[32..].copy_from_slice(&s2);
                ClientFrame::Auth {
                    peer: PeerId::from_bytes(p),
                    signature,
                    receive,
                }
            }),
        (
            any::<u32>(),
            any::<[u8; 16]>(),
            any::<[u8; 32]>(),
            prop::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(req, id, to, body)| ClientFrame::Send {
                req,
                id: MessageId::from_bytes(id),
                to: PeerId::from_bytes(to),
                body
            }),
        any::<u64>().prop_map(|seq| ClientFrame::Ack { seq }),
        (any::<u32>(), any::<[u8; 16]>(), any::<u64>()).prop_map(|(req, id, expires_at)| {
            ClientFrame::RegisterInvite {
                req,
                id: InviteId::from_bytes(id),
                expires_at,
            }
        }),
        (any::<u32>(), any::<[u8; 16]>()).prop_map(|(req, id)| ClientFrame::ClaimInvite {
            req,
            id: InviteId::from_bytes(id)
        }),
        any::<u64>().prop_map(|nonce| ClientFrame::Ping { nonce }),
    ]
}

pub(crate) fn relay_frame() -> impl Strategy<Value = RelayFrame> {
    prop_oneof![
        (any::<u8>(), any::<[u8; 32]>())
            .prop_map(|(version, nonce)| RelayFrame::Challenge { version, nonce }),
        any::<[u8; 32]>().prop_map(|p| RelayFrame::AuthOk {
            peer: PeerId::from_bytes(p)
        }),
        (any::<u32>(), any::<u64>()).prop_map(|(req, seq)| RelayFrame::Sent { req, seq }),
        (
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<[u8; 16]>(),
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(seq, from, id, stored_at, body)| RelayFrame::Deliver {
                seq,
                from: PeerId::from_bytes(from),
                id: MessageId::from_bytes(id),
                stored_at,
                body
            }),
        any::<u32>().prop_map(|req| RelayFrame::InviteRegistered { req }),
        (any::<u32>(), any::<[u8; 32]>()).prop_map(|(req, p)| RelayFrame::InviteClaimed {
            req,
            inviter: PeerId::from_bytes(p)
        }),
        (any::<u32>(), 1u16..15, any::<u32>(), "[a-z ]{0,40}").prop_map(
            |(req, c, retry_after_ms, message)| RelayFrame::Error {
                req,
                code: ErrorCode::from_u16(c),
                retry_after_ms,
                message
            }
        ),
        any::<u64>().prop_map(|nonce| RelayFrame::Pong { nonce }),
    ]
}

proptest! {
    #[test]
    fn client_round_trip(f in client_frame()) {
        prop_assert_eq!(ClientFrame::decode(&f.encode(), MAX_BODY).unwrap(), f);
    }

    #[test]
    fn relay_round_trip(f in relay_frame()) {
        prop_assert_eq!(RelayFrame::decode(&f.encode()).unwrap(), f);
    }

    #[test]
    fn truncated_never_panics_and_fails(f in client_frame(), cut in any::<prop::sample::Index>()) {
        let b = f.encode();
        let n = cut.index(b.len());
        prop_assert!(ClientFrame::decode(&b[..n], MAX_BODY).is_err());
    }

    #[test]
    fn relay_truncated_fails(f in relay_frame(), cut in any::<prop::sample::Index>()) {
        let b = f.encode();
        let n = cut.index(b.len());
        prop_assert!(RelayFrame::decode(&b[..n]).is_err());
    }

    #[test]
    fn garbage_never_panics(b in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = ClientFrame::decode(&b, MAX_BODY);
        let _ = RelayFrame::decode(&b);
    }

    #[test]
    fn corrupted_never_panics(f in relay_frame(), i in any::<prop::sample::Index>(), x in 1u8..) {
        let mut b = f.encode();
        let i = i.index(b.len());
        b[i] ^= x;
        let _ = RelayFrame::decode(&b);
    }
}
