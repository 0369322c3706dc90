//! Writing batches of shared `Bytes` with vectored writes, handing the kernel only what the
//! socket takes now (the viewer driver and the shared writer write through it); and
//! [`send_file`], which hands the socket a memory file's pages by reference instead of
//! copying them (HLS parts, see [`MemoryFile`]).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::net::SendFlags;
use tokio::io::Interest;

use bytes::{Buf, Bytes};

/// Slices handed to one `writev` (Linux allows 1024; a few dozen frames fill a socket buffer).
pub const MAX_SLICES: usize = 64;

/// Points `slices` at the front of `bufs` (at most [`MAX_SLICES`] buffers, no allocation);
/// returns how many it filled.
pub fn fill_slices<'a>(slices: &mut [IoSlice<'a>; MAX_SLICES], bufs: &'a VecDeque<Bytes>) -> usize {
    let mut count = 0;
    for (slot, buf) in slices.iter_mut().zip(bufs.iter()) {
        *slot = IoSlice::new(buf);
        count += 1;
    }
    count
}

/// Drops the `written` bytes a write took from the front of `bufs`. Returns whether the
/// front buffer is now partly written.
pub fn consume(bufs: &mut VecDeque<Bytes>, written: usize) -> bool {
    consume_counted(bufs, written).1
}

/// [`consume`], also returning how many buffers it removed (empty ones included).
fn consume_counted(bufs: &mut VecDeque<Bytes>, written: usize) -> (usize, bool) {
    let mut left = written;
    let mut popped = 0;
    let mut partial = false;
    while left > 0 {
        let Some(front) = bufs.front_mut() else { break };
        if front.len() <= left {
            left -= front.len();
            bufs.pop_front();
            popped += 1;
        } else {
            front.advance(left);
            partial = true;
            left = 0;
        }
    }
    while bufs.front().is_some_and(Bytes::is_empty) {
        bufs.pop_front();
        popped += 1;
    }
    (popped, partial)
}

/// Writes `bufs` (front first), messages of `unit` buffers each (an RTMP message is one; an
/// HTTP chunk's size line and its FLV tag are two), with non-blocking vectored writes until
/// they are all written or the socket is full. If it fills in the middle of a message, that
/// message is finished (waiting for the socket, so the stream never ends mid-message) and
/// writing stops there; messages not started stay in `bufs`, whole, for the caller to give
/// back. Returns the bytes written.
///
/// Finishing a started message waits at most `stall` for the socket; longer is a `TimedOut`
/// error (a stuck or vanished peer). The common path, where the socket takes everything,
/// reads no clock.
pub async fn write_units_until_full(
    socket: &tokio::net::TcpStream,
    bufs: &mut VecDeque<Bytes>,
    unit: usize,
    stall: std::time::Duration,
) -> std::io::Result<u64> {
    let unit = unit.max(1);
    let mut total = 0u64;
    // Buffers of the front unit written whole, and whether the front buffer is started.
    let mut into_unit = 0;
    let mut partial = false;
    while !bufs.is_empty() {
        let result = {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let count = fill_slices(&mut slices, bufs);
            socket.try_write_vectored(&slices[..count])
        };
        let n = match result {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if partial || into_unit > 0 {
                    let rest = unit - into_unit;
                    total += tokio::time::timeout(stall, finish_front(socket, bufs, rest))
                        .await
                        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
                }
                return Ok(total);
            }
            Err(e) => return Err(e),
        };
        total += n as u64;
        let (popped, started) = consume_counted(bufs, n);
        into_unit = (into_unit + popped) % unit;
        partial = started;
    }
    Ok(total)
}

/// Writes all of `bufs`, waiting for the socket as needed (the rest of a frame a shared
/// writer started, for one).
pub async fn write_bufs(
    socket: &tokio::net::TcpStream,
    bufs: &mut VecDeque<Bytes>,
) -> std::io::Result<u64> {
    let count = bufs.len();
    finish_front(socket, bufs, count).await
}

