//! The HTTP API over real TCP: token auth, send, long-poll receive with a cursor, ack, invites,
//! OpenAPI, and what it refuses. One test drives it with the real `curl` binary.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use data_encoding::BASE64URL_NOPAD;
use serde_json::{Value, json};
use tincan_proto::identity::Identity;
use tincan_proto::labels;
use tincan_relay::Config;
use tincan_testkit::InProcessRelay;

async fn relay(f: impl FnOnce(&mut Config)) -> (tempfile::TempDir, InProcessRelay) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::new(dir.path().join("relay.db"));
    f(&mut c);
    let r = InProcessRelay::start(c).await;
    (dir, r)
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(base: &str) -> Self {
        Self {
            base: base.to_string(),
            http: tincan_client::http_client(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let v = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, v)
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, token, None).await
    }

    async fn token(&self, id: &Identity) -> String {
        let (s, ch) = self.post("/v1/auth/challenge", None, json!({})).await;
        assert_eq!(s, 200, "{ch}");
        let nonce = BASE64URL_NOPAD
            .decode(ch["nonce"].as_str().unwrap().as_bytes())
            .unwrap();
        let sig = id.sign(labels::RELAY_CHALLENGE, &nonce);
        let (s, t) = self
            .post(
                "/v1/auth/token",
                None,
                json!({"peer": id.peer_id().to_string(), "nonce": ch["nonce"], "signature": BASE64URL_NOPAD.encode(&sig)}),
            )
            .await;
        assert_eq!(s, 200, "{t}");
        t["token"].as_str().unwrap().to_string()
    }

    /// Registers an invite as `a` and claims it as `b`.
    async fn pair(&self, ta: &str, tb: &str, id_hex: &str) -> (u16, Value) {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        let (s, v) = self
            .post(
                "/v1/invites",
                Some(ta),
                json!({"id": id_hex, "expires_at": exp}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        self.post("/v1/invites/claim", Some(tb), json!({"id": id_hex}))
            .await
    }
}

#[tokio::test]
async fn send_long_poll_ack_in_order_exactly_once() {
    let (_d, r) = relay(|_| {}).await;
    let api = Api::new(&r.url);
    let (a, b) = (Identity::generate(), Identity::generate());
    let (ta, tb) = (api.token(&a).await, api.token(&b).await);
    let (s, v) = api.pair(&ta, &tb, &"ab".repeat(16)).await;
    assert_eq!(
        (s, v["inviter"].as_str().unwrap()),
        (200, a.peer_id().to_string().as_str())
    );

    // An empty long-poll blocks, then returns as soon as a message arrives.
    let waiter = {
        let api = Api::new(&r.url);
        let tb = tb.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let got = api.get("/v1/messages?after=0&wait=10", Some(&tb)).await;
            (t.elapsed(), got)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3u8 {
        let body = json!({"to": b.peer_id().to_string(), "id": format!("{:032x}", i), "body": BASE64URL_NOPAD.encode(&[i; 40])});
        let (s, v) = api.post("/v1/messages", Some(&ta), body.clone()).await;
        assert_eq!(s, 200, "{v}");
        // A resend is deduplicated: same seq.
        let (_, again) = api.post("/v1/messages", Some(&ta), body).await;
        assert_eq!(again["seq"], v["seq"]);
    }
    let (waited, (s, first)) = waiter.await.unwrap();
    assert_eq!(s, 200);
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(!first["messages"].as_array().unwrap().is_empty());

    let (_, all) = api.get("/v1/messages?after=0", Some(&tb)).await;
    let msgs = all["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3);
    let bodies: Vec<Vec<u8>> = msgs
        .iter()
        .map(|m| {
            BASE64URL_NOPAD
                .decode(m["body"].as_str().unwrap().as_bytes())
                .unwrap()
        })
        .collect();
    assert_eq!(bodies, vec![vec![0u8; 40], vec![1u8; 40], vec![2u8; 40]]);
    assert_eq!(msgs[0]["from"], a.peer_id().to_string().as_str());
    // The cursor pages: after the first, two remain.
    let after = msgs[0]["seq"].as_u64().unwrap();
    let (_, rest) = api
        .get(&format!("/v1/messages?after={after}"), Some(&tb))
        .await;
    assert_eq!(rest["messages"].as_array().unwrap().len(), 2);
    // Ack everything: nothing comes back.
    let seqs: Vec<u64> = msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    let (s, _) = api.post("/v1/ack", Some(&tb), json!({"seqs": seqs})).await;
    assert_eq!(s, 200);
    let (_, none) = api.get("/v1/messages?after=0", Some(&tb)).await;
    assert!(none["messages"].as_array().unwrap().is_empty());
    r.stop().await;
}

#[tokio::test]
async fn tokens_and_challenges_cannot_be_replayed_forged_or_borrowed() {
    let (_d, r) = relay(|_| {}).await;
    let api = Api::new(&r.url);
    let (a, b) = (Identity::generate(), Identity::generate());
    // A challenge answered once cannot be answered again.
    let (_, ch) = api.post("/v1/auth/challenge", None, json!({})).await;
    let nonce = BASE64URL_NOPAD
        .decode(ch["nonce"].as_str().unwrap().as_bytes())
        .unwrap();
    let sig = BASE64URL_NOPAD.encode(&a.sign(labels::RELAY_CHALLENGE, &nonce));
    let req = json!({"peer": a.peer_id().to_string(), "nonce": ch["nonce"], "signature": sig});
    assert_eq!(api.post("/v1/auth/token", None, req.clone()).await.0, 200);
    let (s, v) = api.post("/v1/auth/token", None, req).await;
    assert_eq!(
        (s, v["error"]["code"].as_str().unwrap()),
        (401, "auth_failed")
    );
    // A's signature does not get a token for B.
    let (_, ch) = api.post("/v1/auth/challenge", None, json!({})).await;
    let nonce = BASE64URL_NOPAD
        .decode(ch["nonce"].as_str().unwrap().as_bytes())
        .unwrap();
    let sig = BASE64URL_NOPAD.encode(&a.sign(labels::RELAY_CHALLENGE, &nonce));
    let (s, _) = api
        .post(
            "/v1/auth/token",
            None,
            json!({"peer": b.peer_id().to_string(), "nonce": ch["nonce"], "signature": sig}),
        )
        .await;
    assert_eq!(s, 401);
    // A made-up nonce.
    let (s, _) = api
        .post("/v1/auth/token", None, json!({"peer": a.peer_id().to_string(), "nonce": BASE64URL_NOPAD.encode(&[0; 32]), "signature": BASE64URL_NOPAD.encode(&[0; 64])}))
        .await;
    assert_eq!(s, 401);
    // No token, a garbage token, a tampered token.
    let ta = api.token(&a).await;
    assert_eq!(api.get("/v1/messages", None).await.0, 401);
    assert_eq!(api.get("/v1/messages", Some("nope")).await.0, 401);
    let mut raw = BASE64URL_NOPAD.decode(ta.as_bytes()).unwrap();
    raw[10] ^= 1; // inside the identity: a token re-bound to another identity
    assert_eq!(
        api.get("/v1/messages", Some(&BASE64URL_NOPAD.encode(&raw)))
            .await
            .0,
        401
    );
    assert_eq!(api.get("/v1/messages", Some(&ta)).await.0, 200);
    // A token from another relay is worthless here.
    let (_d2, r2) = relay(|_| {}).await;
    let other = Api::new(&r2.url).token(&a).await;
    assert_eq!(api.get("/v1/messages", Some(&other)).await.0, 401);
    r2.stop().await;
}

#[tokio::test]
async fn unpaired_oversized_malformed_and_rate_limited_requests_get_clear_errors() {
    let (_d, r) = relay(|c| {
        c.max_body = 100;
        c.rate_per_identity = tincan_relay::Rate::new(1.0, 3.0);
    })
    .await;
    let api = Api::new(&r.url);
    let (a, b) = (Identity::generate(), Identity::generate());
    let (ta, tb) = (api.token(&a).await, api.token(&b).await);
    let to = b.peer_id().to_string();
    let (s, v) = api
        .post(
            "/v1/messages",
            Some(&ta),
            json!({"to": to, "id": "00".repeat(16), "body": "AAAA"}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str().unwrap()),
        (403, "not_paired"),
        "{v}"
    );
    let (s, v) = api
        .post(
            "/v1/messages",
            Some(&ta),
            json!({"to": to, "id": "00".repeat(16), "body": BASE64URL_NOPAD.encode(&[0; 101])}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str().unwrap()),
        (413, "too_large"),
        "{v}"
    );
    let (s, v) = api
        .post(
            "/v1/messages",
            Some(&ta),
            json!({"to": "bob", "id": "00".repeat(16), "body": ""}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str().unwrap()),
        (400, "bad_request"),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("recipient")
    );
    // The identity's burst (3) is used up: a clear error with when to retry.
    let _ = tb;
    let (s, v) = api
        .post(
            "/v1/messages",
            Some(&ta),
            json!({"to": to, "id": "00".repeat(16), "body": ""}),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str().unwrap()),
        (429, "rate_limited"),
        "{v}"
    );
    assert!(v["error"]["retry_after_ms"].as_u64().unwrap() > 0);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("per identity")
    );
    // Bodies and queries axum refuses before any handler: the same JSON error object.
    let http = tincan_client::http_client();
    for (req, status) in [
        (
            http.post(format!("{}/v1/ack", r.url))
                .bearer_auth(&tb)
                .header("content-type", "application/json")
                .body("{not json"),
            400,
        ),
        (
            http.post(format!("{}/v1/ack", r.url))
                .bearer_auth(&tb)
                .header("content-type", "text/plain")
                .body("{}"),
            415,
        ),
        (
            http.post(format!("{}/v1/ack", r.url))
                .bearer_auth(&tb)
                .json(&json!({"seqs": "three"})),
            422,
        ),
        (
            http.get(format!("{}/v1/messages?after=abc", r.url))
                .bearer_auth(&tb),
            400,
        ),
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status);
        let v: Value = resp.json().await.expect("a JSON error object");
        assert_eq!(v["error"]["code"], "bad_request", "{v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty(), "{v}");
    }
    r.stop().await;
}

#[tokio::test]
async fn openapi_health_and_metrics_are_served() {
    let (_d, r) = relay(|_| {}).await;
    let api = Api::new(&r.url);
    let (s, doc) = api.get("/openapi.json", None).await;
    assert_eq!(s, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    for path in [
        "/v1/auth/challenge",
        "/v1/auth/token",
        "/v1/messages",
        "/v1/ack",
        "/v1/invites",
        "/v1/invites/claim",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from OpenAPI"
        );
    }
    let (s, h) = api.get("/health", None).await;
    assert_eq!(
        (
            s,
            h["status"].as_str().unwrap(),
            h["store"].as_str().unwrap()
        ),
        (200, "ok", "ok")
    );
    let _ = api.token(&Identity::generate()).await;
    let text = tincan_client::http_client()
        .get(format!("{}/metrics", r.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "tincan_connections ",
        "tincan_frames_total{",
        "tincan_messages_stored_total ",
        "tincan_messages_queued ",
        "tincan_messages_expired_total ",
        "tincan_auth_failures_total ",
        "tincan_rate_limited_total{",
        "tincan_store_batch_seconds_bucket{",
        "tincan_http_requests_total ",
        "tincan_store_wal_bytes ",
    ] {
        assert!(text.contains(name), "metric {name} missing:\n{text}");
    }
    let db_bytes: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tincan_store_db_bytes "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tincan_store_db_bytes in:\n{text}"));
    assert!(db_bytes > 0, "the database file has a size");
    r.stop().await;
}

