//! [`Client`]: one home connected to one relay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tincan_proto::frame::{ClientFrame, RelayFrame};
use tincan_proto::ids::{MessageId, PeerId};
use tincan_proto::invite::{Invite, InviteDraft, normalize_relay_url};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::ClientError;
use crate::home::{Home, InboxEntry, InboxKind, PeerPolicy, PeerRecord, PeerStanding, now_ms};

/// How a client connects.
#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    /// Take deliveries on this connection. Off for a one-shot sender, so it does not take
    /// messages away from a running listener of the same home.
    pub receive: bool,
    /// Mark each message as handed over when [`Client::next_event`] returns it (the default).
    /// Off for an application that deals with messages later or out of order and says so with
    /// [`Client::handled`] (`serve`): a message it took but never finished, because it crashed,
    /// is returned again by the next client on this home. Joins are marked when returned either
    /// way.
    pub mark_on_return: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            receive: true,
            mark_on_return: true,
        }
    }
}

impl ClientOptions {
    /// A connection that only sends (see [`ClientOptions::receive`]).
    pub fn send_only() -> Self {
        Self {
            receive: false,
            ..Self::default()
        }
    }
}

/// How a client reaches its relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// One WebSocket: lowest latency (the default).
    #[default]
    WebSocket,
    /// The HTTP API: token auth, POST to send, long-poll to receive.
    Http,
}

impl Transport {
    /// The transport `TINCAN_TRANSPORT` names: `http` for [`Transport::Http`]; `ws`,
    /// `websocket`, empty or unset for [`Transport::WebSocket`]. Anything else is an error
    /// naming the value.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("TINCAN_TRANSPORT") {
            Err(std::env::VarError::NotPresent) => Ok(Self::WebSocket),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err("TINCAN_TRANSPORT is not valid UTF-8; use ws or http".into())
            }
            Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
                "" | "ws" | "websocket" => Ok(Self::WebSocket),
                "http" => Ok(Self::Http),
                _ => Err(format!(
                    "TINCAN_TRANSPORT is {v:?}; use ws (the default) or http"
                )),
            },
        }
    }
}

/// A message received from a peer.
#[derive(Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// Sender.
    pub from: PeerId,
    /// Sender's alias here, if any.
    pub from_name: Option<String>,
    /// Message id.
    pub id: MessageId,
    /// The text: untrusted input from the peer.
    pub text: String,
    /// Sender's clock, unix ms.
    pub sent_at: u64,
    /// When it arrived here, unix ms.
    pub received_at: u64,
}

impl std::fmt::Debug for ReceivedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceivedMessage")
            .field("from", &self.from)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Something that happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A message arrived.
    Message(ReceivedMessage),
    /// A peer accepted one of this agent's invites.
    PeerJoined {
        /// The new peer.
        peer: PeerId,
        /// Its fingerprint.
        fingerprint: String,
    },
    /// A delivery failed its checks (tampered, replayed, not invited, ...) and was dropped.
    Rejected {
        /// The claimed sender.
        from: PeerId,
        /// Why.
        reason: String,
    },
    /// An inbox entry the peer policy refuses (a blocked peer, or one not allowed in
    /// allowlist-only mode) was set aside: its text is never handed over, it stays in the inbox
    /// marked withheld, and a later unblock or allow does not release it.
    Withheld {
        /// The sender.
        from: PeerId,
        /// The sender's alias, if set.
        from_name: Option<String>,
        /// The entry's message id.
        id: MessageId,
        /// What was held back: `message`, `peer_joined` or `rejected`.
        kind: &'static str,
        /// Why.
        reason: String,
    },
    /// The relay deferred an outgoing message because of a limit; it is retried automatically.
    /// Reported once per pause, for the first refused message (the sends in flight behind it
    /// are refused with it and wait with it).
    SendDeferred {
        /// The message.
        id: MessageId,
        /// Stable code.
        code: String,
        /// Explanation.
        message: String,
        /// When the client retries, in milliseconds.
        retry_after_ms: u32,
    },
    /// The relay refused an outgoing message.
    SendFailed {
        /// The message.
        id: MessageId,
        /// Stable code.
        code: String,
        /// Explanation.
        message: String,
    },
    /// Connected and authenticated.
    Connected,
    /// The connection dropped, or an attempt to connect failed (reported for the first failed
    /// attempt and again only when the reason changes); the client keeps trying.
    Disconnected {
        /// Why.
        reason: String,
    },
}

