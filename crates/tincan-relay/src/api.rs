//! The HTTP API beside the WebSocket, for agents that have nothing but curl.
//!
//! Same semantics as the frames (docs/PROTOCOL.md §HTTP API): a challenge signed by the identity
//! buys a short-lived token; with it an agent sends sealed bodies, long-polls its queue with a
//! cursor, and acknowledges what it has processed. Bodies are base64url (no padding); ids are
//! the same text forms the CLI prints.

// Handlers return the ready HTTP error response as their `Err`; it is the rare path, and boxing
// it would only add an allocation to every error.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use data_encoding::BASE64URL_NOPAD;
use rand::Rng;
use serde::Deserialize;
use serde_json::json;
use tincan_proto::frame::{ErrorCode, RelayFrame};
use tincan_proto::identity;
use tincan_proto::ids::{InviteId, MessageId, PeerId};
use tincan_proto::labels;
use tokio::sync::mpsc;

use crate::extract::{ApiJson, ApiQuery};
use crate::http::{check_ip_rate, error_response};
use crate::metrics::Metrics;
use crate::token::TokenError;
use crate::{Shared, now_ms};

/// How long a challenge nonce can be answered.
const CHALLENGE_TTL: Duration = Duration::from_secs(60);
/// Most outstanding challenges kept; beyond that the oldest is dropped for each new one.
const MAX_CHALLENGES: usize = 100_000;
/// Longest long-poll wait.
const MAX_WAIT_SECS: u64 = 60;
/// Long-polls one identity may have waiting at once (each can hold a response of up to
/// `store::FETCH_MAX_BYTES`).
const MAX_POLLS_PER_IDENTITY: usize = 4;

/// Outstanding HTTP challenges: single use, short-lived.
/// Outstanding HTTP challenges: single use, short-lived, at most `cap`; when full, the oldest is
/// dropped for a new one. (Refusing to store new ones instead let a flood of challenge requests
/// fill the table and lock every HTTP client out of logging in; dropping the oldest means a
/// flood would have to issue `cap` challenges in the moment between a client's challenge and its
/// answer.)
pub(crate) struct Challenges {
    cap: usize,
    inner: Mutex<ChallengeTable>,
}

#[derive(Default)]
struct ChallengeTable {
    issued: HashMap<[u8; 32], Instant>,
    /// Issue order, oldest first; may name nonces already redeemed.
    order: std::collections::VecDeque<[u8; 32]>,
}

impl Default for Challenges {
    fn default() -> Self {
        Self::with_cap(MAX_CHALLENGES)
    }
}

impl Challenges {
    fn with_cap(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            inner: Mutex::default(),
        }
    }

    fn issue(&self) -> [u8; 32] {
        let mut nonce = [0u8; 32];
        rand::rng().fill_bytes(&mut nonce);
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        while t.order.len() >= self.cap {
            if let Some(old) = t.order.pop_front() {
                t.issued.remove(&old);
            }
        }
        t.issued.insert(nonce, Instant::now());
        t.order.push_back(nonce);
        nonce
    }

    /// Removes the nonce; true if it was outstanding and fresh.
    fn redeem(&self, nonce: &[u8; 32]) -> bool {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        t.issued
            .remove(nonce)
            .is_some_and(|at| at.elapsed() < CHALLENGE_TTL)
    }
}

#[cfg(test)]
mod challenge_tests {
    use super::Challenges;

    #[test]
    fn a_full_table_drops_the_oldest_and_keeps_issuing_redeemable_challenges() {
        let c = Challenges::with_cap(3);
        let first = c.issue();
        let kept: Vec<_> = (0..3).map(|_| c.issue()).collect();
        assert!(!c.redeem(&first), "the oldest made room");
        for n in &kept {
            assert!(c.redeem(n), "every newer one is still good");
            assert!(!c.redeem(n), "and single use");
        }
        // A flood never locks a fresh challenge out.
        for _ in 0..100 {
            c.issue();
        }
        let fresh = c.issue();
        assert!(c.redeem(&fresh));
    }
}

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/v1/auth/challenge", post(challenge))
        .route("/v1/auth/token", post(token))
        .route("/v1/messages", post(send).get(receive))
        .route("/v1/ack", post(ack))
        .route("/v1/invites", post(register_invite))
        .route("/v1/invites/claim", post(claim_invite))
}

