//! The load engine behind the relay-level parts: N paired identities on raw connections, each
//! pair a sender connection (pipelined `Send`s, a bounded window of requests not yet `Sent`) and
//! a receiving connection that acks every `Deliver`. Bodies are pre-made random bytes with the
//! send time in their first 8 bytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tincan_proto::frame::{ClientFrame, RelayFrame};
use tincan_proto::identity::Identity;
use tincan_proto::ids::PeerId;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::wire::{self, Sink, Stream, Ws};

/// Frames handled per wake-up before a flush, so a busy connection still writes regularly.
const DRAIN: usize = 256;
/// Connections opened at once while setting up.
const SETUP_CONCURRENCY: usize = 64;

/// Relay settings for load: no rate limits, no connection caps, a queue cap that never refuses.
pub fn tune(config: &mut tincan_relay::Config) {
    config.max_connections = 1_000_000;
    config.max_connections_per_ip = 1_000_000;
    config.rate_per_identity = tincan_relay::Rate::new(0.0, 0.0);
    config.rate_per_ip = tincan_relay::Rate::new(0.0, 0.0);
    config.queue_cap = 100_000_000;
    config.max_open_invites = 1_000_000;
}

/// One pair's two authenticated connections, paired on the relay.
pub struct PairConns {
    sender: Ws,
    receiver: Ws,
    to: PeerId,
}

/// Opens and pairs `n` identity pairs on `relay_url`; `on_pair` is called as each is ready.
pub async fn open_pairs(
    relay_url: &str,
    n: usize,
    on_pair: impl Fn() + Send + Sync + 'static,
) -> Result<Vec<PairConns>> {
    let url: Arc<str> = relay_url.into();
    let on_pair = Arc::new(on_pair);
    wire::bounded_all(n, SETUP_CONCURRENCY, move |_| {
        let (url, on_pair) = (url.clone(), on_pair.clone());
        async move {
            let (a, b) = (Identity::generate(), Identity::generate());
            let mut sender = wire::connect(&url, &a, false).await?;
            let mut receiver = wire::connect(&url, &b, true).await?;
            wire::pair(&mut sender, &mut receiver).await?;
            on_pair();
            Ok(PairConns {
                sender,
                receiver,
                to: b.peer_id(),
            })
        }
    })
    .await
}

/// How the senders send.
#[derive(Clone, Copy, Debug)]
pub struct Drive {
    /// Body size in bytes.
    pub size: usize,
    /// Most `Send`s per connection not yet answered with `Sent`.
    pub window: usize,
    /// Open loop at this many messages per second per pair; `None` sends as fast as the window
    /// allows (closed loop). Pair `i` of `n` is offset by `i / n` of a period; tokio's timer
    /// ticks every millisecond, so the sends due within one millisecond leave together (an even
    /// pacer thread was tried and cost more CPU per message: docs/BENCHMARKS.md).
    pub rate_per_pair: Option<f64>,
    /// Latency samples are kept for messages sent in `[record_from, record_to)` after the start.
    pub record_from: Duration,
    pub record_to: Duration,
}

/// Live counters, read while the load runs.
#[derive(Default)]
pub struct Counters {
    /// `Sent` replies received: messages durably stored.
    pub stored: AtomicU64,
    /// `Deliver`s received and acked.
    pub delivered: AtomicU64,
    /// Times an open-loop sender had messages due but a full window (the offered load was not
    /// fully offered).
    pub window_full: AtomicU64,
}

/// A running load; stop it with [`Running::stop`].
pub struct Running {
    pub counters: Arc<Counters>,
    /// One stop signal per task: a shared `watch` made all of them register with one mutex on
    /// every wake-up, and that lock was contended enough to show in the relay's profile.
    stop: Vec<oneshot::Sender<()>>,
    tasks: JoinSet<Result<Vec<u64>>>,
}

/// Starts one sender and one receiver task per pair, timed from `clock`.
pub fn start(pairs: Vec<PairConns>, drive: Drive, clock: Instant) -> Running {
    let counters = Arc::new(Counters::default());
    let mut stop = Vec::with_capacity(2 * pairs.len());
    let mut stopper = || {
        let (tx, rx) = oneshot::channel();
        stop.push(tx);
        rx
    };
    let mut tasks = JoinSet::new();
    let n = pairs.len().max(1);
    for (i, p) in pairs.into_iter().enumerate() {
        let phase = drive.rate_per_pair.map_or(Duration::ZERO, |r| {
            Duration::from_secs_f64(i as f64 / n as f64 / r)
        });
        let body = wire::random_body(drive.size, i as u64);
        let (sink, stream) = p.sender.split();
        tasks.spawn(send_loop(
            sink,
            stream,
            p.to,
            body,
            drive,
            clock,
            phase,
            stopper(),
            counters.clone(),
        ));
        let (sink, stream) = p.receiver.split();
        tasks.spawn(receive_loop(
            sink,
            stream,
            drive,
            clock,
            stopper(),
            counters.clone(),
        ));
    }
    Running {
        counters,
        stop,
        tasks,
    }
}

impl Running {
    /// Stops every task and returns the latency samples (nanoseconds, send to deliver).
    pub async fn stop(mut self, limit: Duration) -> Result<Vec<u64>> {
        for stop in self.stop.drain(..) {
            let _ = stop.send(());
        }
        let mut samples = Vec::new();
        let joined = tokio::time::timeout(limit, async {
            let mut first_err = None;
            while let Some(r) = self.tasks.join_next().await {
                match r {
                    Ok(Ok(s)) => samples.extend(s),
                    Ok(Err(e)) => {
                        first_err.get_or_insert(e);
                    }
                    Err(e) => {
                        first_err.get_or_insert(anyhow::anyhow!("load task panicked: {e}"));
                    }
                }
            }
            first_err
        })
        .await;
        match joined {
            Ok(None) => Ok(samples),
            Ok(Some(e)) => Err(e),
            Err(_) => {
                self.tasks.abort_all();
                bail!("load tasks did not stop within {limit:?}")
            }
        }
    }

