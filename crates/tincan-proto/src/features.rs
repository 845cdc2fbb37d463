//! Peer capabilities: what a peer's tincan understands beyond version 1.
//!
//! Each side learns the other's bits at pairing time, inside signed and sealed data: the inviter's
//! from a `tincan2.` invite ([`crate::invite::Invite::features`]), the accepter's from its join
//! ([`crate::envelope::JoinBody::features`]). A sender uses a feature only when the peer's bits
//! include it; peers paired under version 1 have none, and get only what version 1 knows.
//! Unknown bits are kept and ignored, so a newer peer can announce more.

/// Understands [`crate::envelope::Body::Batch`]: several texts in one sealed envelope.
pub const BATCH: u32 = 1 << 0;

/// Everything this tincan understands.
pub const SUPPORTED: u32 = BATCH;

/// Whether `peer_bits` include `feature`.
pub fn has(peer_bits: u32, feature: u32) -> bool {
    peer_bits & feature == feature
}

/// The names of the known bits in `bits`, for display (`tincan peers --json`).
pub fn names(bits: u32) -> Vec<&'static str> {
    [(BATCH, "batch")]
        .into_iter()
        .filter(|(bit, _)| has(bits, *bit))
        .map(|(_, name)| name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits() {
        assert!(has(SUPPORTED, BATCH));
        assert!(!has(0, BATCH));
        assert!(has(BATCH | 1 << 7, BATCH), "unknown bits are ignored");
        assert_eq!(names(SUPPORTED | 1 << 7), ["batch"]);
        assert!(names(0).is_empty());
    }
}
