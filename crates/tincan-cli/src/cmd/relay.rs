//! `tincan relay`: settings from flags, environment and a TOML file, then the relay library.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use tincan_relay::{Config, Rate};

use crate::cli::{RelayArgs, parse_duration};
use crate::output::{CliError, Out};

/// The config file: the same settings as the flags.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    db: Option<PathBuf>,
    max_body: Option<usize>,
    queue_cap: Option<u64>,
    max_queued: Option<u64>,
    message_ttl: Option<String>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    rate_per_identity: Option<f64>,
    burst_per_identity: Option<f64>,
    rate_per_ip: Option<f64>,
    burst_per_ip: Option<f64>,
    max_open_invites: Option<u32>,
    max_pairs: Option<u64>,
    max_db_bytes: Option<u64>,
    write_behind_ms: Option<u64>,
    token_ttl: Option<String>,
    token_rotate: Option<String>,
}

fn bad_config(message: String) -> CliError {
    CliError::new("bad_config", 2, message)
}

fn load_file(path: &std::path::Path) -> Result<FileConfig, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad_config(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| bad_config(format!("config file {}: {e}", path.display())))
}

fn duration(
    flag: Option<u64>,
    file: Option<&str>,
    name: &str,
    default: Duration,
) -> Result<Duration, CliError> {
    if let Some(s) = flag {
        return Ok(Duration::from_secs(s));
    }
    match file {
        Some(text) => parse_duration(text)
            .map(Duration::from_secs)
            .map_err(|e| bad_config(format!("{name}: {e}"))),
        None => Ok(default),
    }
}

/// The smallest `max_body`: a pairing's sealed join must fit, or accepting an invite would claim it
/// and then fail.
const MIN_BODY: usize = 1024;
/// The smallest `max_db_bytes`: the schema alone takes a few pages.
const MIN_DB_BYTES: u64 = 64 * 1024;

/// Merges flags/environment over the file over the defaults. The default database is
/// `relay.db` in `home` when one was given (`--home` or `TINCAN_HOME`), so relays of two homes
/// do not share one; else in the platform data dir.
fn settings(args: RelayArgs, home: Option<&Path>) -> Result<(String, Config), CliError> {
    let file = match &args.config {
        Some(p) => load_file(p)?,
        None => FileConfig::default(),
    };
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "127.0.0.1:8787".into());
    let db = match args.db.or(file.db) {
        Some(p) => p,
        None => default_db(home)?,
    };
    let mut c = Config::new(db);
    // Where a bad value may have come from, for the errors below.
    let sources = match &args.config {
        Some(p) => format!(
            " (set by its flag, its TINCAN_RELAY_ variable, or {})",
            p.display()
        ),
        None => " (set by its flag or its TINCAN_RELAY_ variable)".to_string(),
    };
    let max_body = args.max_body.or(file.max_body).unwrap_or(c.max_body);
    if !(MIN_BODY..=tincan_relay::MAX_BODY_LIMIT).contains(&max_body) {
        return Err(bad_config(format!(
            "max_body is {max_body}{sources}; it must be between {MIN_BODY} (a pairing's join is about 430 bytes sealed) and {} bytes",
            tincan_relay::MAX_BODY_LIMIT
        )));
    }
    c.max_body = max_body;
    c.queue_cap = args.queue_cap.or(file.queue_cap).unwrap_or(c.queue_cap);
    c.max_queued = args.max_queued.or(file.max_queued).unwrap_or(c.max_queued);
    c.message_ttl = duration(
        args.message_ttl,
        file.message_ttl.as_deref(),
        "message_ttl",
        c.message_ttl,
    )?;
    c.max_connections = args
        .max_connections
        .or(file.max_connections)
        .unwrap_or(c.max_connections);
    c.max_connections_per_ip = args
        .max_connections_per_ip
        .or(file.max_connections_per_ip)
        .unwrap_or(c.max_connections_per_ip);
    c.rate_per_identity = Rate::new(
        args.rate_per_identity
            .or(file.rate_per_identity)
            .unwrap_or(c.rate_per_identity.per_sec),
        args.burst_per_identity
            .or(file.burst_per_identity)
            .unwrap_or(c.rate_per_identity.burst),
    );
    c.rate_per_ip = Rate::new(
        args.rate_per_ip
            .or(file.rate_per_ip)
            .unwrap_or(c.rate_per_ip.per_sec),
        args.burst_per_ip
            .or(file.burst_per_ip)
            .unwrap_or(c.rate_per_ip.burst),
    );
    for (name, r) in [("identity", c.rate_per_identity), ("ip", c.rate_per_ip)] {
        if !(r.per_sec >= 0.0 && r.burst >= 1.0 && r.per_sec.is_finite() && r.burst.is_finite()) {
            return Err(bad_config(format!(
                "rate_per_{name} must be >= 0 and burst_per_{name} >= 1"
            )));
        }
    }
    c.max_open_invites = args
        .max_open_invites
        .or(file.max_open_invites)
        .unwrap_or(c.max_open_invites);
    c.max_pairs = args.max_pairs.or(file.max_pairs).unwrap_or(c.max_pairs);
    c.max_db_bytes = args.max_db_bytes.or(file.max_db_bytes).or(c.max_db_bytes);
    // A cap of 0 would refuse everything (unlike a rate, where 0 means unlimited): say so at start.
    for (name, value) in [
        ("max_connections", c.max_connections as u64),
        ("max_connections_per_ip", c.max_connections_per_ip as u64),
        ("queue_cap", c.queue_cap),
        ("max_queued", c.max_queued),
        ("max_open_invites", u64::from(c.max_open_invites)),
        ("max_pairs", c.max_pairs),
    ] {
        if value == 0 {
            return Err(bad_config(format!(
                "{name} is 0{sources}, which would refuse every request; give at least 1 (caps have no \"unlimited\" value: use a large number)"
            )));
        }
    }
    if let Some(bytes) = c.max_db_bytes
        && bytes < MIN_DB_BYTES
    {
        return Err(bad_config(format!(
            "max_db_bytes is {bytes}{sources}; it must be at least {MIN_DB_BYTES} (64 KiB)"
        )));
    }
    if let Some(ms) = args.write_behind_ms.or(file.write_behind_ms) {
        if ms > 10_000 {
            return Err(bad_config(format!(
                "write_behind_ms is {ms}; it must be at most 10000 (a sender waits that long for Sent)"
            )));
        }
        c.write_behind = Duration::from_millis(ms);
    }
    c.token_ttl = duration(
        args.token_ttl,
        file.token_ttl.as_deref(),
        "token_ttl",
        c.token_ttl,
    )?;
    c.token_rotate_every = duration(
        args.token_rotate,
        file.token_rotate.as_deref(),
        "token_rotate",
        c.token_rotate_every,
    )?;
    Ok((listen, c))
}

