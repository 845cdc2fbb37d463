//! A per-peer token bucket: how often one peer may make the handler run.

use std::time::Duration;

use tokio::time::Instant;

/// Holds up to `burst` tokens, refilled at `per_sec`; one handler run costs one token.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    burst: f64,
    per_sec: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(per_minute: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            tokens: burst,
            burst,
            per_sec: f64::from(per_minute.max(1)) / 60.0,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        self.last = now;
    }

    /// Takes a token if one is there.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether `waiting` more runs could start now without waiting for a refill.
    pub fn covers(&mut self, waiting: usize, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= waiting as f64
    }

    /// When the next token will be there.
    pub fn next_token_at(&mut self, now: Instant) -> Instant {
        self.refill(now);
        if self.tokens >= 1.0 {
            return now;
        }
        now + Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut b = Bucket::new(60, 3, t0);
        assert!(b.try_take(t0) && b.try_take(t0) && b.try_take(t0));
        assert!(!b.try_take(t0));
        let next = b.next_token_at(t0);
        assert!(next > t0 && next <= t0 + Duration::from_secs(1));
        assert!(b.try_take(t0 + Duration::from_millis(1001)));
        // Never more than the burst, however long the pause.
        assert!(b.covers(3, t0 + Duration::from_secs(3600)));
        assert!(!b.covers(4, t0 + Duration::from_secs(3600)));
    }
}
