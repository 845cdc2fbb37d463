//! The end-to-end payload: what an Olm message decrypts to.
//!
//! ```text
//! version u8 (=1) | kind u8 | from [32] | to [32] | id [16] | sent_at u64 (unix ms)
//! | body: u32 length + bytes | zero padding up to the padded size
//! ```
//!
//! Sender and recipient ids are inside the ciphertext, so a relay cannot re-address a message and a
//! peer cannot claim to be someone else. The whole plaintext is padded with zeros to [`padded_len`]:
//! at least [`MIN_PADDED`] bytes, then Padmé (Nikitin et al., "Reducing Metadata Leakage from
//! Encrypted Files and Communication with PURBs", PETS 2019): a length with a binary exponent `E`
//! keeps only its top `floor(log2 E) + 1` bits, so a relay learns O(log log L) bits of the length
//! and the overhead is at most 12%. (Version 1 padded to 256/1K/4K/16K/64K buckets, which cost up
//! to 4x: a 1 KiB text travelled as 4 KiB. Receivers accept any amount of zero padding, so both
//! interoperate.)

use std::fmt;

use crate::codec::{DecodeError, Reader, Writer};
use crate::ids::{InviteId, MessageId, PeerId};

const VERSION: u8 = 1;
const KIND_JOIN: u8 = 1;
const KIND_TEXT: u8 = 2;
const HEADER: usize = 1 + 1 + 32 + 32 + 16 + 8 + 4;

/// The smallest padded plaintext: every short message looks the same.
pub const MIN_PADDED: usize = 256;
/// The largest padded plaintext.
pub const MAX_PADDED: usize = 65536;
/// The longest text a message may carry, in bytes of UTF-8.
pub const MAX_TEXT: usize = MAX_PADDED - HEADER;

/// The body of an envelope.
#[derive(Clone, PartialEq, Eq)]
pub enum Body {
    /// The accepter's first message: proves it held the invite and binds its keys.
    Join(JoinBody),
    /// A text message.
    Text(String),
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Join(j) => f.debug_tuple("Join").field(&j.invite_id).finish(),
            // Plaintext never reaches Debug output (and so never a log line).
            Body::Text(t) => write!(f, "Text({} bytes)", t.len()),
        }
    }
}

/// What an accepter sends with its first message.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct JoinBody {
    /// The invite being used.
    pub invite_id: InviteId,
    /// The accepter's Curve25519 identity key.
    pub curve25519: [u8; 32],
    /// Ed25519 signature by the accepter over [`crate::labels::JOIN`] || [`JoinBody::signed_part`].
    pub signature: [u8; 64],
}

impl JoinBody {
    /// The bytes the accepter signs: invite id, inviter id, accepter's Curve25519 key.
    pub fn signed_part(invite_id: &InviteId, inviter: &PeerId, curve25519: &[u8; 32]) -> Vec<u8> {
        let mut w = Writer::with_capacity(80);
        w.raw(invite_id.as_bytes())
            .raw(inviter.as_bytes())
            .raw(curve25519);
        w.into_bytes()
    }
}

/// A decrypted message with its bound metadata.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Envelope {
    /// The sender.
    pub from: PeerId,
    /// The intended recipient.
    pub to: PeerId,
    /// The sender-chosen random message id.
    pub id: MessageId,
    /// When the sender sealed it, unix milliseconds (the sender's clock).
    pub sent_at: u64,
    /// The content.
    pub body: Body,
}

/// The padded size for a plaintext of `len` bytes (Padmé, at least [`MIN_PADDED`]), or `None`
/// if it is larger than [`MAX_PADDED`].
pub fn padded_len(len: usize) -> Option<usize> {
    if len > MAX_PADDED {
        return None;
    }
    if len <= MIN_PADDED {
        return Some(MIN_PADDED);
    }
    let e = usize::BITS - 1 - len.leading_zeros(); // floor(log2 len), >= 8 here
    let s = u32::BITS - e.leading_zeros(); // floor(log2 e) + 1
    let mask = (1usize << (e - s)) - 1;
    Some((len + mask) & !mask)
}

