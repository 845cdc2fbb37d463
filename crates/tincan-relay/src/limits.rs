//! Rate limits (token buckets) and connection counting.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A rate: `per_sec` tokens refill each second, up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Sustained requests per second.
    pub per_sec: f64,
    /// Requests allowed at once.
    pub burst: f64,
}

impl Rate {
    /// A rate of `per_sec` with a burst of `burst`.
    pub const fn new(per_sec: f64, burst: f64) -> Self {
        Self { per_sec, burst }
    }
}

/// Why an invite expiring at `expires_at` (Unix seconds) cannot be registered at `now`, if it
/// cannot: the expiry must be in the future and at most `max` away.
pub(crate) fn invite_expiry_refusal(expires_at: u64, now: u64, max: Duration) -> Option<String> {
    let max = max.as_secs();
    if expires_at <= now {
        Some("the invite's expiry is already past; make a new invite".into())
    } else if expires_at - now > max {
        Some(format!(
            "an invite may stay open at most {} on this relay ({max} s); ask for a shorter lifetime",
            if max.is_multiple_of(86_400) {
                format!("{} days", max / 86_400)
            } else {
                format!("{max} s")
            }
        ))
    } else {
        None
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets keyed by identity or address. Idle buckets are dropped by [`Buckets::sweep`].
pub(crate) struct Buckets<K> {
    rate: Rate,
    map: Mutex<HashMap<K, Bucket>>,
}

impl<K: Eq + Hash> Buckets<K> {
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token; on refusal returns how long until one is available.
    pub fn take(&self, key: K, now: Instant) -> Result<(), Duration> {
        if self.rate.per_sec <= 0.0 {
            return Ok(()); // unlimited
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let b = map.entry(key).or_insert(Bucket {
            tokens: self.rate.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate.per_sec).min(self.rate.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - b.tokens) / self.rate.per_sec,
            ))
        }
    }

    /// Forgets buckets that have refilled completely (they behave like new ones).
    pub fn sweep(&self, now: Instant) {
        let full_after =
            Duration::from_secs_f64((self.rate.burst / self.rate.per_sec.max(1e-9)).min(3600.0));
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, b| now.saturating_duration_since(b.at) < full_after);
    }
}

/// Open connections, in total and per IP address.
pub(crate) struct ConnCounter {
    max_total: usize,
    max_per_ip: usize,
    inner: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Which connection limit was hit.
pub(crate) enum ConnLimit {
    Total(usize),
    PerIp(usize),
}

impl ConnCounter {
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            max_total,
            max_per_ip,
            inner: Mutex::new((0, HashMap::new())),
        }
    }

    /// Counts a new connection from `ip`, unless a limit is reached.
    pub fn open(&self, ip: IpAddr) -> Result<(), ConnLimit> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 >= self.max_total {
            return Err(ConnLimit::Total(self.max_total));
        }
        let n = g.1.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(ConnLimit::PerIp(self.max_per_ip));
        }
        *n += 1;
        g.0 += 1;
        Ok(())
    }

    /// Uncounts a connection from `ip`.
    pub fn close(&self, ip: IpAddr) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = g.0.saturating_sub(1);
        if let Some(n) = g.1.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                g.1.remove(&ip);
            }
        }
    }

    /// Open connections.
    pub fn total(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invite_expiry_must_be_ahead_and_within_the_limit() {
        let max = Duration::from_secs(30 * 86_400);
        assert_eq!(invite_expiry_refusal(1_001, 1_000, max), None);
        assert_eq!(invite_expiry_refusal(1_000 + 30 * 86_400, 1_000, max), None);
        let past = invite_expiry_refusal(1_000, 1_000, max).unwrap();
        assert!(past.contains("already past"), "{past}");
        let far = invite_expiry_refusal(1_001 + 30 * 86_400, 1_000, max).unwrap();
        assert!(far.contains("at most 30 days"), "{far}");
        let odd = invite_expiry_refusal(100, 1, Duration::from_secs(90)).unwrap();
        assert!(odd.contains("at most 90 s"), "{odd}");
    }

    #[test]
    fn bucket_allows_burst_then_refills() {
        let b = Buckets::new(Rate::new(10.0, 3.0));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(b.take("a", t0).is_ok());
        }
        let wait = b.take("a", t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(50) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(b.take("b", t0).is_ok(), "keys are independent");
        assert!(b.take("a", t0 + Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let b = Buckets::new(Rate::new(0.0, 0.0));
        for _ in 0..1000 {
            assert!(b.take(1, Instant::now()).is_ok());
        }
    }

    #[test]
    fn connection_limits() {
        let c = ConnCounter::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(c.open(a).is_ok());
        assert!(c.open(a).is_ok());
        assert!(matches!(c.open(a), Err(ConnLimit::PerIp(2))));
        assert!(c.open(b).is_ok());
        assert!(matches!(c.open(b), Err(ConnLimit::Total(3))));
        c.close(a);
        assert!(c.open(b).is_ok());
        assert_eq!(c.total(), 3);
    }
}
