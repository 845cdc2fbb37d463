//! `tincan invite create` and `tincan invite accept`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use tincan_client::tincan_proto::invite::Invite;
use tincan_client::{Client, ClientOptions, now_secs};

use crate::cli::InviteCmd;
use crate::cmd::{open_home, relay_for};
use crate::output::{CliError, Out};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Failed connection attempts in a row after which `invite` gives up (about half a second): a
/// relay that refuses now will not answer within the timeout either, and the user should know.
const CONNECT_ATTEMPTS: u32 = 4;

pub async fn run(home: Option<PathBuf>, cmd: InviteCmd, out: &Out) -> Result<ExitCode, CliError> {
    match cmd {
        InviteCmd::Create { relay, ttl } => create(home, relay, ttl, out).await,
        InviteCmd::Accept { url, timeout } => accept(home, &url, timeout, out).await,
    }
}

/// The inviter, when accepting `invite` failed because it was used and it was this home that
/// used it (a command run twice): the home records each invite it accepts.
pub(crate) fn own_spent_invite(
    e: &tincan_client::ClientError,
    client: &Client,
    invite: &Invite,
) -> Option<tincan_client::PeerRecord> {
    let used = matches!(
        e,
        tincan_client::ClientError::Relay {
            code: tincan_client::tincan_proto::frame::ErrorCode::InviteUsed,
            ..
        }
    );
    if !used {
        return None;
    }
    let home = client.home();
    let took = home.accepted_invite(&invite.id).ok().flatten()?;
    if took != invite.inviter.ed25519 {
        return None;
    }
    home.peer(&took).ok().flatten()
}

/// A failed accept as the user should hear it: an invite this home itself used before says so
/// and how to go on, instead of "ask the inviter for a new one".
fn used_by_this_home(
    e: tincan_client::ClientError,
    client: &Client,
    invite: &Invite,
    flag: &str,
) -> CliError {
    match own_spent_invite(&e, client, invite) {
        Some(peer) => {
            let short = &peer.id.to_string()[..8];
            CliError::new(
                "invite_used",
                4,
                format!(
                    "this home already accepted this invite: it is paired with {}; nothing to do. Send with `tincan{flag} send {short} …`",
                    peer.id
                ),
            )
            .with(json!({"paired_with": peer.id.to_string()}))
        }
        None => e.into(),
    }
}

async fn create(
    home: Option<PathBuf>,
    relay: Option<String>,
    ttl: u64,
    out: &Out,
) -> Result<ExitCode, CliError> {
    let flag = crate::cmd::home_flag(&home);
    let h = open_home(home)?;
    let relay = relay_for(&h, relay)?;
    // Send-only connection: creating an invite must not take deliveries from a running listener.
    let client = Client::start(h, &relay, ClientOptions::send_only())?;
    client
        .wait_connected_within(CONNECT_TIMEOUT, CONNECT_ATTEMPTS)
        .await?;
    let draft = client.create_invite(ttl).await?;
    client.home().set_setting("relay", client.relay_url())?;
    let inv = draft.invite();
    let url = draft.url();
    out.print(
        json!({
            "url": url,
            "invite_id": inv.id.to_string(),
            "relay": inv.relay_url,
            "expires_at": inv.expires_at,
            "inviter": inv.inviter.ed25519.to_string(),
            "fingerprint": inv.inviter.fingerprint(),
        }),
        || {
            format!(
                "Invite (single use, expires in {}):\n\n  {url}\n\nThe other agent runs:\n  tincan invite accept '{url}'\nThen run `tincan{flag} listen` here to see them join.",
                crate::cmd::human_secs(ttl)
            )
        },
    );
    Ok(ExitCode::SUCCESS)
}

async fn accept(
    home: Option<PathBuf>,
    url: &str,
    timeout: u64,
    out: &Out,
) -> Result<ExitCode, CliError> {
    let flag = crate::cmd::home_flag(&home);
    let h = open_home(home)?;
    let url = crate::cmd::invite_url(url)?;
    let invite = Invite::parse(&url, now_secs()).map_err(tincan_client::ClientError::from)?;
    if invite.inviter.ed25519 == h.identity()?.peer_id() {
        return Err(tincan_client::ClientError::OwnInvite.into());
    }
    let timeout = Duration::from_secs(timeout);
    let client = Client::start(h, &invite.relay_url, ClientOptions::send_only())?;
    client
        .wait_connected_within(timeout, CONNECT_ATTEMPTS)
        .await?;
    let peer = match client.accept_invite(&invite, timeout).await {
        Ok(peer) => peer,
        Err(e) => return Err(used_by_this_home(e, &client, &invite, &flag)),
    };
    client.home().set_setting("relay", client.relay_url())?;
    let fp = peer.fingerprint();
    out.print(
        json!({"peer": peer.id.to_string(), "fingerprint": fp, "relay": peer.relay_url}),
        || {
            format!(
                "Paired with {}\nfingerprint: {fp}  (compare it with theirs out of band)\nSend with: tincan{flag} send {} \"hello\"",
                peer.id,
                &peer.id.to_string()[..8]
            )
        },
    );
    Ok(ExitCode::SUCCESS)
}