type ApiResult = Result<Response, Response>;

fn bad_request(message: impl Into<String>) -> Response {
    error_response(StatusCode::BAD_REQUEST, "bad_request", &message.into(), 0)
}

fn status_for(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::AuthFailed | ErrorCode::NotAuthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::InviteUsed => StatusCode::CONFLICT,
        ErrorCode::InviteUnknown => StatusCode::NOT_FOUND,
        ErrorCode::InviteExpired => StatusCode::GONE,
        ErrorCode::QueueFull | ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::NotPaired => StatusCode::FORBIDDEN,
        ErrorCode::ShuttingDown | ErrorCode::Internal | ErrorCode::StorageFull => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::BAD_REQUEST,
    }
}

fn frame_error(code: ErrorCode, retry_after_ms: u32, message: &str) -> Response {
    error_response(status_for(code), code.as_str(), message, retry_after_ms)
}

/// Common checks: per-IP rate, then the bearer token. Returns the identity.
fn authenticate(
    shared: &Shared,
    remote: SocketAddr,
    headers: &HeaderMap,
) -> Result<PeerId, Response> {
    Metrics::inc(&shared.metrics.http_requests);
    check_ip_rate(shared, remote.ip())?;
    let unauthorized =
        |m: &str| error_response(StatusCode::UNAUTHORIZED, "not_authenticated", m, 0);
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            unauthorized("send 'Authorization: Bearer <token>' (get one from POST /v1/auth/token)")
        })?;
    shared.tokens.verify(value, now_ms() / 1000).map_err(|e| {
        Metrics::inc(&shared.metrics.auth_failures);
        let why = match e {
            TokenError::Malformed => "token is malformed",
            TokenError::BadSignature => {
                "token is not valid on this relay (or was made under a signing key retired since); get a new one from POST /v1/auth/token"
            }
            TokenError::Expired => "token expired; get a new one from POST /v1/auth/token",
        };
        // An expired token is routine (clients renew on this 401), not a failure worth a warning.
        if e != TokenError::Expired {
            crate::notice::auth_failed(&shared.notices, remote.ip(), why);
        }
        unauthorized(why)
    })
}

fn identity_rate(shared: &Shared, peer: PeerId) -> Result<(), Response> {
    shared
        .identity_rate
        .take(peer, Instant::now())
        .map_err(|wait| {
            Metrics::inc(&shared.metrics.rate_limited_identity);
            let r = shared.config.rate_per_identity;
            frame_error(
                ErrorCode::RateLimited,
                (wait.as_millis() as u32).max(1),
                &format!(
                    "rate limit: at most {} requests per second per identity (burst {})",
                    r.per_sec, r.burst
                ),
            )
        })
}

/// Waits for the store's one reply to a request.
async fn reply(mut rx: mpsc::UnboundedReceiver<RelayFrame>) -> Result<RelayFrame, Response> {
    match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
        Ok(Some(RelayFrame::Error {
            code,
            retry_after_ms,
            message,
            ..
        })) => Err(frame_error(code, retry_after_ms, &message)),
        Ok(Some(frame)) => Ok(frame),
        _ => Err(frame_error(
            ErrorCode::Internal,
            1000,
            "relay store did not answer; retry",
        )),
    }
}

