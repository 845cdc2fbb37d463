//! Every frame exchanged between a client and a relay, and their one codec.
//!
//! Each WebSocket binary message is exactly one frame: `type u8 | fields`, big-endian integers,
//! length-prefixed byte strings, no trailing bytes. Types `0x0_` travel client → relay, `0x8_`
//! relay → client. Requests carry a client-chosen `req` number that the relay echoes in the
//! matching reply or [`RelayFrame::Error`], so every error is tied to the request that caused it.
//! The layout of each frame is documented in docs/PROTOCOL.md; this file is its definition.

use std::fmt;

use crate::codec::{DecodeError, Reader, Writer};
use crate::ids::{InviteId, MessageId, PeerId};

/// The largest sealed body a relay accepts by default (a 64 KiB envelope plus Olm overhead).
pub const MAX_BODY: usize = 70 * 1024;
/// The largest error message carried in a frame.
const MAX_ERROR_TEXT: usize = 1024;

/// Frames a client sends.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// 0x01: answer to the relay's challenge: `peer [32] | signature [64] | flags u8`, the
    /// signature over `"tincan v1 relay challenge\0" || nonce`. Flag bit 0 (`receive`): deliver
    /// this identity's messages on this connection. A connection without it only sends, so a
    /// one-shot `tincan send` does not take deliveries away from a running `listen`.
    Auth {
        /// The identity being proven.
        peer: PeerId,
        /// Ed25519 signature.
        signature: [u8; 64],
        /// Whether this connection takes deliveries.
        receive: bool,
    },
    /// 0x02: store and forward a sealed body: `req u32 | id [16] | to [32] | body`.
    Send {
        /// Request number.
        req: u32,
        /// Sender-chosen id; a resend with the same id is deduplicated.
        id: MessageId,
        /// Recipient.
        to: PeerId,
        /// Sealed bytes.
        body: Vec<u8>,
    },
    /// 0x03: the client has durably processed the delivery with this sequence number.
    Ack {
        /// Relay sequence number.
        seq: u64,
    },
    /// 0x04: announce an invite so the relay can consume it once: `req | id | expires_at`.
    RegisterInvite {
        /// Request number.
        req: u32,
        /// Invite id.
        id: InviteId,
        /// Expiry, unix seconds.
        expires_at: u64,
    },
    /// 0x05: consume an invite (first claim wins): `req | id`.
    ClaimInvite {
        /// Request number.
        req: u32,
        /// Invite id.
        id: InviteId,
    },
    /// 0x06: keep-alive.
    Ping {
        /// Echoed in the pong.
        nonce: u64,
    },
}

/// Frames a relay sends.
#[derive(Clone, PartialEq, Eq)]
pub enum RelayFrame {
    /// 0x81: sent first on every connection: `version u8 | nonce [32]`.
    Challenge {
        /// Protocol version the relay speaks.
        version: u8,
        /// Single-use random nonce to sign.
        nonce: [u8; 32],
    },
    /// 0x82: authentication succeeded.
    AuthOk {
        /// The authenticated identity.
        peer: PeerId,
    },
    /// 0x83: the message of request `req` is durably stored: `req | seq`.
    Sent {
        /// Request number.
        req: u32,
        /// Relay sequence number assigned.
        seq: u64,
    },
    /// 0x84: a message for this client: `seq | from | id | stored_at | body`.
    Deliver {
        /// Relay sequence number, to ack.
        seq: u64,
        /// Authenticated sender.
        from: PeerId,
        /// The sender's message id.
        id: MessageId,
        /// When the relay stored it, unix milliseconds.
        stored_at: u64,
        /// Sealed bytes.
        body: Vec<u8>,
    },
    /// 0x85: invite registered: `req`.
    InviteRegistered {
        /// Request number.
        req: u32,
    },
    /// 0x86: invite claimed; the two identities may now exchange messages: `req | inviter`.
    InviteClaimed {
        /// Request number.
        req: u32,
        /// Who made the invite.
        inviter: PeerId,
    },
    /// 0x87: a request failed: `req (0 = connection) | code u16 | retry_after_ms u32 | message`.
    Error {
        /// Request number, 0 if not tied to a request.
        req: u32,
        /// Stable error code.
        code: ErrorCode,
        /// When retrying may succeed, in milliseconds; 0 if retrying the same request will not
        /// help (or the relay cannot tell).
        retry_after_ms: u32,
        /// Human-readable explanation.
        message: String,
    },
    /// 0x88: reply to a ping.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
}

macro_rules! error_codes {
    ($($name:ident = $num:literal, $text:literal, $doc:literal;)*) => {
        /// Stable error codes a relay reports.
        #[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
        pub enum ErrorCode {
            $(#[doc = $doc] $name,)*
            /// A code this version does not know.
            Unknown(u16),
        }

        impl ErrorCode {
            /// The number on the wire.
            pub fn to_u16(self) -> u16 {
                match self { $(Self::$name => $num,)* Self::Unknown(n) => n }
            }
            /// From the number on the wire.
            pub fn from_u16(n: u16) -> Self {
                match n { $($num => Self::$name,)* n => Self::Unknown(n) }
            }
            /// From the stable name ([`ErrorCode::as_str`]).
            pub fn from_str_code(s: &str) -> Self {
                match s { $($text => Self::$name,)* _ => Self::Unknown(0) }
            }
            /// A stable snake_case name, used in JSON output.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$name => $text,)* Self::Unknown(_) => "unknown" }
            }
        }
    };
}

