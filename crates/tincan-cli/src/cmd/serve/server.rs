//! The serve loop: events in, handler jobs out, replies back through the same connection.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use serde_json::{Value, json};
use tincan_client::tincan_proto::ids::{MessageId, PeerId};
use tincan_client::{Client, Event, ReceivedMessage, now_secs};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::ServeLimits;
use super::handler::{self, Groups, Job, Limits, Outcome};
use super::limit::Bucket;
use crate::output::{CliError, Out, terminal_safe};

/// One peer's conversation.
struct Peer {
    name: Option<String>,
    /// Messages on the line with this peer during this run, both directions.
    turns: u64,
    /// `--max-turns` reached: no more handler runs for this peer.
    ended: bool,
    queue: VecDeque<(ReceivedMessage, u64)>,
    running: bool,
    bucket: Bucket,
}

/// A finished handler run.
struct Done {
    peer: PeerId,
    id: MessageId,
    turn: u64,
    outcome: Outcome,
    ms: u64,
}

/// Counters, also written to the room's stats file for `room status`.
#[derive(Default)]
struct Stats {
    received: u64,
    replied: u64,
    no_reply: u64,
    handler_errors: u64,
    send_errors: u64,
    deferred: u64,
    dropped: u64,
    withheld: u64,
}

enum Step {
    Stop(&'static str),
    Event(Option<Event>),
    Job(Result<Done, tokio::task::JoinError>),
    Wake,
}

/// `serve` over a connected client.
pub struct Server<'a> {
    client: Client,
    command: Arc<str>,
    limits: ServeLimits,
    out: &'a Out,
    peers: HashMap<PeerId, Peer>,
    jobs: JoinSet<Done>,
    groups: Groups,
    stats: Stats,
    stats_file: Option<PathBuf>,
    /// When the stats file was last written, and whether the counters changed since.
    stats_written: Option<Instant>,
    stats_dirty: bool,
    started: StdInstant,
    disconnected: bool,
    /// When a message last arrived or a handler last finished (`--idle-timeout`).
    last_activity: Instant,
}

/// The stats file (`room status` reads it) is rewritten at most this often, so a busy room does
/// not write and rename a file for every event on its message path.
const STATS_EVERY: Duration = Duration::from_millis(250);

impl<'a> Server<'a> {
    /// A server running `command` for each message; `stats_file` receives counters (rooms).
    pub fn new(
        client: Client,
        command: String,
        limits: ServeLimits,
        out: &'a Out,
        stats_file: Option<PathBuf>,
    ) -> Self {
        Self {
            client,
            command: command.into(),
            limits,
            out,
            peers: HashMap::new(),
            jobs: JoinSet::new(),
            groups: Groups::with_reaper(super::reaper::Reaper::spawn()),
            stats: Stats::default(),
            stats_file,
            stats_written: None,
            stats_dirty: false,
            started: StdInstant::now(),
            disconnected: false,
            last_activity: Instant::now(),
        }
    }

    /// Serves until `--max-turns` ends every conversation, or SIGTERM/SIGINT through
    /// `shutdown` (installed by the caller before it announced anything, so a stop sent right
    /// after an announcement gets this shutdown). `seed` is (peer, text): sent first, as turn 1.
    pub async fn run(
        mut self,
        seed: Option<(String, String)>,
        mut shutdown: crate::signals::Shutdown,
    ) -> Result<ExitCode, CliError> {
        let me = self.client.home().identity()?.peer_id().to_string();
        self.emit(
            json!({"event": "serving", "id": me, "relay": self.client.relay_url(), "max_turns": self.limits.max_turns, "concurrency": self.limits.concurrency}),
            || format!("serving as {} on {} (Ctrl-C to stop)", &me[..12], self.client.relay_url()),
        );
        if let Some((to, text)) = seed {
            self.seed(&to, &text).await?;
        }
        let reason = loop {
            self.dispatch();
            if self.finished() {
                break "max_turns";
            }
            let wake = self.next_wake();
            let stats_due = self.stats_due();
            let idle_at = self.idle_at();
            let step = tokio::select! {
                biased;
                _ = shutdown.recv() => Step::Stop("signal"),
                _ = tokio::time::sleep_until(idle_at.unwrap_or_else(Instant::now)), if idle_at.is_some() => Step::Stop("idle"),
                Some(r) = self.jobs.join_next(), if !self.jobs.is_empty() => Step::Job(r),
                e = self.client.next_event() => Step::Event(e),
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => Step::Wake,
                _ = tokio::time::sleep_until(stats_due.unwrap_or_else(Instant::now)), if stats_due.is_some() => Step::Wake,
            };
            if matches!(step, Step::Event(Some(Event::Message(_))) | Step::Job(_)) {
                self.last_activity = Instant::now();
            }
            match step {
                Step::Stop(r) => break r,
                Step::Event(Some(e)) => self.on_event(e),
                Step::Event(None) => break "client_stopped",
                Step::Job(Ok(done)) => self.on_done(done).await,
                Step::Job(Err(e)) => {
                    tracing::error!(error = %e, "handler task failed");
                }
                Step::Wake => {}
            }
            self.stats_changed();
        };
        self.finish(reason).await
    }

