//! The end-to-end payload: what an Olm message decrypts to.
//!
//! ```text
//! version u8 (=1) | kind u8 | from [32] | to [32] | id [16] | sent_at u64 (unix ms)
//! | body: u32 length + bytes | zero padding up to the padded size
//! ```
//!
//! Kinds: 1 join, 2 text, 3 join with feature bits (answer to a `tincan2.` invite), 4 batch
//! (several texts; sent only to a peer whose feature bits include [`crate::features::BATCH`]).
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
const KIND_JOIN_FEATURES: u8 = 3;
const KIND_BATCH: u8 = 4;
/// Bytes of an encoded envelope before its body.
pub const HEADER: usize = 1 + 1 + 32 + 32 + 16 + 8 + 4;
/// Bytes a batch adds for its first text (length) and the count of the others.
pub const BATCH_OVERHEAD: usize = 4 + 2;
/// Bytes a batch adds for each text after the first (id, sent_at, length).
pub const BATCH_ITEM_OVERHEAD: usize = 16 + 8 + 4;

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
    /// Several texts sealed together (one Olm message, one relay row). The first text has the
    /// envelope's id and `sent_at`; each other carries its own.
    Batch(Batch),
}

/// The texts of a [`Body::Batch`].
#[derive(Clone, PartialEq, Eq)]
pub struct Batch {
    /// The first text: its id and `sent_at` are the envelope's.
    pub first: String,
    /// The texts after it, in order.
    pub more: Vec<BatchItem>,
}

/// One text of a batch after the first.
#[derive(Clone, PartialEq, Eq)]
pub struct BatchItem {
    /// Its own sender-chosen random message id.
    pub id: MessageId,
    /// When the sender sealed it, unix milliseconds.
    pub sent_at: u64,
    /// The text.
    pub text: String,
}

impl Batch {
    /// The encoded size of a whole envelope carrying a batch of texts of these lengths (before
    /// padding), so a sender can cut its texts into batches that fit [`MAX_PADDED`].
    pub fn envelope_len(first: usize, more: impl IntoIterator<Item = usize>) -> usize {
        HEADER
            + BATCH_OVERHEAD
            + first
            + more
                .into_iter()
                .map(|l| BATCH_ITEM_OVERHEAD + l)
                .sum::<usize>()
    }
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Plaintext never reaches Debug output.
        write!(f, "Batch({} texts)", self.more.len() + 1)
    }
}

impl fmt::Debug for BatchItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BatchItem({:?}, {} bytes)", self.id, self.text.len())
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Join(j) => f.debug_tuple("Join").field(&j.invite_id).finish(),
            // Plaintext never reaches Debug output (and so never a log line).
            Body::Text(t) => write!(f, "Text({} bytes)", t.len()),
            Body::Batch(b) => b.fmt(f),
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
    /// The accepter's feature bits ([`crate::features`]): present (kind 3) only in answer to a
    /// `tincan2.` invite, which a version-1 inviter never hands out.
    pub features: Option<u32>,
    /// Ed25519 signature by the accepter over [`crate::labels::JOIN`] || [`JoinBody::signed_part`].
    pub signature: [u8; 64],
}

