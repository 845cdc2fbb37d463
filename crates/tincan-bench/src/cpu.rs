//! CPU time of this process (all threads: relay, clients, checkpoints), for figures that drift
//! less with the host than wall time does: a slow phase of this VM stretches waits and wake-ups,
//! while the work done per message stays closer to constant.

use std::time::Duration;

/// Clock ticks per second of `/proc/self/stat` times (`USER_HZ`, 100 on Linux).
const TICKS_PER_SEC: u64 = 100;

/// User plus system CPU time used so far, or `None` where `/proc` is not available.
pub fn used() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    // After ')': state (3), ppid, pgrp, session, tty_nr, tpgid, flags, minflt, cminflt,
    // majflt, cmajflt, utime (14), stime (15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis(
        (utime + stime) * 1000 / TICKS_PER_SEC,
    ))
}

/// Microseconds of CPU per unit of work between two readings of [`used`].
pub fn per_unit_us(before: Option<Duration>, after: Option<Duration>, units: usize) -> Option<f64> {
    let spent = after?.checked_sub(before?)?;
    (units > 0).then(|| spent.as_secs_f64() * 1e6 / units as f64)
}

/// The figure for [`per_unit_us`]'s result, if there is one.
pub fn figure(
    key: &'static str,
    label: &'static str,
    us: Option<f64>,
) -> Option<crate::report::Figure> {
    us.map(|us| crate::report::Figure::new(key, label, us, "us"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn cpu_time_grows_with_work() {
        let before = used().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut x = 0u64;
        // Spin until the process has used 50 ms more CPU (however busy the machine is).
        let after = loop {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            let now = used().unwrap();
            if now >= before + Duration::from_millis(50) {
                break now;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "CPU time did not grow while spinning"
            );
        };
        let spent = after - before;
        let us = per_unit_us(Some(before), Some(after), 10).unwrap();
        assert!((us - spent.as_secs_f64() * 1e5).abs() < 1.0);
        assert_eq!(per_unit_us(Some(before), Some(after), 0), None);
        assert_eq!(per_unit_us(None, Some(after), 10), None);
    }
}
