//! Writing batches of shared `Bytes` with vectored writes.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Slices handed to one `writev` (Linux allows 1024; a few dozen frames fill a socket buffer).
const MAX_SLICES: usize = 64;

/// Writes every buffer in `bufs` (front first) with vectored writes, consuming them.
/// Returns the number of bytes written.
pub async fn write_all<W: AsyncWrite + Unpin>(
    w: &mut W,
    bufs: &mut VecDeque<Bytes>,
) -> std::io::Result<u64> {
    let mut total = 0u64;
    while !bufs.is_empty() {
        let n = {
            // On the stack: no allocation per write.
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            for (slot, buf) in slices.iter_mut().zip(bufs.iter()) {
                *slot = IoSlice::new(buf);
                count += 1;
            }
            w.write_vectored(&slices[..count]).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        total += n as u64;
        let mut left = n;
        while left > 0 {
            let Some(front) = bufs.front_mut() else { break };
            if front.len() <= left {
                left -= front.len();
                bufs.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
        while bufs.front().is_some_and(Bytes::is_empty) {
            bufs.pop_front();
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_everything_in_order() {
        let (mut a, mut b) = tokio::io::duplex(7);
        let mut bufs: VecDeque<Bytes> = [&b"hello "[..], b"", b"vectored ", b"world"]
            .into_iter()
            .map(Bytes::from_static)
            .collect();
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut b, &mut out)
                .await
                .unwrap();
            out
        });
        assert_eq!(write_all(&mut a, &mut bufs).await.unwrap(), 20);
        drop(a);
        assert_eq!(reader.await.unwrap(), b"hello vectored world");
    }
}