impl JoinBody {
    /// The bytes the accepter signs: invite id, inviter id, accepter's Curve25519 key, and the
    /// feature bits if it sends them.
    pub fn signed_part(
        invite_id: &InviteId,
        inviter: &PeerId,
        curve25519: &[u8; 32],
        features: Option<u32>,
    ) -> Vec<u8> {
        let mut w = Writer::with_capacity(84);
        w.raw(invite_id.as_bytes())
            .raw(inviter.as_bytes())
            .raw(curve25519);
        if let Some(bits) = features {
            w.u32(bits);
        }
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
                let mut w = Writer::with_capacity(116);
                w.raw(j.invite_id.as_bytes()).raw(&j.curve25519);
                if let Some(bits) = j.features {
                    w.u32(bits);
                }
                w.raw(&j.signature);
                let kind = match j.features {
                    Some(_) => KIND_JOIN_FEATURES,
                    None => KIND_JOIN,
                };
                (kind, w.into_bytes())
            }
            Body::Text(t) => (KIND_TEXT, t.as_bytes().to_vec()),
            Body::Batch(b) => {
                let len = Batch::envelope_len(b.first.len(), b.more.iter().map(|i| i.text.len()));
                let count = u16::try_from(b.more.len()).map_err(|_| DecodeError::TooLong {
                    what: "batch",
                    len,
                    max: MAX_PADDED,
                })?;
                let mut w = Writer::with_capacity(len - HEADER);
                w.bytes32(b.first.as_bytes()).u16(count);
                for item in &b.more {
                    w.raw(item.id.as_bytes())
                        .u64(item.sent_at)
                        .bytes32(item.text.as_bytes());
                }
                (KIND_BATCH, w.into_bytes())
            }
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
            KIND_JOIN | KIND_JOIN_FEATURES => {
                let mut b = Reader::new(raw);
                let invite_id = InviteId::from_bytes(b.array("invite id")?);
                let curve25519 = b.array("curve25519 key")?;
                let features = match kind {
                    KIND_JOIN_FEATURES => Some(b.u32("join features")?),
                    _ => None,
                };
                let join = JoinBody {
                    invite_id,
                    curve25519,
                    features,
                    signature: b.array("join signature")?,
                };
                b.finish()?;
                Body::Join(join)
            }
            KIND_TEXT => Body::Text(utf8(raw)?),
            KIND_BATCH => {
                let mut b = Reader::new(raw);
                let first = utf8(b.bytes32("batch text", MAX_TEXT)?)?;
                let count = b.u16("batch count")?;
                // Each further text takes at least BATCH_ITEM_OVERHEAD bytes: no allocation
                // larger than the input allows.
                let mut more =
                    Vec::with_capacity(usize::from(count).min(b.remaining() / BATCH_ITEM_OVERHEAD));
                for _ in 0..count {
                    more.push(BatchItem {
                        id: MessageId::from_bytes(b.array("batch message id")?),
                        sent_at: b.u64("batch sent_at")?,
                        text: utf8(b.bytes32("batch text", MAX_TEXT)?)?,
                    });
                }
                b.finish()?;
                Body::Batch(Batch { first, more })
            }
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

fn utf8(raw: &[u8]) -> Result<String, DecodeError> {
    String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::NotUtf8("text"))
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
        let dbg = format!("{:?}", batch(&["secret plan", "other secret"]));
        assert!(!dbg.contains("secret"), "{dbg}");
        assert!(dbg.contains("2 texts"), "{dbg}");
    }

    fn batch(texts: &[&str]) -> Envelope {
        let more = texts[1..]
            .iter()
            .enumerate()
            .map(|(i, t)| BatchItem {
                id: MessageId::from_bytes([10 + i as u8; 16]),
                sent_at: 100 + i as u64,
                text: (*t).to_string(),
            })
            .collect();
        Envelope {
            body: Body::Batch(Batch {
                first: texts[0].to_string(),
                more,
            }),
            ..env("")
        }
    }

    #[test]
    fn batch_layout_and_round_trip() {
        let e = batch(&["hi", "yo"]);
        let bytes = e.encode().unwrap();
        let mut expect = vec![1u8, 4];
        expect.extend([1; 32]);
        expect.extend([2; 32]);
        expect.extend([3; 16]);
        expect.extend(42u64.to_be_bytes());
        let body_len = BATCH_OVERHEAD + 2 + BATCH_ITEM_OVERHEAD + 2;
        expect.extend((body_len as u32).to_be_bytes());
        expect.extend(2u32.to_be_bytes());
        expect.extend(b"hi");
        expect.extend(1u16.to_be_bytes());
        expect.extend([10; 16]);
        expect.extend(100u64.to_be_bytes());
        expect.extend(2u32.to_be_bytes());
        expect.extend(b"yo");
        assert_eq!(
            Batch::envelope_len(2, [2]),
            expect.len(),
            "envelope_len counts every byte"
        );
        expect.resize(256, 0);
        assert_eq!(bytes, expect);
        assert_eq!(Envelope::decode(&bytes).unwrap(), e);

        // A batch of one (no further texts) and one that fills the largest envelope.
        let one = batch(&["only"]);
        assert_eq!(Envelope::decode(&one.encode().unwrap()).unwrap(), one);
        let n = (MAX_PADDED - HEADER - BATCH_OVERHEAD - 1000) / (BATCH_ITEM_OVERHEAD + 1000) + 1;
        let text = "z".repeat(1000);
        let texts = vec![text.as_str(); n];
        assert!(Batch::envelope_len(1000, vec![1000; n - 1]) <= MAX_PADDED);
        let full = batch(&texts);
        let bytes = full.encode().unwrap();
        assert_eq!(bytes.len(), MAX_PADDED);
        assert_eq!(Envelope::decode(&bytes).unwrap(), full);
        let mut over = texts.clone();
        over.push(text.as_str());
        assert!(batch(&over).encode().is_err(), "too large for one envelope");
    }

    #[test]
    fn damaged_batches_are_refused() {
        let bytes = batch(&["hi", "yo"]).encode().unwrap();
        // Count says two more texts, but only one follows.
        let mut more = bytes.clone();
        more[HEADER + 4 + 2 + 1] = 2;
        assert!(Envelope::decode(&more).is_err());
        // A text that is not UTF-8.
        let mut bad = bytes.clone();
        bad[HEADER + 4] = 0xff;
        assert_eq!(Envelope::decode(&bad), Err(DecodeError::NotUtf8("text")));
        // A huge count does not allocate for it: the short input fails first.
        let mut huge = bytes;
        huge[HEADER + 4 + 2] = 0xff;
        huge[HEADER + 4 + 2 + 1] = 0xff;
        assert!(Envelope::decode(&huge).is_err());
    }

    #[test]
    fn a_join_with_features_is_kind_3_and_signs_them() {
        let join = |features| Envelope {
            body: Body::Join(JoinBody {
                invite_id: InviteId::from_bytes([5; 16]),
                curve25519: [6; 32],
                features,
                signature: [7; 64],
            }),
            ..env("")
        };
        let v1 = join(None).encode().unwrap();
        let v2 = join(Some(0x0102_0304)).encode().unwrap();
        assert_eq!(v1[1], 1);
        assert_eq!(v2[1], 3);
        assert_eq!(&v2[HEADER + 48..HEADER + 52], &[1, 2, 3, 4]);
        assert_eq!(Envelope::decode(&v1).unwrap(), join(None));
        assert_eq!(Envelope::decode(&v2).unwrap(), join(Some(0x0102_0304)));
        let (id, inviter) = (InviteId::from_bytes([5; 16]), PeerId::from_bytes([8; 32]));
        assert_ne!(
            JoinBody::signed_part(&id, &inviter, &[6; 32], Some(1)),
            JoinBody::signed_part(&id, &inviter, &[6; 32], Some(0)),
        );
        assert_eq!(
            JoinBody::signed_part(&id, &inviter, &[6; 32], None).len(),
            80,
            "a version-1 join signs what version 1 signed"
        );
    }
}
