//! Faults with real processes: a full relay store, a locked or corrupt database file, and every
//! log line of an end-to-end run checked for secrets.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tincan_testkit::process::{Cli, RelayProcess};

const BIN: &str = env!("CARGO_BIN_EXE_tincan");

fn cli() -> Cli {
    Cli::new(BIN)
}

fn messages(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "message")
        .map(|e| e["text"].as_str().unwrap().to_string())
        .collect()
}

/// Starts `tincan relay` with extra flags and waits for it to listen (or exit).
fn relay_with(dir: &Path, db: &Path, extra: &[&str]) -> (std::process::Child, String) {
    let port = tincan_testkit::free_port();
    let child = Command::new(BIN)
        .args([
            "--json",
            "relay",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--db",
        ])
        .arg(db)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("relay.err")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, format!("http://127.0.0.1:{port}"))
}

#[test]
fn full_relay_store_refuses_clearly_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = cli();
    let db = dir.path().join("relay.db");
    let (relay, url) = relay_with(dir.path(), &db, &["--max-db-bytes", "300000"]);
    // Killed even if an assertion below fails, so no relay outlives the test.
    let _relay = KillOnDrop(relay);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let a_id = c.setup(&a);
    c.setup(&b);
    c.pair(&a, &b, &url);
    let big = "x".repeat(40_000);
    let mut sent = Vec::new();
    let mut full = None;
    for i in 0..40 {
        let text = format!("{i:02}{big}");
        let r = c.run(&b, &["send", &a_id, &text, "--timeout", "3"]);
        sent.push(text);
        if r.code != 0 {
            full = Some(r);
            break;
        }
    }
    let r = full.expect("the relay never reported full storage");
    assert_eq!(
        (r.code, r.error_code().as_str()),
        (7, "storage_full"),
        "{r:?}"
    );
    assert_eq!(r.json()["error"]["status"], "queued");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("storage is full")
    );
    // The relay still serves: A reads (and acks) what was stored, which frees the space.
    let mut got = messages(&c.run(&a, &["listen", "--timeout", "3"]).events());
    // B's next send pushes the queued message out first, then the new one.
    let r = c.run(
        &b,
        &[
            "send",
            &a_id,
            "after the space came back",
            "--timeout",
            "15",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    sent.push("after the space came back".into());
    got.extend(messages(&c.run(&a, &["listen", "--timeout", "3"]).events()));
    assert_eq!(got.len(), sent.len(), "every message arrives once");
    assert!(got == sent, "in order, nothing lost");
}

#[test]
fn locked_database_gives_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let holder = rusqlite::Connection::open(&db).unwrap();
    holder
        .execute_batch("CREATE TABLE t (x); BEGIN EXCLUSIVE; INSERT INTO t VALUES (1);")
        .unwrap();
    let (relay, _) = relay_with(dir.path(), &db, &[]);
    let out = relay.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err: Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .find(|l| l.starts_with(b"{\"error"))
            .unwrap(),
    )
    .unwrap();
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(msg.contains("locked"), "{msg}");
    holder.execute_batch("COMMIT").unwrap();
}

#[test]
fn corrupt_database_gives_a_clear_error_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("relay.db");
    let garbage = b"this is not a sqlite database, just bytes. ".repeat(200);
    std::fs::write(&db, &garbage).unwrap();
    let (relay, _) = relay_with(dir.path(), &db, &[]);
    let out = relay.wait_with_output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("not a database") && text.contains("move"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        garbage,
        "the file was not modified"
    );
}

/// Every log line of a full run (relay at debug level, clients at trace level, including
/// per-target directives for the libraries that log payloads) is free of plaintext, invite URLs
/// and tokens, key material and ciphertext.
#[test]
fn no_secret_reaches_any_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = RelayProcess::start(Path::new(BIN), dir.path());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let run = |home: &Path, args: &[&str]| {
        let out = Command::new(BIN)
            .arg("--home")
            .arg(home)
            .args(["--json", "--log-json"])
            .args(args)
            // Every level, and the per-target directives that used to outrank the cap on the
            // libraries that log whole frames (ciphertext) and tool arguments.
            .env(
                "TINCAN_LOG",
                "trace,tungstenite::protocol::frame=trace,tokio_tungstenite=trace,rmcp::service=trace",
            )
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let mut logs = String::new();
    let (o, e) = run(&a, &["setup"]);
    logs += &e;
    let a_id = serde_json::from_str::<Value>(&o).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    logs += &run(&b, &["setup"]).1;
    let (o, e) = run(&a, &["invite", "create", "--relay", &relay.url()]);
    logs += &e;
    let url = serde_json::from_str::<Value>(&o).unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    logs += &run(&b, &["invite", "accept", &url]).1;
    let secret = "the launch code is 0000";
    logs += &run(&b, &["send", &a_id, secret]).1;
    let (o, e) = run(&a, &["listen", "--timeout", "2"]);
    logs += &e;
    assert!(o.contains(secret), "the message did arrive");
    // One more that stays queued, so the relay holds a ciphertext to look for below.
    logs += &run(&b, &["send", &a_id, "left in the queue"]).1;
    relay.terminate();
    logs += &relay.log();
    assert!(
        logs.lines().count() > 10,
        "expected real log output, got:\n{logs}"
    );
    let token = url.split_once('#').unwrap().1;
    let mut forbidden: Vec<(String, &str)> = vec![
        (secret.into(), "plaintext"),
        (token.into(), "invite token"),
        (token[8..40].into(), "invite payload"),
    ];
    for home in [&a, &b] {
        let key = std::fs::read(home.join("identity.key")).unwrap();
        forbidden.push((hex(&key), "identity key (hex)"));
        forbidden.push((data_encoding::BASE64.encode(&key), "identity key (base64)"));
        forbidden.push((
            data_encoding::BASE64URL_NOPAD.encode(&key),
            "identity key (base64url)",
        ));
    }
    for (needle, what) in &forbidden {
        assert!(
            !logs.contains(needle.as_str()),
            "{what} found in a log line"
        );
    }
    // Ciphertext: the relay's stored bodies are not logged either.
    let db = rusqlite::Connection::open(dir.path().join("relay.db")).unwrap();
    let mut stmt = db.prepare("SELECT body FROM queue").unwrap();
    let mut checked = 0;
    for body in stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).unwrap() {
        let body = body.unwrap();
        checked += 1;
        for enc in [
            hex(&body[..32]),
            data_encoding::BASE64.encode(&body[..30]),
            data_encoding::BASE64URL_NOPAD.encode(&body[..30]),
        ] {
            let line = logs.lines().find(|l| l.contains(&enc));
            assert!(line.is_none(), "ciphertext found in a log line: {line:?}");
        }
    }
    assert!(checked > 0, "no stored ciphertext to look for");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
