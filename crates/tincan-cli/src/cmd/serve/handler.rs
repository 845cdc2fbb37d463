//! Running one handler: `sh -c CMD` in its own process group, the message on stdin, the reply
//! from stdout (capped), a deadline after which the whole group gets SIGTERM, then SIGKILL.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::reaper::Reaper;

/// How long a handler has between SIGTERM and SIGKILL.
pub(super) const GRACE: Duration = Duration::from_secs(2);
/// How much of a failed handler's stderr is reported.
const STDERR_TAIL: usize = 2048;

/// What a handler is given besides the text.
pub struct Job {
    /// `TINCAN_FROM`: the sender's id.
    pub from: String,
    /// `TINCAN_FROM_NAME`: the sender's alias, or empty.
    pub from_name: String,
    /// `TINCAN_MESSAGE_ID`.
    pub message_id: String,
    /// `TINCAN_TURN`: the message's turn in the conversation with this peer, from 1.
    pub turn: u64,
    /// The plaintext; goes to stdin only.
    pub text: String,
}

/// Limits for one run.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Wall-clock limit for the whole run.
    pub timeout: Duration,
    /// Most stdout bytes accepted.
    pub max_output: usize,
}

/// How a handler run ended.
#[derive(Debug)]
pub enum Outcome {
    /// Exit 0; the trimmed stdout (possibly empty).
    Reply(String),
    /// It failed; nothing is sent.
    Failed(Failure),
}

/// A failed run.
#[derive(Debug)]
pub struct Failure {
    /// Stable code: `exit`, `signal`, `timeout`, `output_too_large`, `bad_output`, `spawn_failed`.
    pub code: &'static str,
    /// What happened, for people.
    pub message: String,
    /// Exit code, if it exited.
    pub exit_code: Option<i32>,
    /// The end of its stderr.
    pub stderr: String,
}

impl Failure {
    fn new(code: &'static str, message: String) -> Self {
        Self {
            code,
            message,
            exit_code: None,
            stderr: String::new(),
        }
    }
}

/// The shell that runs handlers; PATH is searched only where it is not at its POSIX location.
static SH: std::sync::LazyLock<&'static str> = std::sync::LazyLock::new(|| {
    if std::path::Path::new("/bin/sh").exists() {
        "/bin/sh"
    } else {
        "sh"
    }
});

/// Process groups of running handlers, so a shutdown can stop them, and the reaper that stops
/// them if this process is killed instead (reaper.rs).
#[derive(Clone, Default)]
pub struct Groups(Arc<Mutex<Live>>);

#[derive(Default)]
struct Live {
    groups: HashSet<i32>,
    reaper: Option<Reaper>,
}