error_codes! {
    BadFrame = 1, "bad_frame", "The frame did not decode.";
    UnsupportedVersion = 2, "unsupported_version", "The protocol version is not supported.";
    AuthFailed = 3, "auth_failed", "The challenge signature did not verify.";
    NotAuthenticated = 4, "not_authenticated", "A request came before authentication.";
    InviteUsed = 5, "invite_used", "The invite was already used.";
    InviteUnknown = 6, "invite_unknown", "The relay does not know this invite.";
    InviteExpired = 7, "invite_expired", "The invite has expired.";
    QueueFull = 8, "queue_full", "The recipient's queue is at its cap.";
    TooLarge = 9, "too_large", "The message is over the size limit.";
    NotPaired = 10, "not_paired", "Sender and recipient never paired through an invite on this relay.";
    RateLimited = 11, "rate_limited", "Too many requests; retry later.";
    Internal = 12, "internal", "The relay failed; the request may be retried.";
    Replaced = 13, "replaced", "Another connection authenticated as this identity.";
    ShuttingDown = 14, "shutting_down", "The relay is shutting down.";
    StorageFull = 15, "storage_full", "The relay's storage is full; the request was not stored.";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ClientFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auth { peer, receive, .. } => f
                .debug_struct("Auth")
                .field("peer", peer)
                .field("receive", receive)
                .finish_non_exhaustive(),
            Self::Send { req, id, to, body } => f
                .debug_struct("Send")
                .field("req", req)
                .field("id", id)
                .field("to", to)
                .field("body_len", &body.len())
                .finish(),
            Self::Ack { seq } => f.debug_struct("Ack").field("seq", seq).finish(),
            Self::RegisterInvite {
                req, expires_at, ..
            } => f
                .debug_struct("RegisterInvite")
                .field("req", req)
                .field("expires_at", expires_at)
                .finish_non_exhaustive(),
            Self::ClaimInvite { req, .. } => f
                .debug_struct("ClaimInvite")
                .field("req", req)
                .finish_non_exhaustive(),
            Self::Ping { nonce } => f.debug_struct("Ping").field("nonce", nonce).finish(),
        }
    }
}

impl fmt::Debug for RelayFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Challenge { version, .. } => f
                .debug_struct("Challenge")
                .field("version", version)
                .finish_non_exhaustive(),
            Self::AuthOk { peer } => f.debug_struct("AuthOk").field("peer", peer).finish(),
            Self::Sent { req, seq } => f
                .debug_struct("Sent")
                .field("req", req)
                .field("seq", seq)
                .finish(),
            Self::Deliver {
                seq,
                from,
                id,
                stored_at,
                body,
            } => f
                .debug_struct("Deliver")
                .field("seq", seq)
                .field("from", from)
                .field("id", id)
                .field("stored_at", stored_at)
                .field("body_len", &body.len())
                .finish(),
            Self::InviteRegistered { req } => f
                .debug_struct("InviteRegistered")
                .field("req", req)
                .finish(),
            Self::InviteClaimed { req, inviter } => f
                .debug_struct("InviteClaimed")
                .field("req", req)
                .field("inviter", inviter)
                .finish(),
            Self::Error {
                req,
                code,
                retry_after_ms,
                message,
            } => f
                .debug_struct("Error")
                .field("req", req)
                .field("code", code)
                .field("retry_after_ms", retry_after_ms)
                .field("message", message)
                .finish(),
            Self::Pong { nonce } => f.debug_struct("Pong").field("nonce", nonce).finish(),
        }
    }
}

