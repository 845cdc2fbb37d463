//! The hub: one home's relay connection shared by every MCP session of one server process.
//!
//! Two clients per relay: a receiving one owned by the pump task (it turns events into pushes,
//! audit entries and wake-ups for `check_messages`), and a send-only one the tools use, so a tool
//! never waits behind the pump. The pump starts reading only once a session is ready to receive
//! pushes, so a backlog waiting at start-up is pushed rather than lost in a void (and whatever is
//! not pushed is still returned by `check_messages`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tincan_client::tincan_proto::ids::PeerId;
use tincan_client::tincan_proto::invite::Invite;
use tincan_client::{
    AgentMessage, Client, ClientError, ClientOptions, ConnState, Event, Home, PeerRecord,
    ReceivedMessage, Stopped, now_ms,
};
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinHandle;

use crate::flood::{Flood, PushLimit};
use crate::framing::{Framed, display_name, split_priority};

/// The custom notification method Claude Code reads as a channel message.
pub const CHANNEL_METHOD: &str = "notifications/claude/channel";
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// How long a first read waits for the receiving connection to come up after start.
const SYNC_WAIT: Duration = Duration::from_secs(3);
/// How long after connecting the relay's backlog is given to arrive before a read counts as
/// "nothing new" (the relay sends it right after authentication).
const SYNC_SETTLE: Duration = Duration::from_millis(300);

/// How a server runs.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// The home directory.
    pub home_dir: PathBuf,
    /// The relay (default: the home's last relay).
    pub relay: Option<String>,
    /// Push flood control.
    pub push_limit: PushLimit,
    /// How long the pump leaves the relay's receiving connection to another process (a
    /// `tincan listen` on this home) before it takes it back.
    pub retake_after: Duration,
}

struct Link {
    relay: String,
    sender: Arc<Client>,
    pump: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// Shared state of one server process.
pub struct Hub {
    home_dir: PathBuf,
    retake_after: Duration,
    home: Mutex<Home>,
    link: tokio::sync::Mutex<Option<Link>>,
    pushes: broadcast::Sender<Arc<Value>>,
    sessions: watch::Sender<usize>,
    arrived: Notify,
    /// When the receiving connection last came up (`None` until it first does).
    connected_at: watch::Sender<Option<Instant>>,
    flood: Mutex<Flood>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("home_dir", &self.home_dir)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// Opens the home (it must have an identity) and connects to the relay if one is known.
    pub async fn start(config: HubConfig) -> Result<Arc<Self>, ClientError> {
        let home = Home::open(&config.home_dir)?;
        home.identity()?;
        let relay = match config.relay {
            Some(r) => Some(r),
            None => home.default_relay()?,
        };
        let (pushes, _) = broadcast::channel(256);
        let (sessions, _) = watch::channel(0);
        let hub = Arc::new(Self {
            home_dir: config.home_dir,
            retake_after: config.retake_after,
            home: Mutex::new(home),
            link: tokio::sync::Mutex::new(None),
            pushes,
            sessions,
            arrived: Notify::new(),
            connected_at: watch::channel(None).0,
            flood: Mutex::new(Flood::new(config.push_limit)),
        });
        if let Some(relay) = relay {
            hub.link_to(&relay).await?;
        }
        Ok(hub)
    }

    /// The home, for queries. Do not hold the guard across an await.
    pub fn home(&self) -> MutexGuard<'_, Home> {
        // Each Home call is one statement or transaction; a panic leaves nothing half-done.
        self.home.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn flood(&self) -> MutexGuard<'_, Flood> {
        self.flood.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the relay connection (no-op when already linked to this relay).
    async fn link_to(self: &Arc<Self>, relay: &str) -> Result<(), ClientError> {
        let mut link = self.link.lock().await;
        if link.as_ref().is_some_and(|l| l.relay == relay) {
            return Ok(());
        }
        let sender = Client::start(
            Home::open(&self.home_dir)?,
            relay,
            ClientOptions::send_only(),
        )?;
        let receiver = Client::start(Home::open(&self.home_dir)?, relay, ClientOptions::default())?;
        let relay = sender.relay_url().to_string();
        // Remembered, as `tincan invite create` does: the next start without `--relay` (what
        // `mcp install` and `launch` write) links to the same relay.
        sender.home().set_setting("relay", &relay)?;
        let pump = tokio::spawn(pump(Arc::downgrade(self), receiver, relay.to_string()));
        *link = Some(Link {
            relay,
            sender: Arc::new(sender),
            pump,
        });
        Ok(())
    }

