//! The handlers shipped in `handlers/`: the OpenAI-compatible one against a local HTTP server
//! that checks each request, the CLI ones against stand-in `claude`, `codex` and `opencode`
//! binaries, and the clear failures when a key or a CLI is missing. Needs python3.

#![allow(clippy::unwrap_used)]

#[path = "support/running.rs"]
mod running;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;

use serde_json::{Value, json};

use running::script;

const PEER: &str = "vyvsdknncew2b3u4niu7tjc33yyqd6ocamopfv57jc3j45rsdteq";

fn handler(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../handlers")
        .join(name)
}

/// Runs a handler the way `serve` does: text on stdin, metadata in the environment.
fn run_handler(name: &str, text: &str, turn: u32, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("python3");
    cmd.arg(handler(name))
        .env("TINCAN_FROM", PEER)
        .env("TINCAN_FROM_NAME", "peer-agent")
        .env("TINCAN_MESSAGE_ID", "00112233445566778899aabbccddeeff")
        .env("TINCAN_TURN", turn.to_string())
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A one-thread HTTP server answering chat completions; sends each request (path, headers,
/// JSON body) to the test.
fn fake_api() -> (String, mpsc::Receiver<(String, Vec<String>, Value)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { break };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut headers = Vec::new();
            let mut len = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let line = line.trim_end().to_string();
                if line.is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                headers.push(line);
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let body: Value = serde_json::from_slice(&body).unwrap();
            let answer = json!({
                "id": "chatcmpl-1", "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("  reply number {}  ", n + 1)}, "finish_reason": "stop"}],
            })
            .to_string();
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            )
            .unwrap();
            let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
            if tx.send((path, headers, body)).is_err() {
                break;
            }
        }
    });
    (base, rx)
}

#[test]
fn openai_handler_sends_the_conversation_to_a_compatible_api() {
    let state = tempfile::tempdir().unwrap();
    let (base, requests) = fake_api();
    let env = [
        ("OPENAI_BASE_URL", base.as_str()),
        ("OPENAI_API_KEY", "sk-test-123"),
        ("TINCAN_MODEL", "test-model"),
        ("TINCAN_SYSTEM_PROMPT", "be brief"),
        ("TINCAN_HANDLER_STATE", state.path().to_str().unwrap()),
    ];
    let out = run_handler("openai", "hello, who are you?", 1, &env);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "reply number 1\n");
    let (path, headers, body) = requests.recv().unwrap();
    assert_eq!(path, "/v1/chat/completions");
    assert!(
        headers
            .iter()
            .any(|h| h == "Authorization: Bearer sk-test-123"),
        "{headers:?}"
    );
    assert!(
        headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case("content-type: application/json"))
    );
    assert_eq!(body["model"], "test-model");
    assert_eq!(
        body["messages"],
        json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello, who are you?"},
        ])
    );

    // The second turn carries the first exchange: per-peer history.
    let out = run_handler("openai", "and what can you do?", 3, &env);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "reply number 2\n");
    let (_, _, body) = requests.recv().unwrap();
    assert_eq!(
        body["messages"],
        json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello, who are you?"},
            {"role": "assistant", "content": "reply number 1"},
            {"role": "user", "content": "and what can you do?"},
        ])
    );
    assert!(state.path().join(format!("openai/{PEER}.json")).exists());
}