/// Writes all of `data` to a socket shared with a writer task (which holds it by `Arc`, so
/// this side has no `&mut` for `AsyncWriteExt`).
pub async fn write_all(socket: &tokio::net::TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        socket.writable().await?;
        match socket.try_write(data) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads what has arrived into `buf`'s spare capacity, waiting for something; 0 is the
/// end of input (or a buffer with no spare capacity). Cancel-safe.
pub async fn read_buf(
    socket: &tokio::net::TcpStream,
    buf: &mut bytes::BytesMut,
) -> std::io::Result<usize> {
    loop {
        socket.readable().await?;
        match socket.try_read_buf(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            result => return result,
        }
    }
}

/// Reads what has arrived into `buf`, waiting for something; 0 is the end of input.
/// Cancel-safe.
pub async fn read(socket: &tokio::net::TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        socket.readable().await?;
        match socket.try_read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            result => return result,
        }
    }
}

/// Ends the sending direction (a FIN after what is queued).
pub fn shutdown_write(socket: &tokio::net::TcpStream) -> std::io::Result<()> {
    socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write)
}

/// Writes the rest of the front `count` buffers, waiting for the socket as needed.
async fn finish_front(
    socket: &tokio::net::TcpStream,
    bufs: &mut VecDeque<Bytes>,
    count: usize,
) -> std::io::Result<u64> {
    let mut total = 0;
    for _ in 0..count {
        let Some(mut front) = bufs.pop_front() else {
            break;
        };
        total += front.len() as u64;
        while !front.is_empty() {
            socket.writable().await?;
            match socket.try_write(&front) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => front.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A connected loopback pair.
    pub(crate) async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    /// A loopback pair with small buffers, so that a writer fills it quickly.
    pub(crate) async fn small_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let (a, b) = pair().await;
        socket2::SockRef::from(&a)
            .set_send_buffer_size(4096)
            .unwrap();
        socket2::SockRef::from(&b)
            .set_recv_buffer_size(4096)
            .unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn writes_everything_in_order() {
        let (a, mut b) = pair().await;
        let mut bufs: VecDeque<Bytes> = [&b"hello "[..], b"", b"vectored ", b"world"]
            .into_iter()
            .map(Bytes::from_static)
            .collect();
        assert_eq!(
            write_units_until_full(&a, &mut bufs, 1, std::time::Duration::from_secs(10))
                .await
                .unwrap(),
            20
        );
        assert!(bufs.is_empty());
        drop(a);
        let mut out = Vec::new();
        b.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"hello vectored world");
    }

    #[tokio::test]
    async fn a_full_socket_keeps_whole_unstarted_buffers_and_finishes_a_started_one() {
        let (a, mut b) = small_pair().await;
        let frame = Bytes::from(vec![7u8; 1000]);
        let mut bufs: VecDeque<Bytes> = std::iter::repeat_n(frame, 4000).collect();
        // Nobody reads for a while, so the socket fills; then everything is read.
        let reader = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let mut out = Vec::new();
            b.read_to_end(&mut out).await.unwrap();
            out.len()
        });
        let written = write_units_until_full(&a, &mut bufs, 1, std::time::Duration::from_secs(10))
            .await
            .unwrap();
        assert!(!bufs.is_empty(), "4 MB does not fit small socket buffers");
        assert_eq!(written % 1000, 0, "whole buffers only: {written}");
        assert_eq!(written as usize + bufs.len() * 1000, 4_000_000);
        drop(a);
        assert_eq!(reader.await.unwrap(), written as usize);
    }

    #[tokio::test]
    async fn units_are_written_whole_or_not_at_all() {
        let (a, mut b) = small_pair().await;
        // Units of a 7-byte prefix and a 993-byte body, like a chunk size line and a tag.
        let prefix = Bytes::from_static(b"prefix:");
        let body = Bytes::from(vec![7u8; 993]);
        let mut bufs = VecDeque::new();
        for _ in 0..4000 {
            bufs.push_back(prefix.clone());
            bufs.push_back(body.clone());
        }
        let reader = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let mut out = Vec::new();
            b.read_to_end(&mut out).await.unwrap();
            out
        });
        let written = write_units_until_full(&a, &mut bufs, 2, std::time::Duration::from_secs(10))
            .await
            .unwrap();
        assert!(!bufs.is_empty(), "4 MB does not fit small socket buffers");
        assert_eq!(written % 1000, 0, "whole units only: {written}");
        assert_eq!(bufs.len() % 2, 0, "whole units left");
        assert_eq!(bufs.front(), Some(&prefix), "the next unit not started");
        assert_eq!(written as usize + bufs.len() / 2 * 1000, 4_000_000);
        drop(a);
        let out = reader.await.unwrap();
        assert_eq!(out.len(), written as usize);
        assert!(out.chunks(1000).all(|u| u.starts_with(b"prefix:")));
    }
}

