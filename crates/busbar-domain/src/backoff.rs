//! How long to wait before trying again. One type for every retry loop in busbar: delivery
//! to a subscriber (the spec's `delivery.backoff`), the outbox relay, backfill, and
//! reconnects. Pure: randomness for jitter is passed in, so tests can pin it.

use std::time::Duration;

/// A retry schedule: either the spec's list of waits (the last one repeats), or
/// exponential growth from a base to a cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    steps: Vec<Duration>,
    base: Duration,
    cap: Duration,
}

impl Backoff {
    /// `base`, `2 × base`, `4 × base`, ... up to `cap`.
    pub fn exponential(base: Duration, cap: Duration) -> Self {
        Self { steps: vec![], base, cap }
    }

    /// The waits of a ServiceBus `delivery.backoff`, e.g. `[1s, 5s, 30s]`; the last repeats.
    /// An empty list means exponential from 100 ms to 30 s.
    pub fn schedule(steps: Vec<Duration>) -> Self {
        Self { steps, ..Self::exponential(Duration::from_millis(100), Duration::from_secs(30)) }
    }

    /// The wait after `failures` (≥ 1) failed attempts in a row, without jitter.
    pub fn delay(&self, failures: u32) -> Duration {
        let n = failures.max(1);
        match self.steps.as_slice() {
            [] => self.base.saturating_mul(1u32 << (n - 1).min(20)).min(self.cap),
            steps => steps[(n as usize - 1).min(steps.len() - 1)],
        }
    }

    /// [`Self::delay`] with "equal jitter": between half and all of it, `unit` in [0, 1)
    /// choosing where, so that many clients recovering at once do not retry in lock-step.
    pub fn jittered(&self, failures: u32, unit: f64) -> Duration {
        self.delay(failures).mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }

    /// [`Self::jittered`] with randomness from the thread's generator.
    pub fn random_jittered(&self, failures: u32) -> Duration {
        self.jittered(failures, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_schedule_and_repeats_its_last_step() {
        let b = Backoff::schedule(vec![Duration::from_secs(1), Duration::from_secs(5)]);
        assert_eq!(b.delay(1), Duration::from_secs(1));
        assert_eq!(b.delay(2), Duration::from_secs(5));
        assert_eq!(b.delay(9), Duration::from_secs(5));
        assert_eq!(b.delay(0), Duration::from_secs(1), "zero failures reads as the first");
    }

    #[test]
    fn exponential_doubles_to_its_cap() {
        let b = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(30));
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(4), Duration::from_millis(800));
        assert_eq!(b.delay(40), Duration::from_secs(30));
        assert_eq!(Backoff::schedule(vec![]).delay(3), Duration::from_millis(400));
    }

    #[test]
    fn jitter_stays_between_half_and_full() {
        let b = Backoff::schedule(vec![Duration::from_secs(2)]);
        assert_eq!(b.jittered(1, 0.0), Duration::from_secs(1));
        assert_eq!(b.jittered(1, 1.0), Duration::from_secs(2));
        for _ in 0..100 {
            let d = b.random_jittered(1);
            assert!(d >= Duration::from_secs(1) && d <= Duration::from_secs(2), "{d:?}");
        }
    }
}