/// `relay.db` in `home` if given (unless only the data dir has one), else in the platform data
/// dir; the directory is created.
fn default_db(home: Option<&Path>) -> Result<PathBuf, CliError> {
    let data_dir =
        directories::ProjectDirs::from("", "", "tincan").map(|d| d.data_dir().to_path_buf());
    default_db_in(home, data_dir)
}

/// [`default_db`] with the platform data dir given.
fn default_db_in(home: Option<&Path>, data_dir: Option<PathBuf>) -> Result<PathBuf, CliError> {
    let dir = match home {
        Some(h) => {
            // A relay that ran before relays kept their database in the home has its pairings,
            // queue and token keys in the data dir: keep using that file rather than start
            // afresh and strand what it holds.
            let earlier = data_dir.as_ref().map(|d| d.join("relay.db"));
            if !h.join("relay.db").exists()
                && let Some(earlier) = earlier.filter(|p| p.exists())
            {
                crate::output::eprintln_safe(&format!(
                    "note: using the existing relay database {} (made before relays kept theirs in the home); \
                     move it to {} to keep it there, or pass --db to choose",
                    earlier.display(),
                    h.join("relay.db").display()
                ));
                return Ok(earlier);
            }
            h.to_path_buf()
        }
        None => data_dir.ok_or_else(|| {
            CliError::new(
                "no_data_dir",
                2,
                "cannot find a data directory; pass --db PATH or --home DIR",
            )
        })?,
    };
    // Private like a home (0700), which this directory may become or already be.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| CliError::new("io", 1, format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir.join("relay.db"))
}

