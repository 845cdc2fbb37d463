//! `tincan room open|status|stop` with real processes: a detached relay started by `room open`,
//! two `serve` processes holding a conversation through it, and a stand-in `cloudflared`.

#![allow(clippy::unwrap_used)]

#[path = "support/running.rs"]
mod running;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tincan_testkit::free_port;
use tincan_testkit::process::Cli;

use running::{Running, alive, script};

const WAIT: Duration = Duration::from_secs(30);

fn cli() -> Cli {
    Cli::new(env!("CARGO_BIN_EXE_tincan"))
}

fn texts(events: &[Value]) -> Vec<(u64, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["turn"].as_u64().unwrap(),
                e["text"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[test]
fn two_serve_processes_talk_ten_turns_through_a_room_then_status_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (host, guest) = (dir.path().join("host"), dir.path().join("guest"));
    // Deterministic: each side names itself and the turn its reply will be.
    script(
        &dir.path().join("agent.sh"),
        "text=$(cat)\necho \"$AGENT at turn $((TINCAN_TURN + 1)), answering: $text\" | cut -c1-60\n",
    );
    let handler = format!("sh {}", dir.path().join("agent.sh").display());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");

    // One command on the host: relay, identity, invite, serve.
    let mut h = Running::spawn(
        &host,
        &[
            "room",
            "open",
            "--listen",
            &listen,
            "--on-message",
            &handler,
            "--max-turns",
            "10",
        ],
        &[("AGENT", "host")],
        dir.path(),
    );
    let opened = h.wait_event("room_open", WAIT);
    let invite = opened["invite"].as_str().unwrap().to_string();
    assert!(
        invite.starts_with(&format!("http://127.0.0.1:{port}/invite#tincan2.")),
        "{opened}"
    );
    let handoff = opened["handoff"].as_str().unwrap();
    assert!(
        handoff.starts_with("tincan serve --join '") && handoff.contains(&invite),
        "{handoff}"
    );
    // The guest stops with the host: the same --max-turns is in the line.
    assert!(handoff.ends_with(" --max-turns 10"), "{handoff}");
    assert_eq!(opened["max_turns"], 10, "{opened}");
    let relay_pid = opened["relay_pid"].as_u64().unwrap() as u32;
    assert!(alive(relay_pid));
    assert!(host.join(format!("rooms/{port}/relay.pid")).exists());
    assert!(host.join(format!("rooms/{port}/relay.log")).exists());
    h.wait_event("serving", WAIT);

    // A second room on the same port is refused with a clear error.
    let r = cli().run(&host, &["room", "open", "--listen", &listen]);
    assert_eq!(
        (r.code, r.error_code().as_str()),
        (2, "port_in_use"),
        "{r:?}"
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("room stop")
    );

    // One command on the guest: join, seed, serve.
    let mut g = Running::spawn(
        &guest,
        &[
            "serve",
            "--join",
            &invite,
            "--on-message",
            &handler,
            "--seed",
            "hello host",
            "--max-turns",
            "10",
        ],
        &[("AGENT", "guest")],
        dir.path(),
    );
    assert!(
        g.wait_exit(WAIT).success(),
        "guest: {:#?}\n{}",
        g.seen,
        g.stderr()
    );
    assert!(
        h.wait_exit(WAIT).success(),
        "host: {:#?}\n{}",
        h.seen,
        h.stderr()
    );

    // Ten messages on the line: the seed, then five replies from the host, four from the guest.
    let said = |who: &str, turn: u64, answering: &str| {
        format!("{who} at turn {turn}, answering: {answering}")
            .chars()
            .take(60)
            .collect::<String>()
    };
    let host_replies = texts(&h.events("replied"));
    let guest_replies = texts(&g.events("replied"));
    assert_eq!(
        host_replies.iter().map(|r| r.0).collect::<Vec<_>>(),
        [2, 4, 6, 8, 10]
    );
    assert_eq!(
        guest_replies.iter().map(|r| r.0).collect::<Vec<_>>(),
        [3, 5, 7, 9]
    );
    assert_eq!(host_replies[0].1, said("host", 2, "hello host"));
    assert_eq!(guest_replies[0].1, said("guest", 3, &host_replies[0].1));
    // Each side received exactly what the other sent, in order.
    let host_got = texts(&h.events("received"));
    let guest_got = texts(&g.events("received"));
    assert_eq!(host_got[0], (1, "hello host".to_string()));
    assert_eq!(&host_got[1..], &guest_replies[..]);
    assert_eq!(guest_got, host_replies);
    for p in [&h, &g] {
        let done = &p.events("done")[0];
        assert_eq!(done["reason"], "max_turns");
        assert_eq!(done["turns"], 10);
        assert!(p.events("handler_error").is_empty());
    }

    // The relay outlives the serve loop, and the host was told so and how to close it.
    let left = &h.events("room_left_open")[0];
    assert_eq!(left["port"], port);
    assert!(
        left["stop"]
            .as_str()
            .unwrap()
            .ends_with(&format!("room stop --port {port}")),
        "{left}"
    );
    // Status shows it with its counts.
    let st = cli().run(&host, &["room", "status"]).json();
    let room = &st["rooms"][0];
    assert_eq!(room["port"], port);
    assert_eq!(room["running"], true);
    assert_eq!(room["serving"], false);
    assert_eq!(room["relay_pid"], relay_pid);
    assert_eq!(
        (room["received"].as_u64(), room["replied"].as_u64()),
        (Some(5), Some(5))
    );
    assert_eq!(room["peers"], 1);
    assert!(room["uptime_secs"].as_u64().is_some());

    // Stop: clean, no manual kill, nothing left.
    let r = cli().run(&host, &["room", "stop"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["stopped"][0]["clean"], true);
    assert!(!alive(relay_pid), "relay still running");
    assert!(!port_open(port));
    assert_eq!(
        cli().run(&host, &["room", "status"]).json()["rooms"],
        serde_json::json!([])
    );
    let r = cli().run(&host, &["room", "stop"]);
    assert_eq!((r.code, r.error_code().as_str()), (3, "no_room"), "{r:?}");
}

#[test]
fn tunnel_puts_the_url_cloudflared_prints_into_the_invite() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("host");
    let args_file = dir.path().join("cloudflared.args");
    // Prints its banner on stderr the way cloudflared does, then stays up like a tunnel.
    let fake = dir.path().join("cloudflared");
    script(
        &fake,
        &format!(
            r#"echo "$@" > {}
echo "2026-01-01T00:00:00Z INF Requesting new quick Tunnel on trycloudflare.com..." >&2
sleep 0.2
echo "2026-01-01T00:00:01Z INF +--------------------------------------------------------------------------------------------+" >&2
echo "2026-01-01T00:00:01Z INF |  Your quick Tunnel has been created! Visit it at (it may take some time to be reachable):  |" >&2
echo "2026-01-01T00:00:01Z INF |  https://quiet-river-lamp-tree.trycloudflare.com                                            |" >&2
echo "2026-01-01T00:00:01Z INF +--------------------------------------------------------------------------------------------+" >&2
sleep 300 &
wait
"#,
            args_file.display()
        ),
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut h = Running::spawn(
        &home,
        &["room", "open", "--listen", &listen, "--tunnel"],
        &[("TINCAN_CLOUDFLARED", fake.to_str().unwrap())],
        dir.path(),
    );
    assert!(h.wait_exit(WAIT).success(), "{:#?}\n{}", h.seen, h.stderr());
    let opened = h.events("room_open")[0].clone();
    assert_eq!(
        opened["public_url"],
        "https://quiet-river-lamp-tree.trycloudflare.com"
    );
    assert!(
        opened["invite"]
            .as_str()
            .unwrap()
            .starts_with("https://quiet-river-lamp-tree.trycloudflare.com/invite#tincan2."),
        "{opened}"
    );
    assert_eq!(
        std::fs::read_to_string(&args_file).unwrap().trim(),
        format!("tunnel --url http://127.0.0.1:{port}")
    );
    let tunnel_pid = opened["tunnel_pid"].as_u64().unwrap() as u32;
    let st = cli().run(&home, &["room", "status"]).json();
    assert_eq!(st["rooms"][0]["tunnel_running"], true, "{st}");

    let r = cli().run(&home, &["room", "stop", "--all"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!alive(tunnel_pid), "tunnel still running");
    assert!(!port_open(port));
}

#[test]
fn without_cloudflared_the_error_says_how_to_install_it_and_public_url_is_used_as_given() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("host");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let empty = dir.path().join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let mut h = Running::spawn(
        &home,
        &["room", "open", "--listen", &listen, "--tunnel"],
        &[("PATH", empty.to_str().unwrap())],
        dir.path(),
    );
    assert_eq!(h.wait_exit(WAIT).code(), Some(2));
    let err = &h.seen[0]["error"];
    assert_eq!(err["code"], "no_cloudflared");
    let msg = err["message"].as_str().unwrap();
    assert!(
        msg.contains("install") && msg.contains("--public-url"),
        "{msg}"
    );
    assert!(!port_open(port), "no relay may be left behind");

    // `room open --tunnel` with a stand-in cloudflared named `name` running `body`; it fails.
    let open_failing = |name: &str, body: &str| {
        let stand_in = dir.path().join(name);
        script(&stand_in, body);
        let mut h = Running::spawn(
            &home,
            &["room", "open", "--listen", &listen, "--tunnel"],
            &[("TINCAN_CLOUDFLARED", stand_in.to_str().unwrap())],
            dir.path(),
        );
        assert_ne!(h.wait_exit(WAIT).code(), Some(0));
        h
    };
    // A cloudflared that fails: the room is undone, down to its directory.
    let h = open_failing(
        "broken-cloudflared",
        "echo 'failed to connect' >&2\nexit 1\n",
    );
    assert_eq!(h.seen[0]["error"]["code"], "tunnel_failed", "{:?}", h.seen);
    assert!(!port_open(port), "no relay may be left behind");
    assert!(
        !home.join(format!("rooms/{port}")).exists(),
        "the failed room left its directory"
    );
    // One that fails without a word: the error gives its exit status and says it printed nothing.
    let h = open_failing("silent-cloudflared", "exit 3\n");
    let err = &h.seen[0]["error"];
    assert_eq!(err["code"], "tunnel_failed", "{:?}", h.seen);
    let msg = err["message"].as_str().unwrap();
    assert!(
        msg.contains("exited with status 3") && msg.ends_with("printed nothing"),
        "{msg}"
    );

    // One whose helper process lives on after it fails: the helper is stopped with it (its
    // process group), not left running.
    let helper_pid = dir.path().join("helper.pid");
    let h = open_failing(
        "forking-cloudflared",
        &format!("sleep 600 &\necho $! > {}\nexit 1\n", helper_pid.display()),
    );
    assert_eq!(h.seen[0]["error"]["code"], "tunnel_failed", "{:?}", h.seen);
    let pid: u32 = std::fs::read_to_string(&helper_pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !alive(pid),
        "cloudflared's helper {pid} outlived the failed room"
    );

    // Behind a reverse proxy: the invite carries the public URL.
    let r = cli().run(
        &home,
        &[
            "room",
            "open",
            "--listen",
            &listen,
            "--public-url",
            "https://relay.example.org/",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let invite = r.json()["invite"].as_str().unwrap().to_string();
    assert!(
        invite.starts_with("https://relay.example.org/invite#tincan2."),
        "{invite}"
    );
    assert!(port_open(port));
    assert_eq!(cli().run(&home, &["room", "stop"]).code, 0);
    assert!(!port_open(port));
    assert!(!Path::new(&home.join(format!("rooms/{port}/room.json"))).exists());
}

/// Runs `tincan --home HOME --json ARGS` with extra environment; returns its exit code and
/// output lines.
fn run_env(home: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, Vec<Value>) {
    let mut p = Running::spawn(home, args, env, home.parent().unwrap());
    let code = p.wait_exit(WAIT).code().unwrap_or(-1);
    (code, p.seen.clone())
}

#[test]
fn agents_talk_over_wss_to_a_relay_that_terminates_tls_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("the openssl CLI is needed to make a test certificate");
    assert!(status.success());
    let port = free_port();
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let mut relay = Running::spawn(
        &dir.path().join("relay"),
        &[
            "relay",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--db",
            dir.path().join("relay.db").to_str().unwrap(),
            "--tls-cert",
            cert_s,
            "--tls-key",
            key_s,
        ],
        &[],
        dir.path(),
    );
    let listening = relay.wait_event("listening", WAIT);
    assert_eq!(listening["url"], format!("https://127.0.0.1:{port}"));

    // The agents trust the test certificate through SSL_CERT_FILE, as with a private CA.
    let env = [("SSL_CERT_FILE", cert_s)];
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    assert_eq!(run_env(&a, &["setup"], &env).0, 0);
    assert_eq!(run_env(&b, &["setup"], &env).0, 0);
    let relay_url = format!("https://localhost:{port}");
    let (code, out) = run_env(&a, &["invite", "create", "--relay", &relay_url], &env);
    assert_eq!(code, 0, "{out:?}");
    let url = out[0]["url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&format!("{relay_url}/invite#")));
    let (code, out) = run_env(&b, &["invite", "accept", &url], &env);
    assert_eq!(code, 0, "{out:?}");
    let a_id = out[0]["peer"].as_str().unwrap().to_string();
    let (code, out) = run_env(&b, &["send", &a_id, "over tls"], &env);
    assert_eq!(code, 0, "{out:?}");
    let (code, out) = run_env(&a, &["listen", "--timeout", "3"], &env);
    assert_eq!(code, 0, "{out:?}");
    assert!(
        out.iter()
            .any(|e| e["event"] == "message" && e["text"] == "over tls"),
        "{out:?}"
    );

    // Without trusting the certificate, the client refuses the relay.
    let (code, out) = run_env(
        &b,
        &["send", &a_id, "untrusted", "--timeout", "2"],
        &[("SSL_CERT_FILE", "/nonexistent")],
    );
    assert_eq!(code, 5, "{out:?}");

    // The HTTP transport (`TINCAN_TRANSPORT=http`: token, POST, long-poll) over the same TLS,
    // with the same trust.
    let http = [("SSL_CERT_FILE", cert_s), ("TINCAN_TRANSPORT", "http")];
    let c = dir.path().join("c");
    assert_eq!(run_env(&c, &["setup"], &http).0, 0);
    let (code, out) = run_env(&a, &["invite", "create", "--relay", &relay_url], &env);
    assert_eq!(code, 0, "{out:?}");
    let url = out[0]["url"].as_str().unwrap().to_string();
    let (code, out) = run_env(&c, &["invite", "accept", &url], &http);
    assert_eq!(code, 0, "{out:?}");
    let (code, out) = run_env(&c, &["send", &a_id, "over https"], &http);
    assert_eq!(code, 0, "{out:?}");
    let (_, out) = run_env(&a, &["listen", "--timeout", "3"], &env);
    let c_id = out
        .iter()
        .find(|e| e["event"] == "peer_joined")
        .map(|e| e["peer"].as_str().unwrap().to_string())
        .expect("C's join");
    assert!(
        out.iter()
            .any(|e| e["event"] == "message" && e["text"] == "over https"),
        "{out:?}"
    );
    assert_eq!(run_env(&a, &["send", &c_id, "back"], &env).0, 0);
    let (_, out) = run_env(&c, &["listen", "--timeout", "3"], &http);
    assert!(
        out.iter()
            .any(|e| e["event"] == "message" && e["text"] == "back"),
        "{out:?}"
    );
    // It went over the HTTP API, not a WebSocket.
    let metrics = std::process::Command::new("curl")
        .args(["-sS", "--cacert", cert_s])
        .arg(format!("{relay_url}/metrics"))
        .output()
        .expect("curl");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    let requests: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tincan_http_requests_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(requests >= 4, "{metrics}");
    // A transport nobody knows is refused before anything starts.
    let (code, out) = run_env(
        &c,
        &["listen", "--timeout", "1"],
        &[("TINCAN_TRANSPORT", "carrier-pigeon")],
    );
    assert_eq!(code, 2, "{out:?}");
}

#[test]
fn two_rooms_of_one_home_serve_side_by_side_and_stop_together() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("host");
    let ports = [free_port(), free_port()];
    let mut rooms: Vec<Running> = ports
        .iter()
        .map(|port| {
            let listen = format!("127.0.0.1:{port}");
            Running::spawn(
                &home,
                &["room", "open", "--listen", &listen, "--on-message", "cat"],
                &[],
                dir.path(),
            )
        })
        .collect();
    // Each serves on its own relay: the home's receiving lock is per relay.
    for r in &mut rooms {
        r.wait_event("serving", WAIT);
    }
    // A guest joins the first room only: each room counts its own peers, not the home's.
    let guest = dir.path().join("guest");
    cli().setup(&guest);
    let invite = rooms[0].events("room_open")[0]["invite"]
        .as_str()
        .unwrap()
        .to_string();
    let r = cli().run(&guest, &["invite", "accept", &invite]);
    assert_eq!(r.code, 0, "{r:?}");
    rooms[0].wait_event("peer_joined", WAIT);
    let st = cli().run(&home, &["room", "status"]);
    let listed = st.json()["rooms"].clone();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{st:?}");
    let peers: Vec<(u64, u64)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["port"].as_u64().unwrap(), r["peers"].as_u64().unwrap()))
        .collect();
    assert!(peers.contains(&(u64::from(ports[0]), 1)), "{peers:?}");
    assert!(peers.contains(&(u64::from(ports[1]), 0)), "{peers:?}");
    let r = cli().run(&home, &["room", "stop", "--all"]);
    assert_eq!(r.code, 0, "{r:?}");
    for r in &mut rooms {
        assert!(r.wait_exit(WAIT).success());
        // Closed by `room stop`: nothing says the room is left open.
        assert!(r.events("room_left_open").is_empty(), "{:#?}", r.seen);
    }
}
