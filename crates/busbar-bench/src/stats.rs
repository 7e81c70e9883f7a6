//! Percentiles over latency samples.

use serde::Serialize;

/// Latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Summarises nanosecond samples (sorts them in place); `None` when there are none.
pub fn latency(samples: &mut [u64]) -> Option<Latency> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let ms = |ns: u64| ns as f64 / 1e6;
    Some(Latency {
        samples: samples.len(),
        p50_ms: ms(percentile(samples, 50.0)),
        p90_ms: ms(percentile(samples, 90.0)),
        p99_ms: ms(percentile(samples, 99.0)),
        max_ms: ms(*samples.last().expect("not empty")),
    })
}

/// Nearest-rank percentile of sorted, non-empty `sorted`: the smallest sample that at
/// least `p`% of the samples are less than or equal to. No interpolation, so every figure
/// printed is a latency that was actually observed.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[1, 2, 3], 50.0), 2);
    }

    #[test]
    fn summary_in_ms() {
        let mut v = vec![3_000_000, 1_000_000, 2_000_000];
        let l = latency(&mut v).unwrap();
        assert_eq!((l.samples, l.p50_ms, l.max_ms), (3, 2.0, 3.0));
        assert!(latency(&mut []).is_none());
    }
}
