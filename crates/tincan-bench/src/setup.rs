//! Shared fixtures: an in-process relay on 127.0.0.1, agents in temp dirs, pairing.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tincan_client::{Client, ClientOptions, Event, Home, PeerRecord, now_secs};
use tincan_proto::invite::Invite;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a connect or a single protocol step may take before the bench gives up.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// A relay served by this process on a loopback port, with its database in a temp dir.
pub struct Relay {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tincan_relay::RelayError>>,
    _dir: tempfile::TempDir,
}

impl Relay {
    /// Starts a relay with settings adjusted by `tune` and a fresh SQLite file.
    pub async fn start_with(tune: impl FnOnce(&mut tincan_relay::Config)) -> Result<Self> {
        let dir = tempfile::tempdir().context("cannot create a temp dir for the relay")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let mut config = tincan_relay::Config::new(dir.path().join("relay.db"));
        tune(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tincan_relay::run(listener, config, async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            url,
            stop: Some(stop),
            task,
            _dir: dir,
        })
    }

    /// The relay's base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Shuts the relay down and waits (bounded) for it to finish.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(STEP_TIMEOUT, &mut self.task).await {
            Ok(joined) => Ok(joined.context("relay task panicked")??),
            Err(_) => {
                self.task.abort();
                bail!("relay did not shut down within {STEP_TIMEOUT:?}")
            }
        }
    }
}

/// Opens a fresh home in `dir`, creates its identity and connects it to `relay_url`.
pub async fn agent(dir: &Path, relay_url: &str) -> Result<Client> {
    let mut home =
        Home::open(dir).with_context(|| format!("cannot open home {}", dir.display()))?;
    home.setup()?;
    let client = Client::connect(home, relay_url, ClientOptions::default(), STEP_TIMEOUT)
        .await
        .context("cannot connect to the relay")?;
    Ok(client)
}

/// Pairs `b` with `a` through an invite from `a`; returns once `a` has seen the join.
/// Returns `b`'s record of `a` (whose `id` is what `b` sends to).
pub async fn pair(a: &mut Client, b: &Client) -> Result<PeerRecord> {
    let draft = a.create_invite(3600).await.context("create_invite")?;
    let invite = Invite::parse(&draft.url(), now_secs()).context("parse invite")?;
    let inviter = b
        .accept_invite(&invite, STEP_TIMEOUT)
        .await
        .context("accept_invite")?;
    wait_joined(a).await?;
    Ok(inviter)
}

/// Waits for the next `PeerJoined` event on `client`.
pub async fn wait_joined(client: &mut Client) -> Result<()> {
    let wait = async {
        loop {
            match client.next_event().await {
                Some(Event::PeerJoined { .. }) => return Ok(()),
                Some(Event::Rejected { reason, .. }) => bail!("join rejected: {reason}"),
                Some(_) => {}
                None => bail!("client closed before the join arrived"),
            }
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, wait)
        .await
        .context("no PeerJoined event in time")?
}

/// Two paired agents on `relay_url`, in their own temp dirs. `b_to_a` is what B sends to.
pub struct Pair {
    pub a: Client,
    pub b: Client,
    pub a_to_b: String,
    pub b_to_a: String,
    pub dir: tempfile::TempDir,
}

impl Pair {
    pub async fn new(relay_url: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut a = agent(&dir.path().join("a"), relay_url).await?;
        let b = agent(&dir.path().join("b"), relay_url).await?;
        let a_rec = pair(&mut a, &b).await?;
        let b_id = b.home().identity()?.peer_id();
        Ok(Self {
            a,
            b,
            a_to_b: b_id.to_string(),
            b_to_a: a_rec.id.to_string(),
            dir,
        })
    }
}
