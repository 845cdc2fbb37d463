//! Domain-separation labels: every signature and derived value in tincan is taken over one of
//! these prefixes, so a signature made for one purpose can never be replayed as another.

/// Prefix of the bytes an agent signs to answer a relay's authentication challenge.
pub const RELAY_CHALLENGE: &[u8] = b"tincan v1 relay challenge\0";
/// Prefix of the bytes an inviter signs to make an invite.
pub const INVITE: &[u8] = b"tincan v1 invite\0";
/// Prefix of the bytes an accepter signs to bind its Ed25519 identity to its Curve25519 key.
pub const JOIN: &[u8] = b"tincan v1 join\0";
/// Prefix of the hash input that makes a human-comparable fingerprint.
pub const FINGERPRINT: &[u8] = b"tincan v1 fingerprint\0";

/// Concatenates a label and a message into the exact bytes that get signed.
pub fn signed_bytes(label: &[u8], message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(label.len() + message.len());
    out.extend_from_slice(label);
    out.extend_from_slice(message);
    out
}
