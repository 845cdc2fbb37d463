//! Peers: who this agent has paired with, their aliases and their session state.

use rusqlite::{OptionalExtension, Transaction, params};
use tincan_proto::ids::{PeerId, fingerprint};
use tincan_proto::session::PeerSession;

use super::Home;
use crate::error::ClientError;

/// A paired peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRecord {
    /// The peer's id.
    pub id: PeerId,
    /// A local name, if set.
    pub alias: Option<String>,
    /// The peer's Curve25519 key.
    pub curve25519: [u8; 32],
    /// The relay both use.
    pub relay_url: String,
    /// When pairing happened, unix seconds.
    pub created_at: u64,
    /// When a message last arrived from it, unix seconds.
    pub last_seen: Option<u64>,
    /// What the peer's tincan understands ([`tincan_proto::features`]), learnt at pairing; 0
    /// for a peer paired under version 1.
    pub features: u32,
}

impl PeerRecord {
    /// The fingerprint to compare out of band.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.id.as_bytes(), &self.curve25519)
    }

    /// The alias, or the first 12 characters of the id.
    pub fn display_name(&self) -> String {
        self.alias
            .clone()
            .unwrap_or_else(|| self.id.to_string()[..12].to_string())
    }
}

const COLUMNS: &str = "id, alias, curve25519, relay_url, created_at, last_seen, features";

fn row_to_peer(r: &rusqlite::Row<'_>) -> rusqlite::Result<PeerRecord> {
    let id: String = r.get(0)?;
    let curve: Vec<u8> = r.get(2)?;
    let bad = |i| rusqlite::Error::InvalidColumnType(i, "peer".into(), rusqlite::types::Type::Blob);
    Ok(PeerRecord {
        id: id.parse().map_err(|_| bad(0))?,
        alias: r.get(1)?,
        curve25519: curve.as_slice().try_into().map_err(|_| bad(2))?,
        relay_url: r.get(3)?,
        created_at: r.get::<_, i64>(4)? as u64,
        last_seen: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
        features: r.get::<_, i64>(6)? as u32,
    })
}

impl Home {
    /// Every peer, oldest first.
    pub fn peers(&self) -> Result<Vec<PeerRecord>, ClientError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM peers ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map([], row_to_peer)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The relay to use when none is named: the one this home used last (setting `relay`),
    /// else the relay of the peer paired most recently.
    pub fn default_relay(&self) -> Result<Option<String>, ClientError> {
        if let Some(r) = self.setting("relay")? {
            return Ok(Some(r));
        }
        Ok(self.peers()?.pop().map(|p| p.relay_url))
    }

    /// One peer by id.
    pub fn peer(&self, id: &PeerId) -> Result<Option<PeerRecord>, ClientError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM peers WHERE id = ?1"),
                params![id.to_string()],
                row_to_peer,
            )
            .optional()?)
    }

    /// Finds a peer by full id, alias, or unique id prefix.
    pub fn resolve_peer(&self, name: &str) -> Result<PeerRecord, ClientError> {
        let name = name.trim();
        // An exact alias or id through the indexes; only a prefix needs every peer.
        // (Two plain lookups: SQLite re-prepares an `alias = ?1 OR id = ?1` query on every run.)
        let by = |column: &str| -> Result<Option<PeerRecord>, ClientError> {
            Ok(self
                .conn
                .prepare_cached(&format!("SELECT {COLUMNS} FROM peers WHERE {column} = ?1"))?
                .query_row(params![name], row_to_peer)
                .optional()?)
        };
        // A full id names its peer whatever aliases say.
        if let Some(p) = by("id")? {
            return Ok(p);
        }
        // Then the user's own names: an alias is chosen, so it wins over the start of an id
        // (no peer can take it over by picking a key whose id starts with it; `set_alias`
        // refuses an alias that is the start of another peer's id when it is set).
        if let Some(p) = by("alias")? {
            return Ok(p);
        }
        let lower = name.to_ascii_lowercase();
        let peers = self.peers()?;
        let matches: Vec<_> = if lower.is_empty() {
            Vec::new()
        } else {
            peers
                .iter()
                .filter(|p| p.id.to_string().starts_with(&lower))
                .collect()
        };
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(ClientError::UnknownPeer(name.to_string())),
            _ => Err(ClientError::AmbiguousPeer(name.to_string())),
        }
    }

    /// Sets (or with `None`, clears) a peer's alias.
    pub fn set_alias(&self, id: &PeerId, alias: Option<&str>) -> Result<(), ClientError> {
        if let Some(a) = alias {
            let valid = !a.is_empty()
                && a.len() <= 64
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !valid {
                return Err(ClientError::BadAlias(
                    "use 1-64 characters from letters, digits, '-', '_' and '.'".into(),
                ));
            }
            let lower = a.to_ascii_lowercase();
            for other in self.peers()?.iter().filter(|p| p.id != *id) {
                if other.alias.as_deref() == Some(a) {
                    return Err(ClientError::BadAlias(format!(
                        "'{a}' already names peer {}",
                        other.id
                    )));
                }
                // Otherwise the alias would silently take over a name that reached that peer.
                if other.id.to_string().starts_with(&lower) {
                    return Err(ClientError::BadAlias(format!(
                        "'{a}' is the start of peer {}'s id, so it already names that peer; pick a name that is not",
                        other.id
                    )));
                }
            }
        }
        let n = self.conn.execute(
            "UPDATE peers SET alias = ?1 WHERE id = ?2",
            params![alias, id.to_string()],
        )?;
        if n == 0 {
            return Err(ClientError::UnknownPeer(id.to_string()));
        }
        Ok(())
    }
}