pub async fn run(home: Option<PathBuf>, args: RelayArgs, out: &Out) -> Result<ExitCode, CliError> {
    let tls_files = (args.tls_cert.clone(), args.tls_key.clone());
    let (listen, config) = settings(args, home.as_deref())?;
    let db = config.db_path.clone();
    let tls = match (&tls_files.0, &tls_files.1) {
        (Some(cert), Some(key)) => Some(
            tincan_relay::tls::load_config(cert, key)
                .map_err(|e| CliError::new("bad_tls", 2, e.to_string()))?,
        ),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    if let Some(parent) = db.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        return Err(CliError::new(
            "bad_db",
            2,
            format!(
                "the directory for --db {} does not exist: create it, or choose another path",
                db.display()
            ),
        ));
    }
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| crate::cmd::bind_error(&e, &listen, "--listen"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::internal(e.to_string()))?;
    if !addr.ip().is_loopback() && tls.is_none() {
        crate::output::eprintln_safe(&format!(
            "warning: listening on {addr} without TLS: messages stay end-to-end encrypted, but \
             tokens, ids and timing cross the network in the clear; give --tls-cert/--tls-key or \
             put a TLS proxy in front (README: Running a relay)"
        ));
    }
    let limits = json!({
        "max_body": config.max_body,
        "queue_cap": config.queue_cap,
        "max_queued": config.max_queued,
        "message_ttl_secs": config.message_ttl.as_secs(),
        "max_connections": config.max_connections,
        "max_connections_per_ip": config.max_connections_per_ip,
        "rate_per_identity": config.rate_per_identity.per_sec,
        "burst_per_identity": config.rate_per_identity.burst,
        "rate_per_ip": config.rate_per_ip.per_sec,
        "burst_per_ip": config.rate_per_ip.burst,
        "max_open_invites": config.max_open_invites,
        "max_pairs": config.max_pairs,
        "max_db_bytes": config.max_db_bytes,
        "write_behind_ms": config.write_behind.as_millis() as u64,
        "token_ttl_secs": config.token_ttl.as_secs(),
        "token_rotate_secs": config.token_rotate_every.as_secs(),
    });
    // The store opens before anything says "listening": a database another relay holds, or one
    // that cannot be opened, is refused first.
    let relay = tincan_relay::Relay::open(config)
        .map_err(|e| relay_error(e, &db, "cannot start the relay"))?;
    // Installed before `listening` is said: a stop sent right after it gets the graceful
    // shutdown.
    let shutdown = crate::signals::Shutdown::install();
    let served = async move {
        match tls {
            Some(tls) => relay.serve_tls(listener, tls, shutdown.wait()).await,
            None => relay.serve_tcp(listener, shutdown.wait()).await,
        }
    };
    out.print(
        json!({"event": "listening", "addr": addr.to_string(), "url": format!("{scheme}://{addr}"), "db": db.display().to_string(), "limits": limits}),
        || format!("tincan relay listening on {scheme}://{addr} (db: {})", db.display()),
    );
    served
        .await
        .map_err(|e| relay_error(e, &db, "relay stopped"))?;
    Ok(ExitCode::SUCCESS)
}