impl Envelope {
    /// Encodes and pads. Fails only if the body is larger than [`MAX_TEXT`].
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        let (kind, body): (u8, Vec<u8>) = match &self.body {
            Body::Join(j) => {
                let mut w = Writer::with_capacity(112);
                w.raw(j.invite_id.as_bytes())
                    .raw(&j.curve25519)
                    .raw(&j.signature);
                (KIND_JOIN, w.into_bytes())
            }
            Body::Text(t) => (KIND_TEXT, t.as_bytes().to_vec()),
        };
        let len = HEADER + body.len();
        let padded = padded_len(len).ok_or(DecodeError::TooLong {
            what: "message",
            len,
            max: MAX_TEXT + HEADER,
        })?;
        let mut w = Writer::with_capacity(padded);
        w.u8(VERSION)
            .u8(kind)
            .raw(self.from.as_bytes())
            .raw(self.to.as_bytes())
            .raw(self.id.as_bytes())
            .u64(self.sent_at)
            .bytes32(&body);
        let mut out = w.into_bytes();
        out.resize(padded, 0);
        Ok(out)
    }

    /// Decodes a padded plaintext. Padding must be zeros; anything else is an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        if r.u8("envelope version")? != VERSION {
            return Err(DecodeError::Invalid("envelope version"));
        }
        let kind = r.u8("envelope kind")?;
        let from = PeerId::from_bytes(r.array("from")?);
        let to = PeerId::from_bytes(r.array("to")?);
        let id = MessageId::from_bytes(r.array("message id")?);
        let sent_at = r.u64("sent_at")?;
        let raw = r.bytes32("body", MAX_TEXT)?;
        let body = match kind {
            KIND_JOIN => {
                let mut b = Reader::new(raw);
                let join = JoinBody {
                    invite_id: InviteId::from_bytes(b.array("invite id")?),
                    curve25519: b.array("curve25519 key")?,
                    signature: b.array("join signature")?,
                };
                b.finish()?;
                Body::Join(join)
            }
            KIND_TEXT => Body::Text(
                String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::NotUtf8("text"))?,
            ),
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "envelope kind",
                    tag,
                });
            }
        };
        if r.rest().iter().any(|b| *b != 0) {
            return Err(DecodeError::Invalid("padding"));
        }
        Ok(Self {
            from,
            to,
            id,
            sent_at,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(text: &str) -> Envelope {
        Envelope {
            from: PeerId::from_bytes([1; 32]),
            to: PeerId::from_bytes([2; 32]),
            id: MessageId::from_bytes([3; 16]),
            sent_at: 42,
            body: Body::Text(text.into()),
        }
    }

    #[test]
    fn pads_with_padme() {
        assert_eq!(env("").encode().unwrap().len(), 256);
        assert_eq!(env("hello").encode().unwrap().len(), 256);
        // 94 header bytes + 1024 = 1118: exponent 10, keep 4 bits, round up to a multiple of 64.
        assert_eq!(env(&"x".repeat(1024)).encode().unwrap().len(), 1152);
        assert_eq!(env(&"x".repeat(MAX_TEXT)).encode().unwrap().len(), 65536);
        assert!(env(&"x".repeat(MAX_TEXT + 1)).encode().is_err());
        // Known Padmé values (the paper's definition), and the bounds it promises.
        for (len, want) in [
            (257, 272),
            (1000, 1024),
            (1025, 1088),
            (9999, 10240),
            (65535, 65536),
        ] {
            assert_eq!(padded_len(len), Some(want), "{len}");
        }
        let mut sizes = std::collections::BTreeSet::new();
        for len in 0..=MAX_PADDED {
            let p = padded_len(len).unwrap();
            assert!(p >= len && (MIN_PADDED..=MAX_PADDED).contains(&p));
            assert_eq!(padded_len(p), Some(p), "a padded size pads to itself");
            if len > MIN_PADDED {
                assert!((p - len) * 100 <= len * 12, "overhead over 12% at {len}");
            }
            sizes.insert(p);
        }
        assert_eq!(padded_len(MAX_PADDED + 1), None);
        // The relay can tell apart only this many sizes in all (8 per doubling; v1 buckets: 5).
        assert_eq!(sizes.len(), 129);
    }

    #[test]
    fn snapshot_layout() {
        let bytes = env("hi").encode().unwrap();
        let mut expect = vec![1u8, 2];
        expect.extend([1; 32]);
        expect.extend([2; 32]);
        expect.extend([3; 16]);
        expect.extend(42u64.to_be_bytes());
        expect.extend(2u32.to_be_bytes());
        expect.extend(b"hi");
        expect.resize(256, 0);
        assert_eq!(bytes, expect);
    }

    #[test]
    fn nonzero_padding_rejected() {
        let mut bytes = env("hi").encode().unwrap();
        *bytes.last_mut().unwrap() = 1;
        assert_eq!(
            Envelope::decode(&bytes),
            Err(DecodeError::Invalid("padding"))
        );
    }

    #[test]
    fn debug_hides_text() {
        let dbg = format!("{:?}", env("secret plan"));
        assert!(!dbg.contains("secret plan"));
    }
}