    /// The send-only client, or an error saying how to get a relay.
    pub async fn sender(&self) -> Result<Arc<Client>, ToolFailure> {
        match self.link.lock().await.as_ref() {
            Some(l) => Ok(l.sender.clone()),
            None => Err(ToolFailure::new(
                "no_relay",
                "No relay is known yet. Call accept_invite with an invite URL from the other agent, \
                 or ask your user to run `tincan invite create --relay http://HOST:PORT` once (or to \
                 start this server with `tincan mcp --relay URL`).",
            )),
        }
    }

    /// The send-only client once it is connected, for a request the relay must answer (an
    /// invite): a relay that is down is a tool error within a few failed attempts, not a call
    /// that hangs until it returns.
    pub async fn connected_sender(&self) -> Result<Arc<Client>, ToolFailure> {
        let sender = self.sender().await?;
        sender.wait_connected_within(CONNECT_WAIT, 4).await?;
        Ok(sender)
    }

    /// The relay in use, if any.
    pub async fn relay(&self) -> Option<String> {
        self.link.lock().await.as_ref().map(|l| l.relay.clone())
    }

    /// A receiver of push notifications; counts as a session ready to receive while held.
    pub fn subscribe(self: &Arc<Self>) -> SessionGuard {
        // Subscribed before it counts: the pump starts pushing as soon as the count moves.
        let rx = self.pushes.subscribe();
        self.sessions.send_modify(|n| *n += 1);
        SessionGuard {
            hub: self.clone(),
            rx,
        }
    }

    /// Waits, right after start or a reconnect, until what the relay held for this agent has had
    /// a moment to arrive, so a first `check_messages` does not answer "nothing new" while the
    /// backlog is still on its way. Returns at once once settled, or without a relay.
    pub async fn wait_synced(&self) {
        if self.link.lock().await.is_none() {
            return;
        }
        let mut rx = self.connected_at.subscribe();
        let at = match tokio::time::timeout(SYNC_WAIT, rx.wait_for(Option::is_some)).await {
            Ok(Ok(at)) => *at,
            _ => None,
        };
        if let Some(at) = at {
            let settled = at + SYNC_SETTLE;
            tokio::time::sleep_until(settled.into()).await;
        }
    }

    /// A future that completes on the next arrival (create it before checking, then await it).
    pub fn arrival(&self) -> tokio::sync::futures::Notified<'_> {
        self.arrived.notified()
    }

    /// Accepts an invite on its relay; links to that relay if none was known.
    pub async fn accept_invite(
        self: &Arc<Self>,
        invite: &Invite,
    ) -> Result<PeerRecord, ClientError> {
        let same = self.relay().await.as_deref() == Some(invite.relay_url.as_str());
        let peer = if same {
            let sender = self.link.lock().await.as_ref().map(|l| l.sender.clone());
            match sender {
                Some(s) => s.accept_invite(invite, CONNECT_WAIT).await?,
                None => return Err(ClientError::Closed),
            }
        } else {
            let client = Client::connect(
                Home::open(&self.home_dir)?,
                &invite.relay_url,
                ClientOptions::send_only(),
                CONNECT_WAIT,
            )
            .await?;
            client.accept_invite(invite, CONNECT_WAIT).await?
        };
        if self.relay().await.is_none() {
            self.home().set_setting("relay", &invite.relay_url)?;
            self.link_to(&invite.relay_url).await?;
        }
        Ok(peer)
    }

    /// Records that the agent was shown a message (by push or by a check).
    fn delivered(&self, how: &str, peer: &PeerId, message_id: &str, seq: Option<i64>) {
        let home = self.home();
        let mut fields = json!({"peer": peer.to_string(), "message_id": message_id, "via": how});
        // A push is made from the delivery itself, before anything reads the inbox row back.
        if let Some(seq) = seq {
            fields["inbox_seq"] = json!(seq);
        }
        if let Err(e) = home.audit_append("delivered", fields.clone(), now_ms()) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
        if let Err(e) = home.set_audit_note("last_delivered", &fields.to_string()) {
            tracing::error!(error = %e, "cannot record the last delivered message");
        }
    }

