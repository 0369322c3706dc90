//! A fixed-size log-linear histogram of microsecond values: exact below 128 µs, then 64
//! buckets per power of two (under 1.6 % error), capped at 2^40 µs (12.7 days). Its memory
//! is fixed (18 KiB) however many samples it takes, so the generator's memory stays bounded
//! on long runs.

/// Values below this are counted exactly.
const LINEAR: u64 = 128;
/// Buckets per power of two above [`LINEAR`] (6 bits of mantissa).
const SUB: u64 = 64;
/// Largest exponent kept; larger values are clamped into the top bucket.
const MAX_EXP: u32 = 40;
/// Bucket count: the linear part plus `SUB` buckets for each exponent 7..=40.
const BUCKETS: usize = (LINEAR + (MAX_EXP as u64 - 6) * SUB) as usize;

/// A histogram of microsecond samples with exact count and max.
#[derive(Debug, Clone)]
pub struct Hist {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    let v = v.min((1 << (MAX_EXP + 1)) - 1);
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // 7..=40
    let sub = (v >> (exp - 6)) - SUB; // top 7 bits, leading 1 dropped: 0..64
    (LINEAR + u64::from(exp - 7) * SUB + sub) as usize
}

/// The middle of bucket `i`.
fn value(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let exp = (i - LINEAR) / SUB + 7;
    let sub = (i - LINEAR) % SUB;
    let width = 1u64 << (exp - 6);
    (SUB + sub) * width + width / 2
}

impl Hist {
    /// Counts one sample.
    pub fn record(&mut self, us: u64) {
        self.counts[index(us)] += 1;
        self.total += 1;
        self.max = self.max.max(us);
    }

    /// Samples counted.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest sample.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The `q` quantile (0..=1), at bucket precision and never above the max; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..2_000_000u64).step_by(7).chain([1 << 39, u64::MAX]) {
            let i = index(v);
            assert!(i >= last && i < BUCKETS, "v={v}");
            last = i;
            if v < 1 << 40 {
                let mid = value(i) as f64;
                assert!(
                    (mid - v as f64).abs() <= (v as f64 / 64.0).max(0.5),
                    "v={v} mid={mid}"
                );
            }
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Hist::default();
        assert_eq!(h.quantile(0.5), 0);
        for v in 1..=1000 {
            h.record(v * 10);
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.max(), 10_000);
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 5000.0).abs() < 5000.0 * 0.02, "{p50}");
        let p99 = h.quantile(0.99) as f64;
        assert!((p99 - 9900.0).abs() < 9900.0 * 0.02, "{p99}");
        assert_eq!(h.quantile(1.0), 10_000);
    }
}
