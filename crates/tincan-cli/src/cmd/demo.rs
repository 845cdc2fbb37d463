//! `tincan demo`: the whole flow on one machine, in seconds, with nothing left behind.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::json;
use tincan_client::tincan_proto::invite::Invite;
use tincan_client::{Client, ClientOptions, Event, Home, now_secs};

use crate::output::{CliError, Out};

const WAIT: Duration = Duration::from_secs(10);
/// Connections the demo's relay accepts: its two agents, with room to spare.
const DEMO_MAX_CONNECTIONS: usize = 16;

pub async fn run(out: &Out) -> Result<ExitCode, CliError> {
    let started = Instant::now();
    let tmp = tempfile::tempdir()
        .map_err(|e| CliError::internal(format!("cannot make a temp dir: {e}")))?;
    let step = |name: &str, detail: String| {
        out.print(
            json!({"step": name, "detail": detail, "ms": started.elapsed().as_millis() as u64}),
            || format!("[{:>5} ms] {name}: {detail}", started.elapsed().as_millis()),
        );
    };

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| CliError::internal(e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::internal(e.to_string()))?;
    let relay_url = format!("http://{addr}");
    let db = tmp.path().join("relay.db");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut config = tincan_relay::Config::new(db.clone());
    // Two agents connect; a public relay's 20,000 would only draw a warning about the
    // open-file limit that means nothing here.
    config.max_connections = DEMO_MAX_CONNECTIONS;
    let relay = tokio::spawn(tincan_relay::run(listener, config, async {
        let _ = stopped.await;
    }));
    step(
        "relay",
        format!(
            "listening on {relay_url}, storing only ciphertext in {}",
            db.display()
        ),
    );

    let mut alice_home = Home::open(&tmp.path().join("alice"))?;
    let (alice_keys, _) = alice_home.setup()?;
    let mut bob_home = Home::open(&tmp.path().join("bob"))?;
    let (bob_keys, _) = bob_home.setup()?;
    step(
        "alice",
        format!(
            "identity {} (fingerprint {})",
            alice_keys.ed25519,
            alice_keys.fingerprint()
        ),
    );
    step(
        "bob",
        format!(
            "identity {} (fingerprint {})",
            bob_keys.ed25519,
            bob_keys.fingerprint()
        ),
    );

    let mut alice = Client::connect(alice_home, &relay_url, ClientOptions::default(), WAIT).await?;
    let draft = alice.create_invite(600).await?;
    let url = draft.url();
    step(
        "invite",
        format!(
            "alice made a single-use invite: {}…",
            &url[..url.len().min(60)]
        ),
    );

    let mut bob = Client::connect(bob_home, &relay_url, ClientOptions::default(), WAIT).await?;
    let invite = Invite::parse(&url, now_secs()).map_err(tincan_client::ClientError::from)?;
    bob.accept_invite(&invite, WAIT).await?;
    wait_for(&mut alice, |e| matches!(e, Event::PeerJoined { .. })).await?;
    step(
        "paired",
        "bob accepted; alice saw him join over an Olm (Double Ratchet) session".into(),
    );

    let again = Client::connect(
        Home::open(&tmp.path().join("mallory")).and_then(|mut h| h.setup().map(|_| h))?,
        &relay_url,
        ClientOptions::send_only(),
        WAIT,
    )
    .await?;
    let reuse = again.accept_invite(&invite, WAIT).await;
    step(
        "single use",
        match reuse {
            Err(e) => format!("a second accept of the same invite fails: {e}"),
            Ok(_) => return Err(CliError::internal("the invite was accepted twice")),
        },
    );

    let texts = ["hello alice, bob here", "plan: you review, I implement"];
    for t in texts {
        bob.send(&alice_keys.ed25519.to_string(), t).await?;
    }
    for t in texts {
        let got = wait_for(&mut alice, |e| matches!(e, Event::Message(_))).await?;
        if let Event::Message(m) = got {
            if m.text != t {
                return Err(CliError::internal("messages arrived out of order"));
            }
            step("alice got", format!("\"{}\"", m.text));
        }
    }
    let reply = "deal. sending the review checklist";
    alice.send(&bob_keys.ed25519.to_string(), reply).await?;
    if let Event::Message(m) = wait_for(&mut bob, |e| matches!(e, Event::Message(_))).await? {
        step("bob got", format!("\"{}\"", m.text));
    }
    alice.wait_outbox_empty(WAIT).await?;

    drop(alice);
    drop(bob);
    drop(again);
    let _ = stop.send(());
    let _ = relay.await;
    let mut relay_bytes = std::fs::read(&db).unwrap_or_default();
    relay_bytes.extend(std::fs::read(db.with_extension("db-wal")).unwrap_or_default());
    let leaked = texts
        .iter()
        .chain([&reply])
        .any(|t| relay_bytes.windows(t.len()).any(|w| w == t.as_bytes()));
    if leaked {
        return Err(CliError::internal("plaintext found in the relay database"));
    }
    step(
        "relay store",
        format!(
            "checked {} bytes of the relay's SQLite files: no plaintext",
            relay_bytes.len()
        ),
    );
    out.print(
        json!({"done": true, "ms": started.elapsed().as_millis() as u64}),
        || {
            format!(
                "demo finished in {} ms; temporary homes removed",
                started.elapsed().as_millis()
            )
        },
    );
    Ok(ExitCode::SUCCESS)
}

async fn wait_for(client: &mut Client, want: impl Fn(&Event) -> bool) -> Result<Event, CliError> {
    let fut = async {
        while let Some(e) = client.next_event().await {
            if want(&e) {
                return Some(e);
            }
        }
        None
    };
    match tokio::time::timeout(WAIT, fut).await {
        Ok(Some(e)) => Ok(e),
        _ => Err(CliError::new("timeout", 6, "demo step timed out")),
    }
}
