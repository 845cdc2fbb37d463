//! `tincan peers` and `tincan peers alias`.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

use crate::cli::{PeersAction, PeersArgs};
use crate::cmd::open_home;
use crate::output::{CliError, Out};

pub fn run(home: Option<PathBuf>, args: PeersArgs, out: &Out) -> Result<ExitCode, CliError> {
    let h = open_home(home)?;
    match args.action {
        Some(PeersAction::Alias { peer, name }) => {
            let p = h.resolve_peer(&peer)?;
            h.set_alias(&p.id, Some(&name))?;
            out.print(json!({"id": p.id.to_string(), "alias": name}), || {
                format!("{} is now '{name}'", p.id)
            });
        }
        None => {
            let peers = h.peers()?;
            if out.json {
                let list: Vec<_> = peers
                    .iter()
                    .map(|p| {
                        json!({
                            "id": p.id.to_string(),
                            "alias": p.alias,
                            "fingerprint": p.fingerprint(),
                            "relay": p.relay_url,
                            "paired_at": p.created_at,
                            "last_seen": p.last_seen,
                        })
                    })
                    .collect();
                println!("{}", json!({ "peers": list }));
            } else if peers.is_empty() {
                println!("no peers yet: `tincan invite create` or `tincan invite accept '<url>'`");
            } else {
                for p in peers {
                    println!(
                        "{}  {}  {}",
                        p.id,
                        p.alias.as_deref().unwrap_or("-"),
                        p.fingerprint()
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