fn relay_error(e: tincan_relay::RelayError, db: &std::path::Path, what: &str) -> CliError {
    match e {
        tincan_relay::RelayError::Store(e @ tincan_relay::store::StoreError::InUse(_)) => {
            CliError::new("db_in_use", 2, e.to_string())
        }
        tincan_relay::RelayError::Store(e @ tincan_relay::store::StoreError::Private { .. }) => {
            CliError::new("bad_db", 2, e.to_string())
        }
        e => CliError::new(
            "relay_failed",
            1,
            format!(
                "{what}: {e}. If the database is corrupt, move {} aside (and its -wal file) and start again",
                db.display()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_relay_toml_is_valid_and_says_the_defaults() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
                .unwrap();
        let start = readme
            .find("# relay.toml")
            .expect("the README shows a relay.toml");
        let block = &readme[start..];
        let block = &block[..block.find("```").unwrap()];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, block).unwrap();
        let (listen, c) = settings(
            RelayArgs {
                config: Some(path),
                ..Default::default()
            },
            Some(dir.path()),
        )
        .unwrap();
        let d = tincan_relay::Config::new(c.db_path.clone());
        assert_eq!(listen, "127.0.0.1:8787");
        assert_eq!(
            (c.max_body, c.queue_cap, c.max_queued, c.max_pairs),
            (d.max_body, d.queue_cap, d.max_queued, d.max_pairs)
        );
        assert_eq!(
            (c.max_connections, c.max_open_invites, c.message_ttl),
            (d.max_connections, d.max_open_invites, d.message_ttl)
        );
    }

    #[test]
    fn flags_override_file_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            "queue_cap = 5\nmessage_ttl = \"2h\"\nrate_per_ip = 7.5\ndb = \"/tmp/x.db\"\n",
        )
        .unwrap();
        let args = RelayArgs {
            config: Some(path.clone()),
            queue_cap: Some(9),
            ..Default::default()
        };
        let home = Some(dir.path());
        let (listen, c) = settings(args, home).unwrap();
        assert_eq!(listen, "127.0.0.1:8787");
        assert_eq!(
            c.db_path,
            Path::new("/tmp/x.db"),
            "the file's db wins over the home"
        );
        assert_eq!(c.queue_cap, 9, "flag wins");
        assert_eq!(
            c.message_ttl,
            Duration::from_secs(7200),
            "file wins over default"
        );
        assert_eq!(c.rate_per_ip.per_sec, 7.5);
        assert_eq!(c.max_open_invites, 100, "default");
        assert_eq!(c.write_behind, Duration::from_millis(50), "default");
        let c = settings(
            RelayArgs {
                write_behind_ms: Some(0),
                ..Default::default()
            },
            home,
        )
        .unwrap()
        .1;
        assert_eq!(c.write_behind, Duration::ZERO, "0 turns write-behind off");
        let err = settings(
            RelayArgs {
                write_behind_ms: Some(60_000),
                ..Default::default()
            },
            home,
        )
        .unwrap_err();
        assert!(err.message.contains("write_behind_ms"), "{}", err.message);
        std::fs::write(&path, "queue_capp = 5\n").unwrap();
        let err = settings(
            RelayArgs {
                config: Some(path),
                ..Default::default()
            },
            home,
        )
        .unwrap_err();
        assert!(err.message.contains("queue_capp"), "{}", err.message);
    }

    #[test]
    fn caps_of_zero_and_too_small_sizes_are_refused_naming_the_setting_and_where_it_was_set() {
        let dir = tempfile::tempdir().unwrap();
        let home = Some(dir.path());
        let refused = |args: RelayArgs| settings(args, home).unwrap_err().message;
        for (name, args) in [
            (
                "max_connections",
                RelayArgs {
                    max_connections: Some(0),
                    ..Default::default()
                },
            ),
            (
                "max_connections_per_ip",
                RelayArgs {
                    max_connections_per_ip: Some(0),
                    ..Default::default()
                },
            ),
            (
                "queue_cap",
                RelayArgs {
                    queue_cap: Some(0),
                    ..Default::default()
                },
            ),
            (
                "max_queued",
                RelayArgs {
                    max_queued: Some(0),
                    ..Default::default()
                },
            ),
            (
                "max_open_invites",
                RelayArgs {
                    max_open_invites: Some(0),
                    ..Default::default()
                },
            ),
            (
                "max_pairs",
                RelayArgs {
                    max_pairs: Some(0),
                    ..Default::default()
                },
            ),
            (
                "max_body",
                RelayArgs {
                    max_body: Some(300),
                    ..Default::default()
                },
            ),
            (
                "max_db_bytes",
                RelayArgs {
                    max_db_bytes: Some(1000),
                    ..Default::default()
                },
            ),
        ] {
            let message = refused(args);
            assert!(message.starts_with(&format!("{name} is ")), "{message}");
        }
        // A file's value names the file.
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, "queue_cap = 0\n").unwrap();
        let message = refused(RelayArgs {
            config: Some(path.clone()),
            ..Default::default()
        });
        assert!(message.contains(&path.display().to_string()), "{message}");
        // The smallest allowed values start.
        let (_, c) = settings(
            RelayArgs {
                max_body: Some(MIN_BODY),
                max_db_bytes: Some(MIN_DB_BYTES),
                queue_cap: Some(1),
                ..Default::default()
            },
            home,
        )
        .unwrap();
        assert_eq!((c.max_body, c.queue_cap), (MIN_BODY, 1));
    }

    #[test]
    fn a_given_home_holds_the_default_database_and_db_still_wins() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("relay-home");
        let data = dir.path().join("data");
        let db = default_db_in(Some(&home), Some(data.clone())).unwrap();
        assert_eq!(db, home.join("relay.db"));
        let mode = std::fs::metadata(&home).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "created private, like a home");
        // No home: the data dir.
        assert_eq!(
            default_db_in(None, Some(data.clone())).unwrap(),
            data.join("relay.db")
        );
        // A database a relay made in the data dir before (an upgrade) is kept, not stranded,
        // until the home has one of its own.
        std::fs::write(data.join("relay.db"), b"").unwrap();
        let fresh = dir.path().join("fresh-home");
        assert_eq!(
            default_db_in(Some(&fresh), Some(data.clone())).unwrap(),
            data.join("relay.db")
        );
        std::fs::write(home.join("relay.db"), b"").unwrap();
        assert_eq!(
            default_db_in(Some(&home), Some(data.clone())).unwrap(),
            home.join("relay.db")
        );
        let db = dir.path().join("elsewhere.db");
        let (_, c) = settings(
            RelayArgs {
                db: Some(db.clone()),
                ..Default::default()
            },
            Some(&home),
        )
        .unwrap();
        assert_eq!(c.db_path, db, "--db wins over the home");
    }
}
