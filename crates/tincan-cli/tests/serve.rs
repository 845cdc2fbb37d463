//! `tincan serve` with real processes: a relay child process, a `serve` child process running
//! shell-script handlers, and peers driven by the `tincan` binary.

#![allow(clippy::unwrap_used)]

#[path = "support/running.rs"]
mod running;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tincan_testkit::process::{Cli, RelayProcess};

use running::{Running, alive, script};

const WAIT: Duration = Duration::from_secs(20);

fn cli() -> Cli {
    Cli::new(env!("CARGO_BIN_EXE_tincan"))
}

/// A relay and two paired homes: `a` serves, `b` talks to it.
struct World {
    dir: tempfile::TempDir,
    _relay: RelayProcess,
    a_id: String,
    b_id: String,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let relay = RelayProcess::start(Path::new(env!("CARGO_BIN_EXE_tincan")), dir.path());
        let c = cli();
        let a_id = c.setup(&dir.path().join("a"));
        let b_id = c.setup(&dir.path().join("b"));
        c.pair(&dir.path().join("a"), &dir.path().join("b"), &relay.url());
        Self {
            dir,
            _relay: relay,
            a_id,
            b_id,
        }
    }

    fn path(&self, p: &str) -> std::path::PathBuf {
        self.dir.path().join(p)
    }

    fn send_from_b(&self, text: &str) -> String {
        let r = cli().run(&self.path("b"), &["send", &self.a_id, text]);
        assert_eq!(r.code, 0, "{r:?}");
        r.json()["id"].as_str().unwrap().to_string()
    }

    fn serve_a(&self, handler: &str, extra: &[&str]) -> Running {
        let mut args = vec!["serve", "--on-message", handler];
        args.extend_from_slice(extra);
        let mut s = Running::spawn(&self.path("a"), &args, &[], self.dir.path());
        s.wait_event("serving", WAIT);
        s
    }
}

/// The texts of the `message` events a `listen --json` run printed.
fn message_texts(r: &tincan_testkit::process::Run) -> Vec<String> {
    r.events()
        .into_iter()
        .filter(|e| e["event"] == "message")
        .map(|e| e["text"].as_str().unwrap().to_string())
        .collect()
}

fn ids(events: &[Value], field: &str) -> Vec<String> {
    events
        .iter()
        .map(|e| e[field].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn handler_gets_text_on_stdin_metadata_in_env_and_its_stdout_is_the_reply() {
    let w = World::new();
    script(
        &w.path("echo.sh"),
        r#"text=$(cat)
case "$text" in
  silent) exit 0 ;;
esac
# The text must reach the handler on stdin only: not in its environment, not in its argv.
if env | grep -q -- "$text"; then echo "LEAK: text in env"; exit 0; fi
if tr '\0' ' ' < /proc/$$/cmdline | grep -q -- "$text"; then echo "LEAK: text in argv"; exit 0; fi
printf '  echo:%s|%s|%s|%s|%s  \n\n' "$text" "$TINCAN_FROM" "$TINCAN_FROM_NAME" "$TINCAN_TURN" "$TINCAN_MESSAGE_ID"
"#,
    );
    let mut s = w.serve_a(&format!("sh {}", w.path("echo.sh").display()), &[]);
    // A learns of B when the join arrives; then it can name it.
    assert_eq!(s.wait_event("peer_joined", WAIT)["peer"], w.b_id.as_str());
    let r = cli().run(&w.path("a"), &["peers", "alias", &w.b_id, "bob"]);
    assert_eq!(r.code, 0, "{r:?}");
    let first = w.send_from_b("secret-plaintext-7f3a");
    let silent = w.send_from_b("silent");
    let replied = s.wait_event("replied", WAIT);
    assert_eq!(
        replied["text"],
        format!("echo:secret-plaintext-7f3a|{}|bob|1|{first}", w.b_id),
        "trimmed stdout is the reply, metadata came through the environment"
    );
    assert_eq!(replied["in_reply_to"], first.as_str());
    assert_eq!(replied["turn"], 2);
    let no_reply = s.wait_event("no_reply", WAIT);
    assert_eq!(no_reply["id"], silent.as_str());
    assert_eq!(no_reply["reason"], "empty");
    let received = s.events("received");
    assert_eq!(received[0]["from"], w.b_id.as_str());
    assert_eq!(received[0]["text"], "secret-plaintext-7f3a");

    // B gets exactly the one reply.
    let r = cli().run(&w.path("b"), &["listen", "--timeout", "2"]);
    let texts = message_texts(&r);
    assert_eq!(texts.len(), 1, "{r:?}");
    assert!(texts[0].starts_with("echo:secret-plaintext-7f3a|"));

    // SIGTERM ends it cleanly with a `done` event.
    s.terminate();
    assert!(s.wait_exit(WAIT).success());
    assert_eq!(s.events("done")[0]["reason"], "signal");
}

#[test]
fn hung_crashing_and_flooding_handlers_are_reported_and_the_loop_goes_on() {
    let w = World::new();
    let hang_pid = w.path("hang.pid");
    script(
        &w.path("h.sh"),
        &format!(
            r#"text=$(cat)
case "$text" in
  hang) sleep 300 & echo $! > {}; wait ;;
  crash) echo "boom: something broke" >&2; exit 3 ;;
  flood) yes flood-flood-flood ;;
  *) echo "ok:$text" ;;
