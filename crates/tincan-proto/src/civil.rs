//! Unix days to calendar dates (UTC), for times shown to people: an invite's expiry, a message's
//! timestamp in an agent's context. Pure arithmetic; the caller supplies the time.

/// The (year, month, day) of `days` after 1970-01-01, by Howard Hinnant's `civil_from_days`
/// (shifted so its eras start on 0000-03-01; unsigned, as no time here is before 1970). Any
/// `u64` is safe: `u64::MAX / 86_400 + 719_468` does not overflow.
pub fn date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::date;

    #[test]
    fn days_map_to_their_dates() {
        assert_eq!(date(0), (1970, 1, 1));
        assert_eq!(date(11_016), (2000, 2, 29));
        assert_eq!(date(47_481), (2099, 12, 31));
        date(u64::MAX / 86_400); // the largest day a u64 of seconds reaches
    }
}
