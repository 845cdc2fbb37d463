//! A pairwise session: vodozemac Olm (Double Ratchet) bound to both agents' identities.
//!
//! Sealed bytes (the opaque `body` the relay routes) are `type u8 | olm message`, where type 0 is
//! an Olm pre-key message (the first messages of a session) and 1 a normal message.
//!
//! The accepter of an invite opens the outbound side with the invite's one-time key and sends a
//! [`Body::Join`] first. The inviter opens the inbound side only for a pre-key message that uses
//! the one-time key of an invite it is still holding, whose join names that invite, and whose join
//! signature binds the sender's Ed25519 id to the Curve25519 key the Olm session was built with.
//! Every later message is checked for sender and recipient ids inside the ciphertext.

use std::fmt;

use thiserror::Error;
use vodozemac::Curve25519PublicKey;
use vodozemac::olm::{OlmMessage, Session, SessionConfig, SessionPickle};

use crate::codec::DecodeError;
use crate::envelope::{Body, Envelope, JoinBody};
use crate::identity::{self, Identity, PickleKey};
use crate::ids::{MessageId, PeerId};
use crate::invite::{Invite, PendingInvite};
use crate::labels;

/// Why a message could not be sealed or opened.
#[derive(Debug, Error)]
pub enum SessionError {
    /// The sealed bytes are not an Olm message.
    #[error("malformed ciphertext: {0}")]
    Malformed(String),
    /// The decrypted envelope did not decode.
    #[error("malformed envelope: {0}")]
    Envelope(#[from] DecodeError),
    /// A session-opening message arrived that does not use a one-time key of an open invite.
    #[error("message does not answer any open invite")]
    NotInvited,
    /// The first message of a session was not a valid join for the invite.
    #[error("invalid join: {0}")]
    BadJoin(&'static str),
    /// Olm refused to build the session.
    #[error("cannot open session: {0}")]
    Open(String),
    /// Authentication failed: tampered, replayed, or encrypted for another session.
    #[error("cannot decrypt: tampered, replayed or not for this session ({0})")]
    Decrypt(String),
    /// The envelope names a different sender than the one it arrived from.
    #[error("sender mismatch: message claims to be from another identity")]
    WrongSender,
    /// The envelope is addressed to someone else.
    #[error("message is addressed to another identity")]
    WrongRecipient,
    /// The session cannot encrypt.
    #[error("cannot encrypt: {0}")]
    Encrypt(String),
    /// The stored session could not be decrypted.
    #[error("stored session cannot be decrypted")]
    Pickle,
}

fn config() -> SessionConfig {
    SessionConfig::version_1()
}

/// Encodes an Olm message into sealed bytes.
fn to_sealed(msg: &OlmMessage) -> Vec<u8> {
    let (kind, bytes) = msg.to_parts();
    let mut out = Vec::with_capacity(bytes.len() + 1);
    out.push(kind as u8);
    out.extend_from_slice(&bytes);
    out
}

/// Decodes sealed bytes into an Olm message.
pub fn parse_sealed(sealed: &[u8]) -> Result<OlmMessage, SessionError> {
    let (kind, rest) = sealed
        .split_first()
        .ok_or_else(|| SessionError::Malformed("empty".into()))?;
    if *kind > 1 {
        return Err(SessionError::Malformed(format!(
            "unknown message type {kind}"
        )));
    }
    OlmMessage::from_parts(usize::from(*kind), rest)
        .map_err(|e| SessionError::Malformed(e.to_string()))
}

/// If sealed bytes start a session (an Olm pre-key message), the one-time key they use.
pub fn session_start_key(sealed: &[u8]) -> Option<[u8; 32]> {
    match parse_sealed(sealed) {
        Ok(OlmMessage::PreKey(pre)) => Some(pre.one_time_key().to_bytes()),
        _ => None,
    }
}

/// A pairwise Olm session with one peer.
pub struct PeerSession {
    session: Session,
    peer: PeerId,
}

impl fmt::Debug for PeerSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerSession")
            .field("peer", &self.peer)
            .field("session_id", &self.session.session_id())
            .finish_non_exhaustive()
    }
}

/// What opening an inbound session yields: the session and the join envelope.
pub type Opened = (PeerSession, Envelope);

impl PeerSession {
    /// Accepter side: opens an outbound session from a verified invite and seals the join message.
    pub fn accept_invite(
        me: &Identity,
        invite: &Invite,
        msg_id: [u8; 16],
        now_ms: u64,
    ) -> Result<(Self, Vec<u8>), SessionError> {
        let their_curve = Curve25519PublicKey::from_bytes(invite.inviter.curve25519);
        let otk = Curve25519PublicKey::from_bytes(invite.one_time_key);
        let session = me
            .account()
            .create_outbound_session(config(), their_curve, otk)
            .map_err(|e| SessionError::Open(e.to_string()))?;
        let mut this = Self {
            session,
            peer: invite.inviter.ed25519,
        };
        let keys = me.keys();
        // A version-2 invite gets our feature bits back; a version-1 inviter would reject them.
        let features = invite.features.map(|_| crate::features::SUPPORTED);
        let signature = me.sign(
            labels::JOIN,
            &JoinBody::signed_part(
                &invite.id,
                &invite.inviter.ed25519,
                &keys.curve25519,
                features,
            ),
        );
        let join = Body::Join(JoinBody {
            invite_id: invite.id,
            curve25519: keys.curve25519,
            features,
            signature,
        });
        let sealed = this.seal(me, join, msg_id, now_ms)?;
        Ok((this, sealed))
    }

