//! How long the monitor waits before restarting a container, and when the wait starts over.

use std::time::{Duration, SystemTime};

/// Exponential back-off: the n-th restart in a row (counting from 0) waits `base × 2ⁿ`, at most
/// `max`; a task that ran at least `reset` before it exited starts the count over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait before the first restart.
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
    /// How long a task must have run for its exit to start the count over.
    pub reset: Duration,
}

impl Backoff {
    /// The wait before restart number `restarts` in a row (0 for the first).
    pub fn delay(&self, restarts: u32) -> Duration {
        let factor = 1u32.checked_shl(restarts.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Whether a task that started at `started` and exited at `exited` ran long enough to start
    /// the count over. An exit stamped before the start (clock steps) does not.
    pub fn ran_long_enough(&self, started: SystemTime, exited: SystemTime) -> bool {
        exited.duration_since(started).is_ok_and(|ran| ran >= self.reset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn backoff() -> Backoff {
        Backoff { base: 100 * MS, max: 1500 * MS, reset: 10_000 * MS }
    }

    #[test]
    fn waits_double_up_to_the_maximum() {
        let b = backoff();
        let waits: Vec<u128> = (0..7).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1500, 1500, 1500]);
        // No overflow however long a container has been crashing.
        assert_eq!(b.delay(40), 1500 * MS);
        assert_eq!(b.delay(u32::MAX), 1500 * MS);
        let huge = Backoff { base: Duration::from_secs(u64::MAX / 2), max: Duration::MAX, ..b };
        assert_eq!(huge.delay(3), Duration::MAX);
        // A zero base restarts at once.
        assert_eq!(Backoff { base: Duration::ZERO, ..b }.delay(5), Duration::ZERO);
        // A maximum below the base caps the first wait too.
        assert_eq!(Backoff { max: 50 * MS, ..b }.delay(0), 50 * MS);
    }

    #[test]
    fn a_task_that_ran_long_enough_starts_over() {
        let b = backoff();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert!(b.ran_long_enough(t0, t0 + 10_000 * MS));
        assert!(b.ran_long_enough(t0, t0 + Duration::from_secs(3600)));
        assert!(!b.ran_long_enough(t0, t0 + 9_999 * MS));
        assert!(!b.ran_long_enough(t0, t0 - Duration::from_secs(5)));
    }
}