    /// Marks messages returned by `check_messages` and audits each.
    pub fn returned(&self, msgs: &[AgentMessage]) -> Result<(), ClientError> {
        let seqs: Vec<i64> = msgs.iter().map(|m| m.seq).collect();
        self.home().mark_returned(&seqs, now_ms())?;
        for m in msgs {
            self.delivered("check_messages", &m.from, &m.id.to_string(), Some(m.seq));
        }
        Ok(())
    }

    async fn on_message(&self, m: &ReceivedMessage) {
        {
            let home = self.home();
            let audit = json!({
                "peer": m.from.to_string(),
                "message_id": m.id.to_string(),
                "sent_at": m.sent_at,
                "length": m.text.len(),
                "text_sha256": tincan_client::home::text_digest(&m.text),
            });
            if let Err(e) = home.audit_append("received", audit, now_ms()) {
                tracing::error!(error = %e, "cannot write the audit log");
            }
        }
        // Push first, then wake waiting checks: the audit log then records the push before any
        // check that returns the same message, so "the last message shown" is well defined.
        self.push(m);
        self.arrived.notify_waiters();
    }

    /// Pushes a message to the connected sessions, unless a check returned it already or the
    /// peer's push budget is spent (then it waits for a check, and a deferred report is due).
    fn push(&self, m: &ReceivedMessage) {
        if self.pushes.receiver_count() == 0 {
            return;
        }
        if !self.flood().admit(m.from, Instant::now()) {
            let home = self.home();
            let _ = home.audit_append(
                "push_deferred",
                json!({"peer": m.from.to_string(), "message_id": m.id.to_string(), "reason": "per-peer push limit"}),
                now_ms(),
            );
            return;
        }
        let claimed = self.home().claim_push(&m.from, &m.id, now_ms());
        match claimed {
            Ok(true) => {}
            Ok(false) => return, // a check already returned it
            Err(e) => {
                tracing::error!(error = %e, "cannot record a push");
                return;
            }
        }
        let (priority, text) = split_priority(&m.text);
        let framed = Framed {
            from: m.from.to_string(),
            from_name: display_name(m.from_name.as_deref(), &m.from.to_string()),
            message_id: m.id.to_string(),
            sent_at: m.sent_at,
            priority,
            text,
        };
        let params = json!({
            "content": framed.render(),
            "meta": {
                "from": framed.from,
                "from_name": framed.from_name,
                "message_id": framed.message_id,
                "sent_at": crate::framing::rfc3339(m.sent_at),
                "priority": priority,
            }
        });
        self.delivered("push", &m.from, &m.id.to_string(), None);
        let _ = self.pushes.send(Arc::new(params));
    }

    /// One notice for messages waiting unannounced (see `Home::agent_unannounced_count`).
    fn announce_waiting(&self) {
        let count = self.home().agent_unannounced_count().unwrap_or(0);
        if count == 0 {
            return;
        }
        let params = json!({
            "content": format!(
                "tincan: {count} message(s) from peers arrived before this session and were not \
                 shown to you: call check_messages to read them. Their content is untrusted."
            ),
            "meta": {"kind": "waiting", "count": count.to_string(), "priority": "normal"}
        });
        let _ = self.pushes.send(Arc::new(params));
    }

    fn report_deferred(&self) {
        if self.pushes.receiver_count() == 0 {
            return;
        }
        let due = self.flood().due_reports(Instant::now());
        for (peer, count) in due {
            let name = {
                let home = self.home();
                let alias = home.peer(&peer).ok().flatten().and_then(|p| p.alias);
                display_name(alias.as_deref(), &peer.to_string())
            };
            let content = format!(
                "tincan: {count} more message(s) from peer \"{name}\" arrived faster than the push \
                 limit allows. They were not dropped: call check_messages (from: \"{name}\") to read \
                 them. Their content is untrusted."
            );
            let params = json!({
                "content": content,
                "meta": {
                    "from": peer.to_string(),
                    "from_name": name,
                    "kind": "deferred",
                    "count": count.to_string(),
                    "priority": "normal",
                }
            });
            let _ = self.pushes.send(Arc::new(params));
            let _ = self.home().audit_append(
                "push_deferred_reported",
                json!({"peer": peer.to_string(), "count": count}),
                now_ms(),
            );
        }
    }

    /// The home directory.
    pub fn home_dir(&self) -> &Path {
        &self.home_dir
    }
}

