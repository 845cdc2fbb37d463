//! End to end with real processes: a `tincan relay` child process, homes driven by the `tincan`
//! binary, real WebSockets over TCP, real SQLite files.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tincan_client::tincan_proto::frame::{ClientFrame, ErrorCode, RelayFrame};
use tincan_client::tincan_proto::identity::Identity;
use tincan_client::tincan_proto::ids::MessageId;
use tincan_client::{Client, ClientOptions, Home};
use tincan_testkit::process::{Cli, RelayProcess};
use tincan_testkit::raw::RawConn;
use tincan_testkit::{contains, read_db_files};

fn cli() -> Cli {
    Cli::new(env!("CARGO_BIN_EXE_tincan"))
}

struct World {
    dir: tempfile::TempDir,
    relay: RelayProcess,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let relay = RelayProcess::start(Path::new(env!("CARGO_BIN_EXE_tincan")), dir.path());
        Self { dir, relay }
    }

    fn home(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

/// A relay and two homes, B paired with A (B accepted A's invite); returns A's id too.
fn two_paired() -> (World, Cli, std::path::PathBuf, std::path::PathBuf, String) {
    let w = World::new();
    let c = cli();
    let (a, b) = (w.home("a"), w.home("b"));
    let a_id = c.setup(&a);
    c.setup(&b);
    c.pair(&a, &b, &w.relay.url());
    (w, c, a, b, a_id)
}

/// Runs `cmd` with its stdout closed before it writes anything (every write fails with a broken
/// pipe) and checks that it ends quietly: exit 0, no panic.
fn run_with_stdout_closed(cmd: &mut std::process::Command) {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn messages(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "message")
        .map(|e| e["text"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn pair_and_talk_both_ways_and_relay_holds_no_plaintext() {
    let w = World::new();
    let c = cli();
    let (a, b) = (w.home("a"), w.home("b"));
    let a_id = c.setup(&a);
    let b_id = c.setup(&b);
    let url = c.pair(&a, &b, &w.relay.url());
    assert!(url.contains("/invite#tincan2."));
    // With no TINCAN_LOG, a client command's stderr carries no library debug chatter.
    let r = c.run(&b, &["invite", "create", "--relay", &w.relay.url()]);
    assert_eq!(r.code, 0, "{r:?}");
    if std::env::var_os("TINCAN_LOG").is_none() {
        assert!(
            !r.stderr.contains("DEBUG") && !r.stderr.contains("TRACE"),
            "debug output by default: {}",
            r.stderr
        );
    }

    let r = c.run(
        &b,
        &["send", &a_id[..8], "hello from b: the build is green"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let r = c.run_stdin(&b, &["send", &a_id, "-"], Some("second line via stdin\n"));
    assert_eq!(r.code, 0, "{r:?}");

    // A sees B join, then both messages, in order, once.
    let r = c.run(&a, &["listen", "--once", "--timeout", "10"]);
    assert_eq!(r.code, 0, "{r:?}");
    let ev = r.events();
    let joined = ev
        .iter()
        .find(|e| e["event"] == "peer_joined")
        .expect("peer_joined");
    assert_eq!(joined["peer"], b_id.as_str());
    let r = c.run(&a, &["listen", "--timeout", "2"]);
    let ev = r.events();
    assert_eq!(
        messages(&ev),
        ["hello from b: the build is green", "second line via stdin"]
    );
    let m = ev.iter().find(|e| e["event"] == "message").unwrap();
    assert_eq!(m["from"], b_id.as_str());
    assert!(m["id"].as_str().unwrap().len() == 32 && m["sent_at"].as_u64().unwrap() > 0);
    // Nothing is shown twice.
    let r = c.run(&a, &["listen", "--timeout", "1"]);
    assert!(messages(&r.events()).is_empty(), "{r:?}");

    // Alias, then the other direction by alias.
    let r = c.run(&a, &["peers", "alias", &b_id[..6], "builder"]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = c.run(&a, &["send", "builder", "thanks, reviewing now"]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = c.run(&b, &["listen", "--once", "--timeout", "10"]);
    assert_eq!(messages(&r.events()), ["thanks, reviewing now"]);

    let peers = c.run(&a, &["peers"]).json();
    assert_eq!(peers["peers"][0]["alias"], "builder");
    // Pairing exchanged feature bits: A knows B reads batches.
    assert_eq!(peers["peers"][0]["features"], serde_json::json!(["batch"]));
    assert_eq!(
        peers["peers"][0]["fingerprint"]
            .as_str()
            .unwrap()
            .split(' ')
            .count(),
        6
    );
    let who = c.run(&b, &["whoami"]).json();
    assert_eq!(
        who["fingerprint"], peers["peers"][0]["fingerprint"],
        "both sides compute the same fingerprint"
    );

    let bytes = read_db_files(&w.relay.db);
    for t in [
        "hello from b: the build is green",
        "second line via stdin",
        "thanks, reviewing now",
        "builder",
    ] {
        assert!(
            !contains(&bytes, t.as_bytes()),
            "relay store holds plaintext {t:?}"
        );
    }
    // A clean SIGTERM shutdown.
    let mut relay = w.relay;
    let status = relay.terminate().expect("relay was running");
    assert!(status.success(), "relay exit: {status:?}");
}

/// The relay's count of `Send` frames received.
const SENDS: &str = "tincan_frames_total{dir=\"in\",type=\"send\"}";

/// A counter from the relay's `/metrics`.
fn metric(relay_url: &str, name: &str) -> u64 {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(tincan_testkit::metric(relay_url, name))
}

#[test]
fn send_lines_sends_each_line_as_its_own_message_sealed_together() {
    let (w, c, a, b, a_id) = two_paired();
    let sends_before = metric(&w.relay.url(), SENDS);
    let r = c.run_stdin(
        &b,
        &["send", &a_id, "-", "--lines"],
        Some("first task\n\n  \nsecond task\nthird task"),
    );
    assert_eq!(r.code, 0, "{r:?}");
    let sent = r.json();
    assert_eq!(sent["status"], "sent");
    let ids: Vec<&str> = sent["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "blank lines are skipped: {sent}");
    // The relay took one sealed message for the three (a batch), not three.
    assert_eq!(metric(&w.relay.url(), SENDS) - sends_before, 1);
    let events = c.run(&a, &["listen", "--timeout", "3"]).events();
    let got: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["event"] == "message")
        .map(|e| (e["id"].as_str().unwrap(), e["text"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            (ids[0], "first task"),
            (ids[1], "second task"),
            (ids[2], "third task")
        ]
    );

    // Misuse and a line over the size limit: clear errors, nothing queued.
    let r = c.run(&b, &["send", &a_id, "text", "--lines"]);
    assert_eq!((r.code, r.error_code().as_str()), (2, "usage"), "{r:?}");
    let r = c.run_stdin(&b, &["send", &a_id, "-", "--lines"], Some("\n \n"));
    assert_eq!((r.code, r.error_code().as_str()), (2, "bad_input"), "{r:?}");
    let r = c.run(&b, &["send", &a_id, ""]);
    assert_eq!((r.code, r.error_code().as_str()), (2, "bad_input"), "{r:?}");
    let r = c.run_stdin(&b, &["send", &a_id, "-"], Some("\n"));
    assert_eq!((r.code, r.error_code().as_str()), (2, "bad_input"), "{r:?}");
    let long = format!("ok\n{}\n", "x".repeat(70_000));
    let r = c.run_stdin(&b, &["send", &a_id, "-", "--lines"], Some(&long));
    assert_eq!((r.code, r.error_code().as_str()), (3, "too_long"), "{r:?}");
    let r = c.run(&a, &["listen", "--timeout", "2"]);
    assert!(messages(&r.events()).is_empty(), "{r:?}");
}

#[test]
fn an_invite_url_can_come_on_stdin_so_its_secret_stays_out_of_the_process_list() {
    let w = World::new();
    let c = cli();
    let (a, b, g) = (w.home("a"), w.home("b"), w.home("g"));
    let a_id = c.setup(&a);
    let b_id = c.setup(&b);
    let invite = |c: &Cli| {
        c.run(&a, &["invite", "create", "--relay", &w.relay.url()])
            .json()["url"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let url = invite(&c);
    let r = c.run_stdin(
        &b,
        &["invite", "accept", "-"],
        Some(&format!("\n  {url}  \n")),
    );
    assert_eq!(
        (r.code, r.json()["peer"].as_str()),
        (0, Some(a_id.as_str())),
        "{r:?}"
    );
    // A URL pasted at a terminal is taken at the end of its line: stdin stays open here.
    let url = invite(&c);
    let c2 = w.home("c2");
    let c2_id = c.setup(&c2);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tincan"))
        .arg("--home")
        .arg(&c2)
        .args(["--json", "invite", "accept", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    {
        use std::io::Write;
        writeln!(stdin, "{url}").unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited for the end of stdin"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(stdin);
    assert!(status.success());
    // Nothing on stdin: said plainly, nothing spent.
    let r = c.run_stdin(&b, &["invite", "accept", "-"], Some(" \n"));
    assert_eq!((r.code, r.error_code().as_str()), (2, "bad_input"), "{r:?}");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stdin"),
        "{r:?}"
    );

    // `serve --join -`: a guest with no identity yet joins, seeds, and ends at --max-turns.
    let url = invite(&c);
    let guest = |seed: &'static str| {
        let (c, g, url) = (cli(), g.clone(), url.clone());
        std::thread::spawn(move || {
            let args = [
                "serve",
                "--join",
                "-",
                "--on-message",
                "cat",
                "--seed",
                seed,
                "--max-turns",
                "2",
            ];
            c.run_stdin(&g, &args, Some(&format!("{url}\n")))
        })
    };
    let running = guest("hi from g");
    let of = |r: &tincan_testkit::process::Run, kind: &str| -> Vec<Value> {
        r.events()
            .into_iter()
            .filter(|e| e["event"] == kind)
            .collect()
    };
    // A takes B's and C2's joins first, then the guest's join and its seed.
    let joined = |c: &Cli| loop {
        let r = c.run(&a, &["listen", "--timeout", "10", "--once"]);
        let j = of(&r, "peer_joined");
        assert_eq!(j.len(), 1, "{r:?}");
        let id = j[0]["peer"].as_str().unwrap().to_string();
        if id != b_id && id != c2_id {
            break id;
        }
    };
    let g_id = joined(&c);
    let r = c.run(&a, &["listen", "--timeout", "10", "--once"]);
    assert_eq!(of(&r, "message")[0]["text"], "hi from g", "{r:?}");
    assert_eq!(c.run(&a, &["send", &g_id, "last word"]).code, 0);
    let r = running.join().unwrap();
    assert_eq!(r.code, 0, "{r:?}");
    let events = r.events();
    assert_eq!(events[0]["event"], "joined", "{r:?}");
    assert_eq!(events[0]["peer"], a_id.as_str());
    assert_eq!(events[0]["resumed"], false);
    let done = events.iter().find(|e| e["event"] == "done").unwrap();
    assert_eq!(done["reason"], "max_turns", "{r:?}");

    // The same line run again: the invite is spent, but this home took it, so it serves again.
    let running = guest("hi again");
    let r = c.run(&a, &["listen", "--timeout", "10", "--once"]);
    assert_eq!(of(&r, "message")[0]["text"], "hi again", "{r:?}");
    assert_eq!(c.run(&a, &["send", &g_id, "bye"]).code, 0);
    let r = running.join().unwrap();
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        (
            r.events()[0]["event"].as_str(),
            r.events()[0]["resumed"].as_bool()
        ),
        (Some("joined"), Some(true)),
        "{r:?}"
    );
    // `invite accept` of it says the same instead of "ask for a new one".
    let r = c.run_stdin(&g, &["invite", "accept", "-"], Some(&url));
    assert_eq!(
        (r.code, r.error_code().as_str()),
        (4, "invite_used"),
        "{r:?}"
    );
    assert_eq!(r.json()["error"]["paired_with"], a_id.as_str(), "{r:?}");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already accepted this invite")
    );

    // An invite someone else used is not taken for this home's own, though it is paired with
    // the same inviter: the plain invite_used, and no resumption.
    let stolen = invite(&c);
    let m = w.home("m");
    c.setup(&m);
    assert_eq!(c.run(&m, &["invite", "accept", &stolen]).code, 0);
    let r = c.run_stdin(&g, &["invite", "accept", "-"], Some(&stolen));
    assert_eq!(
        (r.code, r.error_code().as_str()),
        (4, "invite_used"),
        "{r:?}"
    );
    assert!(r.json()["error"].get("paired_with").is_none(), "{r:?}");
    let r = c.run_stdin(
        &g,
        &[
            "serve",
            "--join",
            "-",
            "--on-message",
            "cat",
            "--max-turns",
            "1",
        ],
        Some(&stolen),
    );
    assert_eq!(
        (r.code, r.error_code().as_str()),
        (4, "invite_used"),
        "{r:?}"
    );
}

#[test]
fn invite_used_twice_tampered_expired_and_foreign() {
    let w = World::new();
    let c = cli();
    let (a, b, m) = (w.home("a"), w.home("b"), w.home("m"));
    c.setup(&a);
    c.setup(&b);
    c.setup(&m);
    let url = c.pair(&a, &b, &w.relay.url());

    let r = c.run(&m, &["invite", "accept", &url]);
    assert_eq!(
        (r.code, r.error_code().as_str()),
        (4, "invite_used"),
        "{r:?}"
    );
    let r = c.run(&b, &["invite", "accept", &url]);
    assert_eq!(r.code, 4, "{r:?}");

    let fresh = c
        .run(&a, &["invite", "create", "--relay", &w.relay.url()])
        .json()["url"]
        .as_str()
        .unwrap()
        .to_string();
    // Flip one character of the payload (keeping it valid base64url).
    let mut chars: Vec<char> = fresh.chars().collect();
    let i = fresh.find("tincan2.").unwrap() + 30;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    let r = c.run(&m, &["invite", "accept", &tampered]);
    assert_eq!(
        (r.code, r.error_code().as_str()),
        (4, "invite_tampered"),
        "{r:?}"
    );
    let r = c.run(&m, &["invite", "accept", &fresh[..fresh.len() - 20]]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        matches!(
            r.error_code().as_str(),
            "invite_malformed" | "invite_tampered"
        ),
        "{r:?}"
    );
    let r = c.run(
        &m,
        &["invite", "accept", "https://example.com/#not-an-invite"],
    );
    assert_eq!(
        (r.code, r.error_code().as_str()),
        (4, "invite_foreign"),
        "{r:?}"
    );
    // The untampered invite still works after all that.
    let r = c.run(&m, &["invite", "accept", &fresh]);
    assert_eq!(r.code, 0, "{r:?}");

    let short = c
        .run(
            &a,
            // Not 1s: expiries are whole seconds, and a one-second invite made just before a
            // second ends is already due when the relay checks it.
            &["invite", "create", "--relay", &w.relay.url(), "--ttl", "2s"],
        )
        .json()["url"]
        .as_str()
        .unwrap()
        .to_string();
    std::thread::sleep(Duration::from_millis(3100));
    let r = c.run(&m, &["invite", "accept", &short]);
    assert_eq!(
        (r.code, r.error_code().as_str()),
        (4, "invite_expired"),
        "{r:?}"
    );

    // Own invite.
    let own = c
        .run(&a, &["invite", "create", "--relay", &w.relay.url()])
        .json()["url"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c.run(&a, &["invite", "accept", &own]);
    assert_eq!(
        (r.code, r.error_code().as_str()),
        (4, "invite_own"),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_of_one_invite_have_one_winner() {
    let w = World::new();
    let c = cli();
    let a = w.home("a");
    c.setup(&a);
    let url = c
        .run(&a, &["invite", "create", "--relay", &w.relay.url()])
        .json()["url"]
        .as_str()
        .unwrap()
        .to_string();
    let mut handles = Vec::new();
    for i in 0..8 {
        let home = w.home(&format!("claimer{i}"));
        c.setup(&home);
        let url = url.clone();
        handles.push(tokio::task::spawn_blocking(move || {
            cli().run(&home, &["invite", "accept", &url])
        }));
    }
    let mut wins = 0;
    for h in handles {
        let r = h.await.unwrap();
        if r.code == 0 {
            wins += 1;
        } else {
            assert_eq!(r.error_code(), "invite_used", "{r:?}");
        }
    }
    assert_eq!(wins, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_invited_identity_cannot_reach_an_agent() {
    let (w, c, a, _b, a_id) = two_paired();
    // Mallory knows A's id and connects with her own identity: the relay refuses to route.
    let mallory = Identity::generate();
    let mut conn = RawConn::authed(&w.relay.url(), &mallory, false).await;
    let to = a_id.parse().unwrap();
    conn.send(&ClientFrame::Send {
        req: 9,
        id: MessageId::from_bytes([1; 16]),
        to,
        body: vec![0, 1, 2, 3],
    })
    .await;
    match conn.recv().await {
        Some(RelayFrame::Error {
            req: 9,
            code: ErrorCode::NotPaired,
            ..
        }) => {}
        other => panic!("expected not_paired, got {other:?}"),
    }
    // Mallory claims an invite id she made up: unknown.
    conn.send(&ClientFrame::ClaimInvite {
        req: 10,
        id: tincan_client::tincan_proto::ids::InviteId::from_bytes([2; 16]),
    })
    .await;
    assert!(matches!(
        conn.recv().await,
        Some(RelayFrame::Error {
            req: 10,
            code: ErrorCode::InviteUnknown,
            ..
        })
    ));
    // A forged auth (signature by another key) is refused.
    let (mut raw, nonce) = RawConn::connect(&w.relay.url()).await;
    let signature = mallory.sign(tincan_client::tincan_proto::labels::RELAY_CHALLENGE, &nonce);
    raw.send(&ClientFrame::Auth {
        peer: to,
        signature,
        receive: true,
    })
    .await;
    assert!(matches!(
        raw.recv().await,
        Some(RelayFrame::Error {
            code: ErrorCode::AuthFailed,
            ..
        })
    ));
    // A receives nothing.
    let r = c.run(&a, &["listen", "--timeout", "2"]);
    assert!(r.events().iter().all(|e| e["event"] != "message"), "{r:?}");
}

#[test]
fn tampered_ciphertext_in_the_relay_store_is_rejected_not_shown() {
    let mut w = World::new();
    let c = cli();
    let (a, b) = (w.home("a"), w.home("b"));
    let a_id = c.setup(&a);
    c.setup(&b);
    c.pair(&a, &b, &w.relay.url());
    assert_eq!(c.run(&a, &["listen", "--once", "--timeout", "10"]).code, 0);
    assert_eq!(c.run(&b, &["send", &a_id, "original text"]).code, 0);
    assert_eq!(c.run(&b, &["send", &a_id, "second, untouched"]).code, 0);
    w.relay.kill9();
    {
        let db = rusqlite::Connection::open(&w.relay.db).unwrap();
        let (seq, mut body): (i64, Vec<u8>) = db
            .query_row(
                "SELECT seq, body FROM queue ORDER BY seq LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let mid = body.len() / 2;
        body[mid] ^= 0x01;
        db.execute(
            "UPDATE queue SET body = ?1 WHERE seq = ?2",
            rusqlite::params![body, seq],
        )
        .unwrap();
    }
    w.relay.restart();
    let r = c.run(&a, &["listen", "--timeout", "3"]);
    let ev = r.events();
    assert!(ev.iter().any(|e| e["event"] == "rejected"), "{r:?}");
    // The tampered one is not shown; the next one still decrypts (the ratchet was not broken).
    assert_eq!(messages(&ev), ["second, untouched"]);
}

/// An SDK client of `home` sends `bursts` × 20 messages `{tag}-NNNN` to `to`, one batch every
/// `pause_ms`, and waits until the relay has acked them all.
async fn send_in_bursts(
    home: std::path::PathBuf,
    url: String,
    to: String,
    tag: &'static str,
    bursts: usize,
    pause_ms: u64,
) {
    let client =
        Client::start(Home::open(&home).unwrap(), &url, ClientOptions::send_only()).unwrap();
    for burst in 0..bursts {
        let texts: Vec<String> = (0..20)
            .map(|i| format!("{tag}-{:04}", burst * 20 + i))
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        client.send_many(&to, &refs).await.unwrap();
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
    }
    client
        .wait_outbox_empty(Duration::from_secs(90))
        .await
        .unwrap();
}

#[test]
fn relay_sigkilled_under_traffic_delivers_every_acked_message_exactly_once() {
    let mut w = World::new();
    let c = cli();
    let (a, b, d) = (w.home("a"), w.home("b"), w.home("d"));
    let a_id = c.setup(&a);
    c.setup(&b);
    c.setup(&d);
    c.pair(&a, &b, &w.relay.url());
    c.pair(&a, &d, &w.relay.url());
    assert_eq!(c.run(&a, &["listen", "--timeout", "3"]).code, 0);

    let rt = tokio::runtime::Runtime::new().unwrap();
    // Two senders (SDK clients in this process), each sending 800 messages in steady bursts.
    let url = w.relay.url();
    let sb = rt.spawn(send_in_bursts(
        b.clone(),
        url.clone(),
        a_id.clone(),
        "b",
        40,
        25,
    ));
    let sd = rt.spawn(send_in_bursts(d.clone(), url, a_id.clone(), "d", 40, 25));
    // SIGKILL the relay six times while both are busy, restarting it each time.
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(150));
        w.relay.kill9();
        std::thread::sleep(Duration::from_millis(60));
        w.relay.restart();
    }
    rt.block_on(sb).unwrap();
    rt.block_on(sd).unwrap();
    // Every message was acked by the relay (both outboxes are empty); each arrives exactly
    // once, in order per sender.
    let mut got = Vec::new();
    for _ in 0..20 {
        let r = c.run(&a, &["listen", "--timeout", "2"]);
        got.extend(messages(&r.events()));
        if got.len() >= 1600 {
            break;
        }
    }
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for g in &got {
        *counts.entry(g).or_default() += 1;
    }
    assert!(counts.values().all(|n| *n == 1), "duplicates delivered");
    for tag in ["b", "d"] {
        let from: Vec<&String> = got.iter().filter(|g| g.starts_with(tag)).collect();
        let expected: Vec<String> = (0..800).map(|i| format!("{tag}-{i:04}")).collect();
        assert_eq!(
            from.len(),
            800,
            "sender {tag}: {} of 800 arrived",
            from.len()
        );
        assert!(
            from.iter().zip(&expected).all(|(g, e)| *g == e),
            "sender {tag}: out of order"
        );
    }
}

/// `tincan --home HOME --json listen` killed with SIGKILL after `ms`: the messages it printed.
fn listen_killed_after(home: &Path, ms: u64) -> Vec<String> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tincan"))
        .arg("--home")
        .arg(home)
        .args(["--json", "listen"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let lines = std::io::BufReader::new(stdout).lines();
        let events: Vec<Value> = lines
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect();
        messages(&events)
    });
    std::thread::sleep(Duration::from_millis(ms));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Whatever it wrote before it died is still in the pipe and is read to its end.
    reader.join().unwrap()
}

#[test]
fn listen_sigkilled_while_receiving_loses_nothing_and_replays_only_what_it_showed_last() {
    let (w, c, a, b, a_id) = two_paired();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sender = rt.spawn(send_in_bursts(b, w.relay.url(), a_id, "m", 30, 30));
    // The receiver is SIGKILLed again and again while messages arrive: at any point of decrypting,
    // committing, acking or printing. A killed `listen` leaves its receiving lock behind, which
    // the next one must not take for a live holder.
    let mut runs: Vec<Vec<String>> = Vec::new();
    let mut kills = 0usize;
    while !sender.is_finished() || kills < 6 {
        runs.push(listen_killed_after(&a, 150 + (kills as u64 * 37) % 200));
        kills += 1;
    }
    rt.block_on(sender).unwrap();
    // Then clean runs (each exits at its timeout): at least two, until every message was shown.
    let first_clean = runs.len();
    for n in 0..20 {
        let distinct = runs.iter().flatten().collect::<HashSet<_>>().len();
        if n >= 2 && distinct >= 600 {
            break;
        }
        let r = c.run(&a, &["listen", "--timeout", "1"]);
        assert_eq!(r.code, 0, "listen after the kills: {}", r.stderr);
        runs.push(messages(&r.events()));
    }
    // Marks of handed-over messages ride along with the home's next write and are written alone
    // every 256 events or 20 ms (docs/ARCHITECTURE.md), so a run killed inside that window shows
    // its last few messages again. That replay is the only repeat: it opens the next run, it is a
    // stretch of what was shown, in order, from at most 256 back, and if new messages follow, it
    // reaches the end of what was shown. A run after a clean exit replays nothing.
    let mut first: Vec<&String> = Vec::new();
    let mut seen = HashSet::new();
    for (k, run) in runs.iter().enumerate() {
        let replayed = run.iter().take_while(|m| seen.contains(m)).count();
        if replayed > 0 {
            let start = first.iter().position(|m| *m == &run[0]).unwrap();
            assert!(
                first.len() - start <= 256,
                "run {k} replays from {} back",
                first.len() - start
            );
            assert_eq!(
                run[..replayed].iter().collect::<Vec<_>>(),
                first[start..(start + replayed).min(first.len())],
                "run {k} replays something other than a stretch of what was shown, in order"
            );
            assert!(
                replayed == run.len() || start + replayed == first.len(),
                "run {k} skips from its replay to new messages"
            );
            assert!(k <= first_clean, "run {k} follows a clean exit yet replays");
        }
        for m in &run[replayed..] {
            assert!(
                seen.insert(m),
                "run {k} repeats {m} after its opening replay"
            );
            first.push(m);
        }
    }
    let expected: Vec<String> = (0..600).map(|i| format!("m-{i:04}")).collect();
    assert_eq!(
        first,
        expected.iter().collect::<Vec<_>>(),
        "lost or out of order after {kills} kills"
    );
}

#[test]
fn listen_killed_right_after_a_backlog_replays_at_most_256() {
    use std::io::BufRead;
    let (_w, c, a, b, a_id) = two_paired();
    // 600 messages wait at the relay while A is offline; one `listen` then takes them all in.
    let lines: String = (0..600).map(|i| format!("m-{i:04}\n")).collect();
    let r = c.run_stdin(&b, &["send", &a_id, "-", "--lines"], Some(&lines));
    assert_eq!(r.code, 0, "{r:?}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tincan"))
        .arg("--home")
        .arg(&a)
        .args(["--json", "listen"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut shown = 0;
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        if line.unwrap().contains("\"event\":\"message\"") {
            shown += 1;
            if shown == 600 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL, right after the last line
    child.wait().unwrap();
    // The marks of a backlog shown in one go are written every 256 entries (and every 20 ms),
    // not only once the backlog is through: at most the last 256 come again.
    let again = messages(&c.run(&a, &["listen", "--timeout", "1"]).events());
    assert!(again.len() <= 256, "{} shown again", again.len());
    let tail: Vec<String> = (600 - again.len()..600)
        .map(|i| format!("m-{i:04}"))
        .collect();
    assert_eq!(
        again, tail,
        "what is shown again is the end of the backlog, in order"
    );
}

#[test]
fn send_sigkilled_at_any_point_queues_its_batch_whole_or_not_at_all_and_it_arrives_once() {
    let (_w, c, a, b, a_id) = two_paired();
    // `send` of batch k (50 lines), SIGKILLed after `kill_after` if given: whether it confirmed.
    let send = |k: u32, kill_after: Option<Duration>| {
        use std::io::Write;
        let lines: String = (0..50).map(|i| format!("{k}-{i:02}\n")).collect();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tincan"))
            .arg("--home")
            .arg(&b)
            .args(["--json", "send", &a_id, "-", "--lines"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(lines.as_bytes()).unwrap();
        drop(stdin);
        if let Some(after) = kill_after {
            std::thread::sleep(after);
            let _ = child.kill(); // SIGKILL
        }
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).contains("\"status\"")
    };
    // One whole send sets the pace; the others are killed at eighths of its time, from before
    // it has read its input to after it has sealed, queued and sent it.
    let started = std::time::Instant::now();
    assert!(send(0, None), "an unkilled send did not confirm");
    let whole = started.elapsed();
    let mut confirmed = vec![0];
    for k in 1..=8 {
        if send(k, Some(whole * (k - 1) / 8)) {
            confirmed.push(k);
        }
    }
    // The next send on the home takes along whatever the killed ones left queued, first.
    let r = c.run(&b, &["send", &a_id, "last"]);
    assert_eq!(r.code, 0, "{r:?}");
    let mut got = Vec::new();
    for _ in 0..10 {
        got.extend(messages(&c.run(&a, &["listen", "--timeout", "2"]).events()));
        if got.last().is_some_and(|m| m == "last") {
            break;
        }
    }
    assert_eq!(got.last().map(String::as_str), Some("last"), "{got:?}");
    got.pop();
    // Batches arrive whole, in the order sent, each once; one confirmed to its sender is there.
    let mut batches: Vec<u32> = Vec::new();
    for chunk in got.chunks(50) {
        let k: u32 = chunk[0].split('-').next().unwrap().parse().unwrap();
        let whole: Vec<String> = (0..50).map(|i| format!("{k}-{i:02}")).collect();
        assert_eq!(
            chunk,
            whole.as_slice(),
            "batch {k} is not whole and in order"
        );
        batches.push(k);
    }
    assert!(
        batches.windows(2).all(|w| w[0] < w[1]),
        "batches out of order or repeated: {batches:?}"
    );
    for k in &confirmed {
        assert!(
            batches.contains(k),
            "batch {k} was confirmed to its sender but never arrived"
        );
    }
}

#[test]
fn send_while_relay_is_down_is_queued_then_delivered() {
    let mut w = World::new();
    let c = cli();
    let (a, b) = (w.home("a"), w.home("b"));
    let a_id = c.setup(&a);
    c.setup(&b);
    c.pair(&a, &b, &w.relay.url());
    w.relay.kill9();
    let r = c.run(
        &b,
        &[
            "send",
            &a_id,
            "written while the relay was down",
            "--timeout",
            "1",
        ],
    );
    assert_eq!(
        (r.code, r.error_code().as_str()),
        (5, "relay_unreachable"),
        "{r:?}"
    );
    assert_eq!(r.json()["error"]["status"], "queued");
    w.relay.restart();
    // The next send flushes the outbox in order.
    assert_eq!(c.run(&b, &["send", &a_id, "after restart"]).code, 0);
    let r = c.run(&a, &["listen", "--timeout", "3"]);
    assert_eq!(
        messages(&r.events()),
        ["written while the relay was down", "after restart"]
    );
}

#[test]
fn errors_are_json_with_codes_and_exit_codes() {
    let w = World::new();
    let c = cli();
    // Over the HTTP transport an unreachable relay gets the same cause and hint as over ws.
    let a = w.home("http-a");
    c.setup(&a);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tincan"))
        .arg("--home")
        .arg(&a)
        .args([
            "--json",
            "invite",
            "create",
            "--relay",
            "http://127.0.0.1:1",
        ])
        .env("TINCAN_TRANSPORT", "http")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(5), "{text}");
    assert!(
        text.contains("Connection refused") && text.contains("is `tincan relay` running"),
        "{text}"
    );
    // A command without its subcommand says which it needs (clap would show the help).
    let r = c.run(&w.home("a"), &["room"]);
    assert_eq!((r.code, r.error_code().as_str()), (2, "usage"), "{r:?}");
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("`tincan room` needs a subcommand: one of open, status, stop"),
        "{message}"
    );
    // A home path that cannot be a directory is unusable, not a home without an identity; the
    // error names it.
    let file = w.home("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    for cmd in ["whoami", "setup"] {
        let r = c.run(&file, &[cmd]);
        assert_eq!(
            (r.code, r.error_code().as_str()),
            (3, "home_unusable"),
            "{r:?}"
        );
        assert!(r.stdout.contains("a-file"), "{r:?}");
    }
    let nobody = w.home("nobody");
    let r = c.run(&nobody, &["whoami"]);
    assert_eq!(
        (r.code, r.error_code().as_str()),
        (3, "no_identity"),
        "{r:?}"
    );
    // The hint names the home the user chose, so following it sets up that one.
    assert!(
        r.stdout
            .contains(&format!("run `tincan --home {} setup`", nobody.display())),
        "{r:?}"
    );
    let a = w.home("a");
    c.setup(&a);
    let r = c.run(&a, &["send", "zzz", "hi"]);
    assert_eq!(
        (r.code, r.error_code().as_str()),
        (3, "unknown_peer"),
        "{r:?}"
    );
    // An inviter whose invite was just accepted learns why the new peer is not there yet.
    assert!(r.stdout.contains("run `tincan listen`"), "{r:?}");
    let started = std::time::Instant::now();
    let r = c.run(&a, &["invite", "create", "--relay", "http://127.0.0.1:1"]);
    assert_eq!(
        (r.code, r.error_code().as_str()),
        (5, "relay_unreachable"),
        "{r:?}"
    );
    // Said once, with what to do, and without waiting out the whole connect timeout (10 s).
    assert_eq!(r.stdout.matches("cannot reach relay").count(), 1, "{r:?}");
    assert!(r.stdout.contains("is `tincan relay` running"), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(8), "{r:?}");
    // A listen against a relay that is down says so, and fails if it never got through.
    let r = c.run(
        &a,
        &["listen", "--relay", "http://127.0.0.1:1", "--timeout", "1"],
    );
    assert_eq!(r.code, 5, "{r:?}");
    let ev = r.events();
    assert_eq!(ev[0]["event"], "disconnected", "{r:?}");
    assert_eq!(ev.last().unwrap()["error"]["code"], "relay_unreachable");
    let r = c.run(&a, &["invite", "create", "--relay", "ftp://x"]);
    assert_eq!(r.code, 5, "{r:?}");
    let r = c.run(&a, &["invite", "create", "--ttl", "soon"]);
    assert_eq!((r.code, r.error_code().as_str()), (2, "usage"), "{r:?}");
    // Longer than any relay keeps an invite: refused here, before the relay is asked.
    let r = c.run(&a, &["invite", "create", "--ttl", "31d"]);
    assert_eq!((r.code, r.error_code().as_str()), (2, "usage"), "{r:?}");
    assert!(r.stdout.contains("at most 30d"), "{r:?}");
    let r = c.run(&a, &["frobnicate"]);
    assert_eq!(r.code, 2, "{r:?}");
    // Setup is idempotent and keeps the identity.
    let again = c.run(&a, &["setup"]).json();
    assert_eq!(again["created"], false);
    // Key file is private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(a.join("identity.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "identity.key must be 0600");
    }
}

#[test]
fn demo_and_version_run() {
    let c = cli();
    let tmp = tempfile::tempdir().unwrap();
    let r = c.run(tmp.path(), &["demo"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.events().iter().any(|e| e["done"] == true));
    // Its relay serves two agents: no warning about a public relay's open-file needs.
    assert!(!r.stderr.contains("WARN"), "{}", r.stderr);
    let r = c.run(tmp.path(), &["version"]);
    assert_eq!(r.json()["protocol"], 1);
}

/// Pairing again with a known peer, while that peer's messages on the old session are still
/// queued at the relay: they arrive, and the new session works both ways.
#[test]
fn pairing_again_loses_no_message_in_flight() {
    let w = World::new();
    let c = cli();
    let (a, b) = (w.home("a"), w.home("b"));
    let a_id = c.setup(&a);
    let b_id = c.setup(&b);
    c.pair(&a, &b, &w.relay.url());
    let r = c.run(&a, &["listen", "--once", "--timeout", "10"]);
    assert!(
        r.events().iter().any(|e| e["event"] == "peer_joined"),
        "{r:?}"
    );
    // A writes while B is offline: sealed on the first session, queued at the relay.
    for text in ["in flight 1", "in flight 2"] {
        let r = c.run(&a, &["send", &b_id, text]);
        assert_eq!(r.code, 0, "{r:?}");
    }
    // B pairs again with A (an invite from A) before reading them.
    c.pair(&a, &b, &w.relay.url());
    let r = c.run(&b, &["listen", "--timeout", "3"]);
    assert_eq!(
        messages(&r.events()),
        ["in flight 1", "in flight 2"],
        "messages sealed before the re-pairing were lost: {r:?}"
    );
    // The new session, both ways.
    let r = c.run(&a, &["listen", "--once", "--timeout", "10"]);
    assert!(
        r.events().iter().any(|e| e["event"] == "peer_joined"),
        "{r:?}"
    );
    assert_eq!(c.run(&a, &["send", &b_id, "after"]).code, 0);
    let r = c.run(&b, &["listen", "--once", "--timeout", "10"]);
    assert_eq!(messages(&r.events()), ["after"], "{r:?}");
    assert_eq!(c.run(&b, &["send", &a_id, "back"]).code, 0);
    let r = c.run(&a, &["listen", "--once", "--timeout", "10"]);
    assert_eq!(messages(&r.events()), ["back"], "{r:?}");
}

#[test]
fn prune_erases_read_text_from_the_home_files_and_keeps_what_is_unread() {
    let (_w, c, a, b, a_id) = two_paired();
    let r = c.run(&b, &["send", &a_id, "read this, then forget it"]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = c.run(&a, &["listen", "--timeout", "2"]);
    assert_eq!(messages(&r.events()), ["read this, then forget it"]);
    let db = a.join("tincan.db");
    assert!(contains(&read_db_files(&db), b"read this, then forget it"));

    // Nothing is old enough yet; a second later everything A has read is.
    let r = c.run(&a, &["prune", "--older-than", "1h"]);
    assert_eq!(r.json()["erased"], 0, "{r:?}");
    std::thread::sleep(Duration::from_millis(1100));
    let r = c.run(&b, &["send", &a_id, "not read yet"]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = c.run(&a, &["prune", "--older-than", "1s"]);
    assert_eq!(r.code, 0, "{r:?}");
    let p = r.json();
    assert_eq!(p["erased"], 1, "{p}");
    assert_eq!(p["wal_truncated"], true, "{p}");
    assert!(!contains(&read_db_files(&db), b"read this, then forget"));
    // What A had not read is still delivered, once.
    let r = c.run(&a, &["listen", "--timeout", "2"]);
    assert_eq!(messages(&r.events()), ["not read yet"]);

    // A missing or malformed duration is a usage error that names the argument.
    let r = c.run(&a, &["prune"]);
    assert_eq!((r.code, r.error_code().as_str()), (2, "usage"), "{r:?}");
    assert!(r.stdout.contains("--older-than"), "{r:?}");
    let r = c.run(&a, &["prune", "--older-than", "soon"]);
    assert_eq!((r.code, r.error_code().as_str()), (2, "usage"), "{r:?}");
}

#[test]
fn listen_whose_output_is_closed_exits_quietly_and_hands_nothing_over() {
    let (_w, c, a, b, a_id) = two_paired();
    for text in ["first", "second"] {
        let r = c.run(&b, &["send", &a_id, text]);
        assert_eq!(r.code, 0, "{r:?}");
    }
    // A reader that has gone before the first event: every write fails with a broken pipe.
    let mut listen = std::process::Command::new(&c.bin);
    listen
        .arg("--home")
        .arg(&a)
        .args(["listen", "--timeout", "3"]);
    run_with_stdout_closed(&mut listen);
    // Nothing was handed over, so the next listen shows the join and both messages.
    let r = c.run(&a, &["listen", "--timeout", "2"]);
    let ev = r.events();
    assert!(ev.iter().any(|e| e["event"] == "peer_joined"), "{r:?}");
    assert_eq!(messages(&ev), ["first", "second"]);
}

#[test]
fn relay_log_redirected_to_a_file_has_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("relay.log");
    let port = tincan_testkit::free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tincan"))
        .args(["relay", "--listen", &format!("127.0.0.1:{port}"), "--db"])
        .arg(dir.path().join("relay.db"))
        .env_remove("NO_COLOR")
        .env_remove("TINCAN_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut log = String::new();
    while log.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        log = std::fs::read_to_string(&log_path).unwrap();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(!log.is_empty(), "the relay logged nothing at startup");
    assert!(!log.contains("\x1b["), "{log:?}");
}

/// A `tincan --json relay` child, killed when dropped.
struct RelayChild(std::process::Child);

impl Drop for RelayChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tincan [--home HOME] --json relay --listen 127.0.0.1:0` with a data dir of its own
/// and `TINCAN_HOME` as given; returns it and its first line (`listening` or an error).
fn relay_for_home(
    home: Option<&Path>,
    env_home: Option<&Path>,
    data: &Path,
) -> (RelayChild, Value) {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tincan"));
    if let Some(h) = home {
        cmd.arg("--home").arg(h);
    }
    cmd.args(["--json", "relay", "--listen", "127.0.0.1:0"])
        .env("XDG_DATA_HOME", data)
        .env_remove("TINCAN_RELAY_DB")
        .env_remove("TINCAN_RELAY_CONFIG")
        .env_remove("TINCAN_HOME");
    if let Some(h) = env_home {
        cmd.env("TINCAN_HOME", h);
    }
    let mut child = RelayChild(
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, serde_json::from_str(&line).unwrap())
}

#[test]
fn relays_of_two_homes_run_side_by_side_each_with_its_database_in_its_home() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (h1, h2) = (dir.path().join("h1"), dir.path().join("h2"));
    // --home for one, TINCAN_HOME for the other: both are a home given explicitly.
    let (r1, first) = relay_for_home(Some(&h1), None, &data);
    let (_r2, second) = relay_for_home(None, Some(&h2), &data);
    for (home, ev) in [(&h1, &first), (&h2, &second)] {
        assert_eq!(ev["event"], "listening", "{ev}");
        let db = home.join("relay.db");
        assert_eq!(ev["db"], db.to_str().unwrap(), "{ev}");
        assert!(db.exists(), "{}", db.display());
    }
    assert!(!data.exists(), "no relay used the shared data dir");
    // Without a home the data dir is the default, as before.
    let (r3, third) = relay_for_home(None, None, &data);
    let shared = data.join("tincan/relay.db");
    assert_eq!(third["db"], shared.to_str().unwrap(), "{third}");
    drop(r3);
    // An upgrade: a home without a relay.db of its own keeps the data dir's, with what it holds
    // (pairings, queue, token keys), rather than start an empty one; a home with one uses it.
    let h3 = dir.path().join("h3");
    let (r4, fourth) = relay_for_home(Some(&h3), None, &data);
    assert_eq!(fourth["db"], shared.to_str().unwrap(), "{fourth}");
    assert!(!h3.join("relay.db").exists());
    drop((r1, r4));
    let (_r5, fifth) = relay_for_home(Some(&h1), None, &data);
    assert_eq!(
        fifth["db"],
        h1.join("relay.db").to_str().unwrap(),
        "{fifth}"
    );
}

#[test]
fn demo_whose_output_is_closed_still_finishes_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let mut demo = std::process::Command::new(env!("CARGO_BIN_EXE_tincan"));
    demo.args(["demo", "--json"]).env("TMPDIR", tmp.path());
    run_with_stdout_closed(&mut demo);
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "the demo left {left:?}");
}

#[test]
fn relay_start_problems_get_their_own_codes_and_say_what_to_do() {
    let w = World::new();
    let c = cli();
    let home = w.home("unused");
    let relay = |listen: &str, db: &str| c.run(&home, &["relay", "--listen", listen, "--db", db]);
    let db = w.dir.path().join("second.db");
    let db = db.to_str().unwrap();
    let r = relay("127.0.0.1:99999", db);
    assert_eq!((r.code, r.error_code().as_str()), (2, "usage"), "{r:?}");
    // A bad value from the environment is traced to its variable, not just the flag.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tincan"))
        .args(["--json", "relay", "--listen", "127.0.0.1:0", "--db", db])
        .env("TINCAN_RELAY_MAX_BODY", "abc")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("TINCAN_RELAY_MAX_BODY"), "{text}");
    let missing = w.dir.path().join("no/such/dir/r.db");
    let r = relay("127.0.0.1:0", missing.to_str().unwrap());
    assert_eq!((r.code, r.error_code().as_str()), (2, "bad_db"), "{r:?}");
    assert!(r.stdout.contains("does not exist"), "{r:?}");
    // The World's relay holds its port and its database.
    let port = w.relay.url().rsplit(':').next().unwrap().to_string();
    let busy = format!("127.0.0.1:{port}");
    let r = relay(&busy, db);
    assert_eq!(
        (r.code, r.error_code().as_str()),
        (2, "port_in_use"),
        "{r:?}"
    );
    let taken = w.relay.db.to_str().unwrap().to_string();
    let r = relay("127.0.0.1:0", &taken);
    // Refused before it says it is listening: the error is the only line.
    let events = r.events();
    assert_eq!(events.len(), 1, "{r:?}");
    assert_eq!(events[0]["error"]["code"], "db_in_use", "{r:?}");
    assert_eq!(r.code, 2, "{r:?}");
    // A file that is not a database: refused before "listening" too, with what to do.
    let junk = w.dir.path().join("junk.db");
    std::fs::write(&junk, vec![0x5a; 8192]).unwrap();
    let r = relay("127.0.0.1:0", junk.to_str().unwrap());
    let events = r.events();
    assert_eq!(events.len(), 1, "{r:?}");
    assert_eq!(events[0]["error"]["code"], "relay_failed", "{r:?}");
    let message = events[0]["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("cannot start the relay"), "{r:?}");
    assert!(message.contains("move"), "{r:?}");
    assert_eq!(r.code, 1, "{r:?}");
}

#[test]
fn listen_on_a_home_whose_inbox_is_corrupt_stops_and_loses_nothing() {
    let (_w, c, a, b, a_id) = two_paired();
    let r = c.run(&a, &["listen", "--timeout", "1"]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = c.run(&b, &["send", &a_id, "kept at the relay"]);
    assert_eq!(r.code, 0, "{r:?}");
    // Overwrite the pages of A's inbox table in place; identity and peers stay readable.
    let db = a.join("tincan.db");
    let backup = tincan_testkit::corrupt_table(&db, "inbox");

    let started = std::time::Instant::now();
    let r = c.run(&a, &["listen", "--timeout", "20"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "it stopped instead of retrying until the timeout: {r:?}"
    );
    let last = r.events().last().cloned().unwrap();
    assert_eq!(last["error"]["code"], "home_unusable", "{r:?}");
    assert_eq!(r.code, 3, "{r:?}");
    let why = last["error"]["message"].as_str().unwrap();
    assert!(why.contains("cannot store messages"), "{why}");
    // Nothing was acked: with the database restored, the message arrives.
    std::fs::write(&db, &backup).unwrap();
    let r = c.run(&a, &["listen", "--timeout", "2"]);
    assert_eq!(messages(&r.events()), ["kept at the relay"], "{r:?}");
}

#[test]
fn a_message_over_a_lowered_max_body_fails_alone_and_the_ones_after_it_go_through() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start_with(
        Path::new(env!("CARGO_BIN_EXE_tincan")),
        dir.path(),
        &["--max-body", "2000"],
    );
    let c = cli();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let a_id = c.setup(&a);
    c.setup(&b);
    c.pair(&a, &b, &relay.url());
    // Sealed and padded, 5,000 characters are well over 2,000 + the frame slack: the relay used
    // to drop the connection and the client to resend it forever, holding back everything after.
    let big = "z".repeat(5000);
    let started = std::time::Instant::now();
    let r = c.run(&b, &["send", &a_id, &big, "--timeout", "20"]);
    assert_eq!((r.code, r.error_code().as_str()), (7, "too_large"), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "said at once");
    let r = c.run(&b, &["send", &a_id, "small after big"]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = c.run(&a, &["listen", "--timeout", "3"]);
    assert_eq!(messages(&r.events()), ["small after big"], "{r:?}");
}

#[test]
fn a_relay_at_its_connection_limit_says_so_instead_of_looking_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start_with(
        Path::new(env!("CARGO_BIN_EXE_tincan")),
        dir.path(),
        &["--max-connections-per-ip", "1"],
    );
    let c = cli();
    let a = dir.path().join("a");
    c.setup(&a);
    c.setup(&dir.path().join("h"));
    // One connection held open by a listener; the next one from this address is turned away.
    let mut holder = std::process::Command::new(env!("CARGO_BIN_EXE_tincan"))
        .arg("--home")
        .arg(dir.path().join("h"))
        .args(["serve", "--on-message", "cat", "--relay", &relay.url()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let r = loop {
        let r = c.run(&a, &["invite", "create", "--relay", &relay.url()]);
        if r.code != 0 || std::time::Instant::now() > deadline {
            break r;
        }
        // The holder was not connected yet: this one got the only slot.
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(r.error_code(), "relay_unreachable", "{r:?}");
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("too_many_connections"), "{message}");
    assert!(message.contains("limit 1"), "{message}");
    assert!(
        message.contains("max_connections_per_ip"),
        "hint: {message}"
    );
    // The operator sees it too: one line (per 10 s) naming the limit.
    let log = relay.log();
    assert!(
        log.lines()
            .any(|l| l.contains("connection refused") && l.contains("max_connections_per_ip")),
        "{log}"
    );
}

#[test]
fn a_send_the_relay_defers_says_when_to_come_back_and_stays_queued() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start_with(
        Path::new(env!("CARGO_BIN_EXE_tincan")),
        dir.path(),
        &["--rate-per-identity", "0.2", "--burst-per-identity", "4"],
    );
    let c = cli();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let a_id = c.setup(&a);
    c.setup(&b);
    c.pair(&a, &b, &relay.url()); // B: claim + join, two of its four
    let mut deferred = None;
    for i in 0..4 {
        let r = c.run(&b, &["send", &a_id, &format!("m{i}")]);
        if r.code != 0 {
            deferred = Some(r);
            break;
        }
    }
    let r = deferred.expect("a send over the limit is deferred");
    assert_eq!(
        (r.code, r.error_code().as_str()),
        (7, "rate_limited"),
        "{r:?}"
    );
    let err = &r.json()["error"];
    assert_eq!(err["status"], "queued", "{r:?}");
    assert!(err["retry_after_ms"].as_u64().unwrap() > 0, "{r:?}");
    let message = err["message"].as_str().unwrap();
    assert!(message.contains("accepts in about"), "{message}");
    assert!(!message.contains("is retried in"), "{message}");
}

#[test]
fn an_empty_tincan_home_means_the_default_home_and_a_set_one_is_used() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |home_env: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tincan"))
            .args(["setup", "--json"])
            .env("TINCAN_HOME", home_env)
            .env("HOME", tmp.path())
            .env_remove("XDG_CONFIG_HOME")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        std::path::PathBuf::from(v["home"].as_str().unwrap())
    };
    // Empty: as if unset, so the platform's config dir under $HOME (not a usage error).
    let default = run("");
    assert!(default.starts_with(tmp.path()), "{default:?}");
    assert!(default.join("tincan.db").exists());
    let chosen = tmp.path().join("chosen");
    assert_eq!(run(chosen.to_str().unwrap()), chosen);
    // A hint names `--home` when the flag overrode a different TINCAN_HOME (the suggested
    // command would inherit that one), and not when the flag says what the variable says.
    let hint = |flag: &Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tincan"))
            .arg("--home")
            .arg(flag)
            .args(["--json", "whoami"])
            .env("TINCAN_HOME", &chosen)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["error"]["code"], "no_identity", "{v}");
        v["error"]["message"].as_str().unwrap().to_string()
    };
    let other = tmp.path().join("other");
    let m = hint(&other);
    assert!(
        m.contains(&format!("run `tincan --home {} setup`", other.display())),
        "{m}"
    );
    std::fs::remove_file(chosen.join("tincan.db")).unwrap();
    let m = hint(&chosen);
    assert!(m.contains("run `tincan setup`"), "{m}");
}

#[test]
fn a_missing_key_file_is_named_and_never_replaced_and_a_loose_one_is_tightened() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let c = cli();
    let home = dir.path().join("a");
    let id = c.setup(&home);
    let key = home.join("identity.key");
    let original = std::fs::read(&key).unwrap();
    // Readable by others: tightened back to 0600 on the next open.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(c.run(&home, &["whoami"]).code, 0);
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Gone: a clear error, and no new key that could never open the identity.
    std::fs::remove_file(&key).unwrap();
    let r = c.run(&home, &["whoami"]);
    assert_eq!(
        (r.code, r.error_code().as_str()),
        (3, "missing_key_file"),
        "{r:?}"
    );
    assert!(r.stdout.contains("restore identity.key"), "{r:?}");
    assert!(!key.exists(), "a key was made up in its place");
    // Restored from the backup: the same identity again.
    std::fs::write(&key, &original).unwrap();
    let r = c.run(&home, &["whoami"]);
    assert_eq!(r.json()["id"], id.as_str(), "{r:?}");
}

#[test]
fn hidden_characters_in_peer_text_reach_no_terminal_and_the_json_value_is_unchanged() {
    let (_w, c, a, b, a_id) = two_paired();
    // A bidi override, a C1 control, a line separator and an invisible tag character.
    let text = "pay alice\u{202E}kcab\u{85}\u{2028}[b] fake\u{E0041}";
    let r = c.run(&b, &["send", &a_id, text]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = c.run(&a, &["listen", "--timeout", "2"]);
    assert_eq!(
        messages(&r.events()),
        [text],
        "the parsed value is the text as sent"
    );
    for hidden in ['\u{202E}', '\u{85}', '\u{2028}', '\u{E0041}'] {
        assert!(
            !r.stdout.contains(hidden),
            "{hidden:?} raw in: {}",
            r.stdout
        );
    }
}

#[test]
fn listen_says_when_peers_wait_on_another_relay() {
    let (w, c, a, b, _) = two_paired();
    // A reads B's join on the first relay.
    assert_eq!(c.run(&a, &["listen", "--timeout", "1"]).code, 0);
    let dir = tempfile::tempdir().unwrap();
    let other = RelayProcess::start(Path::new(env!("CARGO_BIN_EXE_tincan")), dir.path());
    let carol = w.home("carol");
    c.setup(&carol);
    // A pairs with carol on the second relay, which becomes A's default.
    c.pair(&a, &carol, &other.url());
    let r = c.run(&a, &["listen", "--timeout", "1"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("1 peer of this home uses another relay")
            && r.stderr.contains(&w.relay.url()),
        "{r:?}"
    );
    // Named explicitly: no note.
    let r = c.run(&b, &["listen", "--timeout", "1", "--relay", &w.relay.url()]);
    assert!(!r.stderr.contains("note:"), "{r:?}");
}