fn parse<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, Response> {
    s.parse()
        .map_err(|_| bad_request(format!("invalid {what}")))
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

async fn challenge(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
) -> ApiResult {
    Metrics::inc(&shared.metrics.http_requests);
    check_ip_rate(&shared, remote.ip())?;
    let nonce = shared.challenges.issue();
    Ok(Json(json!({
        "nonce": BASE64URL_NOPAD.encode(&nonce),
        "expires_in": CHALLENGE_TTL.as_secs(),
        "sign": "Ed25519 over the bytes \"tincan v1 relay challenge\\0\" followed by the 32 nonce bytes",
    }))
    .into_response())
}

#[derive(Deserialize)]
struct TokenRequest {
    peer: String,
    nonce: String,
    signature: String,
}

async fn token(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    ApiJson(req): ApiJson<TokenRequest>,
) -> ApiResult {
    Metrics::inc(&shared.metrics.http_requests);
    check_ip_rate(&shared, remote.ip())?;
    let peer: PeerId = parse(&req.peer, "peer id")?;
    let nonce: [u8; 32] = BASE64URL_NOPAD
        .decode(req.nonce.as_bytes())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            bad_request("nonce must be the 32-byte base64url value from /v1/auth/challenge")
        })?;
    let signature: [u8; 64] = BASE64URL_NOPAD
        .decode(req.signature.as_bytes())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad_request("signature must be 64 bytes, base64url without padding"))?;
    let fail = |m: &str| {
        Metrics::inc(&shared.metrics.auth_failures);
        crate::notice::auth_failed(&shared.notices, remote.ip(), m);
        error_response(StatusCode::UNAUTHORIZED, "auth_failed", m, 0)
    };
    if !shared.challenges.redeem(&nonce) {
        return Err(fail(
            "unknown, used or expired challenge; get a new one from /v1/auth/challenge",
        ));
    }
    if identity::verify(&peer, labels::RELAY_CHALLENGE, &nonce, &signature).is_err() {
        return Err(fail(
            "challenge signature does not verify for that identity",
        ));
    }
    let (token, expires_at) = shared
        .tokens
        .issue(&peer, now_ms() / 1000)
        .ok_or_else(|| frame_error(ErrorCode::Internal, 1000, "no token key"))?;
    Ok(
        Json(
            json!({ "token": token.expose(), "expires_at": expires_at, "peer": peer.to_string() }),
        )
        .into_response(),
    )
}

#[derive(Deserialize)]
struct SendRequest {
    to: String,
    id: String,
    body: String,
}