    async fn seed(&mut self, to: &str, text: &str) -> Result<(), CliError> {
        let peer = self.client.home().resolve_peer(to)?;
        let id = self.client.send(&peer.id.to_string(), text).await?;
        let p = self.peer(peer.id, peer.alias.clone());
        p.turns = 1;
        let name = display(&peer.id, &peer.alias);
        self.emit(
            json!({"event": "seeded", "to": peer.id.to_string(), "id": id.to_string(), "turn": 1, "text": text}),
            || crate::output::tagged_lines(&format!("-> [{name}]"), text),
        );
        Ok(())
    }

    fn peer(&mut self, id: PeerId, name: Option<String>) -> &mut Peer {
        let limits = &self.limits;
        let p = self.peers.entry(id).or_insert_with(|| Peer {
            name: None,
            turns: 0,
            ended: false,
            queue: VecDeque::new(),
            running: false,
            bucket: Bucket::new(limits.rate, limits.burst, Instant::now()),
        });
        if name.is_some() {
            p.name = name;
        }
        p
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Message(m) => self.on_message(m),
            Event::PeerJoined { peer, fingerprint } => self.emit(
                json!({"event": "peer_joined", "peer": peer.to_string(), "fingerprint": fingerprint}),
                || format!("peer joined: {peer}\nfingerprint: {fingerprint}  (compare it with theirs out of band)"),
            ),
            e @ Event::Withheld { .. } => {
                self.stats.withheld += 1;
                if let Some((value, text)) = crate::output::withheld(&e) {
                    self.emit(value, || text);
                }
            }
            Event::Rejected { from, reason } => self.emit(
                json!({"event": "rejected", "from": from.to_string(), "reason": reason}),
                || format!("rejected a message claiming to be from {from}: {}", terminal_safe(&reason)),
            ),
            Event::SendFailed { id, code, message } => {
                self.stats.send_errors += 1;
                self.emit(
                    json!({"event": "send_error", "id": id.to_string(), "code": code, "message": message}),
                    || format!("relay refused reply {id}: {}", terminal_safe(&message)),
                );
            }
            Event::SendDeferred {
                id,
                code,
                message,
                retry_after_ms,
            } => self.emit(
                json!({"event": "send_deferred", "id": id.to_string(), "code": code, "message": message, "retry_after_ms": retry_after_ms}),
                || format!("relay deferred reply {id}: {} (retrying)", terminal_safe(&message)),
            ),
            Event::Connected => {
                if self.disconnected {
                    self.disconnected = false;
                    let relay = self.client.relay_url().to_string();
                    self.emit(json!({"event": "reconnected", "relay": relay}), || {
                        format!("reconnected to {relay}")
                    });
                }
            }
            Event::Disconnected { reason } => {
                self.disconnected = true;
                self.emit(json!({"event": "disconnected", "reason": reason}), || {
                    format!("disconnected ({}); reconnecting", terminal_safe(&reason))
                });
            }
        }
    }

    fn on_message(&mut self, m: ReceivedMessage) {
        self.stats.received += 1;
        let max_turns = self.limits.max_turns;
        let queue_cap = self.limits.queue_cap as usize;
        let p = self.peer(m.from, m.from_name.clone());
        p.turns += 1;
        let turn = p.turns;
        let name = display(&m.from, &p.name);
        let from = m.from.to_string();
        let id = m.id.to_string();
        self.emit(
            json!({"event": "received", "from": from, "from_name": m.from_name, "id": id, "turn": turn, "text": m.text, "sent_at": m.sent_at}),
            || crate::output::tagged_lines(&format!("<- [{name}]"), &m.text),
        );
        let p = self.peer(m.from, None);
        if p.ended || max_turns.is_some_and(|max| turn >= max) {
            // The last turn is read, not answered: an answer would be one turn too many.
            p.ended = true;
            self.client.handled(&m.from, &m.id);
            self.stats.no_reply += 1;
            self.emit(
                json!({"event": "no_reply", "from": from, "id": id, "turn": turn, "reason": "max_turns"}),
                || format!("   (turn {turn}: conversation with {name} ended by --max-turns)"),
            );
            return;
        }
        if p.queue.len() >= queue_cap {
            let queued = p.queue.len();
            // Reported as dropped, so dealt with: a restart does not replay the flood.
            self.client.handled(&m.from, &m.id);
            self.stats.dropped += 1;
            self.emit(
                json!({"event": "dropped", "from": from, "id": id, "turn": turn, "reason": "queue_full", "queued": queued}),
                || format!("   dropped {id} from {name}: {queued} messages already waiting (--queue-cap)"),
            );
            return;
        }
        let waiting = p.queue.len() + 1;
        let rate_limited = !p.bucket.covers(waiting, Instant::now());
        p.queue.push_back((m, turn));
        if rate_limited {
            self.stats.deferred += 1;
            self.emit(
                json!({"event": "deferred", "from": from, "id": id, "turn": turn, "reason": "rate_limited", "queued": waiting}),
                || format!("   deferred {id} from {name}: over --rate, {waiting} waiting"),
            );
        }
    }

    /// Starts every job that may start now.
    fn dispatch(&mut self) {
        let now = Instant::now();
        let max = self.limits.concurrency as usize;
        let handler_limits = Limits {
            timeout: Duration::from_secs(self.limits.handler_timeout),
            max_output: self.limits.max_output,
        };
        for (peer_id, p) in &mut self.peers {
            if self.jobs.len() >= max {
                return;
            }
            if p.running || p.ended || p.queue.is_empty() || !p.bucket.try_take(now) {
                continue;
            }
            let Some((m, turn)) = p.queue.pop_front() else {
                continue;
            };
            p.running = true;
            let job = Job {
                from: peer_id.to_string(),
                from_name: p.name.clone().unwrap_or_default(),
                message_id: m.id.to_string(),
                turn,
                text: m.text,
            };
            let (command, groups, peer, id) =
                (self.command.clone(), self.groups.clone(), *peer_id, m.id);
            self.jobs.spawn(async move {
                let t0 = StdInstant::now();
                let outcome = handler::run(&command, job, handler_limits, &groups).await;
                Done {
                    peer,
                    id,
                    turn,
                    outcome,
                    ms: t0.elapsed().as_millis() as u64,
                }
            });
        }
    }

    /// When a rate-limited peer may run next, if any is waiting on that alone.
    /// When `--idle-timeout` ends the loop, if it is set and nothing is running or waiting.
    fn idle_at(&self) -> Option<Instant> {
        let secs = self.limits.idle_timeout?;
        let busy = !self.jobs.is_empty() || self.peers.values().any(|p| !p.queue.is_empty());
        (!busy).then(|| self.last_activity + Duration::from_secs(secs))
    }

    fn next_wake(&mut self) -> Option<Instant> {
        if self.jobs.len() >= self.limits.concurrency as usize {
            return None;
        }
        let now = Instant::now();
        self.peers
            .values_mut()
            .filter(|p| !p.running && !p.ended && !p.queue.is_empty())
            .map(|p| p.bucket.next_token_at(now))
            .min()
    }

    async fn on_done(&mut self, done: Done) {
        // Dealt with whatever the outcome; the mark rides along with the reply's own commit (the
        // send below), so a crash leaves either both or neither.
        self.client.handled(&done.peer, &done.id);
        let max_turns = self.limits.max_turns;
        let p = self.peer(done.peer, None);
        p.running = false;
        let name = display(&done.peer, &p.name);
        let (from, id, turn, ms) = (
            done.peer.to_string(),
            done.id.to_string(),
            done.turn,
            done.ms,
        );
        let text = match done.outcome {
            Outcome::Failed(f) => {
                self.stats.handler_errors += 1;
                self.emit(
                    json!({"event": "handler_error", "from": from, "id": id, "turn": turn, "code": f.code, "message": f.message, "exit_code": f.exit_code, "stderr": f.stderr, "ms": ms}),
                    || {
                        let mut s = format!("   handler failed on {id} from {name}: {}", f.message);
                        if !f.stderr.is_empty() {
                            s.push_str(&format!("\n   stderr: {}", terminal_safe(&f.stderr)));
                        }
                        s
                    },
                );
                return;
            }
            Outcome::Reply(t) if t.is_empty() => {
                self.stats.no_reply += 1;
                self.emit(
                    json!({"event": "no_reply", "from": from, "id": id, "turn": turn, "reason": "empty", "ms": ms}),
                    || format!("   (no reply to {name})"),
                );
                return;
            }
            Outcome::Reply(t) => t,
        };
        if p.ended || max_turns.is_some_and(|max| p.turns >= max) {
            p.ended = true;
            self.stats.no_reply += 1;
            self.emit(
                json!({"event": "no_reply", "from": from, "id": id, "turn": turn, "reason": "max_turns", "ms": ms}),
                || format!("   (reply to {name} not sent: --max-turns reached)"),
            );
            return;
        }
        // Sealing and queueing is local (the outbox); the connection sends it.
        match self.client.send(&from, &text).await {
            Ok(reply_id) => {
                let p = self.peer(done.peer, None);
                p.turns += 1;
                let reply_turn = p.turns;
                if max_turns.is_some_and(|max| reply_turn >= max) {
                    p.ended = true;
                }
                self.stats.replied += 1;
                self.emit(
                    json!({"event": "replied", "to": from, "id": reply_id.to_string(), "in_reply_to": id, "turn": reply_turn, "text": text, "ms": ms}),
                    || crate::output::tagged_lines(&format!("-> [{name}]"), &text),
                );
            }
            Err(e) => {
                self.stats.send_errors += 1;
                self.emit(
                    json!({"event": "send_error", "to": from, "in_reply_to": id, "code": e.code(), "message": e.to_string()}),
                    || format!("   cannot send the reply to {name}: {e}"),
                );
            }
        }
    }

    /// `--max-turns` was given and every conversation so far has ended.
    fn finished(&self) -> bool {
        self.limits.max_turns.is_some()
            && self.jobs.is_empty()
            && !self.peers.is_empty()
            && self.peers.values().all(|p| p.ended)
    }

    async fn finish(mut self, reason: &str) -> Result<ExitCode, CliError> {
        handler::terminate_all(&self.groups).await;
        // Runs stopped by the shutdown were not answered: list them with the queued ones.
        let mut unhandled: Vec<(PeerId, MessageId)> = Vec::new();
        while let Some(done) = self.jobs.join_next().await {
            if let Ok(done) = done {
                unhandled.push((done.peer, done.id));
            }
        }
        unhandled.extend(
            self.peers
                .values()
                .flat_map(|p| p.queue.iter().map(|(m, _)| (m.from, m.id))),
        );
        // Not answered, so never marked handled (`serve_options`): the next `serve` or `listen`
        // on this home gets them, as it would after a crash.
        let given_back = unhandled.len();
        let unhandled: Vec<String> = unhandled.iter().map(|(_, id)| id.to_string()).collect();
        // Replies are in the persisted outbox either way; give them a moment to leave.
        let flushed = self
            .client
            .wait_outbox_empty(Duration::from_secs(10))
            .await
            .is_ok();
        self.write_stats();
        let turns: u64 = self.peers.values().map(|p| p.turns).sum();
        let s = &self.stats;
        self.emit(
            json!({
                "event": "done", "reason": reason, "turns": turns, "received": s.received,
                "replied": s.replied, "handler_errors": s.handler_errors, "dropped": s.dropped,
                "withheld": s.withheld, "unhandled": unhandled, "given_back": given_back, "outbox_flushed": flushed,
            }),
            || format!("done ({reason}): {turns} turns, {} replies", s.replied),
        );
        if reason == "client_stopped" {
            return Err(crate::cmd::stopped_error(&self.client));
        }
        Ok(ExitCode::SUCCESS)
    }

    fn emit(&self, value: Value, text: impl FnOnce() -> String) {
        self.out.print(value, text);
    }

    /// Counters may have changed: write them now if the last write is old enough, else later
    /// (see [`STATS_EVERY`]).
    fn stats_changed(&mut self) {
        if self.stats_file.is_none() {
            return;
        }
        self.stats_dirty = true;
        if self
            .stats_written
            .is_none_or(|t| t.elapsed() >= STATS_EVERY)
        {
            self.write_stats();
        }
    }

    /// When pending counters are due to be written, if any are.
    fn stats_due(&self) -> Option<Instant> {
        match (self.stats_dirty, self.stats_written) {
            (true, Some(t)) => Some(t + STATS_EVERY),
            _ => None,
        }
    }

    fn write_stats(&mut self) {
        self.stats_dirty = false;
        self.stats_written = Some(Instant::now());
        let Some(path) = &self.stats_file else { return };
        let s = &self.stats;
        let v = json!({
            "pid": std::process::id(), "updated_at": now_secs(),
            "uptime_secs": self.started.elapsed().as_secs(), "conversations": self.peers.len(),
            "received": s.received, "replied": s.replied, "no_reply": s.no_reply,
            "handler_errors": s.handler_errors, "send_errors": s.send_errors,
            "deferred": s.deferred, "dropped": s.dropped, "withheld": s.withheld,
        });
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, v.to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }
}

fn display(id: &PeerId, name: &Option<String>) -> String {
    name.clone()
        .unwrap_or_else(|| id.to_string()[..12].to_string())
}
