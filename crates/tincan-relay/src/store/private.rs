//! The database files are private to the relay's user: the database holds the token secret
//! (`token_keys`), with which anyone could mint a token for any identity, and its WAL holds recent
//! pages of it.

use std::path::{Path, PathBuf};

use super::StoreError;

/// The database file and the WAL and shared-memory files SQLite keeps beside it.
fn files(db: &Path) -> [PathBuf; 3] {
    let with = |suffix: &str| {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [db.to_path_buf(), with("-wal"), with("-shm")]
}

/// Creates `db` readable and writable by this user only if it does not exist, and takes group
/// and other permissions away from it and its WAL and shared-memory files if they have any
/// (SQLite gives the WAL and shared-memory files the database file's mode when it creates them).
/// Returns the files it had to tighten, for a warning.
pub(crate) fn make_private(db: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let failed = |path: &Path, error| StoreError::Private {
        path: path.display().to_string(),
        error,
    };
    let mut tightened = Vec::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(db)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(failed(db, e)),
        }
        for path in files(db) {
            let mode = match std::fs::metadata(&path) {
                Ok(m) => m.permissions().mode(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(failed(&path, e)),
            };
            if mode & 0o077 != 0 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o700))
                    .map_err(|e| failed(&path, e))?;
                tightened.push(path);
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (db, failed);
    Ok(tightened)
}

#[cfg(all(test, unix))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_database_is_created_private() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("relay.db");
        assert!(make_private(&db).unwrap().is_empty());
        assert_eq!(mode(&db), 0o600);
    }

    #[test]
    fn an_existing_database_and_its_wal_readable_by_others_are_tightened_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("relay.db");
        let wal = dir.path().join("relay.db-wal");
        for p in [&db, &wal] {
            std::fs::write(p, b"").unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let tightened = make_private(&db).unwrap();
        assert_eq!(tightened, vec![db.clone(), wal.clone()]);
        assert_eq!((mode(&db), mode(&wal)), (0o600, 0o600));
        // Already private: nothing to report.
        assert!(make_private(&db).unwrap().is_empty());
    }
}
