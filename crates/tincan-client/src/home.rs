//! An agent's home: its identity key file and its SQLite state (peers, sessions, invites, outbox,
//! inbox).
//!
//! Every change to ratchet state happens inside one `BEGIN IMMEDIATE` transaction together with
//! the outbox or inbox rows it produced: the session is loaded, used and stored back before the
//! commit. A crash therefore never separates a ratchet step from its message, and two processes
//! using the same home (a `listen` and a `send`) are serialised by SQLite instead of racing on a
//! stale copy of the ratchet.

mod agent;
mod audit;
mod batches;
mod deferred;
#[cfg(test)]
mod fixtures;
mod give_back;
mod invites;
mod messages;
mod migrate;
mod peers;
mod policy;
mod prior;
mod retention;
mod schema;
mod session_cache;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::Rng;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tincan_proto::identity::{Identity, IdentityKeys, PickleKey};

pub use self::agent::AgentMessage;
pub use self::audit::{AuditVerdict, text_digest};
pub use self::batches::BATCH_BYTES;
pub use self::messages::{InboxEntry, InboxKind, Incoming, OutboxEntry, Processed, Queued};
pub use self::peers::PeerRecord;
pub use self::policy::{PeerPolicy, PeerStanding};
pub use self::retention::Pruned;
use crate::error::ClientError;

const KEY_FILE: &str = "identity.key";
const DB_FILE: &str = "tincan.db";

/// An open home directory.
pub struct Home {
    dir: PathBuf,
    conn: Connection,
    key: PickleKey,
    /// The identity as loaded at open; used read-only (id, signing). Anything that changes the
    /// account (invites, inbound sessions) reloads it inside its transaction.
    identity: Option<Identity>,
    /// Unpickled sessions, checked against the stored revision in every transaction.
    sessions: session_cache::SessionCache,
    /// Consumed marks and relay acknowledgements that ride along with the next write
    /// transaction (see [`Home::mark_consumed_later`], [`Home::outbox_acked_later`]).
    deferred: deferred::Deferred,
    _checkpoints: tincan_sqlite::Checkpointer,
}

impl std::fmt::Debug for Home {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Home")
            .field("dir", &self.dir)
            .field("identity", &self.identity.as_ref().map(Identity::peer_id))
            .finish_non_exhaustive()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        // Best effort: what is not written is shown or sent again, never lost.
        if let Err(e) = self.flush_deferred() {
            tracing::warn!(error = %e, "could not write deferred marks on close");
        }
    }
}

/// WAL size at which a home's writer checkpoints itself so the log starts over
/// (`tincan_sqlite::limit_wal`); a home writes far less than a relay, whose limit is larger.
const WAL_LIMIT: u64 = 64 << 20;