#[test]
fn openai_handler_without_key_or_model_says_what_to_set() {
    let state = tempfile::tempdir().unwrap();
    let st = state.path().to_str().unwrap();
    let out = run_handler(
        "openai",
        "hi",
        1,
        &[("TINCAN_MODEL", "m"), ("TINCAN_HANDLER_STATE", st)],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("OPENAI_API_KEY is not set"),
        "{out:?}"
    );
    assert!(out.stdout.is_empty());
    let out = run_handler(
        "openai",
        "hi",
        1,
        &[("OPENAI_API_KEY", "k"), ("TINCAN_HANDLER_STATE", st)],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TINCAN_MODEL is not set"),
        "{out:?}"
    );
    // A setting that is not a number is named, not a Python traceback.
    for var in [
        "TINCAN_TEMPERATURE",
        "TINCAN_MAX_TOKENS",
        "TINCAN_HTTP_TIMEOUT",
        "TINCAN_HISTORY_MESSAGES",
    ] {
        let out = run_handler(
            "openai",
            "hi",
            1,
            &[
                ("OPENAI_API_KEY", "k"),
                ("TINCAN_MODEL", "m"),
                ("TINCAN_HANDLER_STATE", st),
                (var, "abc"),
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}: {err}");
        assert!(
            err.contains(&format!("{var}='abc' is not a number")),
            "{var}: {err}"
        );
        assert!(!err.contains("Traceback"), "{var}: {err}");
    }
}

#[test]
fn cli_handlers_pipe_the_prompt_with_history_and_never_put_it_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    for (name, env_var) in [
        ("claude", "TINCAN_CLAUDE_BIN"),
        ("codex", "TINCAN_CODEX_BIN"),
        ("opencode", "TINCAN_OPENCODE_BIN"),
    ] {
        let fake = dir.path().join(format!("fake-{name}"));
        // Records argv and stdin; answers "NAME answer N". Codex's answer goes to the file
        // named after --output-last-message, as the real one does.
        script(
            &fake,
            &format!(
                r#"n=$(ls {dir} | grep -c "^{name}\.call.*argv$") ; n=$((n + 1))
printf '%s\n' "$@" > {dir}/{name}.call$n.argv
cat > {dir}/{name}.call$n.stdin
out=""
prev=""
for a in "$@"; do
  if [ "$prev" = "--output-last-message" ]; then out="$a"; fi
  prev="$a"
done
if [ -n "$out" ]; then echo "{name} answer $n" > "$out"; echo "progress noise"; else echo "{name} answer $n"; fi
"#,
                dir = dir.path().display(),
            ),
        );
        let state = dir.path().join(format!("state-{name}"));
        let env = [
            (env_var, fake.to_str().unwrap()),
            ("TINCAN_HANDLER_STATE", state.to_str().unwrap()),
        ];
        let out = run_handler(name, "first secret question", 1, &env);
        assert!(out.status.success(), "{name}: {out:?}");
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("{name} answer 1\n")
        );
        let out = run_handler(name, "second question", 3, &env);
        assert!(out.status.success(), "{name}: {out:?}");
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("{name} answer 2\n")
        );

        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        let argv = read(&format!("{name}.call1.argv"));
        assert!(
            !argv.contains("secret"),
            "{name} got the text on its command line: {argv}"
        );
        let prompt2 = read(&format!("{name}.call2.stdin"));
        assert!(
            prompt2.contains("first secret question"),
            "{name}: no history in {prompt2}"
        );
        assert!(
            prompt2.contains(&format!("{name} answer 1")),
            "{name}: no history in {prompt2}"
        );
        assert!(prompt2.contains("second question"));
        assert!(
            prompt2.contains("untrusted"),
            "{name}: the prompt warns about untrusted text"
        );
    }
}

#[test]
fn cli_handlers_without_their_cli_say_what_to_install() {
    let dir = tempfile::tempdir().unwrap();
    let path = format!("{}:/usr/bin:/bin", dir.path().display());
    for (name, hint) in [
        ("claude", "npm install -g @anthropic-ai/claude-code"),
        ("codex", "npm install -g @openai/codex"),
        ("opencode", "npm install -g opencode-ai"),
    ] {
        let python = which_python();
        let mut cmd = Command::new(python);
        cmd.arg(handler(name))
            .env("PATH", &path)
            .env("TINCAN_FROM", PEER)
            .env("TINCAN_HANDLER_STATE", dir.path())
            .env_remove("TINCAN_CLAUDE_BIN")
            .env_remove("TINCAN_CODEX_BIN")
            .env_remove("TINCAN_OPENCODE_BIN")
            .stdin(Stdio::null());
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("`{name}` is not on PATH")) && err.contains(hint),
            "{err}"
        );
    }
}

fn which_python() -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}