esac
"#,
            hang_pid.display()
        ),
    );
    let mut s = w.serve_a(
        &format!("sh {}", w.path("h.sh").display()),
        &["--handler-timeout", "1", "--max-output", "4096"],
    );
    let hang = w.send_from_b("hang");
    let crash = w.send_from_b("crash");
    let flood = w.send_from_b("flood");
    let fine = w.send_from_b("still here");

    let replied = s.wait_event("replied", WAIT);
    assert_eq!(replied["text"], "ok:still here");
    assert_eq!(replied["in_reply_to"], fine.as_str());
    let errors = s.events("handler_error");
    assert_eq!(
        ids(&errors, "id"),
        [hang.clone(), crash, flood],
        "in order, one each"
    );
    assert_eq!(errors[0]["code"], "timeout");
    assert_eq!(errors[1]["code"], "exit");
    assert_eq!(errors[1]["exit_code"], 3);
    assert!(
        errors[1]["stderr"]
            .as_str()
            .unwrap()
            .contains("boom: something broke")
    );
    assert_eq!(errors[2]["code"], "output_too_large");
    // The timeout took the whole process group down, not just `sh`.
    let pid: u32 = std::fs::read_to_string(&hang_pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        !alive(pid),
        "the handler's child {pid} outlived the timeout"
    );

    s.terminate();
    assert!(s.wait_exit(WAIT).success());
}

#[test]
fn a_message_flood_is_rate_limited_queued_and_every_message_is_accounted_for() {
    let w = World::new();
    let sent: Vec<String> = (0..16)
        .map(|i| w.send_from_b(&format!("m{i:02}")))
        .collect();
    let mut s = w.serve_a(
        "cat",
        &["--rate", "600", "--burst", "2", "--queue-cap", "6"],
    );
    // Every message is received once, then either answered or reported as dropped.
    let deadline = Instant::now() + WAIT;
    loop {
        s.poll();
        if s.events("replied").len() + s.events("dropped").len() >= sent.len() {
            break;
        }
        assert!(Instant::now() < deadline, "not settled: {:#?}", s.seen);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        ids(&s.events("received"), "id"),
        sent,
        "received once each, in order"
    );
    let replied = ids(&s.events("replied"), "in_reply_to");
    let dropped = ids(&s.events("dropped"), "id");
    assert!(
        !dropped.is_empty(),
        "a queue of 6 cannot hold a burst of 16"
    );
    assert!(
        !s.events("deferred").is_empty(),
        "the rate limit deferred some"
    );
    let all: HashSet<_> = replied.iter().chain(&dropped).cloned().collect();
    assert_eq!(
        all.len(),
        sent.len(),
        "each message answered or dropped, never both"
    );
    assert_eq!(all, sent.iter().cloned().collect::<HashSet<_>>());
    let in_order: Vec<_> = sent
        .iter()
        .filter(|id| replied.contains(id))
        .cloned()
        .collect();
    assert_eq!(
        replied, in_order,
        "one peer's messages are handled in order"
    );
    for e in s.events("dropped") {
        assert_eq!(e["reason"], "queue_full");
    }
    // Still serving.
    let late = w.send_from_b("after the flood");
    let r = s.wait_for(WAIT, "reply to the late message", |e| {
        e["event"] == "replied" && e["in_reply_to"] == late.as_str()
    });
    assert_eq!(r["text"], "after the flood");
    s.terminate();
    assert!(s.wait_exit(WAIT).success());
}

