//! Real child processes: a relay that can be killed and restarted, and CLI runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A `tincan relay` child process on a fixed port and database.
pub struct RelayProcess {
    bin: PathBuf,
    /// Port it listens on.
    pub port: u16,
    /// Its database file.
    pub db: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    /// Further `relay` arguments (limits), kept for restarts.
    args: Vec<String>,
}

impl RelayProcess {
    /// Starts `bin relay` on a free port with its database in `dir`.
    pub fn start(bin: &Path, dir: &Path) -> Self {
        Self::start_with(bin, dir, &[])
    }

    /// [`RelayProcess::start`] with further `relay` arguments, e.g. `["--rate-per-identity", "1"]`.
    pub fn start_with(bin: &Path, dir: &Path, args: &[&str]) -> Self {
        let mut r = Self {
            bin: bin.to_path_buf(),
            port: crate::free_port(),
            db: dir.join("relay.db"),
            child: None,
            log: dir.join("relay.log"),
            args: args.iter().map(ToString::to_string).collect(),
        };
        r.spawn();
        r
    }

    /// The relay's URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("relay log");
        let child = Command::new(&self.bin)
            .args([
                "--log-json",
                "relay",
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--db",
            ])
            .arg(&self.db)
            .args(&self.args)
            .env("TINCAN_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn relay");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("relay did not start listening on port {}", self.port);
    }

    /// SIGKILLs the relay: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs the relay and returns its exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    /// Starts it again on the same port and database.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Everything the relay logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs the CLI with a home.
pub struct Cli {
    /// The `tincan` binary.
    pub bin: PathBuf,
}

/// The result of one CLI run.
#[derive(Debug)]
pub struct Run {
    /// Exit code.
    pub code: i32,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
}

impl Run {
    /// stdout parsed as one JSON value (the first line).
    pub fn json(&self) -> Value {
        let line = self.stdout.lines().next().unwrap_or("");
        serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?} / stderr {:?}",
                self.stdout, self.stderr
            )
        })
    }

    /// Every stdout line parsed as JSON.
    pub fn events(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("NDJSON line"))
            .collect()
    }

    /// The error code of a JSON error.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

impl Cli {
    /// A runner for `bin`.
    pub fn new(bin: &str) -> Self {
        Self {
            bin: PathBuf::from(bin),
        }
    }

    /// Runs `tincan --home HOME --json ARGS...`.
    pub fn run(&self, home: &Path, args: &[&str]) -> Run {
        self.run_stdin(home, args, None)
    }

    /// Like [`Cli::run`] with `stdin` piped in.
    pub fn run_stdin(&self, home: &Path, args: &[&str], stdin: Option<&str>) -> Run {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--home").arg(home).arg("--json").args(args);
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn tincan");
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write stdin");
        } else {
            drop(child.stdin.take());
        }
        let Output {
            status,
            stdout,
            stderr,
        } = child.wait_with_output().expect("wait tincan");
        Run {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    /// `setup` and return the id.
    pub fn setup(&self, home: &Path) -> String {
        let r = self.run(home, &["setup"]);
        assert_eq!(r.code, 0, "setup failed: {r:?}");
        r.json()["id"].as_str().expect("id").to_string()
    }

    /// Pairs `b` with `a` through an invite on `relay`; returns the invite URL.
    pub fn pair(&self, a: &Path, b: &Path, relay: &str) -> String {
        let r = self.run(a, &["invite", "create", "--relay", relay]);
        assert_eq!(r.code, 0, "invite create failed: {r:?}");
        let url = r.json()["url"].as_str().expect("url").to_string();
        let r = self.run(b, &["invite", "accept", &url]);
        assert_eq!(r.code, 0, "invite accept failed: {r:?}");
        url
    }
}