    /// The first task failure, if a task has already ended (tasks end early only on errors).
    pub fn failed(&mut self) -> Option<anyhow::Error> {
        match self.tasks.try_join_next()? {
            Ok(Ok(_)) => Some(anyhow::anyhow!("a load task ended early")),
            Ok(Err(e)) => Some(e),
            Err(e) => Some(anyhow::anyhow!("load task panicked: {e}")),
        }
    }
}

fn nanos_since(clock: Instant) -> u64 {
    clock.elapsed().as_nanos() as u64
}

#[allow(clippy::too_many_arguments)]
async fn send_loop(
    mut sink: Sink,
    mut stream: Stream,
    to: PeerId,
    body: Vec<u8>,
    drive: Drive,
    clock: Instant,
    phase: Duration,
    mut stop: oneshot::Receiver<()>,
    counters: Arc<Counters>,
) -> Result<Vec<u64>> {
    let schedule = clock + phase;
    let window = drive.window.max(1);
    let mut in_flight = 0usize;
    let mut req = 0u32;
    let mut offered = 0u64;
    loop {
        // How many to send now: up to the window (closed loop), or what is due (open loop).
        let room = window - in_flight;
        let want = match drive.rate_per_pair {
            None if in_flight <= window / 2 => room,
            None => 0,
            Some(rate) => {
                let due =
                    ((schedule.elapsed().as_secs_f64() * rate) as u64).saturating_sub(offered);
                if due as usize > room {
                    counters.window_full.fetch_add(1, Ordering::Relaxed);
                }
                (due as usize).min(room)
            }
        };
        for _ in 0..want {
            req = req.wrapping_add(1).max(1);
            let mut b = body.clone();
            if b.len() >= 8 {
                b[..8].copy_from_slice(&nanos_since(clock).to_le_bytes());
            }
            let frame = ClientFrame::Send {
                req,
                id: wire::message_id(),
                to,
                body: b,
            };
            sink.feed(Message::Binary(frame.encode().into()))
                .await
                .context("sender: write")?;
        }
        if want > 0 {
            sink.flush().await.context("sender: flush")?;
            in_flight += want;
            offered += want as u64;
        }
        let next_due = drive.rate_per_pair.map(|rate| {
            let at = Duration::from_secs_f64((offered + 1) as f64 / rate);
            tokio::time::Instant::from_std(schedule + at)
        });
        let first = tokio::select! {
            biased;
            _ = &mut stop => return Ok(Vec::new()),
            m = stream.next() => m,
            _ = sleep_until(next_due) => continue,
        };
        let mut n = 0;
        let mut next = first;
        loop {
            let msg = next
                .context("sender: relay closed the connection")?
                .context("sender: read")?;
            match wire::decode(msg)? {
                Some(RelayFrame::Sent { .. }) => {
                    in_flight = in_flight.saturating_sub(1);
                    n += 1;
                }
                Some(RelayFrame::Error { code, message, .. }) => {
                    bail!("relay refused a send: {code:?}: {message}")
                }
                Some(other) => bail!("sender: unexpected frame {other:?}"),
                None => {}
            }
            if n >= DRAIN {
                break;
            }
            match stream.next().now_or_never() {
                Some(m) => next = m,
                None => break,
            }
        }
        counters.stored.fetch_add(n as u64, Ordering::Relaxed);
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn receive_loop(
    mut sink: Sink,
    mut stream: Stream,
    drive: Drive,
    clock: Instant,
    mut stop: oneshot::Receiver<()>,
    counters: Arc<Counters>,
) -> Result<Vec<u64>> {
    let (from, to) = (
        drive.record_from.as_nanos() as u64,
        drive.record_to.as_nanos() as u64,
    );
    let mut samples = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            _ = &mut stop => return Ok(samples),
            m = stream.next() => m,
        };
        let mut n = 0;
        let mut next = first;
        loop {
            let msg = next
                .context("receiver: relay closed the connection")?
                .context("receiver: read")?;
            match wire::decode(msg)? {
                Some(RelayFrame::Deliver { seq, body, .. }) => {
                    if body.len() >= 8 {
                        let now = nanos_since(clock);
                        let mut stamp = [0u8; 8];
                        stamp.copy_from_slice(&body[..8]);
                        let sent = u64::from_le_bytes(stamp);
                        if (from..to).contains(&sent) {
                            samples.push(now.saturating_sub(sent));
                        }
                    }
                    sink.feed(Message::Binary(ClientFrame::Ack { seq }.encode().into()))
                        .await
                        .context("receiver: write ack")?;
                    n += 1;
                }
                Some(RelayFrame::Error { code, message, .. }) => {
                    bail!("receiver got an error: {code:?}: {message}")
                }
                Some(other) => bail!("receiver: unexpected frame {other:?}"),
                None => {}
            }
            if n >= DRAIN {
                break;
            }
            match stream.next().now_or_never() {
                Some(m) => next = m,
                None => break,
            }
        }
        sink.flush().await.context("receiver: flush acks")?;
        counters.delivered.fetch_add(n as u64, Ordering::Relaxed);
    }
}
