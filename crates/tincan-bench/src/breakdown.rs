//! `--breakdown`: where one-way throughput goes, one stage at a time, nothing overlapping.
//!
//! 1. seal: `Home::queue_texts` on the sender's home, offline (encryption + outbox insert).
//! 2. open: `Home::process_incoming` on a copy of the receiver's home, offline, fed the sealed
//!    bodies straight from the sender's outbox (decryption + inbox insert), in batches of 512 as
//!    the client's connection task uses.
//! 3. consume: `Home::mark_consumed` once per message, as `Client::next_event` does.
//! 4. relay store: the sender connects and its outbox drains into the relay (frames, WebSocket,
//!    relay group commit, acknowledgements written back to the sender's home).
//! 5. drain: the receiver connects and takes everything from the relay through `next_event`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use tincan_client::home::Incoming;
use tincan_client::{Event, Home, now_ms};
use tincan_proto::invite::normalize_relay_url;

use crate::report::{Figure, Outcome};
use crate::setup::{Pair, Relay, agent};
use crate::throughput::Params;

const DRAIN_BATCH: usize = 512;

pub async fn run(p: &Params, bar: &ProgressBar) -> Result<Outcome> {
    let n = p.messages;
    let relay = Relay::start_with(|c| c.queue_cap = n as u64 + 1_000).await?;
    let url = normalize_relay_url(relay.url());
    let pair = Pair::new(&url).await?;
    let a_id = pair.a.home().identity()?.peer_id();
    let b_id = pair.b.home().identity()?.peer_id();
    let (a_dir, b_dir) = (pair.dir.path().join("a"), pair.dir.path().join("b"));
    drop(pair.a);
    drop(pair.b);
    // Let the aborted connection tasks drop their homes.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let payload = "x".repeat(p.size);
    let texts: Vec<&str> = vec![payload.as_str(); p.batch];

    // 1. seal
    bar.set_message("seal");
    let mut home_a = Home::open(&a_dir)?;
    let t = Instant::now();
    let mut queued = 0;
    while queued < n {
        let k = p.batch.min(n - queued);
        home_a.queue_texts(&b_id, &texts[..k], now_ms())?;
        queued += k;
    }
    let seal = t.elapsed();
    let sealed = home_a.outbox(&url, 0, n)?;
    drop(home_a);
    if sealed.len() != n {
        bail!("outbox holds {} messages, expected {n}", sealed.len());
    }

    // 2. open, 3. consume: on a copy of the receiver's home, so the real one stays untouched.
    bar.set_message("open");
    let b_copy = pair.dir.path().join("b-copy");
    copy_dir(&b_dir, &b_copy)?;
    let mut home_b = Home::open(&b_copy)?;
    let mut inbox_seqs = Vec::with_capacity(n);
    let t = Instant::now();
    for (chunk_no, chunk) in sealed.chunks(DRAIN_BATCH).enumerate() {
        let batch: Vec<Incoming> = chunk
            .iter()
            .enumerate()
            .map(|(i, e)| Incoming {
                relay_seq: (chunk_no * DRAIN_BATCH + i + 1) as u64,
                from: a_id,
                id: e.id,
                body: e.body.clone(),
            })
            .collect();
        for processed in home_b.process_incoming(&batch, now_ms())? {
            inbox_seqs.extend(processed.into_entries().iter().map(|e| e.seq));
        }
    }
    let open = t.elapsed();
    bar.set_message("consume");
    let t = Instant::now();
    for seq in &inbox_seqs {
        home_b.mark_consumed(*seq)?;
    }
    let consume = t.elapsed();
    drop(home_b);

    // 4. relay store
    bar.set_message("relay store");
    let t = Instant::now();
    let a = agent(&a_dir, &url).await?;
    a.wait_outbox_empty(Duration::from_secs(3600))
        .await
        .context("outbox drain")?;
    let store = t.elapsed();

    // 5. drain through the relay into the receiver
    bar.set_message("drain");
    let t = Instant::now();
    let mut b = agent(&b_dir, &url).await?;
    let mut got = 0;
    while got < n {
        match b.next_event().await {
            Some(Event::Message(_)) => {
                got += 1;
                if got % 256 == 0 {
                    bar.set_position(got as u64);
                }
            }
            Some(Event::Rejected { reason, .. }) => bail!("rejected: {reason}"),
            Some(_) => {}
            None => bail!("receiver closed after {got}"),
        }
    }
    let drain = t.elapsed();
    drop((a, b));
    relay.stop().await?;

    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    let mut figures = Vec::new();
    for (key, label, d) in [
        ("seal_us", "seal + outbox insert", seal),
        ("open_us", "process_incoming (open + inbox)", open),
        ("consume_us", "mark_consumed per event", consume),
        ("relay_store_us", "outbox -> relay stored + acked", store),
        ("drain_us", "relay -> next_event, all of it", drain),
    ] {
        figures.push(Figure::new(key, label, per(d), "us/msg"));
    }
    let rates =
        [seal, open, consume, store, drain].map(|d| format!("{:.0}", n as f64 / d.as_secs_f64()));
    Ok(Outcome::Measured {
        figures,
        notes: vec![format!(
            "{n} x {} B, stages run alone one after another; equivalent msg/s: seal {}, open {}, consume {}, relay store {}, drain {}",
            p.size, rates[0], rates[1], rates[2], rates[3], rates[4]
        )],
    })
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))
            .with_context(|| format!("copy {}", entry.path().display()))?;
    }
    Ok(())
}
