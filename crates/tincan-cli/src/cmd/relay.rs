//! `tincan relay`.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use tincan_relay::Config;

use crate::cli::RelayArgs;
use crate::output::{CliError, Out};

pub async fn run(args: RelayArgs, out: &Out) -> Result<ExitCode, CliError> {
    let db = match args.db {
        Some(p) => p,
        None => {
            let dirs = directories::ProjectDirs::from("", "", "tincan").ok_or_else(|| {
                CliError::new(
                    "no_data_dir",
                    2,
                    "cannot find a data directory; pass --db PATH",
                )
            })?;
            std::fs::create_dir_all(dirs.data_dir()).map_err(|e| {
                CliError::new(
                    "io",
                    1,
                    format!("cannot create {}: {e}", dirs.data_dir().display()),
                )
            })?;
            dirs.data_dir().join("relay.db")
        }
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| {
            CliError::new(
                "listen_failed",
                1,
                format!(
                    "cannot listen on {}: {e} (is another relay running on that port?)",
                    args.listen
                ),
            )
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::internal(e.to_string()))?;
    let mut config = Config::new(db.clone());
    config.queue_cap = args.queue_cap;
    config.message_ttl = Duration::from_secs(args.message_ttl);
    out.print(
        json!({"event": "listening", "addr": addr.to_string(), "url": format!("http://{addr}"), "db": db.display().to_string()}),
        || format!("tincan relay listening on http://{addr} (db: {})", db.display()),
    );
    tincan_relay::run(listener, config, shutdown_signal())
        .await
        .map_err(|e| CliError::new("relay_failed", 1, format!("relay stopped: {e}")))?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