impl Home {
    /// Opens (creating if needed) the home at `dir`: directory mode 0700, key file mode 0600.
    pub fn open(dir: &Path) -> Result<Self, ClientError> {
        create_private_dir(dir)?;
        let key_path = dir.join(KEY_FILE);
        let mut conn = Connection::open(dir.join(DB_FILE))?;
        restrict(&dir.join(DB_FILE))?;
        // Before anything that may wait on another process opening the same home (switching a
        // fresh database to WAL takes a lock).
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        tincan_sqlite::enable_wal(&conn)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Checkpoints run on their own thread, not inside message commits, except when the WAL
        // reaches its limit (`limit_wal`: under steady traffic it would never start over).
        tincan_sqlite::limit_wal(&conn, WAL_LIMIT)?;
        conn.execute_batch(schema::SCHEMA)?;
        migrate::migrate(&mut conn)?;
        // A database with an identity and no key file: a new key could never open it, and
        // writing one would leave the user a key that looks right and is not. Say what is
        // missing and create nothing.
        // (Identity first, then the key: a process setting the home up writes its key before the
        // identity, so one opening the home at the same moment never sees an identity without
        // its key.)
        let has_identity: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM meta WHERE key = 'identity')",
            [],
            |r| r.get(0),
        )?;
        if has_identity && !key_path.exists() {
            return Err(ClientError::MissingKeyFile(key_path.display().to_string()));
        }
        let key = load_or_create_key(&key_path)?;
        restrict(&key_path)?;
        let checkpoints = tincan_sqlite::Checkpointer::start::<ClientError>(
            &dir.join(DB_FILE),
            "tincan-home-checkpoint",
        )?;
        let mut home = Self {
            dir: dir.to_path_buf(),
            conn,
            key,
            identity: None,
            sessions: session_cache::SessionCache::default(),
            deferred: deferred::Deferred::default(),
            _checkpoints: checkpoints,
        };
        home.identity = home.load_identity()?;
        Ok(home)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the identity if there is none. Returns its keys and whether it was new.
    pub fn setup(&mut self) -> Result<(IdentityKeys, bool), ClientError> {
        if let Some(id) = &self.identity {
            return Ok((id.keys(), false));
        }
        let id = Identity::generate();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existing: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = 'identity'", [], |r| {
                r.get(0)
            })
            .optional()?;
        if existing.is_none() {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('identity', ?1)",
                params![id.pickle(&self.key)],
            )?;
        }
        tx.commit()?;
        self.identity = self.load_identity()?;
        let keys = self.identity()?.keys();
        Ok((keys, existing.is_none()))
    }

    /// The identity; fails with [`ClientError::NoIdentity`] before [`Home::setup`].
    pub fn identity(&self) -> Result<&Identity, ClientError> {
        self.identity.as_ref().ok_or(ClientError::NoIdentity)
    }

    fn load_identity(&self) -> Result<Option<Identity>, ClientError> {
        let pickled: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'identity'", [], |r| {
                r.get(0)
            })
            .optional()?;
        match pickled {
            None => Ok(None),
            Some(p) => Identity::from_pickle(&p, &self.key)
                .map(Some)
                .map_err(|_| ClientError::BadKeyFile),
        }
    }

    /// A setting stored in the home (e.g. the default relay).
    pub fn setting(&self, key: &str) -> Result<Option<String>, ClientError> {
        // Cached: the policy reads a setting for every delivery.
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row(params![format!("setting.{key}")], |r| r.get(0))
            .optional()?)
    }

    /// Stores a setting.
    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), ClientError> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![format!("setting.{key}"), value],
        )?;
        Ok(())
    }
}

fn create_private_dir(dir: &Path) -> Result<(), ClientError> {
    fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn restrict(path: &Path) -> Result<(), ClientError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    }
    let _ = path;
    Ok(())
}

/// Reads a key file, waiting briefly for one another process is still writing (created empty,
/// then written).
fn read_key(path: &Path) -> Result<PickleKey, ClientError> {
    for _ in 0..50 {
        let bytes = fs::read(path)?;
        if let Ok(arr) = <[u8; 32]>::try_from(bytes.as_slice()) {
            return Ok(PickleKey::from_bytes(arr));
        }
        if !bytes.is_empty() {
            return Err(ClientError::BadKeyFile);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    Err(ClientError::BadKeyFile)
}

fn load_or_create_key(path: &Path) -> Result<PickleKey, ClientError> {
    match fs::read(path) {
        Ok(bytes) if bytes.is_empty() => read_key(path),
        Ok(bytes) => {
            let arr: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| ClientError::BadKeyFile)?;
            Ok(PickleKey::from_bytes(arr))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            let mut opts = fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = match opts.open(path) {
                Ok(f) => f,
                // Another process setting up the same home made it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return read_key(path);
                }
                Err(e) => return Err(e.into()),
            };
            f.write_all(&bytes)?;
            f.sync_all()?;
            Ok(PickleKey::from_bytes(bytes))
        }
        Err(e) => Err(e.into()),
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    now_ms() / 1000
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b
}

#[cfg(test)]
mod open_tests {
    #![allow(clippy::unwrap_used)]

    use super::Home;

    /// Processes that set up one fresh home at the same moment (two `room open`s) all get it, with
    /// one key and one identity, and none sees the other's identity before its key.
    #[test]
    fn a_fresh_home_opened_and_set_up_concurrently_ends_with_one_identity() {
        for _ in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let home = dir.path().join("h");
            let ids: Vec<_> = (0..4)
                .map(|_| {
                    let home = home.clone();
                    std::thread::spawn(move || {
                        let mut h = Home::open(&home)?;
                        h.setup().map(|(keys, _)| keys.ed25519)
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect();
            let first = ids[0].as_ref().unwrap();
            for id in &ids {
                assert_eq!(id.as_ref().unwrap(), first, "{ids:?}");
            }
        }
    }
}