impl Groups {
    /// Groups that a reaper also hears of.
    pub fn with_reaper(reaper: Option<Reaper>) -> Self {
        Self(Arc::new(Mutex::new(Live {
            groups: HashSet::new(),
            reaper,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        // A set of integers and a pipe cannot be left half-updated by a panic.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, started: bool, pgid: i32) {
        let mut live = self.lock();
        if started {
            live.groups.insert(pgid);
        } else {
            live.groups.remove(&pgid);
        }
        if let Some(reaper) = live.reaper.as_ref()
            && reaper.tell(started, pgid).is_err()
        {
            // Its writer has stopped and said why.
            live.reaper = None;
        }
    }

    fn all(&self) -> Vec<Pid> {
        self.lock()
            .groups
            .iter()
            .map(|g| Pid::from_raw(*g))
            .collect()
    }
}

/// Metadata in the environment, pipes for stdin/stdout/stderr, and its own process group, so a
/// timeout reaches everything the handler started.
fn prepare<'a>(cmd: &'a mut Command, job: &Job) -> &'a mut Command {
    cmd.env("TINCAN_FROM", &job.from)
        .env("TINCAN_FROM_NAME", &job.from_name)
        .env("TINCAN_MESSAGE_ID", &job.message_id)
        .env("TINCAN_TURN", job.turn.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
}

/// Runs `command` for one message. Never panics and always reaps the process group.
pub async fn run(command: &str, job: Job, limits: Limits, groups: &Groups) -> Outcome {
    // `sh -c` semantics, with one or two process starts fewer where they allow it (shell.rs).
    let direct = super::shell::direct_argv(command).and_then(|argv| {
        let (program, args) = argv.split_first()?;
        // By the path `PATH` gave last time (argv[0] stays the name, as a shell passes it).
        let mut cmd = Command::new(super::shell::locate(program)?);
        cmd.arg0(program).args(args);
        let spawned = prepare(&mut cmd, &job).spawn();
        if spawned.is_err() {
            super::shell::forget(program);
        }
        spawned.ok()
    });
    let spawned = match direct {
        Some(child) => Ok(child),
        None => {
            // The POSIX shell by its fixed path: a bare `sh` makes the spawn try `execve` in
            // every PATH directory before the one that has it.
            let mut cmd = Command::new(*SH);
            cmd.arg("-c").arg(super::shell::script(command).as_ref());
            prepare(&mut cmd, &job).spawn()
        }
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Failed(Failure::new(
                "spawn_failed",
                format!("cannot start `sh -c`: {e}"),
            ));
        }
    };
    let pgid = child.id().and_then(|id| i32::try_from(id).ok());
    if let Some(g) = pgid {
        groups.update(true, g);
    }
    // Read on its own task, so what a handler said before a timeout is still reported.
    let stderr = tokio::spawn(read_tail(child.stderr.take(), STDERR_TAIL));
    let outcome = tokio::time::timeout(limits.timeout, drive(&mut child, job.text, limits)).await;
    let mut outcome = match outcome {
        Ok(o) => o,
        Err(_) => Outcome::Failed(Failure::new(
            "timeout",
            format!(
                "no answer within {}s; the handler was stopped",
                limits.timeout.as_secs_f64()
            ),
        )),
    };
    // Whatever happened, nothing the handler started outlives it.
    if let Some(g) = pgid {
        stop_group(Pid::from_raw(g), &mut child).await;
        groups.update(false, g);
    }
    // The group is gone, so its stderr is closed (a process that left the group and kept the
    // pipe gets a moment, not a wait).
    let stderr = tokio::time::timeout(Duration::from_secs(1), stderr).await;
    if let (Outcome::Failed(f), Ok(Ok(tail))) = (&mut outcome, stderr) {
        f.stderr = tail;
    }
    outcome
}

async fn drive(child: &mut Child, text: String, limits: Limits) -> Outcome {
    let stdin = child.stdin.take();
    // Written concurrently: a handler that does not read stdin must not block us.
    let writer = async move {
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(text.as_bytes()).await;
            let _ = stdin.shutdown().await;
        }
    };
    let stdout = child.stdout.take();
    let (_, out) = tokio::join!(writer, read_capped(stdout, limits.max_output));
    // (A failure's stderr is filled in by the caller, which reads it on its own task.)
    let Some(out) = out else {
        return Outcome::Failed(Failure::new(
            "output_too_large",
            format!(
                "the handler wrote more than {} bytes; it was stopped",
                limits.max_output
            ),
        ));
    };
    let status = match child.wait().await {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(Failure::new("spawn_failed", e.to_string())),
    };
    if !status.success() {
        use std::os::unix::process::ExitStatusExt;
        let (code, message) = match (status.code(), status.signal()) {
            (Some(c), _) => (
                "exit",
                format!(
                    "the handler exited with status {c}{}",
                    match c {
                        127 => " (command not found: check --on-message and PATH)",
                        126 => " (found but not executable: check its permissions)",
                        _ => "",
                    }
                ),
            ),
            (None, Some(s)) => ("signal", format!("the handler was killed by signal {s}")),
            _ => ("exit", "the handler failed".to_string()),
        };
        return Outcome::Failed(Failure {
            exit_code: status.code(),
            ..Failure::new(code, message)
        });
    }
    match String::from_utf8(out) {
        Ok(s) => Outcome::Reply(s.trim().to_string()),
        Err(_) => Outcome::Failed(Failure::new(
            "bad_output",
            "the handler's output is not UTF-8".into(),
        )),
    }
}

/// Reads all of `r`, or `None` once it passes `cap` bytes.
async fn read_capped(r: Option<impl AsyncRead + Unpin>, cap: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let Some(r) = r else { return Some(out) };
    let mut limited = r.take(cap as u64 + 1);
    if limited.read_to_end(&mut out).await.is_err() {
        return Some(out);
    }
    (out.len() <= cap).then_some(out)
}

/// Reads all of `r`, keeping the last `keep` bytes as lossy UTF-8.
async fn read_tail(r: Option<impl AsyncRead + Unpin>, keep: usize) -> String {
    let Some(mut r) = r else { return String::new() };
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > keep {
                    tail.drain(..tail.len() - keep);
                }
            }
        }
    }
    String::from_utf8_lossy(&tail).trim().to_string()
}

