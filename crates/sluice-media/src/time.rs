//! Unwrapping 32-bit RTMP time into a 64-bit timeline.

/// Extends 32-bit RTMP timestamps (which wrap every 2^32 ms) to 64 bits. A timestamp that
/// moves backwards by more than half the range is taken as a wrap, not a jump back.
#[derive(Debug, Default, Clone)]
pub struct TimestampExtender {
    last: Option<u64>,
}

impl TimestampExtender {
    /// Extends `ts`, relative to the previous timestamp this extender saw.
    pub fn extend(&mut self, ts: u32) -> u64 {
        let ext = match self.last {
            None => u64::from(ts),
            Some(last) => {
                let delta = ts.wrapping_sub(last as u32) as i32;
                (last as i64 + i64::from(delta)).max(0) as u64
            }
        };
        self.last = Some(ext);
        ext
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_forward_and_tolerates_small_jumps_back() {
        let mut t = TimestampExtender::default();
        assert_eq!(t.extend(u32::MAX - 10), u64::from(u32::MAX) - 10);
        assert_eq!(t.extend(5), u64::from(u32::MAX) + 6);
        assert_eq!(t.extend(2), u64::from(u32::MAX) + 3);
        assert_eq!(t.extend(1000), u64::from(u32::MAX) + 1001);
    }

    #[test]
    fn never_goes_below_zero() {
        let mut t = TimestampExtender::default();
        assert_eq!(t.extend(10), 10);
        assert_eq!(t.extend(u32::MAX - 100), 0);
    }
}
