//! Part 3: pairing time. `create_invite` on A, `accept_invite` on B, A sees `PeerJoined`.

use std::time::Instant;

use anyhow::Result;
use indicatif::ProgressBar;

use crate::report::{Figure, Outcome, percentile, sorted_ms};
use crate::setup::{agent, pair};

pub async fn run(relay_url: &str, pairings: usize, bar: &ProgressBar) -> Result<Outcome> {
    let mut samples = Vec::with_capacity(pairings);
    for _ in 0..pairings {
        // Fresh homes each time; opening and connecting them is not timed.
        let dir = tempfile::tempdir()?;
        let mut a = agent(&dir.path().join("a"), relay_url).await?;
        let b = agent(&dir.path().join("b"), relay_url).await?;
        let t = Instant::now();
        pair(&mut a, &b).await?;
        samples.push(t.elapsed());
        bar.inc(1);
    }
    let v = sorted_ms(&samples);
    Ok(Outcome::Measured {
        figures: vec![
            Figure::new("median_ms", "median", percentile(&v, 50.0), "ms").at_most(5.0),
            Figure::new("max_ms", "max", v.last().copied().unwrap_or(0.0), "ms"),
        ],
        notes: vec![format!(
            "{pairings} pairings, each create_invite + accept_invite + PeerJoined on fresh homes"
        )],
    })
}