/// The connection's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Trying to connect; holds the last failure, if any.
    Connecting(Option<String>),
    /// Authenticated.
    Connected,
    /// Stopped for good.
    Failed(Stopped),
}

/// Why a client stopped for good (it no longer reconnects).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Stopped {
    /// The relay refused this identity's authentication or protocol version.
    #[error("{0}")]
    AuthRefused(String),
    /// The home cannot store deliveries (corrupt, unreadable or read-only database). Nothing
    /// was lost: the relay keeps what it could not deliver.
    #[error("{0}")]
    BrokenStore(String),
    /// Another connection authenticated as this identity to receive on this relay (another
    /// `listen` or `serve` on this home, or a copy of the identity elsewhere): the newest one
    /// receives, and this one stops instead of fighting over it.
    #[error("{0}")]
    Replaced(String),
}

/// Builds a request frame once its request number is known.
pub(crate) type RequestFrame = Box<dyn FnOnce(u32) -> ClientFrame + Send>;
/// Where the relay's answer to a request goes.
pub(crate) type Reply = oneshot::Sender<Result<RelayFrame, ClientError>>;

pub(crate) enum Cmd {
    /// Send what is in the outbox. Carries the rows just queued, if any, so the connection can
    /// send them without reading them back (it reads the outbox when they do not follow on).
    Flush(Option<crate::home::Queued>),
    Request {
        frame: RequestFrame,
        reply: Reply,
    },
}

pub(crate) struct Shared {
    pub home: Mutex<Home>,
    pub relay_url: String,
    pub state: watch::Sender<ConnState>,
    /// Bumped whenever an outbox entry is acknowledged or refused.
    pub progress: watch::Sender<u64>,
}

impl Shared {
    pub fn home(&self) -> MutexGuard<'_, Home> {
        // Home operations leave no partial state on panic (each is one transaction).
        self.home.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One home connected to one relay.
pub struct Client {
    shared: Arc<Shared>,
    cmd: mpsc::UnboundedSender<Cmd>,
    events: mpsc::Receiver<(Event, Option<i64>)>,
    task: JoinHandle<()>,
    /// The last inbox entry returned but not yet marked consumed (marks are batched under load).
    unmarked: Option<i64>,
    /// What `unmarked` was before the last entry was returned (`give_back_last` restores it).
    given_back_to: Option<i64>,
    /// When the oldest mark not yet known to be written was made, and how many entries have
    /// been returned since the client last wrote marks (the home may have written some of them
    /// with a transaction of its own; this only ever over-counts).
    unwritten_since: Option<std::time::Instant>,
    unwritten_count: usize,
    /// The home's receiving lock, for a receiving client.
    _receiving: Option<crate::receiving::ReceivingLock>,
    /// Without [`ClientOptions::mark_on_return`]: messages returned and not yet
    /// [`Client::handled`], by sender and id, with their inbox seqs.
    held: Option<HashMap<(PeerId, MessageId), i64>>,
}

/// Most returned-but-unmarked inbox entries before the marks are written.
const MARK_BATCH: usize = 256;
/// How long a consumed mark waits for a transaction to ride along with before it is written
/// alone.
const MARK_DELAY: Duration = Duration::from_millis(20);

impl Drop for Client {
    fn drop(&mut self) {
        self.flush_marks();
        self.task.abort();
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("relay_url", &self.shared.relay_url)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts a client in the background; it keeps (re)connecting until dropped. A receiving
    /// client (`opts.receive`) holds the home's receiving lock for its relay while it lives, so
    /// a second one on the same home and relay fails with [`ClientError::HomeBusy`]. The
    /// transport is the one `TINCAN_TRANSPORT` names ([`Transport::from_env`]; the WebSocket by
    /// default); [`Client::start_with`] chooses it in code.
    pub fn start(home: Home, relay_url: &str, opts: ClientOptions) -> Result<Self, ClientError> {
        let transport = Transport::from_env().unwrap_or_else(|e| {
            tracing::warn!("{e}; using the WebSocket transport");
            Transport::WebSocket
        });
        Self::start_with(home, relay_url, opts, transport)
    }

    /// Like [`Client::start`], over the chosen transport.
    pub fn start_with(
        home: Home,
        relay_url: &str,
        opts: ClientOptions,
        transport: Transport,
    ) -> Result<Self, ClientError> {
        home.identity()?;
        let relay_url = normalize_relay_url(relay_url);
        crate::conn::ws_url(&relay_url)?;
        let held = (!opts.mark_on_return).then(HashMap::new);
        let receiving = if opts.receive {
            Some(crate::receiving::ReceivingLock::take(
                home.dir(),
                &relay_url,
            )?)
        } else {
            None
        };
        let (state, _) = watch::channel(ConnState::Connecting(None));
        let (progress, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            home: Mutex::new(home),
            relay_url,
            state,
            progress,
        });
        let (cmd, cmd_rx) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::channel(1024);
        let task = match transport {
            Transport::WebSocket => {
                tokio::spawn(crate::conn::run(shared.clone(), cmd_rx, events_tx, opts))
            }
            Transport::Http => tokio::spawn(crate::http_conn::run(
                shared.clone(),
                cmd_rx,
                events_tx,
                opts,
            )),
        };
        Ok(Self {
            shared,
            cmd,
            events,
            task,
            unmarked: None,
            given_back_to: None,
            unwritten_since: None,
            unwritten_count: 0,
            _receiving: receiving,
            held,
        })
    }

