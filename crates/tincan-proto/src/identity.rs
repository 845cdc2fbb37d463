//! An agent's long-term identity: a vodozemac Olm account holding an Ed25519 signing key (the
//! [`PeerId`]) and the Curve25519 key that sessions are built on.

use std::fmt;

use thiserror::Error;
use vodozemac::olm::{Account, AccountPickle};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::ids::{self, InviteId, PeerId};
use crate::invite::{InviteDraft, PendingInvite};
use crate::labels;

/// Why a signature or a stored identity was rejected.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// The signature does not verify under the claimed key for the given label and message.
    #[error("signature does not verify")]
    BadSignature,
    /// The public key bytes are not a valid Ed25519 key.
    #[error("invalid Ed25519 public key")]
    BadKey,
    /// The encrypted account pickle could not be opened (wrong key or corrupted data).
    #[error("stored identity cannot be decrypted: wrong key file or corrupted store")]
    Pickle,
}

/// The 32-byte key that encrypts pickled (stored) account and session state. Zeroed on drop;
/// never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PickleKey([u8; 32]);

impl PickleKey {
    /// Wraps key bytes drawn from a CSPRNG.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key bytes, for the storage layer only.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for PickleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PickleKey(..)")
    }
}

/// The public half of an identity.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct IdentityKeys {
    /// The Ed25519 key: the agent's id.
    pub ed25519: PeerId,
    /// The Curve25519 key Olm sessions are built on.
    pub curve25519: [u8; 32],
}

impl IdentityKeys {
    /// The fingerprint two humans compare out of band.
    pub fn fingerprint(&self) -> String {
        ids::fingerprint(self.ed25519.as_bytes(), &self.curve25519)
    }
}

/// An agent's secret identity. Its `Debug` shows only the public id.
pub struct Identity {
    account: Account,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Generates a fresh identity (vodozemac draws the keys from the OS RNG).
    pub fn generate() -> Self {
        Self {
            account: Account::new(),
        }
    }

    /// This identity's public keys.
    pub fn keys(&self) -> IdentityKeys {
        IdentityKeys {
            ed25519: PeerId::from_bytes(*self.account.ed25519_key().as_bytes()),
            curve25519: self.account.curve25519_key().to_bytes(),
        }
    }

    /// This identity's id.
    pub fn peer_id(&self) -> PeerId {
        PeerId::from_bytes(*self.account.ed25519_key().as_bytes())
    }

    /// Signs `label || message`.
    pub fn sign(&self, label: &[u8], message: &[u8]) -> [u8; 64] {
        self.account
            .sign(labels::signed_bytes(label, message))
            .to_bytes()
    }

    /// Makes a signed invite with a fresh one-time key. The caller stores the returned
    /// [`PendingInvite`] and this identity (whose account now holds the one-time key's secret).
    pub fn create_invite(&mut self, relay_url: &str, id: [u8; 16], expires_at: u64) -> InviteDraft {
        self.make_invite(relay_url, id, expires_at, Some(crate::features::SUPPORTED))
    }

    /// A version-1 invite (no feature bits), as an older tincan makes: for tests of mixed
    /// versions.
    #[doc(hidden)]
    pub fn create_invite_v1(
        &mut self,
        relay_url: &str,
        id: [u8; 16],
        expires_at: u64,
    ) -> InviteDraft {
        self.make_invite(relay_url, id, expires_at, None)
    }

    fn make_invite(
        &mut self,
        relay_url: &str,
        id: [u8; 16],
        expires_at: u64,
        features: Option<u32>,
    ) -> InviteDraft {
        let generated = self.account.generate_one_time_keys(1);
        self.account.mark_keys_as_published();
        // generate_one_time_keys(1) always creates exactly one key.
        let otk = generated
            .created
            .first()
            .map(|k| k.to_bytes())
            .unwrap_or([0; 32]);
        let keys = self.keys();
        let pending = PendingInvite {
            id: InviteId::from_bytes(id),
            one_time_key: otk,
            expires_at,
            relay_url: crate::invite::normalize_relay_url(relay_url),
        };
        InviteDraft::sign(self, keys, pending, features)
    }

    pub(crate) fn account(&self) -> &Account {
        &self.account
    }

    pub(crate) fn account_mut(&mut self) -> &mut Account {
        &mut self.account
    }

    /// Encrypts the account for storage.
    pub fn pickle(&self, key: &PickleKey) -> String {
        self.account.pickle().encrypt(key.expose())
    }

    /// Restores an identity from [`Identity::pickle`] output.
    pub fn from_pickle(pickled: &str, key: &PickleKey) -> Result<Self, IdentityError> {
        let pickle = AccountPickle::from_encrypted(pickled, key.expose())
            .map_err(|_| IdentityError::Pickle)?;
        Ok(Self {
            account: Account::from_pickle(pickle),
        })
    }
}

/// Verifies that `signer` signed `label || message`.
pub fn verify(
    signer: &PeerId,
    label: &[u8],
    message: &[u8],
    signature: &[u8; 64],
) -> Result<(), IdentityError> {
    let key = signer.ed25519().map_err(|_| IdentityError::BadKey)?;
    let sig = vodozemac::Ed25519Signature::from_slice(signature)
        .map_err(|_| IdentityError::BadSignature)?;
    key.verify(&labels::signed_bytes(label, message), &sig)
        .map_err(|_| IdentityError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_domain_separation() {
        let id = Identity::generate();
        let sig = id.sign(labels::RELAY_CHALLENGE, b"nonce");
        verify(&id.peer_id(), labels::RELAY_CHALLENGE, b"nonce", &sig).unwrap();
        assert!(
            verify(&id.peer_id(), labels::INVITE, b"nonce", &sig).is_err(),
            "label must bind"
        );
        assert!(verify(&id.peer_id(), labels::RELAY_CHALLENGE, b"nonce2", &sig).is_err());
        let other = Identity::generate();
        assert!(verify(&other.peer_id(), labels::RELAY_CHALLENGE, b"nonce", &sig).is_err());
    }

    #[test]
    fn pickle_round_trip_and_wrong_key() {
        let id = Identity::generate();
        let key = PickleKey::from_bytes([9; 32]);
        let p = id.pickle(&key);
        assert!(!p.contains(&id.peer_id().to_string()));
        let back = Identity::from_pickle(&p, &key).unwrap();
        assert_eq!(back.keys(), id.keys());
        assert!(Identity::from_pickle(&p, &PickleKey::from_bytes([8; 32])).is_err());
    }

    #[test]
    fn debug_hides_secrets() {
        let key = PickleKey::from_bytes([0x41; 32]);
        assert_eq!(format!("{key:?}"), "PickleKey(..)");
        let id = Identity::generate();
        let dbg = format!("{id:?}");
        assert!(dbg.contains(&id.peer_id().to_string()));
        assert!(!dbg.contains("account"));
    }
}
