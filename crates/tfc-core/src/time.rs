//! Wall-clock instants as Unix milliseconds, the form records and the API use.

use std::time::{SystemTime, UNIX_EPOCH};

/// `at` in milliseconds since the Unix epoch: 0 before it, saturating far after.
/// Pure: callers pass the clock reading (`SystemTime::now()`).
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn converts_and_saturates() {
        assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_millis(1500)), 1500);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
