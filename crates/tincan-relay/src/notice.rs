//! Log lines for refusals (connections turned away, rate limits, failed authentications), at most
//! one per kind per [`PERIOD_MS`], each saying how many like it were not logged since: the operator
//! learns what is being refused and how often, and a flood cannot flood the log.

use std::sync::atomic::{AtomicU64, Ordering};

/// At most one line per kind this often.
pub(crate) const PERIOD_MS: u64 = 10_000;

/// One kind of refusal.
#[derive(Default)]
pub(crate) struct Notice {
    /// When the last line was logged (unix ms; 0: never).
    last_ms: AtomicU64,
    /// Refusals since then that were not logged.
    quiet: AtomicU64,
}

impl Notice {
    /// Whether to log this refusal now; if so, how many went unlogged before it.
    pub(crate) fn due(&self, now_ms: u64) -> Option<u64> {
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != 0 && now_ms.saturating_sub(last) < PERIOD_MS {
            self.quiet.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        // One caller wins the slot; the others count as unlogged.
        match self.last_ms.compare_exchange(
            last,
            now_ms.max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => Some(self.quiet.swap(0, Ordering::Relaxed)),
            Err(_) => {
                self.quiet.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// Logs a failed authentication (rate limited): where from and why, never the token or signature.
pub(crate) fn auth_failed(notices: &Notices, from: std::net::IpAddr, why: &str) {
    if let Some(unlogged) = notices.auth.due(crate::now_ms()) {
        tracing::warn!(ip = %from, reason = why, unlogged, "authentication failed; unlogged = failures since the last such line");
    }
}

/// The kinds the relay logs this way.
#[derive(Default)]
pub(crate) struct Notices {
    /// A WebSocket upgrade over `max_connections` or `max_connections_per_ip`.
    pub connections: Notice,
    /// A request over `rate_per_ip`.
    pub ip_rate: Notice,
    /// A failed authentication (challenge signature or token).
    pub auth: Notice,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_and_the_next_one_counts_the_ones_left_out() {
        let n = Notice::default();
        assert_eq!(n.due(1_000), Some(0));
        assert_eq!(n.due(1_001), None);
        assert_eq!(n.due(1_000 + PERIOD_MS - 1), None);
        assert_eq!(n.due(1_000 + PERIOD_MS), Some(2));
        assert_eq!(n.due(1_000 + PERIOD_MS + 1), None);
    }
}
