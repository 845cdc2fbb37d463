//! Session tokens for the HTTP API: short-lived, HMAC-SHA256-signed, bound to one identity.
//!
//! ```text
//! token = base64url( version u8 (=1) | key_id u32 | peer [32] | expires_at u64 | mac [32] )
//! mac   = HMAC-SHA256(secret[key_id], "tincan v1 relay token\0" || the 45 bytes before it)
//! ```
//!
//! Secrets are generated on first start and kept in the relay database. Rotation makes a new
//! secret current; the previous one keeps verifying for one token lifetime, so no token issued
//! before the rotation is cut short.

use std::fmt;
use std::sync::RwLock;
use std::time::Duration;

use data_encoding::BASE64URL_NOPAD;
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use rusqlite::{Connection, params};
use sha2::Sha256;
use tincan_proto::ids::PeerId;
use zeroize::Zeroizing;

const LABEL: &[u8] = b"tincan v1 relay token\0";
const BODY: usize = 1 + 4 + 32 + 8;
const LEN: usize = BODY + 32;

/// A bearer token. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// The token text, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// Why a token was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token at all.
    Malformed,
    /// The MAC does not match, or the key is unknown or retired.
    BadSignature,
    /// Past its expiry.
    Expired,
}

struct Key {
    id: u32,
    secret: Zeroizing<[u8; 32]>,
    /// When it was made (unix s).
    created_at: u64,
    /// When a newer key replaced it (unix s); `None` for the current key.
    retired_at: Option<u64>,
}

/// The relay's token keys.
pub(crate) struct TokenKeys {
    keys: RwLock<Vec<Key>>,
    pub ttl: Duration,
    db: std::path::PathBuf,
}

fn mac(secret: &[u8; 32], body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; 32 bytes cannot fail.
    let mut m =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    m.update(LABEL);
    m.update(body);
    m
}

impl TokenKeys {
    /// Loads the keys from the database, making the first one if there is none.
    pub fn load(db: &std::path::Path, ttl: Duration, now: u64) -> rusqlite::Result<Self> {
        let conn = Connection::open(db)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS token_keys (id INTEGER PRIMARY KEY, secret BLOB NOT NULL,
             created_at INTEGER NOT NULL, retired_at INTEGER)",
        )?;
        let mut keys = Vec::new();
        {
            let mut stmt = conn
                .prepare("SELECT id, secret, retired_at, created_at FROM token_keys ORDER BY id")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?;
            for row in rows {
                let (id, secret, retired, created) = row?;
                if let Ok(secret) = <[u8; 32]>::try_from(secret.as_slice()) {
                    keys.push(Key {
                        id: id as u32,
                        secret: Zeroizing::new(secret),
                        created_at: created.max(0) as u64,
                        retired_at: retired.map(|r| r as u64),
                    });
                }
            }
        }
        let this = Self {
            keys: RwLock::new(keys),
            ttl,
            db: db.to_path_buf(),
        };
        if this.read().iter().all(|k| k.retired_at.is_some()) {
            this.rotate(now)?;
        }
        Ok(this)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Key>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes a new current key; the old one verifies for one more token lifetime.
    pub fn rotate(&self, now: u64) -> rusqlite::Result<()> {
        let mut secret = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(secret.as_mut());
        let conn = Connection::open(&self.db)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let tx = conn.unchecked_transaction()?;
        tx.execute(
            "UPDATE token_keys SET retired_at = ?1 WHERE retired_at IS NULL",
            params![now as i64],
        )?;
        tx.execute(
            "INSERT INTO token_keys (secret, created_at) VALUES (?1, ?2)",
            params![secret.as_slice(), now as i64],
        )?;
        let id = tx.last_insert_rowid() as u32;
        // Keys retired longer ago than a token lifetime can no longer verify anything.
        tx.execute(
            "DELETE FROM token_keys WHERE retired_at IS NOT NULL AND retired_at < ?1",
            params![now.saturating_sub(self.ttl.as_secs()) as i64],
        )?;
        tx.commit()?;
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        for k in keys.iter_mut().filter(|k| k.retired_at.is_none()) {
            k.retired_at = Some(now);
        }
        keys.retain(|k| k.retired_at.is_none_or(|r| r + self.ttl.as_secs() >= now));
        keys.push(Key {
            id,
            secret,
            created_at: now,
            retired_at: None,
        });
        Ok(())
    }

    /// Whether the current key is `every` old or older at `now` (or there is none), so a new one
    /// is due. Read from the key's own creation time, so a restart does not reset the clock.
    pub fn rotation_due(&self, now: u64, every: Duration) -> bool {
        self.read()
            .iter()
            .find(|k| k.retired_at.is_none())
            .is_none_or(|k| now.saturating_sub(k.created_at) >= every.as_secs())
    }