/// A peer as pairing learns it.
pub(super) struct Paired<'a> {
    pub id: &'a PeerId,
    pub curve25519: &'a [u8; 32],
    pub relay_url: &'a str,
    /// Its feature bits (0 when it sent none).
    pub features: u32,
}

/// Inserts or replaces a peer with a new session (re-pairing replaces the old session).
pub(super) fn upsert_peer(
    tx: &Transaction<'_>,
    home_key: &tincan_proto::identity::PickleKey,
    peer: &Paired<'_>,
    session: &PeerSession,
    now: u64,
) -> Result<i64, ClientError> {
    let Paired {
        id,
        curve25519,
        relay_url,
        features,
    } = *peer;
    let rev = super::session_cache::new_rev();
    tx.execute(
        // Pairing again keeps the replaced session for what the peer sealed before it switched
        // (`prior`).
        "INSERT INTO peers (id, curve25519, relay_url, session, session_rev, created_at, features) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?8)
         ON CONFLICT (id) DO UPDATE SET curve25519 = excluded.curve25519, relay_url = excluded.relay_url,
         features = excluded.features,
         prior_session = peers.session, prior_until = ?7,
         session = excluded.session, session_rev = excluded.session_rev",
        params![
            id.to_string(),
            curve25519.as_slice(),
            relay_url,
            session.pickle(home_key),
            rev,
            now as i64,
            (now * 1000 + super::prior::WINDOW_MS) as i64,
            i64::from(features)
        ],
    )?;
    Ok(rev)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::fixtures::{RELAY, kinds, paired, take};
    use super::super::{InboxKind, now_ms, now_secs};
    use crate::error::ClientError;
    use tincan_proto::invite::Invite;

    /// A home paired with two peers (B and C); returns A, B's id, C's id and C's home.
    fn with_two_peers(
        dir: &std::path::Path,
    ) -> (
        super::Home,
        tincan_proto::ids::PeerId,
        tincan_proto::ids::PeerId,
    ) {
        let t = paired(dir);
        let mut a = t.a;
        let mut c = super::Home::open(&dir.join("c")).unwrap();
        c.setup().unwrap();
        let c_id = c.identity().unwrap().peer_id();
        let draft = a.create_invite(RELAY, 60, now_secs()).unwrap();
        let invite = Invite::parse(&draft.url(), now_secs()).unwrap();
        c.accept_invite(&invite, now_ms()).unwrap();
        let join = take(&mut c);
        assert_eq!(kinds(&mut a, c_id, &join), [InboxKind::PeerJoined]);
        (a, t.b_id, c_id)
    }

    #[test]
    fn an_alias_cannot_take_over_a_name_that_reaches_another_peer() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b_id, c_id) = with_two_peers(dir.path());
        let b_prefix = &b_id.to_string()[..6];
        assert_eq!(a.resolve_peer(b_prefix).unwrap().id, b_id);
        // C may not be called by the start of B's id (any case), nor by B's full id.
        for name in [
            b_prefix.to_string(),
            b_prefix.to_ascii_uppercase(),
            b_id.to_string(),
        ] {
            let err = a.set_alias(&c_id, Some(&name)).unwrap_err();
            assert!(
                matches!(&err, ClientError::BadAlias(m) if m.contains(&b_id.to_string())),
                "{name}: {err}"
            );
        }
        // The name still reaches B.
        assert_eq!(a.resolve_peer(b_prefix).unwrap().id, b_id);
        // B may be called by the start of its own id; an unrelated alias for C is fine.
        a.set_alias(&b_id, Some(b_prefix)).unwrap();
        a.set_alias(&c_id, Some("planner")).unwrap();
        assert_eq!(a.resolve_peer(b_prefix).unwrap().id, b_id);
        assert_eq!(a.resolve_peer("planner").unwrap().id, c_id);
        assert_eq!(a.resolve_peer(&c_id.to_string()).unwrap().id, c_id);
    }

    #[test]
    fn a_later_peer_whose_id_starts_with_an_alias_can_neither_take_it_over_nor_block_it() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b_id, c_id) = with_two_peers(dir.path());
        // As if B's alias had been set before C paired (or C ground its key to match it):
        // written past `set_alias`'s check.
        let c_prefix = c_id.to_string()[..5].to_string();
        a.conn
            .execute(
                "UPDATE peers SET alias = ?1 WHERE id = ?2",
                rusqlite::params![c_prefix, b_id.to_string()],
            )
            .unwrap();
        // The alias still names B, the peer the user named.
        assert_eq!(a.resolve_peer(&c_prefix).unwrap().id, b_id);
        // Full ids reach each peer; more of C's id reaches C.
        assert_eq!(a.resolve_peer(&b_id.to_string()).unwrap().id, b_id);
        assert_eq!(a.resolve_peer(&c_id.to_string()).unwrap().id, c_id);
        assert_eq!(a.resolve_peer(&c_id.to_string()[..8]).unwrap().id, c_id);
    }

    #[test]
    fn the_default_relay_is_the_last_used_else_the_newest_peers() {
        let dir = tempfile::tempdir().unwrap();
        let t = paired(dir.path());
        // Paired through the fixtures' relay, never told "relay": the peer's relay it is.
        assert_eq!(t.b.setting("relay").unwrap(), None);
        assert_eq!(t.b.default_relay().unwrap().as_deref(), Some(RELAY));
        t.b.set_setting("relay", "http://127.0.0.1:9").unwrap();
        assert_eq!(
            t.b.default_relay().unwrap().as_deref(),
            Some("http://127.0.0.1:9")
        );
        let lone = tempfile::tempdir().unwrap();
        let mut h = super::Home::open(lone.path()).unwrap();
        h.setup().unwrap();
        assert_eq!(h.default_relay().unwrap(), None);
    }
}
