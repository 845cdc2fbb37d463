//! HTTP API throughput: pairs of identities that only speak HTTP. Each gets a token through
//! `/v1/auth/challenge` + `/v1/auth/token` and pairs through `/v1/invites`; senders `POST
//! /v1/messages` (a few requests in flight each), receivers long-poll `GET
//! /v1/messages?after=&wait=` and `POST /v1/ack` what they got, as a curl agent would.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use data_encoding::BASE64URL_NOPAD;
use indicatif::ProgressBar;
use serde::Deserialize;
use serde_json::{Value, json};
use tincan_proto::identity::Identity;
use tincan_proto::ids::InviteId;
use tincan_proto::labels;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::load;
use crate::report::{Figure, Outcome};
use crate::setup::Relay;
use crate::wire;

/// HTTP settings.
#[derive(Clone, Debug)]
pub struct Params {
    pub pairs: usize,
    pub size: usize,
    /// `POST /v1/messages` requests in flight per sender.
    pub concurrency: usize,
    pub warmup: Duration,
    pub measure: Duration,
}

#[derive(Default)]
struct Counters {
    stored: AtomicU64,
    delivered: AtomicU64,
}

pub async fn run(p: &Params, bar: &ProgressBar) -> Result<Outcome> {
    let relay = Relay::start_with(load::tune).await?;
    let result = measure(relay.url(), p, bar).await;
    let stopped = relay.stop().await;
    let outcome = result?;
    stopped?;
    Ok(outcome)
}

async fn measure(url: &str, p: &Params, bar: &ProgressBar) -> Result<Outcome> {
    let http = tincan_client::http_client_builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(p.pairs * (p.concurrency + 2))
        .timeout(Duration::from_secs(30))
        .build()?;
    let api = Api {
        http: http.clone(),
        base: url.to_string(),
    };
    bar.set_message(format!("authenticating and pairing {} pairs", p.pairs));
    let mut pairs = Vec::with_capacity(p.pairs);
    for _ in 0..p.pairs {
        let (a, b) = (Identity::generate(), Identity::generate());
        let ta = api.token(&a).await.context("sender token")?;
        let tb = api.token(&b).await.context("receiver token")?;
        api.pair(&ta, &tb).await?;
        pairs.push((ta, tb, b.peer_id().to_string()));
    }

    let counters = Arc::new(Counters::default());
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for (i, (ta, tb, to)) in pairs.into_iter().enumerate() {
        let body = BASE64URL_NOPAD.encode(&wire::random_body(p.size, i as u64));
        for _ in 0..p.concurrency.max(1) {
            let (api, ta, to, body) = (api.clone(), ta.clone(), to.clone(), body.clone());
            let (mut stopped, c) = (stopped.clone(), counters.clone());
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        biased;
                        _ = stopped.changed() => return Ok(()),
                        r = api.send(&ta, &to, &body) => r?,
                    }
                    c.stored.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let (api, mut stopped, c) = (api.clone(), stopped.clone(), counters.clone());
        tasks.spawn(async move {
            let mut cursor = 0u64;
            loop {
                let page = tokio::select! {
                    biased;
                    _ = stopped.changed() => return Ok(()),
                    r = api.poll(&tb, cursor) => r?,
                };
                if page.messages.is_empty() {
                    continue;
                }
                let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
                tokio::select! {
                    biased;
                    _ = stopped.changed() => return Ok(()),
                    r = api.ack(&tb, &seqs) => r?,
                }
                cursor = page.cursor;
                c.delivered.fetch_add(seqs.len() as u64, Ordering::Relaxed);
            }
        });
    }

    let start = Instant::now();
    let total = p.warmup + p.measure;
    let mut base = None;
    while start.elapsed() < total {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(r) = tasks.try_join_next() {
            match r {
                Ok(Ok(())) => bail!("an HTTP task ended early"),
                Ok(Err(e)) => return Err(e),
                Err(e) => bail!("HTTP task panicked: {e}"),
            }
        }
        let now = (
            counters.delivered.load(Ordering::Relaxed),
            counters.stored.load(Ordering::Relaxed),
            Instant::now(),
        );
        if base.is_none() && start.elapsed() >= p.warmup {
            base = Some(now);
        }
        if let Some((d0, _, t0)) = base {
            let rate = (now.0 - d0) as f64 / t0.elapsed().as_secs_f64().max(1e-3);
            bar.set_message(format!("{rate:.0} msg/s"));
        }
        bar.set_position((start.elapsed().as_millis() as u64).min(total.as_millis() as u64));
    }
    let (d0, s0, t0) = base.context("measurement window never started")?;
    let elapsed = t0.elapsed().as_secs_f64();
    let delivered = (counters.delivered.load(Ordering::Relaxed) - d0) as f64 / elapsed;
    let stored = (counters.stored.load(Ordering::Relaxed) - s0) as f64 / elapsed;
    let _ = stop.send(true);
    let stopped = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(r) = tasks.join_next().await {
            r.context("HTTP task panicked")??;
        }
        Ok::<_, anyhow::Error>(())
    })
    .await;
    match stopped {
        Ok(r) => r?,
        Err(_) => {
            tasks.abort_all();
            bail!("HTTP tasks did not stop in time");
        }
    }
    if delivered == 0.0 {
        bail!("nothing was delivered over HTTP");
    }
    Ok(Outcome::Measured {
        figures: vec![
            Figure::new(
                "delivered_msg_per_sec",
                "delivered (polled + acked)",
                delivered,
                "msg/s",
            ),
            Figure::new("stored_msg_per_sec", "POST /v1/messages", stored, "msg/s"),
        ],
        notes: vec![format!(
            "{} pairs x {} B over HTTP/1.1 (reqwest, keep-alive): {} POSTs in flight per sender, one long-poll (wait=5, limit=1000) + ack loop per receiver; {:.1} s measured after {:.1} s warm-up",
            p.pairs,
            p.size,
            p.concurrency,
            p.measure.as_secs_f64(),
            p.warmup.as_secs_f64(),
        )],
    })
}

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
}