/// SIGTERM to the group, SIGKILL after the grace period, then reap.
async fn stop_group(pgid: Pid, child: &mut Child) {
    if killpg(pgid, None).is_err() {
        let _ = child.wait().await;
        return;
    }
    let _ = killpg(pgid, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + GRACE;
    while tokio::time::Instant::now() < deadline {
        if killpg(pgid, None).is_err() {
            let _ = child.wait().await;
            return;
        }
        // Reap the leader so it does not keep the group alive as a zombie.
        let _ = child.try_wait();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = killpg(pgid, Signal::SIGKILL);
    let _ = child.wait().await;
}

/// Stops every running handler (on shutdown): see [`stop_groups`].
pub async fn terminate_all(groups: &Groups) {
    stop_groups(groups.all(), GRACE).await;
}

/// SIGTERM to every group, then SIGKILL after `grace` to the groups still there (one found gone
/// is not signalled again: its id could be reused by then).
pub(super) async fn stop_groups(groups: Vec<Pid>, grace: Duration) {
    let mut left: Vec<Pid> = groups
        .into_iter()
        .filter(|g| killpg(*g, Signal::SIGTERM).is_ok())
        .collect();
    let deadline = tokio::time::Instant::now() + grace;
    while !left.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        left.retain(|g| killpg(*g, None).is_ok());
    }
    for g in &left {
        let _ = killpg(*g, Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn job(text: &str) -> Job {
        Job {
            from: "peer-id".into(),
            from_name: "alice".into(),
            message_id: "00ff".into(),
            turn: 3,
            text: text.into(),
        }
    }

    async fn go(command: &str, text: &str) -> Outcome {
        let limits = Limits {
            timeout: Duration::from_secs(10),
            max_output: 1 << 20,
        };
        run(command, job(text), limits, &Groups::default()).await
    }

    #[tokio::test]
    async fn what_a_handler_wrote_to_stderr_before_it_timed_out_is_reported() {
        let limits = Limits {
            timeout: Duration::from_millis(300),
            max_output: 1 << 20,
        };
        let out = run(
            "echo working-on-it >&2; exec sleep 30",
            job("x"),
            limits,
            &Groups::default(),
        )
        .await;
        let Outcome::Failed(f) = out else {
            panic!("a timeout is a failure")
        };
        assert_eq!(f.code, "timeout");
        assert_eq!(f.stderr, "working-on-it");
        // And as before for a handler that fails on its own.
        let Outcome::Failed(f) = go("echo bad-input >&2; exit 3", "x").await else {
            panic!("exit 3 is a failure")
        };
        assert_eq!(
            (f.code, f.exit_code, f.stderr.as_str()),
            ("exit", Some(3), "bad-input")
        );
    }

    #[tokio::test]
    async fn started_directly_or_through_the_shell_the_result_is_the_same() {
        let dir = tempfile::tempdir().unwrap();
        // A script without `#!`: a direct start fails (ENOEXEC); sh runs it, as `sh -c` would.
        let script = dir.path().join("no-shebang");
        std::fs::write(&script, "read line; echo \"$TINCAN_TURN:$line\"\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let path = script.to_str().unwrap();
        for (command, want) in [
            ("cat", "hello"),              // direct
            ("tr a-z A-Z", "HELLO"),       // direct, with arguments
            ("cat | tr a-z A-Z", "HELLO"), // through the shell
            (path, "3:hello"),             // direct start fails, shell fallback
        ] {
            match go(command, "hello\n").await {
                Outcome::Reply(r) => assert_eq!(r, want, "{command}"),
                other => panic!("{command}: {other:?}"),
            }
        }
        // A program remembered at a path where it no longer is: the start fails, the shell
        // finds it again, and the stale path is forgotten.
        let gone = dir.path().join("gone").join("head");
        super::super::shell::remember("head", &gone);
        match go("head -c 2", "hello").await {
            Outcome::Reply(r) => assert_eq!(r, "he"),
            other => panic!("head: {other:?}"),
        }
        assert_ne!(super::super::shell::locate("head"), Some(gone));
        // A program that does not exist fails the way `sh -c` reports it (exit 127).
        match go("no-such-program-tincan-test", "x").await {
            Outcome::Failed(f) => assert_eq!((f.code, f.exit_code), ("exit", Some(127)), "{f:?}"),
            other => panic!("{other:?}"),
        }
    }
}
