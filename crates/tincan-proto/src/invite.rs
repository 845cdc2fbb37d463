//! Invites: the one thing an agent hands another to pair.
//!
//! An invite carries the relay URL, the inviter's identity keys, a fresh one-time key (the Olm
//! prekey of the session the accepter will open), a random invite id and an expiry, all signed by
//! the inviter under [`labels::INVITE`]. Its URL form is `<relay>/invite#tincan2.<base64url>`:
//! everything sits in the fragment, which browsers and HTTP clients never send to a server.
//!
//! Version 2 adds the inviter's feature bits ([`crate::features`]); version-1 invites
//! (`tincan1.`, no feature bits) are still accepted.
//!
//! [`Invite`] values only come out of [`Invite::parse`], which checks the signature and the expiry:
//! holding one means it was valid at the time given.

use std::fmt;

use data_encoding::BASE64URL_NOPAD;
use thiserror::Error;

use crate::codec::{DecodeError, Reader, Writer};
use crate::identity::{self, Identity, IdentityKeys};
use crate::ids::{InviteId, PeerId};
use crate::labels;

/// The fragment prefix of the invites this tincan makes (version 2).
pub const PREFIX: &str = "tincan2.";
/// The fragment prefix of a version-1 invite, still accepted.
pub const PREFIX_V1: &str = "tincan1.";
const VERSION: u8 = 2;
/// Longest relay URL an invite may carry.
pub const MAX_RELAY_URL: usize = 2048;

/// Why an invite was rejected. Each case has its own message so the user knows what to do.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InviteError {
    /// The text is not a tincan invite at all.
    #[error("not a tincan invite: expected a URL ending in '#tincan2.…' or a 'tincan2.…' token")]
    Foreign,
    /// The invite was made by a newer or older tincan.
    #[error(
        "invite version {0} is not supported by this tincan (it speaks versions 1 and 2); upgrade tincan"
    )]
    UnsupportedVersion(String),
    /// The invite is cut short or its encoding is damaged.
    #[error("invite is truncated or damaged ({0}); copy the whole link again")]
    Malformed(String),
    /// The signature does not match the content: it was edited after signing.
    #[error("invite has been tampered with: its signature does not match its content")]
    Tampered,
    /// The expiry has passed.
    #[error(
        "this invite expired {} (at {}); ask the inviter for a new one",
        ago(.now.saturating_sub(*.expired_at)),
        utc_minute(*.expired_at)
    )]
    Expired {
        /// When it expired (unix seconds).
        expired_at: u64,
        /// The time it was checked at (unix seconds).
        now: u64,
    },
}

/// `secs` in the past, coarsely: "just now", "5 min ago", "3 h ago", "2 days ago".
fn ago(secs: u64) -> String {
    match secs {
        0..60 => "just now".into(),
        60..3600 => format!("{} min ago", secs / 60),
        3600..172_800 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

/// A unix time as `YYYY-MM-DD HH:MM UTC`.
fn utc_minute(unix: u64) -> String {
    let (days, secs) = (unix / 86_400, unix % 86_400);
    let (year, month, day) = crate::civil::date(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

/// Normalises a relay URL the way invites carry it: trimmed, without a trailing slash.
pub fn normalize_relay_url(url: &str) -> String {
    url.trim().trim_end_matches('/').to_string()
}

/// What an inviter keeps locally about an invite it handed out.
#[derive(Clone, PartialEq, Eq)]
pub struct PendingInvite {
    /// The invite id the relay consumes.
    pub id: InviteId,
    /// The public one-time key; its secret half lives in the inviter's account.
    pub one_time_key: [u8; 32],
    /// Expiry, unix seconds.
    pub expires_at: u64,
    /// The relay the invite points at.
    pub relay_url: String,
}

impl fmt::Debug for PendingInvite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingInvite")
            .field("id", &self.id)
            .field("expires_at", &self.expires_at)
            .field("relay_url", &self.relay_url)
            .finish_non_exhaustive()
    }
}

/// A verified invite.
#[derive(Clone, PartialEq, Eq)]
pub struct Invite {
    /// Random id, consumed once at the relay.
    pub id: InviteId,
    /// The relay both agents use.
    pub relay_url: String,
    /// The inviter's keys.
    pub inviter: IdentityKeys,
    /// The Olm one-time key (prekey) for the session.
    pub one_time_key: [u8; 32],
    /// Expiry, unix seconds.
    pub expires_at: u64,
    /// The inviter's feature bits ([`crate::features`]); `None` for a version-1 invite, which
    /// the accepter answers with a version-1 join.
    pub features: Option<u32>,
}

impl fmt::Debug for Invite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invite")
            .field("id", &self.id)
            .field("relay_url", &self.relay_url)
            .field("inviter", &self.inviter.ed25519)
            .field("expires_at", &self.expires_at)
            .field("features", &self.features)
            .finish_non_exhaustive()
    }
}