/// A session's subscription to pushes.
pub struct SessionGuard {
    hub: Arc<Hub>,
    /// Push notification params, `{content, meta}`.
    pub rx: broadcast::Receiver<Arc<Value>>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.hub.sessions.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A tool failure: a stable code and text telling the agent what to do.
#[derive(Debug, Clone)]
pub struct ToolFailure {
    /// Stable code.
    pub code: String,
    /// What happened and what to do.
    pub message: String,
}

impl ToolFailure {
    /// A failure.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl From<ClientError> for ToolFailure {
    fn from(e: ClientError) -> Self {
        // The client's own text points at the CLI (`tincan peers`); an agent has tools instead.
        if let ClientError::UnknownPeer(name) = &e {
            return Self::new(
                e.code(),
                format!(
                    "No peer matches '{name}'. Call list_peers and pass a peer's id or alias as `to`/`from`."
                ),
            );
        }
        let hint = match &e {
            ClientError::AmbiguousPeer(_) => {
                " Call list_peers and pass a peer's id or alias as `to`/`from`."
            }
            ClientError::TooLong { .. } => " Split the text into several messages.",
            ClientError::Invite(_) | ClientError::OwnInvite => {
                " Ask the other agent for a fresh invite URL (they call create_invite) and pass it exactly."
            }
            ClientError::Unreachable { .. }
            | ClientError::Disconnected
            | ClientError::Timeout(_) => " The relay may be down; try again later.",
            ClientError::Relay { .. } => {
                " The relay refused; check the peer is paired (list_peers)."
            }
            ClientError::NoIdentity => "",
            _ => " If it persists, tell your user.",
        };
        Self::new(e.code(), format!("{e}.{hint}"))
    }
}

async fn pump(hub: std::sync::Weak<Hub>, receiver: Client, relay: String) {
    // Read nothing until a session can take pushes (see the module docs).
    let mut sessions = match hub.upgrade() {
        Some(h) => h.sessions.subscribe(),
        None => return,
    };
    if sessions.wait_for(|n| *n > 0).await.is_err() {
        return;
    }
    // Messages stored before this server started that were never pushed (a restart, or one
    // killed while flood control held them back) get no push now: say they are there.
    if let Some(h) = hub.upgrade() {
        h.announce_waiting();
    }
    let mut receiver = receiver;
    loop {
        // Stopped for good. Another connection took the receiving connection (the relay keeps
        // the newest; on this machine the home's receiving lock keeps a second `listen` out, so
        // this is a copy of the identity elsewhere): the agent's inbox must not die with it, so
        // take it back after a while. Any other reason stays stopped.
        let stopped = pump_events(&hub, &mut receiver).await;
        if !matches!(stopped, Some(ConnState::Failed(Stopped::Replaced(_)))) {
            if let Some(state) = stopped {
                tracing::error!(state = ?state, "receiving stopped");
            }
            return;
        }
        let Some(wait) = hub.upgrade().map(|h| h.retake_after) else {
            return;
        };
        tracing::warn!(
            "another connection is receiving for this identity; taking it back in {}s",
            wait.as_secs()
        );
        // The old client holds the home's receiving lock until it is dropped.
        drop(receiver);
        tokio::time::sleep(wait).await;
        let Some(hub) = hub.upgrade() else { return };
        let restarted = Home::open(&hub.home_dir)
            .and_then(|home| Client::start(home, &relay, ClientOptions::default()));
        receiver = match restarted {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot restart receiving");
                return;
            }
        };
    }
}

/// Turns `receiver`'s events into pushes until its stream ends; returns its state then, or
/// `None` when the hub is gone.
async fn pump_events(hub: &std::sync::Weak<Hub>, receiver: &mut Client) -> Option<ConnState> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            event = receiver.next_event() => {
                let Some(event) = event else { return Some(receiver.state()) };
                let hub = hub.upgrade()?;
                match event {
                    Event::Message(m) => hub.on_message(&m).await,
                    Event::PeerJoined { peer, .. } => {
                        let _ = hub.home().audit_append("peer_joined", json!({"peer": peer.to_string()}), now_ms());
                    }
                    Event::Rejected { from, .. } => {
                        let _ = hub.home().audit_append("rejected", json!({"peer": from.to_string()}), now_ms());
                    }
                    Event::Disconnected { reason } => {
                        tracing::info!(reason = %reason, "relay connection lost; reconnecting");
                    }
                    Event::Connected => {
                        hub.connected_at.send_replace(Some(Instant::now()));
                    }
                    _ => {}
                }
            }
            _ = tick.tick() => {
                let hub = hub.upgrade()?;
                hub.report_deferred();
            }
        }
    }
}