    /// Inviter side: opens the inbound session from the accepter's first message.
    ///
    /// `from` is the sender id the relay authenticated. On any error the account is left as it
    /// was (the one-time key is not consumed), so a forged message cannot burn an invite.
    pub fn open_inbound(
        me: &mut Identity,
        pending: &PendingInvite,
        from: PeerId,
        sealed: &[u8],
    ) -> Result<Opened, SessionError> {
        let OlmMessage::PreKey(pre) = parse_sealed(sealed)? else {
            return Err(SessionError::NotInvited);
        };
        if pre.one_time_key().to_bytes() != pending.one_time_key {
            return Err(SessionError::NotInvited);
        }
        let before = me.account().pickle();
        let result = Self::open_inbound_inner(me, pending, from, &pre);
        if result.is_err() {
            *me.account_mut() = vodozemac::olm::Account::from_pickle(before);
        }
        result
    }

    fn open_inbound_inner(
        me: &mut Identity,
        pending: &PendingInvite,
        from: PeerId,
        pre: &vodozemac::olm::PreKeyMessage,
    ) -> Result<Opened, SessionError> {
        let created = me
            .account_mut()
            .create_inbound_session(config(), pre.identity_key(), pre)
            .map_err(|e| SessionError::Open(e.to_string()))?;
        let env = Envelope::decode(&created.plaintext)?;
        if env.from != from {
            return Err(SessionError::WrongSender);
        }
        if env.to != me.peer_id() {
            return Err(SessionError::WrongRecipient);
        }
        let Body::Join(join) = &env.body else {
            return Err(SessionError::BadJoin("first message is not a join"));
        };
        if join.invite_id != pending.id {
            return Err(SessionError::BadJoin("join names another invite"));
        }
        if join.curve25519 != pre.identity_key().to_bytes() {
            return Err(SessionError::BadJoin(
                "join key differs from the session key",
            ));
        }
        identity::verify(
            &from,
            labels::JOIN,
            &JoinBody::signed_part(
                &join.invite_id,
                &me.peer_id(),
                &join.curve25519,
                join.features,
            ),
            &join.signature,
        )
        .map_err(|_| SessionError::BadJoin("join signature does not verify"))?;
        Ok((
            Self {
                session: created.session,
                peer: from,
            },
            env,
        ))
    }

    /// The peer this session talks to.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// Seals a body for the peer.
    pub fn seal(
        &mut self,
        me: &Identity,
        body: Body,
        msg_id: [u8; 16],
        now_ms: u64,
    ) -> Result<Vec<u8>, SessionError> {
        let env = Envelope {
            from: me.peer_id(),
            to: self.peer,
            id: MessageId::from_bytes(msg_id),
            sent_at: now_ms,
            body,
        };
        let plain = env.encode()?;
        let msg = self
            .session
            .encrypt(&plain)
            .map_err(|e| SessionError::Encrypt(e.to_string()))?;
        Ok(to_sealed(&msg))
    }

    /// Opens a message that the relay says came from `from`.
    pub fn open(
        &mut self,
        me: &Identity,
        from: PeerId,
        sealed: &[u8],
    ) -> Result<Envelope, SessionError> {
        if from != self.peer {
            return Err(SessionError::WrongSender);
        }
        let msg = parse_sealed(sealed)?;
        let plain = self
            .session
            .decrypt(&msg)
            .map_err(|e| SessionError::Decrypt(e.to_string()))?;
        let env = Envelope::decode(&plain)?;
        if env.from != self.peer {
            return Err(SessionError::WrongSender);
        }
        if env.to != me.peer_id() {
            return Err(SessionError::WrongRecipient);
        }
        Ok(env)
    }

    /// Encrypts the session state for storage.
    pub fn pickle(&self, key: &PickleKey) -> String {
        self.session.pickle().encrypt(key.expose())
    }

    /// Restores a session from [`PeerSession::pickle`] output.
    pub fn from_pickle(peer: PeerId, pickled: &str, key: &PickleKey) -> Result<Self, SessionError> {
        let p = SessionPickle::from_encrypted(pickled, key.expose())
            .map_err(|_| SessionError::Pickle)?;
        Ok(Self {
            session: Session::from_pickle(p),
            peer,
        })
    }
}

#[cfg(test)]
mod tests;