    /// Starts a client and waits until it is connected, failing if that takes over `timeout`.
    pub async fn connect(
        home: Home,
        relay_url: &str,
        opts: ClientOptions,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let client = Self::start(home, relay_url, opts)?;
        client.wait_connected(timeout).await?;
        Ok(client)
    }

    /// Waits until connected.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), ClientError> {
        self.wait_connected_within(timeout, u32::MAX).await
    }

    /// Like [`Client::wait_connected`], but gives up after `attempts` failed connection attempts
    /// in a row, for a one-shot command whose user should hear at once that nothing answers
    /// there (the attempts are 50 ms, 100 ms, 200 ms … apart). The client keeps retrying in the
    /// background either way.
    pub async fn wait_connected_within(
        &self,
        timeout: Duration,
        attempts: u32,
    ) -> Result<(), ClientError> {
        let mut rx = self.shared.state.subscribe();
        let url = self.shared.relay_url.clone();
        let mut failed = 0u32;
        let wait = async {
            loop {
                match rx.borrow_and_update().clone() {
                    ConnState::Connected => return Ok(()),
                    ConnState::Failed(why) => return Err(ClientError::Stopped(why)),
                    ConnState::Connecting(Some(reason)) => {
                        failed += 1;
                        if failed >= attempts {
                            return Err(ClientError::Unreachable {
                                url: url.clone(),
                                reason,
                            });
                        }
                    }
                    ConnState::Connecting(None) => {}
                }
                if rx.changed().await.is_err() {
                    return Err(ClientError::Closed);
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => {
                let reason = match &*self.shared.state.borrow() {
                    ConnState::Connecting(Some(r)) => r.clone(),
                    _ => format!("no answer within {timeout:?}"),
                };
                Err(ClientError::Unreachable { url, reason })
            }
        }
    }

    /// The relay this client uses.
    pub fn relay_url(&self) -> &str {
        &self.shared.relay_url
    }

    /// The current connection state.
    pub fn state(&self) -> ConnState {
        self.shared.state.borrow().clone()
    }

    /// The home, for queries. Do not hold the guard across an await.
    pub fn home(&self) -> MutexGuard<'_, Home> {
        self.shared.home()
    }

    /// Seals `text` for `peer` (id, unique prefix or alias) and queues it; returns its id. It is
    /// sent as soon as the relay is reachable.
    pub async fn send(&self, peer: &str, text: &str) -> Result<MessageId, ClientError> {
        let ids = self.send_many(peer, &[text]).await?;
        ids.into_iter().next().ok_or(ClientError::Closed)
    }

    /// Seals and queues several messages to one peer in one transaction; returns their ids in
    /// order. To a peer whose feature bits include batches, consecutive texts share envelopes of
    /// up to [`crate::home::BATCH_BYTES`] (one encryption, one relay row); each text keeps its own
    /// id, works with [`Client::wait_sent`], and reaches the peer as its own message.
    pub async fn send_many(
        &self,
        peer: &str,
        texts: &[&str],
    ) -> Result<Vec<MessageId>, ClientError> {
        let queued = {
            let mut home = self.shared.home();
            let p = home.resolve_peer(peer)?;
            home.queue(&p.id, texts, now_ms())?
        };
        let ids = queued.ids.clone();
        let _ = self.cmd.send(Cmd::Flush(Some(queued)));
        Ok(ids)
    }

    /// Waits until the relay has stored message `id`; fails if it refused it.
    pub async fn wait_sent(&self, id: &MessageId, timeout: Duration) -> Result<(), ClientError> {
        let mut rx = self.shared.progress.subscribe();
        let wait = async {
            loop {
                rx.borrow_and_update();
                {
                    let home = self.shared.home();
                    if home.is_sent(id)? {
                        return Ok(());
                    }
                    if let Some((code, message, retry_after_ms)) = home.send_deferral(id)? {
                        return Err(ClientError::Deferred {
                            code: tincan_proto::frame::ErrorCode::from_str_code(&code),
                            message,
                            retry_after_ms,
                        });
                    }
                    if let Some((code, message)) = home.send_failure(id)? {
                        return Err(ClientError::Relay {
                            code: tincan_proto::frame::ErrorCode::from_str_code(&code),
                            message,
                        });
                    }
                }
                if rx.changed().await.is_err() {
                    return Err(ClientError::Closed);
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    /// Waits until the outbox is empty.
    pub async fn wait_outbox_empty(&self, timeout: Duration) -> Result<(), ClientError> {
        let mut rx = self.shared.progress.subscribe();
        let wait = async {
            loop {
                rx.borrow_and_update();
                if self.shared.home().outbox_len()? == 0 {
                    return Ok(());
                }
                if rx.changed().await.is_err() {
                    return Err(ClientError::Closed);
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    async fn request(
        &self,
        frame: impl FnOnce(u32) -> ClientFrame + Send + 'static,
    ) -> Result<RelayFrame, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Request {
                frame: Box::new(frame),
                reply,
            })
            .map_err(|_| ClientError::Closed)?;
        let frame = rx.await.map_err(|_| ClientError::Closed)??;
        match frame {
            RelayFrame::Error { code, message, .. } => Err(ClientError::Relay { code, message }),
            other => Ok(other),
        }
    }

    /// Makes an invite valid for `ttl_secs` and registers it with the relay.
    pub async fn create_invite(&self, ttl_secs: u64) -> Result<InviteDraft, ClientError> {
        let relay_url = self.shared.relay_url.clone();
        self.create_invite_at(&relay_url, ttl_secs).await
    }

    /// Like [`Client::create_invite`], but the invite names `relay_url`: the address at which
    /// the other agent reaches this same relay (a public URL or a tunnel) when this client
    /// connects to it another way (e.g. over loopback).
    pub async fn create_invite_at(
        &self,
        relay_url: &str,
        ttl_secs: u64,
    ) -> Result<InviteDraft, ClientError> {
        let relay_url = normalize_relay_url(relay_url);
        crate::conn::ws_url(&relay_url)?;
        // From the next whole second: an invite lives at least `ttl_secs` (a 1 s invite made late
        // in a second is not already due when the relay checks it).
        let draft =
            self.shared
                .home()
                .create_invite(&relay_url, ttl_secs, now_ms().div_ceil(1000))?;
        let id = draft.invite().id;
        let expires_at = draft.invite().expires_at;
        match self
            .request(move |req| ClientFrame::RegisterInvite {
                req,
                id,
                expires_at,
            })
            .await
        {
            Ok(_) => Ok(draft),
            Err(e) => {
                let _ = self.shared.home().drop_invite(&id);
                Err(e)
            }
        }
    }

    /// Accepts an invite: claims it at the relay (first claim wins), opens the session and
    /// delivers the join message. Returns the new peer.
    pub async fn accept_invite(
        &self,
        invite: &Invite,
        timeout: Duration,
    ) -> Result<PeerRecord, ClientError> {
        if invite.inviter.ed25519 == self.shared.home().identity()?.peer_id() {
            return Err(ClientError::OwnInvite);
        }
        let id = invite.id;
        self.request(move |req| ClientFrame::ClaimInvite { req, id })
            .await?;
        let join = self.shared.home().accept_invite(invite, now_ms())?;
        let _ = self.cmd.send(Cmd::Flush(None));
        self.wait_sent(&join, timeout).await?;
        let home = self.shared.home();
        home.peer(&invite.inviter.ed25519)?
            .ok_or_else(|| ClientError::UnknownPeer(invite.inviter.ed25519.to_string()))
    }

    /// The next event. Messages and joins are marked as handed over when returned, so each is
    /// returned once across restarts of the application.
    ///
    /// The marks are not a write of their own: they ride along with the home's next
    /// transaction (a delivery, a send, an acknowledgement), and are written alone every 256
    /// events, once the oldest is 20 ms old (checked when the next event is asked for, or by a
    /// timer while waiting for one), and when the client is dropped. So a crash can show a few
    /// entries again (at most 256, usually those returned within the last 20 ms); it never
    /// loses one.
    pub async fn next_event(&mut self) -> Option<Event> {
        let (event, inbox_seq) = match self.events.try_recv() {
            Ok(item) => item,
            Err(_) => {
                self.defer_marks();
                self.recv_writing_marks().await?
            }
        };
        // Checked here, not only by the timer in `recv_writing_marks`: a steady stream (a
        // backlog, a slow reader) may never leave that timer time to fire.
        if self.unwritten_count >= MARK_BATCH
            || self
                .unwritten_since
                .is_some_and(|t| t.elapsed() >= MARK_DELAY)
        {
            self.flush_marks();
        }
        if let (Some(seq), Some(held)) = (inbox_seq, self.held.as_mut()) {
            match &event {
                Event::Message(m) => {
                    held.insert((m.from, m.id), seq);
                }
                _ => self.shared.home().mark_handled_later(seq),
            }
            return Some(event);
        }
        if let Some(seq) = inbox_seq {
            // The mark is a watermark: `unmarked`, the entry returned last, covers those before
            // it (`give_back_last` moves it back one).
            if self.unwritten_since.is_none() {
                self.unwritten_since = Some(std::time::Instant::now());
            }
            self.given_back_to = self.unmarked;
            self.unmarked = Some(seq);
            self.unwritten_count += 1;
        }
        Some(event)
    }

    /// Gives back messages this client returned that the application then could not deal with
    /// (sender and id of each): the next client on this home returns them again, in order, and
    /// the others returned meanwhile stay handed over. Returns how many were found. For an
    /// application that is stopping: events this client returns afterwards would be handed over
    /// as usual.
    pub fn give_back(&mut self, messages: &[(PeerId, MessageId)]) -> Result<usize, ClientError> {
        self.flush_marks();
        self.shared.home().give_back(messages)
    }

    /// Says that the application has dealt with a message [`Client::next_event`] returned (for
    /// a client without [`ClientOptions::mark_on_return`]): it is not returned again. The mark
    /// rides along with the home's next transaction, so marking a message just before sending
    /// its reply commits both together. Returns whether the message was held.
    pub fn handled(&mut self, from: &PeerId, id: &MessageId) -> bool {
        let Some(seq) = self.held.as_mut().and_then(|h| h.remove(&(*from, *id))) else {
            return false;
        };
        self.shared.home().mark_handled_later(seq);
        true
    }

    /// Takes back the message or join that [`Client::next_event`] returned last, for an
    /// application that could not pass it on (its output was closed): it is not marked as handed
    /// over, so the next client on this home returns it again. Entries returned before it stay
    /// handed over. Call it before the next `next_event`; afterwards it does nothing.
    pub fn give_back_last(&mut self) {
        if self.unmarked.is_some() {
            self.unmarked = self.given_back_to.take();
        }
    }

    /// Hands the marks of returned entries to the home, which writes them with its next
    /// transaction.
    fn defer_marks(&mut self) {
        self.given_back_to = None;
        if let Some(seq) = self.unmarked.take() {
            self.shared.home().mark_consumed_later(seq);
        }
    }

    /// Waits for the next event; a mark still unwritten after [`MARK_DELAY`] is written alone.
    /// Cancel-safe: an unwritten mark stays with the home.
    async fn recv_writing_marks(&mut self) -> Option<(Event, Option<i64>)> {
        if self.shared.home().consumed_pending() {
            // Due [`MARK_DELAY`] after the oldest unwritten mark, not after each wait began.
            let due = self
                .unwritten_since
                .map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std)
                + MARK_DELAY;
            tokio::select! {
                item = self.events.recv() => return item,
                _ = tokio::time::sleep_until(due) => self.write_marks(),
            }
        }
        self.events.recv().await
    }

    fn flush_marks(&mut self) {
        self.defer_marks();
        self.write_marks();
    }

    fn write_marks(&mut self) {
        match self.shared.home().flush_deferred() {
            // Only the entry returned last can still be unwritten (in `unmarked`).
            Ok(()) => {
                self.unwritten_since = self.unmarked.map(|_| std::time::Instant::now());
                self.unwritten_count = usize::from(self.unmarked.is_some());
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not mark inbox entries consumed; they may be shown again")
            }
        }
    }
}

/// Turns inbox entries into events (`None` for one the peer policy withholds), each with its
/// inbox sequence number. Each sender's alias and policy, and the allowlist setting, are read once
/// per call, not once per entry.
pub(crate) fn entry_events(
    home: &Home,
    entries: impl IntoIterator<Item = InboxEntry>,
) -> Vec<(Option<Event>, i64)> {
    let mut standings: HashMap<PeerId, Option<PeerStanding>> = HashMap::new();
    let mut allowlist_only: Option<bool> = None;
    entries
        .into_iter()
        .map(|e| {
            let standing = standings.entry(e.from).or_insert_with(|| {
                home.standing(&e.from).unwrap_or_else(|err| {
                    tracing::warn!(error = %err, "cannot read a peer's standing");
                    None
                })
            });
            let policy = standing.as_ref().map(|s| s.policy).unwrap_or_default();
            let seq = e.seq;
            (
                entry_event(home, e, standing.as_ref(), policy, &mut allowlist_only),
                seq,
            )
        })
        .collect()
}

/// One entry as [`entry_events`] turns it into an event.
fn entry_event(
    home: &Home,
    e: InboxEntry,
    standing: Option<&PeerStanding>,
    policy: PeerPolicy,
    allowlist_only: &mut Option<bool>,
) -> Option<Event> {
    // The peer policy (blocked, allowlist-only) decides here whether an entry is shown at all.
    let allowlist = || match *allowlist_only {
        Some(on) => Ok(on),
        None => {
            let on = home.allowlist_only()?;
            *allowlist_only = Some(on);
            Ok(on)
        }
    };
    let withheld = match home.admit_with(&e, policy, allowlist) {
        Ok(None) => None,
        Ok(Some(reason)) => Some(reason),
        // Not marked withheld (nor consumed): no event, so it is not marked handed over either,
        // and the next client start offers it again.
        Err(err) => {
            tracing::warn!(error = %err, "cannot apply the peer policy; holding the entry back for now");
            return None;
        }
    };
    if let Some(reason) = withheld {
        // Said without its text, so the user learns that (and why) something is held back.
        return Some(Event::Withheld {
            from: e.from,
            from_name: standing.and_then(|s| s.alias.clone()),
            id: e.id,
            kind: e.kind.as_str(),
            reason: reason.to_string(),
        });
    }
    let event = match e.kind {
        InboxKind::Message => Event::Message(ReceivedMessage {
            from: e.from,
            from_name: standing.and_then(|s| s.alias.clone()),
            id: e.id,
            text: e.text.unwrap_or_default(),
            sent_at: e.sent_at,
            received_at: e.received_at,
        }),
        InboxKind::PeerJoined => Event::PeerJoined {
            peer: e.from,
            fingerprint: standing.map(|s| s.fingerprint(&e.from)).unwrap_or_default(),
        },
        InboxKind::Rejected => Event::Rejected {
            from: e.from,
            reason: e.text.unwrap_or_default(),
        },
    };
    Some(event)
}
