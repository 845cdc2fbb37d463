//! Per-peer flood control on pushes: a token bucket per peer. A message over the limit is not
//! pushed; it waits in the inbox for `check_messages`, and the peer's excess is reported in one
//! notice once the bucket refills.

use std::collections::HashMap;
use std::time::Instant;

use tincan_client::tincan_proto::ids::PeerId;

/// How many pushes a peer gets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PushLimit {
    /// Pushes allowed at once.
    pub burst: u32,
    /// Sustained pushes per minute.
    pub per_minute: u32,
}

impl Default for PushLimit {
    fn default() -> Self {
        Self {
            burst: 5,
            per_minute: 10,
        }
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
    deferred: u64,
}

/// The buckets.
pub struct Flood {
    limit: PushLimit,
    peers: HashMap<PeerId, Bucket>,
}

impl Flood {
    /// Empty, with every peer's bucket full.
    pub fn new(limit: PushLimit) -> Self {
        Self {
            limit,
            peers: HashMap::new(),
        }
    }

    fn bucket(&mut self, peer: PeerId, now: Instant) -> &mut Bucket {
        let burst = f64::from(self.limit.burst);
        let rate = f64::from(self.limit.per_minute) / 60.0;
        let b = self.peers.entry(peer).or_insert(Bucket {
            tokens: burst,
            last: now,
            deferred: 0,
        });
        let dt = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + dt * rate).min(burst);
        b.last = now;
        b
    }

    /// Takes a push for `peer`; on refusal the message counts as deferred.
    pub fn admit(&mut self, peer: PeerId, now: Instant) -> bool {
        let b = self.bucket(peer, now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            b.deferred += 1;
            false
        }
    }

    /// Peers whose deferred messages can now be reported (spending one push each), with counts.
    pub fn due_reports(&mut self, now: Instant) -> Vec<(PeerId, u64)> {
        let peers: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, b)| b.deferred > 0)
            .map(|(p, _)| *p)
            .collect();
        let mut out = Vec::new();
        for p in peers {
            let b = self.bucket(p, now);
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                out.push((p, std::mem::take(&mut b.deferred)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_rate_then_one_report() {
        let mut f = Flood::new(PushLimit {
            burst: 2,
            per_minute: 60,
        });
        let p = PeerId::from_bytes([1; 32]);
        let q = PeerId::from_bytes([2; 32]);
        let t0 = Instant::now();
        assert!(f.admit(p, t0));
        assert!(f.admit(p, t0));
        assert!(!f.admit(p, t0));
        assert!(!f.admit(p, t0));
        assert!(
            f.admit(q, t0),
            "one peer's flood does not use another's pushes"
        );
        assert!(f.due_reports(t0).is_empty());
        let t1 = t0 + Duration::from_millis(1100);
        assert_eq!(f.due_reports(t1), vec![(p, 2)]);
        assert!(f.due_reports(t1 + Duration::from_secs(5)).is_empty());
    }
}
