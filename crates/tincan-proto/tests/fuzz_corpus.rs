//! Re-runs the committed fuzz corpora (`fuzz/corpus/<target>/`) through the fuzz targets' own
//! checks, on stable Rust, as part of `cargo test` (vodozemac's `run_corpus` does the same).
//!
//! Files named `seed-*` are valid inputs made by [`write_seed_corpus`] with the real encoders; they
//! must keep decoding, so a format change that strands them fails here. Anything else (inputs a
//! fuzzer found) only has to not panic and to round-trip if it decodes.
//!
//! Regenerate the seeds with:
//! `cargo test -p tincan-proto --test fuzz_corpus -- --ignored write_seed_corpus`

use std::fs;
use std::path::{Path, PathBuf};

use tincan_proto::envelope::{Batch, BatchItem, Body, Envelope, JoinBody};
use tincan_proto::frame::{ClientFrame, ErrorCode, RelayFrame};
use tincan_proto::identity::Identity;
use tincan_proto::ids::{InviteId, MessageId, PeerId};
use tincan_proto::invite::Invite;
use tincan_proto::session::PeerSession;

#[path = "../../../fuzz/src/lib.rs"]
mod checks;

type Check = fn(&[u8]) -> bool;

const TARGETS: [(&str, Check); 5] = [
    ("invite", checks::invite),
    ("client_frame", checks::client_frame),
    ("relay_frame", checks::relay_frame),
    ("envelope", checks::envelope),
    ("sealed", checks::sealed),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

fn run_corpus(target: &str, check: Check) {
    let dir = corpus_dir(target);
    let entries = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz corpus {} is missing: {e}", dir.display()));
    let mut files = 0;
    for entry in entries {
        let path = entry.expect("readable corpus entry").path();
        if !path.is_file() {
            continue;
        }
        let data = fs::read(&path).expect("readable corpus file");
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let decoded = check(&data);
        assert!(
            decoded || !name.starts_with("seed-"),
            "{target}: seed {name} no longer decodes"
        );
        files += 1;
    }
    assert!(files > 0, "fuzz corpus {} is empty", dir.display());
}

#[test]
fn invite_corpus() {
    run_corpus(TARGETS[0].0, TARGETS[0].1);
}

#[test]
fn client_frame_corpus() {
    run_corpus(TARGETS[1].0, TARGETS[1].1);
}

#[test]
fn relay_frame_corpus() {
    run_corpus(TARGETS[2].0, TARGETS[2].1);
}

#[test]
fn envelope_corpus() {
    run_corpus(TARGETS[3].0, TARGETS[3].1);
}

#[test]
fn sealed_corpus() {
    run_corpus(TARGETS[4].0, TARGETS[4].1);
}

fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let peer = |b: u8| PeerId::from_bytes([b; 32]);

    // Invites: the URL form and the bare token, expiring long after `checks::NOW`.
    let mut alice = Identity::generate();
    let bob = Identity::generate();
    let expires = checks::NOW + 100 * 365 * 86_400;
    let draft = alice.create_invite("http://127.0.0.1:8787", [7; 16], expires);
    let url = draft.url();
    let token = url
        .split_once('#')
        .map(|(_, t)| t.to_owned())
        .unwrap_or_default();
    out.push(("invite", "url", url.clone().into_bytes()));
    out.push(("invite", "token", token.into_bytes()));
    let other = alice.create_invite("https://relay.example.com/tincan/", [8; 16], expires);
    out.push(("invite", "https-path", other.url().into_bytes()));
    let v1 = alice.create_invite_v1("http://127.0.0.1:8787", [9; 16], expires);
    out.push(("invite", "v1-url", v1.url().into_bytes()));

    let client = [
        (
            "auth",
            ClientFrame::Auth {
                peer: peer(1),
                signature: [2; 64],
                receive: true,
            },
        ),
        (
            "send",
            ClientFrame::Send {
                req: 1,
                id: MessageId::from_bytes([3; 16]),
                to: peer(4),
                body: b"sealed".to_vec(),
            },
        ),
        ("ack", ClientFrame::Ack { seq: 5 }),
        (
            "register-invite",
            ClientFrame::RegisterInvite {
                req: 2,
                id: InviteId::from_bytes([6; 16]),
                expires_at: expires,
            },
        ),
        (
            "claim-invite",
            ClientFrame::ClaimInvite {
                req: 3,
                id: InviteId::from_bytes([6; 16]),
            },
        ),
        ("ping", ClientFrame::Ping { nonce: 7 }),
    ];
    for (name, f) in client {
        out.push(("client_frame", name, f.encode()));
    }

    let relay = [
        (
            "challenge",
            RelayFrame::Challenge {
                version: 1,
                nonce: [9; 32],
            },
        ),
        ("auth-ok", RelayFrame::AuthOk { peer: peer(1) }),
        ("sent", RelayFrame::Sent { req: 1, seq: 10 }),
        (
            "deliver",
            RelayFrame::Deliver {
                seq: 10,
                from: peer(1),
                id: MessageId::from_bytes([3; 16]),
                stored_at: 11,
                body: b"sealed".to_vec(),
            },
        ),
        ("invite-registered", RelayFrame::InviteRegistered { req: 2 }),
        (
            "invite-claimed",
            RelayFrame::InviteClaimed {
                req: 3,
                inviter: peer(1),
            },
        ),
        (
            "error",
            RelayFrame::Error {
                req: 4,
                code: ErrorCode::QueueFull,
                retry_after_ms: 1000,
                message: "queue full".into(),
            },
        ),
        ("pong", RelayFrame::Pong { nonce: 7 }),
    ];
    for (name, f) in relay {
        out.push(("relay_frame", name, f.encode()));
    }

    let env = |body| Envelope {
        from: peer(1),
        to: peer(2),
        id: MessageId::from_bytes([3; 16]),
        sent_at: 4,
        body,
    };
    let envelopes = [
        ("text", env(Body::Text("hello".into()))),
        ("text-1k", env(Body::Text("x".repeat(300)))),
        (
            "join",
            env(Body::Join(JoinBody {
                invite_id: InviteId::from_bytes([5; 16]),
                curve25519: [6; 32],
                features: None,
                signature: [7; 64],
            })),
        ),
        (
            "join-features",
            env(Body::Join(JoinBody {
                invite_id: InviteId::from_bytes([5; 16]),
                curve25519: [6; 32],
                features: Some(1),
                signature: [7; 64],
            })),
        ),
        (
            "batch",
            env(Body::Batch(Batch {
                first: "one".into(),
                more: vec![
                    BatchItem {
                        id: MessageId::from_bytes([8; 16]),
                        sent_at: 5,
                        text: "two".into(),
                    },
                    BatchItem {
                        id: MessageId::from_bytes([9; 16]),
                        sent_at: 6,
                        text: "x".repeat(300),
                    },
                ],
            })),
        ),
    ];
    for (name, e) in envelopes {
        out.push((
            "envelope",
            name,
            e.encode().expect("small envelope encodes"),
        ));
    }

    // Sealed: a real pre-key (join) message and a normal reply.
    let invite = Invite::parse(&url, checks::NOW).expect("seed invite parses");
    let (_, join) = PeerSession::accept_invite(&bob, &invite, [1; 16], 1).expect("accept");
    let (mut a, _) = PeerSession::open_inbound(&mut alice, draft.pending(), bob.peer_id(), &join)
        .expect("open inbound");
    let reply = a
        .seal(&alice, Body::Text("hi".into()), [2; 16], 2)
        .expect("seal");
    out.push(("sealed", "prekey", join));
    out.push(("sealed", "normal", reply));

    out
}

/// Writes `fuzz/corpus/<target>/seed-<name>` for every seed. Invites and sealed messages use fresh
/// keys, so their bytes change on every run; commit them only when the format changes.
#[test]
#[ignore = "writes files; run by hand to regenerate the seed corpus"]
fn write_seed_corpus() {
    for (target, name, data) in seeds() {
        let dir = corpus_dir(target);
        fs::create_dir_all(&dir).expect("create corpus dir");
        let check = TARGETS
            .iter()
            .find(|(t, _)| *t == target)
            .map(|(_, c)| *c)
            .expect("known target");
        assert!(check(&data), "{target}/{name} must decode");
        fs::write(dir.join(format!("seed-{name}")), data).expect("write seed");
    }
}
