//! A long-running `tincan --json` child process (serve, room open) whose NDJSON events are read
//! on a thread as they come.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Running {
    child: Child,
    rx: mpsc::Receiver<Value>,
    /// Every event read so far.
    pub seen: Vec<Value>,
    stderr: std::path::PathBuf,
}

impl Running {
    /// Starts `tincan --home HOME --json ARGS` with extra environment, in `cwd`.
    pub fn spawn(home: &Path, args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Self {
        let stderr = home.with_extension(format!("{}.stderr", std::process::id()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tincan"));
        cmd.arg("--home")
            .arg(home)
            .arg("--json")
            .args(args)
            .current_dir(cwd);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "raw": line }));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            rx,
            seen: Vec::new(),
            stderr,
        }
    }

    /// Waits for an event matching `pred`, failing the test after `timeout`.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "no {what} within {timeout:?}; events: {:#?}\nstderr: {}",
                    self.seen,
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                ),
            }
        }
    }

    /// Waits for the event named `name`.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Value {
        self.wait_for(timeout, name, |v| v["event"] == name)
    }

    /// Waits for the process to exit, reading what it printed; returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                while let Ok(v) = self.rx.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(v);
                }
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {timeout:?}: {:#?}",
                self.seen
            );
            while let Ok(v) = self.rx.try_recv() {
                self.seen.push(v);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every event named `name` seen so far.
    pub fn events(&self, name: &str) -> Vec<Value> {
        self.seen
            .iter()
            .filter(|v| v["event"] == name)
            .cloned()
            .collect()
    }

    /// Drains events that arrived since the last look.
    pub fn poll(&mut self) {
        while let Ok(v) = self.rx.try_recv() {
            self.seen.push(v);
        }
    }

    /// SIGTERM, as Ctrl-C or a service manager would.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// SIGKILL, as a crash or the OOM killer would: no cleanup at all.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a process is alive (and not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Writes an executable shell script.
pub fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