/// An invite its inviter has just signed, ready to hand out.
pub struct InviteDraft {
    invite: Invite,
    pending: PendingInvite,
    token: String,
}

impl fmt::Debug for InviteDraft {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InviteDraft")
            .field("invite", &self.invite)
            .finish_non_exhaustive()
    }
}

/// `version u8 | id | expires_at | ed25519 | curve25519 | one-time key | [features u32, v2]
/// | relay url (u16 length)`.
fn encode_payload(inv: &Invite) -> Vec<u8> {
    let mut w = Writer::with_capacity(164 + inv.relay_url.len());
    w.u8(if inv.features.is_some() { VERSION } else { 1 })
        .raw(inv.id.as_bytes())
        .u64(inv.expires_at)
        .raw(inv.inviter.ed25519.as_bytes())
        .raw(&inv.inviter.curve25519)
        .raw(&inv.one_time_key);
    if let Some(bits) = inv.features {
        w.u32(bits);
    }
    w.str16(&inv.relay_url);
    w.into_bytes()
}

impl InviteDraft {
    /// Signs an invite; `features: None` makes a version-1 invite (for tests of older peers).
    pub(crate) fn sign(
        identity: &Identity,
        keys: IdentityKeys,
        pending: PendingInvite,
        features: Option<u32>,
    ) -> Self {
        let invite = Invite {
            id: pending.id,
            relay_url: pending.relay_url.clone(),
            inviter: keys,
            one_time_key: pending.one_time_key,
            expires_at: pending.expires_at,
            features,
        };
        let mut bytes = encode_payload(&invite);
        let sig = identity.sign(labels::INVITE, &bytes);
        bytes.extend_from_slice(&sig);
        let prefix = if features.is_some() {
            PREFIX
        } else {
            PREFIX_V1
        };
        let token = format!("{prefix}{}", BASE64URL_NOPAD.encode(&bytes));
        Self {
            invite,
            pending,
            token,
        }
    }

    /// The copy-pasteable URL: `<relay>/invite#tincan2.<payload>`.
    pub fn url(&self) -> String {
        format!("{}/invite#{}", self.invite.relay_url, self.token)
    }

    /// The invite as the accepter will see it.
    pub fn invite(&self) -> &Invite {
        &self.invite
    }

    /// What the inviter must store to recognise the accepter's first message.
    pub fn pending(&self) -> &PendingInvite {
        &self.pending
    }
}

impl Invite {
    /// Parses and verifies an invite URL (or bare `tincan2.`/`tincan1.` token) at unix time `now`.
    pub fn parse(text: &str, now: u64) -> Result<Self, InviteError> {
        let text = text.trim();
        let (base, token) = match text.split_once('#') {
            Some((base, frag)) => (Some(base), frag),
            None => (None, text),
        };
        let (b64, prefix_version) = if let Some(b64) = token.strip_prefix(PREFIX) {
            (b64, VERSION)
        } else if let Some(b64) = token.strip_prefix(PREFIX_V1) {
            (b64, 1)
        } else {
            if let Some(rest) = token.strip_prefix("tincan")
                && let Some((v, _)) = rest.split_once('.')
                && !v.is_empty()
                && v.chars().all(|c| c.is_ascii_digit())
            {
                return Err(InviteError::UnsupportedVersion(v.to_string()));
            }
            return Err(InviteError::Foreign);
        };
        let bytes = BASE64URL_NOPAD
            .decode(b64.as_bytes())
            .map_err(|e| InviteError::Malformed(format!("bad base64: {e}")))?;
        let invite = Self::decode_verified(&bytes, prefix_version)?;
        if let Some(base) = base
            && normalize_relay_url(base.strip_suffix("/invite").unwrap_or(base)) != invite.relay_url
        {
            return Err(InviteError::Tampered);
        }
        if now >= invite.expires_at {
            return Err(InviteError::Expired {
                expired_at: invite.expires_at,
                now,
            });
        }
        Ok(invite)
    }