impl ClientFrame {
    /// Encodes the frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64);
        match self {
            Self::Auth {
                peer,
                signature,
                receive,
            } => {
                w.u8(0x01)
                    .raw(peer.as_bytes())
                    .raw(signature)
                    .u8(u8::from(*receive));
            }
            Self::Send { req, id, to, body } => {
                w = Writer::with_capacity(57 + body.len());
                w.u8(0x02)
                    .u32(*req)
                    .raw(id.as_bytes())
                    .raw(to.as_bytes())
                    .bytes32(body);
            }
            Self::Ack { seq } => {
                w.u8(0x03).u64(*seq);
            }
            Self::RegisterInvite {
                req,
                id,
                expires_at,
            } => {
                w.u8(0x04).u32(*req).raw(id.as_bytes()).u64(*expires_at);
            }
            Self::ClaimInvite { req, id } => {
                w.u8(0x05).u32(*req).raw(id.as_bytes());
            }
            Self::Ping { nonce } => {
                w.u8(0x06).u64(*nonce);
            }
        }
        w.into_bytes()
    }

    /// Decodes exactly one frame; bodies over `max_body` are refused before they are copied.
    pub fn decode(bytes: &[u8], max_body: usize) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let frame = match r.u8("frame type")? {
            0x01 => Self::Auth {
                peer: PeerId::from_bytes(r.array("peer")?),
                signature: r.array("signature")?,
                receive: match r.u8("auth flags")? {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError::Invalid("auth flags")),
                },
            },
            0x02 => Self::Send {
                req: r.u32("req")?,
                id: MessageId::from_bytes(r.array("message id")?),
                to: PeerId::from_bytes(r.array("recipient")?),
                body: r.bytes32("body", max_body)?.to_vec(),
            },
            0x03 => Self::Ack { seq: r.u64("seq")? },
            0x04 => Self::RegisterInvite {
                req: r.u32("req")?,
                id: InviteId::from_bytes(r.array("invite id")?),
                expires_at: r.u64("expiry")?,
            },
            0x05 => Self::ClaimInvite {
                req: r.u32("req")?,
                id: InviteId::from_bytes(r.array("invite id")?),
            },
            0x06 => Self::Ping {
                nonce: r.u64("nonce")?,
            },
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "client frame",
                    tag,
                });
            }
        };
        r.finish()?;
        Ok(frame)
    }
}

impl RelayFrame {
    /// Encodes a [`RelayFrame::Deliver`] from borrowed parts, so a relay can deliver a stored
    /// body without copying it into a frame first.
    pub fn encode_deliver(
        seq: u64,
        from: &PeerId,
        id: &MessageId,
        stored_at: u64,
        body: &[u8],
    ) -> Vec<u8> {
        let mut w = Writer::with_capacity(73 + body.len());
        w.u8(0x84)
            .u64(seq)
            .raw(from.as_bytes())
            .raw(id.as_bytes())
            .u64(stored_at)
            .bytes32(body);
        w.into_bytes()
    }

    /// Encodes the frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64);
        match self {
            Self::Challenge { version, nonce } => {
                w.u8(0x81).u8(*version).raw(nonce);
            }
            Self::AuthOk { peer } => {
                w.u8(0x82).raw(peer.as_bytes());
            }
            Self::Sent { req, seq } => {
                w.u8(0x83).u32(*req).u64(*seq);
            }
            Self::Deliver {
                seq,
                from,
                id,
                stored_at,
                body,
            } => return Self::encode_deliver(*seq, from, id, *stored_at, body),
            Self::InviteRegistered { req } => {
                w.u8(0x85).u32(*req);
            }
            Self::InviteClaimed { req, inviter } => {
                w.u8(0x86).u32(*req).raw(inviter.as_bytes());
            }
            Self::Error {
                req,
                code,
                retry_after_ms,
                message,
            } => {
                let mut end = message.len().min(MAX_ERROR_TEXT);
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                w.u8(0x87)
                    .u32(*req)
                    .u16(code.to_u16())
                    .u32(*retry_after_ms)
                    .str16(&message[..end]);
            }
            Self::Pong { nonce } => {
                w.u8(0x88).u64(*nonce);
            }
        }
        w.into_bytes()
    }

    /// Decodes exactly one frame.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let frame = match r.u8("frame type")? {
            0x81 => Self::Challenge {
                version: r.u8("version")?,
                nonce: r.array("nonce")?,
            },
            0x82 => Self::AuthOk {
                peer: PeerId::from_bytes(r.array("peer")?),
            },
            0x83 => Self::Sent {
                req: r.u32("req")?,
                seq: r.u64("seq")?,
            },
            0x84 => Self::Deliver {
                seq: r.u64("seq")?,
                from: PeerId::from_bytes(r.array("sender")?),
                id: MessageId::from_bytes(r.array("message id")?),
                stored_at: r.u64("stored_at")?,
                body: r.bytes32("body", MAX_BODY)?.to_vec(),
            },
            0x85 => Self::InviteRegistered { req: r.u32("req")? },
            0x86 => Self::InviteClaimed {
                req: r.u32("req")?,
                inviter: PeerId::from_bytes(r.array("inviter")?),
            },
            0x87 => {
                let req = r.u32("req")?;
                let code = ErrorCode::from_u16(r.u16("code")?);
                let retry_after_ms = r.u32("retry_after_ms")?;
                let message = r.str16("message")?;
                if message.len() > MAX_ERROR_TEXT {
                    return Err(DecodeError::TooLong {
                        what: "error message",
                        len: message.len(),
                        max: MAX_ERROR_TEXT,
                    });
                }
                Self::Error {
                    req,
                    code,
                    retry_after_ms,
                    message: message.to_string(),
                }
            }
            0x88 => Self::Pong {
                nonce: r.u64("nonce")?,
            },
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "relay frame",
                    tag,
                });
            }
        };
        r.finish()?;
        Ok(frame)
    }
}

#[cfg(test)]
mod tests;
