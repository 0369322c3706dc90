//! What the publisher sent, by timestamp: one ring per kind (audio, video) of the last
//! [`CAPACITY`] coded frames with their send instants, so a viewer can turn a received
//! timestamp into a latency. Fixed capacity: old entries fall off, memory stays bounded.

use std::collections::VecDeque;

/// Frames remembered per kind: about 2 minutes of 30 fps video or 44.1 kHz AAC audio.
pub const CAPACITY: usize = 4096;

/// One sent coded frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// RTMP timestamp as sent (loop offset included), ms.
    pub ts: u32,
    /// Tag body size in bytes: a fingerprint that survives a server rewriting timestamps.
    pub size: u32,
    /// Sequence number of this frame among the frames of its kind the publisher sent.
    pub seq: u64,
    /// Send instant, ns since the run started (taken just before the write).
    pub at_ns: u64,
    /// The same instant on the realtime clock (ns since the epoch), the clock of the
    /// kernel's receive timestamps.
    pub at_real_ns: u64,
    /// A video keyframe.
    pub key: bool,
}

/// Frames of one kind in send order; timestamps never decrease (the publisher adds a loop
/// offset each time the fixture restarts).
#[derive(Debug)]
pub struct Ring {
    entries: VecDeque<Sent>,
    next_seq: u64,
}

impl Default for Ring {
    fn default() -> Self {
        Self {
            entries: VecDeque::with_capacity(CAPACITY),
            next_seq: 0,
        }
    }
}

impl Ring {
    /// Records a frame about to be sent; returns its sequence number.
    pub fn push(&mut self, ts: u32, size: u32, key: bool, (at_ns, at_real_ns): (u64, u64)) -> u64 {
        if self.entries.len() == CAPACITY {
            self.entries.pop_front();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.push_back(Sent {
            ts,
            size,
            seq,
            at_ns,
            at_real_ns,
            key,
        });
        seq
    }

    /// The sequence number the next frame will get (= frames sent so far).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The frame sent with timestamp `ts` and body size `size`, if still remembered.
    pub fn find(&self, ts: u32, size: u32) -> Option<Sent> {
        let from = self.entries.partition_point(|e| e.ts < ts);
        self.entries
            .range(from..)
            .take_while(|e| e.ts == ts)
            .find(|e| e.size == size)
            .copied()
    }

    /// The last frame sent with a timestamp of at most `ts`, if still remembered: how an HLS
    /// viewer finds the frame a sample's decode time (rounded to ms) came from.
    pub fn at_or_before(&self, ts: u32) -> Option<Sent> {
        let end = self.entries.partition_point(|e| e.ts <= ts);
        end.checked_sub(1)
            .and_then(|i| self.entries.get(i))
            .copied()
    }

    /// The last frame sent with a timestamp of at most `ts` that was followed by a keyframe:
    /// the end of a GOP, where servers cut segments.
    pub fn gop_end_at_or_before(&self, ts: u32) -> Option<Sent> {
        let end = self.entries.partition_point(|e| e.ts <= ts);
        (0..end)
            .rev()
            .find(|&i| self.entries.get(i + 1).is_some_and(|next| next.key))
            .and_then(|i| self.entries.get(i))
            .copied()
    }

    /// The newest frame of body size `size` with a timestamp of at most `ts`, among the last
    /// `within`: how an fMP4 viewer finds the frame its sample came from when the server
    /// shifted timestamps.
    pub fn newest_of_size_at_or_before(&self, size: u32, ts: u32, within: usize) -> Option<Sent> {
        let end = self.entries.partition_point(|e| e.ts <= ts);
        self.entries
            .range(..end)
            .rev()
            .take(within)
            .find(|e| e.size == size)
            .copied()
    }

    /// The newest of the last `within` frames with this size and keyframe flag: how a
    /// viewer whose server rewrote timestamps finds the frame it received.
    pub fn find_recent_by_size(&self, size: u32, key: bool, within: usize) -> Option<Sent> {
        self.entries
            .iter()
            .rev()
            .take(within)
            .find(|e| e.size == size && e.key == key)
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_by_timestamp_and_size_and_forgets_old_frames() {
        let mut r = Ring::default();
        for i in 0..(CAPACITY as u32 + 10) {
            r.push(i * 33, 1000 + i, i % 60 == 0, (u64::from(i), 0));
        }
        assert_eq!(r.next_seq(), CAPACITY as u64 + 10);
        assert!(r.find(0, 1000).is_none(), "fell off the ring");
        let last = CAPACITY as u32 + 9;
        let e = r.find(last * 33, 1000 + last).unwrap();
        assert_eq!(e.seq, u64::from(last));
        assert!(r.find(last * 33, 7).is_none(), "size must match");
        let by_size = r.find_recent_by_size(1000 + last - 1, false, 4).unwrap();
        assert_eq!(by_size.ts, (last - 1) * 33);
        assert!(r.find_recent_by_size(1000 + last - 10, false, 4).is_none());
        assert_eq!(
            r.at_or_before(last * 33 + 32).map(|e| e.seq),
            Some(u64::from(last))
        );
        assert_eq!(
            r.at_or_before(last * 33 - 1).map(|e| e.seq),
            Some(u64::from(last - 1))
        );
        assert!(r.at_or_before(0).is_none(), "fell off the ring");
        // Keyframes every 60 frames: the frame before the last one at or before `last`.
        let key = (last / 60) * 60;
        let gop_end = r.gop_end_at_or_before(last * 33).unwrap();
        assert_eq!(gop_end.seq, u64::from(key - 1));
        let sized = r.newest_of_size_at_or_before(1000 + last - 3, last * 33, 8);
        assert_eq!(sized.map(|e| e.seq), Some(u64::from(last - 3)));
        assert!(
            r.newest_of_size_at_or_before(1000 + last, (last - 1) * 33, 8)
                .is_none()
        );
    }
}