    /// Decodes the binary invite and checks its signature (not its expiry).
    fn decode_verified(bytes: &[u8], prefix_version: u8) -> Result<Self, InviteError> {
        let malformed = |e: DecodeError| InviteError::Malformed(e.to_string());
        if bytes.len() < 64 {
            return Err(InviteError::Malformed("shorter than a signature".into()));
        }
        let (payload, sig) = bytes.split_at(bytes.len() - 64);
        let mut r = Reader::new(payload);
        let version = r.u8("version").map_err(malformed)?;
        // The prefix already named a version this tincan speaks (1 or 2), and the version byte
        // is signed: any other byte is damage, not an invite from another tincan.
        if version != prefix_version {
            return Err(InviteError::Malformed(format!(
                "its version byte says {version} but its prefix says {prefix_version}"
            )));
        }
        let id = InviteId::from_bytes(r.array("invite id").map_err(malformed)?);
        let expires_at = r.u64("expiry").map_err(malformed)?;
        let ed = PeerId::from_bytes(r.array("inviter ed25519 key").map_err(malformed)?);
        let curve = r.array("inviter curve25519 key").map_err(malformed)?;
        let one_time_key = r.array("one-time key").map_err(malformed)?;
        let features = match version {
            1 => None,
            _ => Some(r.u32("features").map_err(malformed)?),
        };
        let relay_url = r.str16("relay url").map_err(malformed)?.to_string();
        // A signature over a payload with trailing bytes would still verify, so any leftover
        // (a truncated payload shifts the split) is treated as damage, not ignored.
        r.finish().map_err(malformed)?;
        let sig: [u8; 64] = sig
            .try_into()
            .map_err(|_| InviteError::Malformed("signature".into()))?;
        identity::verify(&ed, labels::INVITE, payload, &sig).map_err(|_| InviteError::Tampered)?;
        if relay_url.is_empty() || relay_url.len() > MAX_RELAY_URL {
            return Err(InviteError::Malformed("relay url length".into()));
        }
        // Shown to people and put in command lines: a signed invite from a hostile inviter must
        // not carry a line break or an escape sequence there.
        if relay_url
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(InviteError::Malformed(
                "relay url contains spaces or control characters".into(),
            ));
        }
        Ok(Self {
            id,
            relay_url,
            inviter: IdentityKeys {
                ed25519: ed,
                curve25519: curve,
            },
            one_time_key,
            expires_at,
            features,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn draft() -> InviteDraft {
        Identity::generate().create_invite("http://127.0.0.1:8787/", [3; 16], NOW + 60)
    }

    #[test]
    fn a_relay_url_with_a_line_break_or_escape_is_malformed_even_when_signed() {
        for bad in [
            "http://127.0.0.1:1\n[peer] fake line",
            "http://h:1/\u{1b}[2J",
            "http://h :1",
        ] {
            let url = Identity::generate()
                .create_invite(bad, [4; 16], NOW + 60)
                .url();
            let token = url.split_once('#').unwrap().1;
            assert!(
                matches!(Invite::parse(token, NOW), Err(InviteError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn round_trip() {
        let d = draft();
        let url = d.url();
        assert!(url.starts_with("http://127.0.0.1:8787/invite#tincan2."));
        assert_eq!(d.invite().features, Some(crate::features::SUPPORTED));
        let inv = Invite::parse(&url, NOW).unwrap();
        assert_eq!(&inv, d.invite());
        // The bare token parses too.
        let token = url.split_once('#').unwrap().1;
        assert_eq!(Invite::parse(token, NOW).unwrap(), inv);
    }

    #[test]
    fn expired() {
        let url = draft().url();
        assert_eq!(
            Invite::parse(&url, NOW + 60),
            Err(InviteError::Expired {
                expired_at: NOW + 60,
                now: NOW + 60,
            })
        );
        // 1_800_000_060 is 2027-01-15 08:01 UTC.
        let err = Invite::parse(&url, NOW + 60 + 3 * 3600 + 59).unwrap_err();
        assert_eq!(
            err.to_string(),
            "this invite expired 3 h ago (at 2027-01-15 08:01 UTC); ask the inviter for a new one"
        );
    }

    #[test]
    fn expiry_times_read_as_dates() {
        assert_eq!(utc_minute(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_minute(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc_minute(1_795_469_729), "2026-11-23 21:35 UTC");
        utc_minute(u64::MAX); // an expiry from the network: must not overflow
        assert_eq!(utc_minute(4_102_444_799), "2099-12-31 23:59 UTC");
        assert_eq!(ago(0), "just now");
        assert_eq!(ago(59), "just now");
        assert_eq!(ago(60), "1 min ago");
        assert_eq!(ago(3599), "59 min ago");
        assert_eq!(ago(3600), "1 h ago");
        assert_eq!(ago(172_799), "47 h ago");
        assert_eq!(ago(172_800), "2 days ago");
    }

    #[test]
    fn tampered_every_byte() {
        let url = draft().url();
        let (base, token) = url.split_once('#').unwrap();
        let bytes = BASE64URL_NOPAD
            .decode(token.strip_prefix(PREFIX).unwrap().as_bytes())
            .unwrap();
        for i in 1..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            let t = format!("{base}#{PREFIX}{}", BASE64URL_NOPAD.encode(&b));
            let err = Invite::parse(&t, NOW).unwrap_err();
            assert!(
                matches!(err, InviteError::Tampered | InviteError::Malformed(_)),
                "byte {i}: {err:?}"
            );
        }
    }

    #[test]
    fn truncated_foreign_and_version() {
        let url = draft().url();
        for cut in [url.len() - 1, url.len() - 10, url.find('#').unwrap() + 12] {
            let err = Invite::parse(&url[..cut], NOW).unwrap_err();
            assert!(
                matches!(err, InviteError::Malformed(_) | InviteError::Tampered),
                "{err:?}"
            );
        }
        assert_eq!(
            Invite::parse("https://example.com/#hello", NOW),
            Err(InviteError::Foreign)
        );
        assert_eq!(Invite::parse("", NOW), Err(InviteError::Foreign));
        assert_eq!(
            Invite::parse("http://x/invite#tincan3.AAAA", NOW),
            Err(InviteError::UnsupportedVersion("3".into()))
        );
    }

    #[test]
    fn a_version_1_invite_still_parses_and_has_no_features() {
        let d = Identity::generate().create_invite_v1("http://127.0.0.1:8787/", [3; 16], NOW + 60);
        let url = d.url();
        assert!(url.starts_with("http://127.0.0.1:8787/invite#tincan1."));
        let inv = Invite::parse(&url, NOW).unwrap();
        assert_eq!(inv.features, None);
        assert_eq!(&inv, d.invite());
    }

    #[test]
    fn a_prefix_that_differs_from_the_signed_version_is_refused() {
        // Relabelling a v2 payload as v1 (or back) would make the accepter read the feature bits
        // as key or URL bytes; the version byte is signed, so the mismatch is caught first.
        let v2 = draft().url();
        let v1_label = v2.replace("#tincan2.", "#tincan1.");
        assert!(matches!(
            Invite::parse(&v1_label, NOW),
            Err(InviteError::Malformed(_))
        ));
        let v1 = Identity::generate()
            .create_invite_v1("http://127.0.0.1:8787/", [3; 16], NOW + 60)
            .url();
        let v2_label = v1.replace("#tincan1.", "#tincan2.");
        assert!(matches!(
            Invite::parse(&v2_label, NOW),
            Err(InviteError::Malformed(_))
        ));
    }

    #[test]
    fn a_damaged_version_byte_is_damage_not_an_invite_from_another_tincan() {
        // The prefix names the version; a version byte edited to any other value (a copy error,
        // an edit) must say "damaged", not "upgrade tincan".
        let url = draft().url();
        let (base, token) = url.split_once("#tincan2.").unwrap();
        let mut bytes = BASE64URL_NOPAD.decode(token.as_bytes()).unwrap();
        for v in [0u8, 1, 3, 6, 255] {
            bytes[0] = v;
            let edited = format!("{base}#tincan2.{}", BASE64URL_NOPAD.encode(&bytes));
            let err = Invite::parse(&edited, NOW).unwrap_err();
            assert!(
                matches!(&err, InviteError::Malformed(m) if m.contains("version byte")),
                "byte {v}: {err:?}"
            );
        }
    }

    #[test]
    fn relay_swapped_in_url_base_is_tampering() {
        let url = draft().url();
        let token = url.split_once('#').unwrap().1;
        let evil = format!("http://evil.example/invite#{token}");
        assert_eq!(Invite::parse(&evil, NOW), Err(InviteError::Tampered));
    }
}
