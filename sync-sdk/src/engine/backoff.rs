//! Full-jitter exponential backoff with an injected, seeded RNG (deterministic in tests).
//!
//! `delay = uniform(0, min(cap, base * 2^attempt))` — AWS's "full jitter": after an outage
//! the clients' retries spread over the whole window instead of arriving in lock-step.

use std::time::Duration;

/// Backoff state for one retry loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    /// Smallest window until the next reset (spreads clients after a server restart).
    floor: Duration,
}

impl Backoff {
    /// A backoff starting at `base`, capped at `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
            floor: Duration::ZERO,
        }
    }

    /// The next delay; increments the attempt counter.
    pub fn next_delay(&mut self, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.u64(0..=ms))
    }

    /// The current window's upper bound.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base
            .saturating_mul(factor)
            .min(self.cap)
            .max(self.floor)
    }

    /// Until the next [`Backoff::reset`], no window is smaller than `floor`.
    pub fn raise_floor(&mut self, floor: Duration) {
        self.floor = self.floor.max(floor);
    }

    /// Consecutive failures so far.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Back to the first window (after a stable connection).
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.floor = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_the_growing_window_and_cap() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            let ceiling = b.ceiling();
            let d = b.next_delay(&mut rng);
            assert!(d <= ceiling, "{d:?} > {ceiling:?}");
            ceilings.push(ceiling.as_millis());
        }
        assert_eq!(&ceilings[..5], &[250, 500, 1000, 2000, 4000]);
        assert_eq!(*ceilings.last().unwrap_or(&0), 30_000);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(250));
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
            for _ in 0..4 {
                b.next_delay(&mut rng);
            }
            seen.insert(b.next_delay(&mut rng).as_millis() / 100);
        }
        // 4 s window, 100 ms buckets: full jitter must land in many distinct buckets.
        assert!(seen.len() > 25, "only {} distinct buckets", seen.len());
    }
}
