//! Identifiers: peers, messages and invites, and the fingerprint humans compare.

use std::fmt;
use std::str::FromStr;

use data_encoding::BASE32_NOPAD;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::labels;

/// Why a textual id could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdError {
    /// The text is not the expected encoding or length.
    #[error("not a valid {kind}: expected {expected}")]
    Malformed {
        /// What was being parsed.
        kind: &'static str,
        /// What a valid value looks like.
        expected: &'static str,
    },
}

/// An agent's public identity: its Ed25519 public key. Shown as 52 lowercase base32 characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId([u8; 32]);

impl PeerId {
    /// Wraps raw Ed25519 public key bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw Ed25519 public key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The Ed25519 public key, if the bytes are a valid point.
    pub fn ed25519(&self) -> Result<vodozemac::Ed25519PublicKey, IdError> {
        vodozemac::Ed25519PublicKey::from_slice(&self.0).map_err(|_| IdError::Malformed {
            kind: "peer id",
            expected: "an Ed25519 public key",
        })
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE32_NOPAD.encode(&self.0).to_ascii_lowercase())
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

impl FromStr for PeerId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = IdError::Malformed {
            kind: "peer id",
            expected: "52 base32 characters",
        };
        if s.len() != 52 {
            return Err(err);
        }
        let bytes = BASE32_NOPAD
            .decode(s.to_ascii_uppercase().as_bytes())
            .map_err(|_| err.clone())?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| err)?;
        Ok(Self(arr))
    }
}

macro_rules! random_id {
    ($name:ident, $kind:literal) => {
        #[doc = concat!("A random 16-byte ", $kind, " id, shown as 32 hex characters.")]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 16]);

        impl $name {
            /// Wraps 16 bytes (the caller draws them from a CSPRNG).
            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for b in self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let err = IdError::Malformed {
                    kind: $kind,
                    expected: "32 hex characters",
                };
                if s.len() != 32 {
                    return Err(err);
                }
                let bytes = data_encoding::HEXLOWER_PERMISSIVE
                    .decode(s.as_bytes())
                    .map_err(|_| err.clone())?;
                Ok(Self(bytes.try_into().map_err(|_| err)?))
            }
        }
    };
}

random_id!(MessageId, "message id");
random_id!(InviteId, "invite id");

/// A fingerprint of an identity (both public keys) that two humans read to each other out of
/// band: 6 groups of 5 digits, like a safety number.
pub fn fingerprint(ed25519: &[u8; 32], curve25519: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(labels::FINGERPRINT);
    h.update(ed25519);
    h.update(curve25519);
    let digest = h.finalize();
    let mut groups = Vec::with_capacity(6);
    // 6 groups of 5 digits from 6 chunks of 5 bytes, each reduced mod 100000.
    for chunk in digest.chunks(5).take(6) {
        let mut v: u64 = 0;
        for b in chunk {
            v = (v << 8) | u64::from(*b);
        }
        groups.push(format!("{:05}", v % 100_000));
    }
    groups.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_round_trips_and_rejects_garbage() {
        let id = PeerId::from_bytes([0xab; 32]);
        let s = id.to_string();
        assert_eq!(s.len(), 52);
        assert_eq!(s.parse::<PeerId>().unwrap(), id);
        assert!("abc".parse::<PeerId>().is_err());
        assert!("1".repeat(52).parse::<PeerId>().is_err());
    }

    #[test]
    fn message_id_round_trips() {
        let id = MessageId::from_bytes([1; 16]);
        assert_eq!(id.to_string(), "01".repeat(16));
        assert_eq!(id.to_string().parse::<MessageId>().unwrap(), id);
        assert!("zz".repeat(16).parse::<MessageId>().is_err());
    }

    #[test]
    fn fingerprint_is_stable_and_key_dependent() {
        let a = fingerprint(&[1; 32], &[2; 32]);
        assert_eq!(a, fingerprint(&[1; 32], &[2; 32]));
        assert_ne!(a, fingerprint(&[1; 32], &[3; 32]));
        assert_eq!(a.split(' ').count(), 6);
    }
}