async fn send(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<SendRequest>,
) -> ApiResult {
    let peer = authenticate(&shared, remote, &headers)?;
    identity_rate(&shared, peer)?;
    let to: PeerId = parse(&req.to, "recipient id")?;
    let id: MessageId = parse(&req.id, "message id (32 hex characters)")?;
    let body = BASE64URL_NOPAD
        .decode(req.body.as_bytes())
        .map_err(|_| bad_request("body must be base64url without padding"))?;
    if body.len() > shared.config.max_body {
        Metrics::inc(&shared.metrics.refused_too_large);
        return Err(frame_error(
            ErrorCode::TooLarge,
            0,
            &format!(
                "message body is {} bytes, over the relay's limit of {}",
                body.len(),
                shared.config.max_body
            ),
        ));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    shared.store.send(peer, 1, id, to, body, now_ms(), tx);
    match reply(rx).await? {
        RelayFrame::Sent { seq, .. } => Ok(Json(json!({ "seq": seq })).into_response()),
        _ => Err(frame_error(
            ErrorCode::Internal,
            1000,
            "unexpected store reply",
        )),
    }
}

#[derive(Deserialize)]
struct ReceiveQuery {
    after: Option<u64>,
    wait: Option<u64>,
    limit: Option<usize>,
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ReceiveQuery>,
) -> ApiResult {
    let peer = authenticate(&shared, remote, &headers)?;
    let after = q.after.unwrap_or(0);
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(q.wait.unwrap_or(0).min(MAX_WAIT_SECS));
    let notify = shared.router.waiter(peer);
    // The map holds one reference; each poll of this identity holds another.
    if Arc::strong_count(&notify) - 1 > MAX_POLLS_PER_IDENTITY {
        drop(notify);
        shared.router.drop_waiter(&peer);
        Metrics::inc(&shared.metrics.rate_limited_identity);
        return Err(frame_error(
            ErrorCode::RateLimited,
            1000,
            &format!(
                "at most {MAX_POLLS_PER_IDENTITY} long-polls at once per identity; wait for one to return"
            ),
        ));
    }
    let mut shutdown = shared.shutdown.clone();
    let rows = loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let rows = shared
            .store
            .fetch(peer, after, limit, now_ms())
            .await
            .map(|f| f.rows)
            .map_err(|e| {
                frame_error(
                    ErrorCode::Internal,
                    1000,
                    &format!("relay store error ({e}); retry"),
                )
            })?;
        if !rows.is_empty() || tokio::time::Instant::now() >= deadline {
            break rows;
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shutdown.changed() => break Vec::new(),
        }
    };
    drop(notify);
    shared.router.drop_waiter(&peer);
    let cursor = rows.last().map_or(after, |r| r.seq);
    for _ in &rows {
        Metrics::inc(&shared.metrics.messages_delivered);
    }
    let messages: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({
                "seq": r.seq,
                "from": r.from.to_string(),
                "id": r.id.to_string(),
                "stored_at": r.stored_at,
                "body": BASE64URL_NOPAD.encode(&r.body),
            })
        })
        .collect();
    Ok(Json(json!({ "messages": messages, "cursor": cursor })).into_response())
}

#[derive(Deserialize)]
struct AckRequest {
    seqs: Vec<u64>,
}

async fn ack(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<AckRequest>,
) -> ApiResult {
    let peer = authenticate(&shared, remote, &headers)?;
    if req.seqs.len() > 10_000 {
        return Err(bad_request("at most 10000 seqs per ack"));
    }
    for seq in &req.seqs {
        shared.store.ack(peer, *seq);
    }
    // Wait until the store thread has taken these acks into a batch (the stats request rides in
    // the same or a later one): whatever this client sends next lands in a later batch, which
    // runs after these acks are applied and committed, so a following receive does not return
    // them again.
    let _ = shared.store.stats().await;
    Ok(Json(json!({ "acked": req.seqs.len() })).into_response())
}

#[derive(Deserialize)]
struct RegisterRequest {
    id: String,
    expires_at: u64,
}

async fn register_invite(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> ApiResult {
    let peer = authenticate(&shared, remote, &headers)?;
    identity_rate(&shared, peer)?;
    let id: InviteId = parse(&req.id, "invite id (32 hex characters)")?;
    let max = shared.config.max_invite_ttl;
    if let Some(message) =
        crate::limits::invite_expiry_refusal(req.expires_at, now_ms() / 1000, max)
    {
        return Err(frame_error(ErrorCode::InviteExpired, 0, &message));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    shared
        .store
        .register_invite(peer, 1, id, req.expires_at, tx);
    reply(rx).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "registered": id.to_string() })),
    )
        .into_response())
}

#[derive(Deserialize)]
struct ClaimRequest {
    id: String,
}

async fn claim_invite(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ClaimRequest>,
) -> ApiResult {
    let peer = authenticate(&shared, remote, &headers)?;
    identity_rate(&shared, peer)?;
    let id: InviteId = parse(&req.id, "invite id (32 hex characters)")?;
    let (tx, rx) = mpsc::unbounded_channel();
    shared.store.claim_invite(peer, 1, id, now_ms(), tx);
    match reply(rx).await? {
        RelayFrame::InviteClaimed { inviter, .. } => {
            Ok(Json(json!({ "inviter": inviter.to_string() })).into_response())
        }
        _ => Err(frame_error(
            ErrorCode::Internal,
            1000,
            "unexpected store reply",
        )),
    }
}
