//! One monotonic clock for the whole process. Publishers stamp events with it and the
//! in-process subscribers read it on receipt, so a latency is the difference of two
//! readings of the same clock: no wall-clock steps, no cross-process skew.

use std::{sync::OnceLock, time::Instant};

static BASE: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the first call in this process.
pub fn now_ns() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Seconds between two `now_ns` readings (zero if `to` is not after `from`).
pub fn secs_between(from: u64, to: u64) -> f64 {
    to.saturating_sub(from) as f64 / 1e9
}

/// The `Instant` that `now_ns` would report as `ns`, for sleeping until a scheduled time.
pub fn instant_at(ns: u64) -> Instant {
    *BASE.get_or_init(Instant::now) + std::time::Duration::from_nanos(ns)
}