#[test]
fn seed_needs_a_peer_and_serve_needs_an_identity() {
    let dir = tempfile::tempdir().unwrap();
    let c = cli();
    let r = c.run(&dir.path().join("x"), &["serve", "--on-message", "cat"]);
    assert_eq!(
        (r.code, r.error_code().as_str()),
        (3, "no_identity"),
        "{r:?}"
    );
    c.setup(&dir.path().join("x"));
    let r = c.run(
        &dir.path().join("x"),
        &["serve", "--on-message", "cat", "--seed", "hi"],
    );
    assert_eq!((r.code, r.error_code().as_str()), (2, "usage"), "{r:?}");
    // Flags that would make serve useless are refused before it starts.
    for bad in [
        &["serve", "--on-message", " "][..],
        &["serve", "--on-message", "cat", "--to", "someone"],
        &["serve", "--on-message", "cat", "--max-output", "0"],
        &["serve", "--on-message", "cat", "--max-output", "1000000"],
        &["room", "open", "--on-message", ""],
    ] {
        let r = c.run(&dir.path().join("x"), bad);
        assert_eq!(
            (r.code, r.error_code().as_str()),
            (2, "usage"),
            "{bad:?}: {r:?}"
        );
    }
}

#[test]
fn shutdown_stops_running_handlers_and_lists_what_was_not_answered() {
    let w = World::new();
    let pid_file = w.path("slow.pid");
    script(
        &w.path("slow.sh"),
        &format!(
            "cat > /dev/null\nsleep 60 & echo $! > {}\nwait\n",
            pid_file.display()
        ),
    );
    let mut s = w.serve_a(&format!("sh {}", w.path("slow.sh").display()), &[]);
    let first = w.send_from_b("one");
    let second = w.send_from_b("two");
    s.wait_for(WAIT, "both received", |e| {
        e["event"] == "received" && e["id"] == second.as_str()
    });
    let deadline = Instant::now() + WAIT;
    while !pid_file.exists() {
        assert!(Instant::now() < deadline, "handler never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    s.terminate();
    assert!(s.wait_exit(WAIT).success());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "shutdown waited for the handler"
    );
    let done = &s.events("done")[0];
    assert_eq!(done["reason"], "signal");
    assert_eq!(done["unhandled"], serde_json::json!([first, second]));
    assert_eq!(done["given_back"], 2);
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!alive(pid), "the handler's child outlived serve");
    // Not answered, so given back: the next reader of the home gets both, in order.
    let r = cli().run(&w.path("a"), &["listen", "--timeout", "2"]);
    let texts = message_texts(&r);
    assert_eq!(texts, ["one", "two"], "{r:?}");
}

#[test]
fn serve_on_a_home_that_cannot_store_stops_with_home_unusable_and_loses_nothing() {
    let w = World::new();
    // A's inbox pages overwritten in place; identity and peers stay readable.
    let db = w.path("a").join("tincan.db");
    let backup = tincan_testkit::corrupt_table(&db, "inbox");
    w.send_from_b("kept at the relay");
    let mut s = Running::spawn(
        &w.path("a"),
        &["serve", "--on-message", "cat"],
        &[],
        w.dir.path(),
    );
    let status = s.wait_exit(WAIT);
    assert_eq!(status.code(), Some(3), "{:#?}", s.seen);
    let last = s.seen.last().cloned().unwrap();
    assert_eq!(last["error"]["code"], "home_unusable", "{:#?}", s.seen);
    assert!(
        s.events("replied").is_empty(),
        "nothing could be handled: {:#?}",
        s.seen
    );
    // Nothing was acked: with the database restored, the message is still there to read.
    std::fs::write(&db, &backup).unwrap();
    let r = cli().run(&w.path("a"), &["listen", "--timeout", "2"]);
    assert_eq!(message_texts(&r), ["kept at the relay"], "{r:?}");
}