    /// Issues a token for `peer`, valid until `now + ttl`. Returns it and its expiry.
    pub fn issue(&self, peer: &PeerId, now: u64) -> Option<(Token, u64)> {
        let keys = self.read();
        let key = keys.iter().find(|k| k.retired_at.is_none())?;
        let expires_at = now + self.ttl.as_secs();
        let mut bytes = Vec::with_capacity(LEN);
        bytes.push(1);
        bytes.extend_from_slice(&key.id.to_be_bytes());
        bytes.extend_from_slice(peer.as_bytes());
        bytes.extend_from_slice(&expires_at.to_be_bytes());
        let tag = mac(&key.secret, &bytes).finalize().into_bytes();
        bytes.extend_from_slice(&tag);
        Some((Token(BASE64URL_NOPAD.encode(&bytes)), expires_at))
    }

    /// Checks a token and returns the identity it is bound to.
    pub fn verify(&self, token: &str, now: u64) -> Result<PeerId, TokenError> {
        let bytes = BASE64URL_NOPAD
            .decode(token.trim().as_bytes())
            .map_err(|_| TokenError::Malformed)?;
        if bytes.len() != LEN || bytes[0] != 1 {
            return Err(TokenError::Malformed);
        }
        let (body, tag) = bytes.split_at(BODY);
        let key_id = u32::from_be_bytes([body[1], body[2], body[3], body[4]]);
        let keys = self.read();
        let key = keys
            .iter()
            .find(|k| k.id == key_id && k.retired_at.is_none_or(|r| r + self.ttl.as_secs() >= now))
            .ok_or(TokenError::BadSignature)?;
        mac(&key.secret, body)
            .verify_slice(tag)
            .map_err(|_| TokenError::BadSignature)?;
        let mut peer = [0u8; 32];
        peer.copy_from_slice(&body[5..37]);
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&body[37..45]);
        if u64::from_be_bytes(exp) <= now {
            return Err(TokenError::Expired);
        }
        Ok(PeerId::from_bytes(peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(dir: &tempfile::TempDir) -> TokenKeys {
        TokenKeys::load(&dir.path().join("r.db"), Duration::from_secs(100), 1000).unwrap()
    }

    #[test]
    fn issue_verify_and_bind() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys(&dir);
        let peer = PeerId::from_bytes([7; 32]);
        let (t, exp) = k.issue(&peer, 1000).unwrap();
        assert_eq!(exp, 1100);
        assert_eq!(k.verify(t.expose(), 1050), Ok(peer));
        assert_eq!(k.verify(t.expose(), 1100), Err(TokenError::Expired));
        assert_eq!(format!("{t:?}"), "Token(..)");
    }

    #[test]
    fn tampering_any_byte_fails() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys(&dir);
        let (t, _) = k.issue(&PeerId::from_bytes([7; 32]), 1000).unwrap();
        let bytes = BASE64URL_NOPAD.decode(t.expose().as_bytes()).unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert!(
                k.verify(&BASE64URL_NOPAD.encode(&b), 1001).is_err(),
                "byte {i}"
            );
        }
        assert_eq!(k.verify("garbage", 1001), Err(TokenError::Malformed));
    }

    #[test]
    fn rotation_is_due_by_the_current_keys_age_which_a_restart_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let every = Duration::from_secs(100);
        let k = keys(&dir);
        // `keys` makes the first key at 1000.
        assert!(!k.rotation_due(1099, every));
        assert!(k.rotation_due(1100, every));
        // Reloaded (a restart), the age is the same: the clock did not start over.
        let k = keys(&dir);
        assert!(k.rotation_due(1100, every));
        k.rotate(1100).unwrap();
        assert!(!k.rotation_due(1150, every));
        assert!(!keys(&dir).rotation_due(1199, every));
        assert!(keys(&dir).rotation_due(1200, every));
    }

    #[test]
    fn secret_persists_and_rotation_keeps_previous_for_a_window() {
        let dir = tempfile::tempdir().unwrap();
        let peer = PeerId::from_bytes([1; 32]);
        let t = keys(&dir).issue(&peer, 1000).unwrap().0;
        // Reloaded from the database (a relay restart): still valid.
        let k = keys(&dir);
        assert_eq!(k.verify(t.expose(), 1010), Ok(peer));
        k.rotate(1020).unwrap();
        assert_eq!(
            k.verify(t.expose(), 1050),
            Ok(peer),
            "previous key still verifies"
        );
        let t2 = k.issue(&peer, 1050).unwrap().0;
        assert_ne!(t, t2);
        k.rotate(1200).unwrap();
        assert_eq!(k.verify(t2.expose(), 1140), Ok(peer));
        // A token from a secret retired more than a lifetime ago is refused, even if unexpired.
        let fresh = keys(&dir);
        assert_eq!(
            fresh.verify(t.expose(), 1090),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn another_relays_token_is_refused() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let t = keys(&d1)
            .issue(&PeerId::from_bytes([1; 32]), 1000)
            .unwrap()
            .0;
        assert_eq!(
            keys(&d2).verify(t.expose(), 1001),
            Err(TokenError::BadSignature)
        );
    }
}