/// An agent with nothing but curl: every call here is a real `curl` process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_can_drive_the_http_api() {
    let (_d, r) = relay(|_| {}).await;
    let curl = |args: Vec<String>| -> Value {
        let out = std::process::Command::new("curl")
            .arg("-sS")
            .args(&args)
            .output()
            .expect("curl is installed");
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let post = |path: &str, token: Option<&str>, body: Value| -> Value {
        let mut args = vec![
            "-X".into(),
            "POST".into(),
            "-H".into(),
            "content-type: application/json".into(),
            "-d".into(),
            body.to_string(),
        ];
        if let Some(t) = token {
            args.extend(["-H".into(), format!("authorization: Bearer {t}")]);
        }
        args.push(format!("{}{path}", r.url));
        curl(args)
    };
    let token_for = |id: &Identity| -> String {
        let ch = post("/v1/auth/challenge", None, json!({}));
        let nonce = BASE64URL_NOPAD
            .decode(ch["nonce"].as_str().unwrap().as_bytes())
            .unwrap();
        let sig = BASE64URL_NOPAD.encode(&id.sign(labels::RELAY_CHALLENGE, &nonce));
        post(
            "/v1/auth/token",
            None,
            json!({"peer": id.peer_id().to_string(), "nonce": ch["nonce"], "signature": sig}),
        )["token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (a, b) = (Identity::generate(), Identity::generate());
    let (ta, tb) = (token_for(&a), token_for(&b));
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    post(
        "/v1/invites",
        Some(&ta),
        json!({"id": "ef".repeat(16), "expires_at": exp}),
    );
    assert_eq!(
        post(
            "/v1/invites/claim",
            Some(&tb),
            json!({"id": "ef".repeat(16)})
        )["inviter"],
        a.peer_id().to_string().as_str()
    );
    let sent = post(
        "/v1/messages",
        Some(&tb),
        json!({"to": a.peer_id().to_string(), "id": "01".repeat(16), "body": "c2VhbGVk"}),
    );
    assert!(sent["seq"].as_u64().is_some());
    let got = curl(vec![
        "-H".into(),
        format!("authorization: Bearer {ta}"),
        format!("{}/v1/messages?after=0&wait=5", r.url),
    ]);
    assert_eq!(got["messages"][0]["body"], "c2VhbGVk");
    let seq = got["messages"][0]["seq"].as_u64().unwrap();
    assert_eq!(
        post("/v1/ack", Some(&ta), json!({"seqs": [seq]}))["acked"],
        1
    );
    r.stop().await;
}

#[tokio::test]
async fn a_poll_returns_only_the_callers_own_queue_in_bounded_pages_and_polls_are_capped() {
    let (_d, r) = relay(|c| {
        c.rate_per_identity = tincan_relay::Rate::new(0.0, 0.0);
        c.rate_per_ip = tincan_relay::Rate::new(0.0, 0.0);
    })
    .await;
    let api = Api::new(&r.url);
    let (a, b, c) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    let (ta, tb, tc) = (
        api.token(&a).await,
        api.token(&b).await,
        api.token(&c).await,
    );
    let (s, _) = api.pair(&ta, &tb, &"cd".repeat(16)).await;
    assert_eq!(s, 200);
    // 20 bodies of 60 KB for B: 1.2 MB, more than one response carries.
    for i in 0..20u8 {
        let body = json!({"to": b.peer_id().to_string(), "id": format!("{:032x}", i), "body": BASE64URL_NOPAD.encode(&vec![i; 60_000])});
        let (s, v) = api.post("/v1/messages", Some(&ta), body).await;
        assert_eq!(s, 200, "{v}");
    }
    // Only B's own queue: the sender sees none of it, and its ack of B's seqs acks nothing.
    let (s, mine) = api.get("/v1/messages?after=0&limit=1000", Some(&ta)).await;
    assert_eq!(s, 200);
    assert!(mine["messages"].as_array().unwrap().is_empty(), "{mine}");
    let (_, first) = api.get("/v1/messages?after=0&limit=1000", Some(&tb)).await;
    let page: Vec<u64> = first["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    let (s, _) = api.post("/v1/ack", Some(&ta), json!({"seqs": page})).await;
    assert!(s == 200 || s == 400, "{s}");
    // A page stops at about 1 MiB of bodies however high the limit; the cursor gets the rest.
    assert!(
        !page.is_empty() && page.len() < 20,
        "one page held {} of 20 bodies of 60 KB",
        page.len()
    );
    let mut seen = page.len();
    let mut cursor = first["cursor"].as_u64().unwrap();
    while seen < 20 {
        let (_, next) = api
            .get(
                &format!("/v1/messages?after={cursor}&limit=1000"),
                Some(&tb),
            )
            .await;
        let n = next["messages"].as_array().unwrap().len();
        assert!(
            n > 0,
            "B's messages are all still there after A's ack: {seen}"
        );
        seen += n;
        cursor = next["cursor"].as_u64().unwrap();
    }
    assert_eq!(seen, 20);

    // At most four long-polls wait at once for one identity; a fifth is refused with a retry.
    let mut polls = Vec::new();
    for _ in 0..4 {
        let api = Api::new(&r.url);
        let tc = tc.clone();
        polls.push(tokio::spawn(async move {
            api.get("/v1/messages?after=0&wait=3", Some(&tc)).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, v) = api.get("/v1/messages?after=0&wait=3", Some(&tc)).await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(v["error"]["code"], "rate_limited", "{v}");
    for p in polls {
        assert_eq!(p.await.unwrap().0, 200);
    }
    let (s, _) = api.get("/v1/messages?after=0", Some(&tc)).await;
    assert_eq!(s, 200, "a poll is allowed again once the others returned");
    r.stop().await;
}
