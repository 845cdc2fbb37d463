//! `tincan peers`, `tincan peers alias`, and the peer policy: block, unblock, allow, allowlist.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;
use tincan_client::{Home, PeerPolicy};

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
        Some(PeersAction::Block { peer }) => set_policy(&h, &peer, PeerPolicy::Blocked, out)?,
        Some(PeersAction::Unblock { peer }) => set_policy(&h, &peer, PeerPolicy::Default, out)?,
        Some(PeersAction::Allow { peer }) => set_policy(&h, &peer, PeerPolicy::Allowed, out)?,
        Some(PeersAction::Allowlist { state }) => {
            if let Some(s) = &state {
                h.set_allowlist_only(s == "on")?;
            }
            let on = h.allowlist_only()?;
            out.print(json!({"allowlist_only": on}), || {
                if on {
                    "allowlist-only mode is on: only peers marked with `tincan peers allow` are shown".into()
                } else {
                    "allowlist-only mode is off: every peer that is not blocked is shown".into()
                }
            });
        }
        None => {
            let peers = h.peers()?;
            let policies = h.peer_policies()?;
            let allowlist_only = h.allowlist_only()?;
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
                            "policy": policies.get(&p.id).copied().unwrap_or_default().as_str(),
                            "features": tincan_proto::features::names(p.features),
                        })
                    })
                    .collect();
                crate::output::line(&crate::output::json_line(
                    &json!({ "peers": list, "allowlist_only": allowlist_only }),
                ));
            } else if peers.is_empty() {
                crate::output::line(
                    "no peers yet: `tincan invite create` or `tincan invite accept '<url>'`",
                );
            } else {
                if allowlist_only {
                    crate::output::line(
                        "allowlist-only mode is on: only peers marked [allowed] get through \
                         (`tincan peers allow <peer>`, `tincan peers allowlist off`)",
                    );
                }
                for p in peers {
                    let policy = policies.get(&p.id).copied().unwrap_or_default();
                    crate::output::line(&format!(
                        "{}  {}  {}{}",
                        p.id,
                        p.alias.as_deref().unwrap_or("-"),
                        p.fingerprint(),
                        match policy {
                            PeerPolicy::Default => String::new(),
                            other => format!("  [{}]", other.as_str()),
                        }
                    ));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn set_policy(h: &Home, peer: &str, policy: PeerPolicy, out: &Out) -> Result<(), CliError> {
    let p = h.resolve_peer(peer)?;
    h.set_peer_policy(&p.id, policy)?;
    out.print(
        json!({"id": p.id.to_string(), "policy": policy.as_str()}),
        || match policy {
            PeerPolicy::Blocked => format!("{} is blocked: its messages are withheld", p.id),
            PeerPolicy::Allowed => format!("{} is allowed", p.id),
            PeerPolicy::Default => format!("{} is back to the default policy", p.id),
        },
    );
    Ok(())
}