/// Bytes written once into an anonymous file in memory (`memfd`), then sent to any number of
/// sockets with [`send_file`]: the kernel passes the file's pages to the socket by reference,
/// where a `write` of a buffer copies it each time. Append-only: bytes once written never
/// change, which is what makes that safe (a socket may still hold a page after the send
/// returns). The pages are freed when the last handle is dropped and no socket holds them.
#[derive(Debug)]
pub struct MemoryFile {
    fd: OwnedFd,
    /// Bytes written (one writer appends; readers use the ranges `append` returned).
    len: AtomicU64,
}

impl MemoryFile {
    /// A new empty file; `name` shows in `/proc/PID/fd` (for debugging only).
    pub fn new(name: &str) -> std::io::Result<Self> {
        let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)?;
        Ok(MemoryFile {
            fd,
            len: AtomicU64::new(0),
        })
    }

    /// Appends `data` (one appending caller at a time); returns the offset it starts at.
    pub fn append(&self, mut data: &[u8]) -> std::io::Result<u64> {
        let start = self.len();
        let mut at = start;
        while !data.is_empty() {
            let n = rustix::io::pwrite(&self.fd, data, at)?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            at += n as u64;
            data = &data[n..];
        }
        self.len.store(at, Ordering::Release);
        Ok(start)
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl AsFd for MemoryFile {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Writes all of `data` flagged `MSG_MORE`: the kernel keeps it to leave in the same packets
/// as the write that follows (a response head before a [`send_file`] body).
pub async fn write_more(socket: &tokio::net::TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        socket.writable().await?;
        let sent = socket.try_io(Interest::WRITABLE, || {
            rustix::net::send(socket, data, SendFlags::MORE | SendFlags::NOSIGNAL)
                .map_err(std::io::Error::from)
        });
        match sent {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends `len` bytes of `file` from `offset` with `sendfile(2)`, waiting for the socket as
/// needed.
pub async fn send_file(
    socket: &tokio::net::TcpStream,
    file: &MemoryFile,
    mut offset: u64,
    len: usize,
) -> std::io::Result<()> {
    let end = offset + len as u64;
    while offset < end {
        socket.writable().await?;
        let left = usize::try_from(end - offset).unwrap_or(usize::MAX);
        let sent = socket.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(socket, file, Some(&mut offset), left)
                .map_err(std::io::Error::from)
        });
        match sent {
            // The file is shorter than asked: a caller's mistake, not a peer's.
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod file_tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    #[tokio::test]
    async fn a_memory_file_reaches_a_socket_whole_after_a_head_sent_with_more() {
        let file = MemoryFile::new("test").expect("memfd");
        // Larger than a socket buffer, so sending waits for the reader.
        let first: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(file.append(&first).expect("append"), 0);
        assert_eq!(file.append(b"tail").expect("append"), first.len() as u64);
        assert_eq!(file.len(), first.len() as u64 + 4);

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.expect("read");
            got
        });
        write_more(&server, b"head:").await.expect("head");
        // A range from the middle, then the rest.
        send_file(&server, &file, 1000, 500).await.expect("range");
        send_file(&server, &file, 0, file.len() as usize)
            .await
            .expect("whole");
        drop(server);
        let got = reader.await.expect("reader");
        let mut want = b"head:".to_vec();
        want.extend_from_slice(&first[1000..1500]);
        want.extend_from_slice(&first);
        want.extend_from_slice(b"tail");
        assert!(got == want, "{} bytes, want {}", got.len(), want.len());
    }
}