#[derive(Deserialize)]
struct Page {
    messages: Vec<Polled>,
    cursor: u64,
}

#[derive(Deserialize)]
struct Polled {
    seq: u64,
}

impl Api {
    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Result<Value> {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.with_context(|| format!("POST {path}"))?;
        let status = resp.status();
        let v: Value = resp
            .json()
            .await
            .with_context(|| format!("POST {path}: body"))?;
        if !status.is_success() {
            bail!("POST {path}: {status}: {}", v["error"]);
        }
        Ok(v)
    }

    async fn token(&self, id: &Identity) -> Result<String> {
        let c = self.post("/v1/auth/challenge", None, json!({})).await?;
        let nonce = BASE64URL_NOPAD
            .decode(c["nonce"].as_str().context("no nonce")?.as_bytes())
            .context("nonce is not base64url")?;
        let signature = id.sign(labels::RELAY_CHALLENGE, &nonce);
        let t = self
            .post(
                "/v1/auth/token",
                None,
                json!({
                    "peer": id.peer_id().to_string(),
                    "nonce": BASE64URL_NOPAD.encode(&nonce),
                    "signature": BASE64URL_NOPAD.encode(&signature),
                }),
            )
            .await?;
        Ok(t["token"].as_str().context("no token")?.to_string())
    }

    async fn pair(&self, inviter: &str, claimer: &str) -> Result<()> {
        let id = InviteId::from_bytes(*wire::message_id().as_bytes()).to_string();
        let expires_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + 3600;
        self.post(
            "/v1/invites",
            Some(inviter),
            json!({"id": id, "expires_at": expires_at}),
        )
        .await?;
        self.post("/v1/invites/claim", Some(claimer), json!({"id": id}))
            .await?;
        Ok(())
    }

    async fn send(&self, token: &str, to: &str, body: &str) -> Result<()> {
        let id = wire::message_id().to_string();
        self.post(
            "/v1/messages",
            Some(token),
            json!({"to": to, "id": id, "body": body}),
        )
        .await
        .map(drop)
    }

    async fn poll(&self, token: &str, after: u64) -> Result<Page> {
        let resp = self
            .http
            .get(format!(
                "{}/v1/messages?after={after}&wait=5&limit=1000",
                self.base
            ))
            .bearer_auth(token)
            .send()
            .await
            .context("GET /v1/messages")?;
        let status = resp.status();
        if !status.is_success() {
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            bail!("GET /v1/messages: {status}: {}", v["error"]);
        }
        resp.json().await.context("GET /v1/messages: body")
    }

    async fn ack(&self, token: &str, seqs: &[u64]) -> Result<()> {
        self.post("/v1/ack", Some(token), json!({"seqs": seqs}))
            .await
            .map(drop)
    }
}
