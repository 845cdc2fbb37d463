//! The checks each fuzz target runs on one input, in one place.
//!
//! The fuzz targets call these, and `crates/tincan-proto/tests/fuzz_corpus.rs` includes this file
//! (`#[path]`) to re-run the committed corpus through exactly the same checks on stable Rust.
//! Each function returns whether the input decoded, and panics if a decoder panics or a round
//! trip fails. It may only use `std` and `tincan_proto`.
//!
//! Under `cargo fuzz`, vodozemac is built with `cfg(fuzzing)`, which makes Ed25519 verification
//! always succeed, so the fuzzer reaches past invite signatures into the rest of the parser.

use tincan_proto::envelope::Envelope;
use tincan_proto::frame::{ClientFrame, MAX_BODY, RelayFrame};
use tincan_proto::invite::{Invite, InviteError, MAX_RELAY_URL};
use tincan_proto::session;

/// The "current time" invites are parsed at; seed invites expire well after it.
pub const NOW: u64 = 1_700_000_000;

/// `Invite::parse` on the input read as (lossy) UTF-8.
///
/// There is no public invite encoder (an invite is re-signed, not re-encoded), so the round trip
/// checked is between the two textual forms: the bare `tincan2.` token decodes to the same invite
/// as the full URL. Expiry is the only time-dependent check.
pub fn invite(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let Ok(inv) = Invite::parse(&text, NOW) else {
        return false;
    };
    assert!(inv.expires_at > NOW);
    assert!(!inv.relay_url.is_empty() && inv.relay_url.len() <= MAX_RELAY_URL);
    assert_eq!(Invite::parse(&text, 0).as_ref(), Ok(&inv));
    assert_eq!(
        Invite::parse(&text, inv.expires_at),
        Err(InviteError::Expired {
            expired_at: inv.expires_at,
            now: inv.expires_at,
        })
    );
    if let Some((_, token)) = text.trim().split_once('#') {
        assert_eq!(Invite::parse(token, NOW).as_ref(), Ok(&inv));
    }
    true
}

/// `ClientFrame::decode`. The codec is canonical, so a decoded frame re-encodes to the input.
pub fn client_frame(data: &[u8]) -> bool {
    let Ok(frame) = ClientFrame::decode(data, MAX_BODY) else {
        return false;
    };
    let bytes = frame.encode();
    assert_eq!(bytes, data);
    assert_eq!(ClientFrame::decode(&bytes, MAX_BODY), Ok(frame));
    true
}

/// `RelayFrame::decode`. The codec is canonical, so a decoded frame re-encodes to the input.
pub fn relay_frame(data: &[u8]) -> bool {
    let Ok(frame) = RelayFrame::decode(data) else {
        return false;
    };
    let bytes = frame.encode();
    assert_eq!(bytes, data);
    assert_eq!(RelayFrame::decode(&bytes), Ok(frame));
    true
}

/// `Envelope::decode`. Decoding accepts any run of zero padding, so only
/// decode(encode(x)) == x holds, not byte equality with the input.
pub fn envelope(data: &[u8]) -> bool {
    let Ok(env) = Envelope::decode(data) else {
        return false;
    };
    let bytes = env
        .encode()
        .expect("a decoded envelope is within MAX_TEXT, so it encodes");
    assert_eq!(
        tincan_proto::envelope::padded_len(bytes.len()),
        Some(bytes.len())
    );
    assert_eq!(Envelope::decode(&bytes), Ok(env));
    true
}

/// `session::parse_sealed` and `session::session_start_key`. Olm's message encoding is not
/// canonical (varints, skipped fields), so only decode(encode(x)) == x holds.
pub fn sealed(data: &[u8]) -> bool {
    let start_key = session::session_start_key(data);
    let Ok(msg) = session::parse_sealed(data) else {
        assert_eq!(start_key, None);
        return false;
    };
    let (kind, body) = msg.to_parts();
    let mut bytes = vec![u8::try_from(kind).expect("Olm message types are 0 and 1")];
    bytes.extend_from_slice(&body);
    let again = session::parse_sealed(&bytes).expect("a re-encoded Olm message parses");
    assert_eq!(again, msg);
    assert_eq!(session::session_start_key(&bytes), start_key);
    true
}