#[test]
fn a_killed_serve_leaves_what_it_had_not_handled_to_the_next_one_and_answers_each_once() {
    let w = World::new();
    // The first serve's handler never finishes: every message it takes is still unhandled
    // when it is SIGKILLed (no shutdown, no give-back).
    let mut s = w.serve_a("cat > /dev/null; sleep 60", &[]);
    let sent: Vec<String> = ["a1", "a2", "a3"]
        .iter()
        .map(|t| w.send_from_b(t))
        .collect();
    let last = sent[2].clone();
    s.wait_for(WAIT, "all received", |e| {
        e["event"] == "received" && e["id"] == last.as_str()
    });
    // Let any mark that could be written be written.
    std::thread::sleep(Duration::from_millis(300));
    s.kill();

    // The next serve handles all three, in order, and answers each once.
    let mut s = w.serve_a("cat", &[]);
    let deadline = Instant::now() + WAIT;
    while s.events("replied").len() < 3 {
        assert!(Instant::now() < deadline, "{:#?}", s.seen);
        std::thread::sleep(Duration::from_millis(50));
        s.poll();
    }
    let handled: Vec<String> = s
        .events("replied")
        .iter()
        .map(|e| e["in_reply_to"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(handled, sent, "{:#?}", s.seen);
    // B gets exactly the three replies.
    let r = cli().run(&w.path("b"), &["listen", "--timeout", "2"]);
    assert_eq!(message_texts(&r), ["a1", "a2", "a3"], "{r:?}");
    // Handled now: a third serve has nothing to do.
    s.terminate();
    assert!(s.wait_exit(WAIT).success());
    let mut s = w.serve_a("cat", &[]);
    std::thread::sleep(Duration::from_millis(500));
    s.poll();
    assert!(s.events("received").is_empty(), "{:#?}", s.seen);
}

#[test]
fn a_sigkilled_serve_takes_its_running_handler_with_it() {
    let w = World::new();
    let pidfile = w.path("handler.pid");
    // A handler that would run for a minute: in a real room, an agent still acting on a message
    // nobody will answer.
    let command = format!("echo $$ > {}; exec sleep 60", pidfile.display());
    let mut s = w.serve_a(&command, &[]);
    w.send_from_b("start something long");
    let deadline = Instant::now() + WAIT;
    let pid = loop {
        if let Ok(text) = std::fs::read_to_string(&pidfile)
            && let Ok(pid) = text.trim().parse::<u32>()
        {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "the handler never started: {:#?}",
            s.seen
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(alive(pid));
    let reaper = reaper_of(s.pid());
    s.kill(); // SIGKILL: serve stops nothing itself
    // Its reaper sees the pipe close and stops the handler's group (SIGTERM, 2 s grace).
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "handler {pid} outlived its SIGKILLed serve"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its work done, the reaper is gone too; and a serve that exits cleanly leaves none behind.
    wait_gone(reaper);
    let mut s = w.serve_a("cat", &[]);
    s.wait_event("serving", WAIT);
    let reaper = reaper_of(s.pid());
    s.terminate();
    assert!(s.wait_exit(WAIT).success());
    wait_gone(reaper);
}

/// The pid of `serve`'s reaper (its `tincan __reap` child).
fn reaper_of(serve: u32) -> u32 {
    let deadline = Instant::now() + WAIT;
    loop {
        let children = std::fs::read_to_string(format!("/proc/{serve}/task/{serve}/children"))
            .unwrap_or_default();
        let reaper = children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
            .find(|c| {
                std::fs::read(format!("/proc/{c}/cmdline"))
                    .is_ok_and(|cmd| cmd.split(|b| *b == 0).any(|arg| arg == b"__reap"))
            });
        if let Some(r) = reaper {
            return r;
        }
        assert!(Instant::now() < deadline, "serve {serve} has no reaper");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_gone(pid: u32) {
    let deadline = Instant::now() + WAIT;
    while alive(pid) {
        assert!(Instant::now() < deadline, "reaper {pid} is still running");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_blocked_peers_message_is_reported_as_withheld_and_never_reaches_the_handler() {
    let w = World::new();
    let ran = w.path("ran");
    let mut s = w.serve_a(&format!("cat >> {}; echo ok", ran.display()), &[]);
    assert_eq!(s.wait_event("peer_joined", WAIT)["peer"], w.b_id.as_str());
    let r = cli().run(&w.path("a"), &["peers", "block", &w.b_id]);
    assert_eq!(r.code, 0, "{r:?}");
    let held = w.send_from_b("blocked-text-91c2");
    let e = s.wait_event("withheld", WAIT);
    assert_eq!(e["id"], held.as_str());
    assert_eq!(e["from"], w.b_id.as_str());
    assert_eq!(e["reason"], "peer is blocked");
    assert!(e.get("text").is_none(), "{e}");

    // Unblocked, the next message is handled as usual; the withheld one stays withheld.
    cli().run(&w.path("a"), &["peers", "unblock", &w.b_id]);
    let next = w.send_from_b("after-unblock");
    assert_eq!(s.wait_event("replied", WAIT)["in_reply_to"], next.as_str());
    s.terminate();
    assert!(s.wait_exit(WAIT).success());
    let done = &s.events("done")[0];
    assert_eq!(done["withheld"], 1, "{done}");
    assert_eq!(done["received"], 1, "{done}");
    assert!(
        s.events("received")
            .iter()
            .all(|e| e["id"] != held.as_str())
    );
    let seen = std::fs::read_to_string(&ran).unwrap();
    assert_eq!(
        seen, "after-unblock",
        "the handler saw only the allowed message"
    );
}

#[test]
fn idle_timeout_ends_a_conversation_whose_other_side_went_quiet() {
    let w = World::new();
    let started = Instant::now();
    let mut s = w.serve_a("cat", &["--idle-timeout", "2"]);
    let id = w.send_from_b("one message, then silence");
    assert_eq!(s.wait_event("replied", WAIT)["in_reply_to"], id.as_str());
    assert!(s.wait_exit(WAIT).success(), "{:#?}", s.seen);
    let done = &s.events("done")[0];
    assert_eq!(done["reason"], "idle", "{done}");
    assert_eq!(done["replied"], 1, "{done}");
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[test]
fn a_handler_that_does_not_exist_is_reported_as_not_found() {
    let w = World::new();
    // A plain command is checked at start: it would fail on every message.
    for (handler, says) in [
        ("tincan-no-such-handler-7f3a", "not found on PATH"),
        ("./no/such/handler.sh --x", "does not exist"),
    ] {
        let r = cli().run(&w.path("a"), &["serve", "--on-message", handler]);
        assert_eq!((r.code, r.error_code().as_str()), (2, "usage"), "{r:?}");
        assert!(r.stdout.contains(says), "{r:?}");
    }
    // With shell syntax it is the shell's to judge when it runs: reported per message.
    let mut s = w.serve_a("tincan-no-such-handler-7f3a \"$TINCAN_TURN\"", &[]);
    let id = w.send_from_b("anyone there?");
    let err = s.wait_event("handler_error", WAIT);
    assert_eq!(err["id"], id.as_str());
    assert_eq!(
        (err["code"].as_str(), err["exit_code"].as_i64()),
        (Some("exit"), Some(127))
    );
    let message = err["message"].as_str().unwrap();
    assert!(message.contains("command not found"), "{err}");
    s.terminate();
    assert!(s.wait_exit(WAIT).success());
}

#[test]
fn a_stop_sent_the_moment_serve_says_serving_gets_the_clean_shutdown() {
    let w = World::new();
    // The signal handlers exist before `serving` is printed, so however soon the stop comes,
    // serve ends through its shutdown (a `done` event, exit 0), never by the default action.
    for round in 0..10 {
        let mut s = w.serve_a("cat", &[]);
        s.wait_event("serving", WAIT);
        s.terminate();
        let status = s.wait_exit(WAIT);
        s.poll();
        assert!(
            status.success(),
            "round {round}: {status:?}; stderr: {}",
            s.stderr()
        );
        let done = s.events("done");
        assert_eq!(done.len(), 1, "round {round}: {:#?}", s.seen);
        assert_eq!(done[0]["reason"], "signal", "round {round}");
    }
}
