//! Summaries of small sample sets (tens to hundreds of values), exact: sorted, nearest rank.

use serde::Serialize;

/// p50 / p99 / max of a sample set, ms.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    /// Samples.
    pub n: usize,
    /// Median (nearest rank).
    pub p50_ms: f64,
    /// 99th percentile (nearest rank: the max below 100 samples).
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// The `q` quantile of sorted `v` by nearest rank; 0 when empty.
fn rank(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// Rounds to 0.01 ms for the report.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Summary {
    /// Summarises `samples` (ms).
    pub fn of(samples: &[f64]) -> Self {
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        Self {
            n: v.len(),
            p50_ms: round2(rank(&v, 0.5)),
            p99_ms: round2(rank(&v, 0.99)),
            max_ms: round2(v.last().copied().unwrap_or(0.0)),
        }
    }
}

/// `a / b` rounded to 0.01, or None when `b` is 0.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| round2(a / b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=50).map(f64::from).collect();
        let s = Summary::of(&v);
        assert_eq!((s.n, s.p50_ms, s.p99_ms, s.max_ms), (50, 25.0, 50.0, 50.0));
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(Summary::of(&v).p99_ms, 198.0);
        assert_eq!(Summary::of(&[]).p50_ms, 0.0);
    }
}
