//! Counters and a histogram, rendered in the Prometheus text format at `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Frame types counted in `tincan_frames_total{dir="in"}`: the client frames, and frames that
/// could not be decoded (malformed, over `max_body`).
pub(crate) const IN_KINDS: [&str; 7] = [
    "auth",
    "send",
    "ack",
    "register_invite",
    "claim_invite",
    "ping",
    "undecodable",
];

/// Frame types counted in `tincan_frames_total{dir="out"}`: the relay frames.
pub(crate) const OUT_KINDS: [&str; 8] = [
    "challenge",
    "auth_ok",
    "sent",
    "deliver",
    "invite_registered",
    "invite_claimed",
    "pong",
    "error",
];

/// Upper bounds (seconds) of the store latency histogram.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A fixed-bucket histogram.
#[derive(Default)]
pub(crate) struct Histogram {
    counts: [AtomicU64; 12],
    inf: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        match BUCKETS.iter().position(|b| s <= *b) {
            Some(i) => self.counts[i].fetch_add(1, Ordering::Relaxed),
            None => self.inf.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.inf.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Everything the relay counts.
#[derive(Default)]
pub(crate) struct Metrics {
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub frames_in: [AtomicU64; 7],
    pub frames_out: [AtomicU64; 8],
    pub messages_stored: AtomicU64,
    pub messages_unwritten: AtomicU64,
    pub messages_deduplicated: AtomicU64,
    pub messages_delivered: AtomicU64,
    pub messages_acked: AtomicU64,
    pub messages_expired: AtomicU64,
    pub auth_failures: AtomicU64,
    pub rate_limited_identity: AtomicU64,
    pub rate_limited_ip: AtomicU64,
    pub refused_queue_full: AtomicU64,
    pub refused_max_pairs: AtomicU64,
    pub refused_max_queued: AtomicU64,
    pub refused_too_large: AtomicU64,
    pub refused_invites: AtomicU64,
    pub store_errors: AtomicU64,
    pub http_requests: AtomicU64,
    pub store_batch: Histogram,
}

/// Values read at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Gauges {
    pub connections: u64,
    pub online: u64,
    pub queued: u64,
    pub db_bytes: u64,
    pub wal_bytes: u64,
}

impl Gauges {
    /// The sizes of the database at `db` and its `-wal` file (0 for a file that is not there).
    pub fn with_store_files(mut self, db: &std::path::Path) -> Self {
        let len = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        self.db_bytes = len(db);
        self.wal_bytes = len(&tincan_sqlite::wal_path(db));
        self
    }
}

/// Index of a client frame type in [`IN_KINDS`] (unknown names count as `undecodable`).
pub(crate) fn in_kind(name: &str) -> usize {
    IN_KINDS
        .iter()
        .position(|k| *k == name)
        .unwrap_or(IN_KINDS.len() - 1)
}

/// Index of a relay frame type in [`OUT_KINDS`] (unknown names count as `error`).
pub(crate) fn out_kind(name: &str) -> usize {
    OUT_KINDS
        .iter()
        .position(|k| *k == name)
        .unwrap_or(OUT_KINDS.len() - 1)
}

impl Metrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Renders the Prometheus text format. Gauges read at scrape time are passed in.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, c: &AtomicU64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.load(Ordering::Relaxed)
            );
        };
        gauge(
            &mut out,
            "tincan_connections",
            "Open WebSocket connections.",
            g.connections,
        );
        gauge(
            &mut out,
            "tincan_receivers_online",
            "Identities with a receiving connection.",
            g.online,
        );
        gauge(
            &mut out,
            "tincan_messages_queued",
            "Stored messages not yet acknowledged by their recipient.",
            g.queued,
        );
        gauge(
            &mut out,
            "tincan_store_db_bytes",
            "Size of the SQLite database file.",
            g.db_bytes,
        );
        gauge(
            &mut out,
            "tincan_store_wal_bytes",
            "Size of its write-ahead log file (starts over at about 256 MiB).",
            g.wal_bytes,
        );
        counter(
            &mut out,
            "tincan_connections_total",
            "Connections accepted.",
            &self.connections_total,
        );
        counter(
            &mut out,
            "tincan_connections_refused_total",
            "Connections refused by a connection limit.",
            &self.connections_refused,
        );
        let _ = writeln!(
            out,
            "# HELP tincan_frames_total Frames by direction and type.\n# TYPE tincan_frames_total counter"
        );
        for (i, k) in IN_KINDS.iter().enumerate() {
            let _ = writeln!(
                out,
                "tincan_frames_total{{dir=\"in\",type=\"{k}\"}} {}",
                self.frames_in[i].load(Ordering::Relaxed)
            );
        }
        for (i, k) in OUT_KINDS.iter().enumerate() {
            let _ = writeln!(
                out,
                "tincan_frames_total{{dir=\"out\",type=\"{k}\"}} {}",
                self.frames_out[i].load(Ordering::Relaxed)
            );
        }
        counter(
            &mut out,
            "tincan_messages_stored_total",
            "Messages durably stored.",
            &self.messages_stored,
        );
        counter(
            &mut out,
            "tincan_messages_unwritten_total",
            "Messages their online recipient acknowledged before the relay wrote them (never on the relay's disk).",
            &self.messages_unwritten,
        );
        counter(
            &mut out,
            "tincan_messages_deduplicated_total",
            "Resent messages recognised and not stored again.",
            &self.messages_deduplicated,
        );
        counter(
            &mut out,
            "tincan_messages_routed_total",
            "Deliveries written to recipients.",
            &self.messages_delivered,
        );
        counter(
            &mut out,
            "tincan_messages_acked_total",
            "Messages acknowledged by recipients.",
            &self.messages_acked,
        );
        counter(
            &mut out,
            "tincan_messages_expired_total",
            "Undelivered messages removed at their TTL.",
            &self.messages_expired,
        );
        counter(
            &mut out,
            "tincan_auth_failures_total",
            "Failed authentications.",
            &self.auth_failures,
        );
        let _ = writeln!(
            out,
            "# HELP tincan_rate_limited_total Requests refused by a rate limit.\n# TYPE tincan_rate_limited_total counter"
        );
        let _ = writeln!(
            out,
            "tincan_rate_limited_total{{scope=\"identity\"}} {}",
            self.rate_limited_identity.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "tincan_rate_limited_total{{scope=\"ip\"}} {}",
            self.rate_limited_ip.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP tincan_refused_total Requests refused by a limit.\n# TYPE tincan_refused_total counter"
        );
        let _ = writeln!(
            out,
            "tincan_refused_total{{limit=\"queue_cap\"}} {}",
            self.refused_queue_full.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "tincan_refused_total{{limit=\"max_queued\"}} {}",
            self.refused_max_queued.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "tincan_refused_total{{limit=\"max_body\"}} {}",
            self.refused_too_large.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "tincan_refused_total{{limit=\"max_open_invites\"}} {}",
            self.refused_invites.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "tincan_refused_total{{limit=\"max_pairs\"}} {}",
            self.refused_max_pairs.load(Ordering::Relaxed)
        );
        counter(
            &mut out,
            "tincan_store_errors_total",
            "Store commands or transactions that failed.",
            &self.store_errors,
        );
        counter(
            &mut out,
            "tincan_http_requests_total",
            "HTTP API requests.",
            &self.http_requests,
        );
        self.store_batch.render(
            "tincan_store_batch_seconds",
            "Time to apply and commit one store batch.",
            &mut out,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        Metrics::inc(&m.messages_stored);
        m.frames_in[in_kind("send")].fetch_add(2, Ordering::Relaxed);
        m.store_batch.observe(Duration::from_micros(300));
        m.store_batch.observe(Duration::from_secs(5));
        let text = m.render(&Gauges {
            connections: 3,
            online: 2,
            queued: 7,
            db_bytes: 8192,
            wal_bytes: 0,
        });
        assert!(text.contains("tincan_connections 3\n"));
        assert!(text.contains("tincan_messages_queued 7\n"));
        assert!(text.contains("tincan_store_db_bytes 8192\n"));
        assert!(text.contains("tincan_store_wal_bytes 0\n"));
        assert!(text.contains("tincan_messages_stored_total 1\n"));
        assert!(text.contains("tincan_frames_total{dir=\"in\",type=\"send\"} 2\n"));
        assert!(text.contains("tincan_store_batch_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("tincan_store_batch_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("tincan_store_batch_seconds_count 2\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample line {line}");
        }
    }
}
