//! When to try a failed delivery again: the spec's backoff schedule (or exponential
//! growth when it gives none), with jitter so that many subscribers recovering at once do
//! not retry in lock-step.

use std::time::Duration;

/// Delay before attempt `attempt + 1`, after `attempt` (>= 1) failures. `unit` in
/// [0, 1) supplies the randomness, so the function stays pure and testable.
pub fn delay(schedule: &[Duration], attempt: u32, unit: f64) -> Duration {
    let base = if schedule.is_empty() {
        // Exponential from 100 ms, doubling, capped at 30 s.
        Duration::from_millis(100).saturating_mul(1u32 << attempt.saturating_sub(1).min(9)).min(Duration::from_secs(30))
    } else {
        let i = (attempt.max(1) as usize - 1).min(schedule.len() - 1);
        schedule[i]
    };
    // "Equal jitter": between half and all of the base delay.
    base.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

pub fn jittered(schedule: &[Duration], attempt: u32) -> Duration {
    delay(schedule, attempt, rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_schedule_and_repeats_its_last_step() {
        let s = [Duration::from_secs(1), Duration::from_secs(5)];
        assert_eq!(delay(&s, 1, 1.0), Duration::from_secs(1));
        assert_eq!(delay(&s, 2, 1.0), Duration::from_secs(5));
        assert_eq!(delay(&s, 9, 1.0), Duration::from_secs(5));
    }

    #[test]
    fn without_a_schedule_grows_exponentially_to_a_cap() {
        assert_eq!(delay(&[], 1, 1.0), Duration::from_millis(100));
        assert_eq!(delay(&[], 2, 1.0), Duration::from_millis(200));
        assert_eq!(delay(&[], 4, 1.0), Duration::from_millis(800));
        assert_eq!(delay(&[], 40, 1.0), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_between_half_and_full() {
        let s = [Duration::from_secs(2)];
        assert_eq!(delay(&s, 1, 0.0), Duration::from_secs(1));
        for _ in 0..100 {
            let d = jittered(&s, 1);
            assert!(d >= Duration::from_secs(1) && d <= Duration::from_secs(2), "{d:?}");
        }
    }
}
