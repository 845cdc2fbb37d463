//! SIGTERM and SIGINT for the long-running commands, caught from the moment they are set up.
//!
//! tokio installs a signal's handler when a listener for it is made. A listener made inside an
//! `async fn` exists only once that future is first polled, so a signal sent right after a
//! command had announced itself (`serving`, `listening`) met the default action and killed the
//! process without its graceful shutdown. [`Shutdown::install`] makes both listeners at once,
//! before the command says it is ready.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Listeners for SIGTERM and SIGINT, installed by [`Shutdown::install`].
pub struct Shutdown {
    term: Option<Signal>,
    int: Option<Signal>,
}

impl Shutdown {
    /// Installs both handlers now. Must run inside the tokio runtime.
    pub fn install() -> Self {
        Self {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// Resolves on the first SIGTERM or SIGINT since [`Shutdown::install`] (one sent before
    /// this is awaited included).
    pub async fn wait(mut self) {
        self.recv().await;
    }

    /// Like [`Shutdown::wait`], for a loop that selects on it again after other work.
    pub async fn recv(&mut self) {
        let Self { term, int } = self;
        tokio::select! {
            _ = next(term) => {}
            _ = next(int) => {}
        }
    }
}

/// The next delivery of `s`; never, without a listener.
async fn next(s: &mut Option<Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_signal_sent_before_anyone_waits_is_still_seen() {
        let shutdown = Shutdown::install();
        // Raised at once, before `wait` is first polled: with a lazily made listener this
        // SIGTERM would take the default action and end the test process.
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        tokio::time::timeout(std::time::Duration::from_secs(5), shutdown.wait())
            .await
            .expect("the SIGTERM sent before waiting resolves the wait");
    }
}
