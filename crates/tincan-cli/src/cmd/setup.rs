//! `tincan setup` and `tincan whoami`.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

use crate::cmd::{home_dir, open_home};
use crate::output::{CliError, Out};

pub fn setup(home: Option<PathBuf>, out: &Out) -> Result<ExitCode, CliError> {
    let dir = home_dir(home)?;
    let mut h = crate::cmd::open_dir(&dir)?;
    let (keys, created) = h.setup()?;
    let id = keys.ed25519.to_string();
    let fp = keys.fingerprint();
    out.print(
        json!({"id": id, "fingerprint": fp, "home": dir.display().to_string(), "created": created}),
        || {
            let verb = if created { "Created" } else { "Already have" };
            format!(
                "{verb} identity {id}\nfingerprint: {fp}\nhome: {}",
                dir.display()
            )
        },
    );
    Ok(ExitCode::SUCCESS)
}

pub fn whoami(home: Option<PathBuf>, out: &Out) -> Result<ExitCode, CliError> {
    let h = open_home(home)?;
    let keys = h.identity()?.keys();
    let id = keys.ed25519.to_string();
    let fp = keys.fingerprint();
    out.print(
        json!({"id": id, "fingerprint": fp, "home": h.dir().display().to_string()}),
        || format!("id: {id}\nfingerprint: {fp}"),
    );
    Ok(ExitCode::SUCCESS)
}
