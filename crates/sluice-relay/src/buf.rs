//! The bytes a decoder has been fed and not yet consumed: a queue of the chunks as they
//! arrived, so a payload that lies within one chunk is split off without a copy.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

/// Unconsumed input, chunk by chunk.
#[derive(Debug, Default)]
pub(crate) struct Input {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Input {
    /// Appends a chunk.
    pub(crate) fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.len += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    /// Bytes buffered.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Copies the first `N` bytes out without consuming them, if there are that many.
    pub(crate) fn peek<const N: usize>(&self) -> Option<[u8; N]> {
        if self.len < N {
            return None;
        }
        let mut out = [0u8; N];
        let mut filled = 0;
        for chunk in &self.chunks {
            let n = chunk.len().min(N - filled);
            out[filled..filled + n].copy_from_slice(&chunk[..n]);
            filled += n;
            if filled == N {
                break;
            }
        }
        Some(out)
    }

    /// Drops the first `n` bytes (at most what is buffered).
    pub(crate) fn advance(&mut self, mut n: usize) {
        n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                return;
            };
            if front.len() > n {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.chunks.pop_front();
        }
    }

    /// Takes the first `n` bytes (the caller checked that they are buffered): a slice of the
    /// front chunk when it holds them all, else one copy into a buffer of exactly `n`.
    pub(crate) fn take(&mut self, n: usize) -> Bytes {
        let n = n.min(self.len);
        if let Some(front) = self.chunks.front_mut()
            && front.len() >= n
        {
            let out = front.split_to(n);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            self.len -= n;
            return out;
        }
        let mut out = BytesMut::with_capacity(n);
        while out.len() < n {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let k = front.len().min(n - out.len());
            out.extend_from_slice(&front[..k]);
            front.advance(k);
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        self.len -= out.len();
        out.freeze()
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peeks_takes_and_advances_across_chunks() {
        let mut input = Input::default();
        input.push(Bytes::from_static(b"ab"));
        input.push(Bytes::new());
        input.push(Bytes::from_static(b"cdef"));
        assert_eq!(input.len(), 6);
        assert_eq!(input.peek::<3>(), Some(*b"abc"));
        assert_eq!(input.peek::<7>(), None);
        input.advance(1);
        let whole = input.take(1);
        assert_eq!(&whole[..], b"b");
        let spanning = input.take(3);
        assert_eq!(&spanning[..], b"cde");
        assert_eq!(input.len(), 1);
        input.advance(10);
        assert_eq!(input.len(), 0);
    }

    #[test]
    fn a_payload_within_one_chunk_is_not_copied() {
        let chunk = Bytes::from(vec![7u8; 64]);
        let mut input = Input::default();
        input.push(chunk.clone());
        input.advance(4);
        let payload = input.take(32);
        assert_eq!(payload.as_ptr(), chunk[4..].as_ptr());
    }
}
