//! A kernel socket for a connection whose bytes are not on one: TLS terminated in this
//! process. [`pair`] makes a connected `socketpair(AF_UNIX, SOCK_STREAM)`; one end goes to a
//! plain front end as if it were the accepted TCP socket, and [`pump`] moves bytes between
//! the other end and the decrypted stream, both ways, until either side is done.
//!
//! Why a socket, not a stream type: the data path writes to kernel sockets. A stream's
//! shared writer ([`crate::fanout`]) sends one serialised buffer to many viewers' sockets with
//! one non-blocking `sendmsg` each, the viewer driver hands the kernel only what a socket takes
//! now, and HLS parts go out with `sendfile` from memory files. None of that has a meaning for
//! a TLS stream, whose bytes differ per viewer; making the runtime generic over streams would
//! give every viewer a copy and a task of its own, which is what the shared writer exists to
//! avoid. So TLS is a layer in front: the plain path stays as it is for clear-text viewers,
//! and a TLS viewer costs the pump on top (a copy and a seal per byte).
//!
//! Why not kernel TLS, which would keep one socket: the kernel's `tls` upper-layer protocol is
//! not available on the machines we run on (`/proc/sys/net/ipv4/tcp_available_ulp` lacks
//! it), and with it `sendfile` and the shared writer would still seal per viewer.
//!
//! Socket options the plain path sets on its end (`TCP_NODELAY`, `TCP_NOTSENT_LOWAT`) do not
//! apply to a Unix socket and fail harmlessly; the pump's end of the TCP connection has its
//! own. Between a TLS viewer's latency budget and its client sit the Unix socket's buffer, the
//! pump's ([`OUT_BUF`]) and the TCP socket's: the ring still decides what a slow viewer skips,
//! a little later than for a clear-text one.

use std::os::fd::OwnedFd;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;

use crate::close::GOODBYE;

/// The pump's buffer from the client towards the plain handler (requests, acks; a
/// publisher's media).
pub const IN_BUF: usize = 16 * 1024;
/// The pump's buffer from the plain handler towards the client: one full TLS record.
pub const OUT_BUF: usize = 16 * 1024;
/// Once the plain handler has closed its end, how long the client has to close its side.
const LINGER: Duration = GOODBYE;

/// A connected pair: the end for the plain handler, as the `TcpStream` it expects (reads,
/// writes, vectored writes, `sendfile` and shutdown work the same on a Unix stream socket),
/// and the end for [`pump`]. Both non-blocking and registered with the runtime (call it
/// inside one).
pub fn pair() -> std::io::Result<(TcpStream, UnixStream)> {
    let (handler, pump) = std::os::unix::net::UnixStream::pair()?;
    handler.set_nonblocking(true)?;
    pump.set_nonblocking(true)?;
    let handler = std::net::TcpStream::from(OwnedFd::from(handler));
    Ok((TcpStream::from_std(handler)?, UnixStream::from_std(pump)?))
}

/// Moves bytes between `stream` (the client, decrypted) and `plain` (the pump's end of a
/// [`pair`]) until both directions are done. Each direction ends by shutting down the
/// writing side it feeds (for TLS: a close_notify, then the TCP FIN), so an end of input
/// travels through. Once the plain handler has closed, the client has [`LINGER`] to finish;
/// on shutdown the handler's goodbye still gets through, and the pump gives up
/// `2 × GOODBYE` after `shutdown` is cancelled. Errors end the connection quietly: they are
/// the client's or the handler's, and each side reports its own.
pub async fn pump<S>(stream: S, plain: UnixStream, shutdown: &CancellationToken)
where
    S: AsyncRead + AsyncWrite + Send,
{
    let (mut from_client, mut to_client) = tokio::io::split(stream);
    let (mut from_plain, mut to_plain) = plain.into_split();
    let up = async {
        let _ = forward(&mut from_client, &mut to_plain, IN_BUF).await;
        let _ = to_plain.shutdown().await;
    };
    let down = async {
        let _ = forward(&mut from_plain, &mut to_client, OUT_BUF).await;
        let _ = to_client.shutdown().await;
    };
    tokio::pin!(up, down);
    let work = async {
        tokio::select! {
            () = &mut down => {
                let _ = timeout(LINGER, &mut up).await;
            }
            () = &mut up => down.await,
        }
    };
    let drained = async {
        shutdown.cancelled().await;
        sleep(2 * GOODBYE).await;
    };
    tokio::select! {
        () = work => {}
        () = drained => {}
    }
}

/// Copies `from` into `to` until the end of input (Ok) or an error, with a buffer of `size`
/// bytes. Each read is written and flushed before the next (a TLS writer holds sealed
/// records until flushed), so what is in flight is bounded by the buffer.
async fn forward<R, W>(from: &mut R, to: &mut W, size: usize) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; size];
    let mut total = 0;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    use bytes::Bytes;

    /// The plain side works on its end as on a TCP socket: vectored writes, reads, shutdown;
    /// and an end of input travels through the pump both ways.
    #[tokio::test]
    async fn the_plain_side_talks_through_the_pump_and_ends_travel_through() {
        let (handler, pump_end) = pair().expect("pair");
        let (client, far) = tokio::io::duplex(1024);
        let shutdown = CancellationToken::new();
        let pumping = tokio::spawn(async move { pump(far, pump_end, &shutdown).await });
        let (mut client_rx, mut client_tx) = tokio::io::split(client);

        client_tx
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut got = vec![0u8; 18];
        let mut filled = 0;
        while filled < got.len() {
            filled += crate::io::read(&handler, &mut got[filled..]).await.unwrap();
        }
        assert_eq!(&got, b"GET / HTTP/1.1\r\n\r\n");

        let mut bufs: VecDeque<Bytes> = [&b"HTTP/1.1 200 OK\r\n"[..], b"\r\n", b"body"]
            .into_iter()
            .map(Bytes::from_static)
            .collect();
        crate::io::write_bufs(&handler, &mut bufs).await.unwrap();
        crate::io::shutdown_write(&handler).unwrap();
        let mut answer = Vec::new();
        client_rx.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"HTTP/1.1 200 OK\r\n\r\nbody");

        // The client's end of input reaches the handler as a read of 0.
        client_tx.shutdown().await.unwrap();
        let mut rest = [0u8; 8];
        assert_eq!(crate::io::read(&handler, &mut rest).await.unwrap(), 0);
        drop(handler);
        timeout(Duration::from_secs(5), pumping)
            .await
            .expect("the pump ends once both sides are done")
            .unwrap();
    }

    /// What HLS answers with works on the handler's end too: `send(MSG_MORE)` and
    /// `sendfile` from a memory file, large enough to fill the socket and wait.
    #[tokio::test]
    async fn write_more_and_sendfile_work_on_the_handler_end() {
        let (handler, mut pump_end) = pair().expect("pair");
        let file = crate::io::MemoryFile::new("bridge-test").expect("memfd");
        let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        file.append(&body).expect("append");
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            pump_end.read_to_end(&mut got).await.unwrap();
            got
        });
        crate::io::write_more(&handler, b"head:").await.unwrap();
        crate::io::send_file(&handler, &file, 0, body.len())
            .await
            .unwrap();
        crate::io::shutdown_write(&handler).unwrap();
        let got = reader.await.unwrap();
        assert_eq!(&got[..5], b"head:");
        assert!(got[5..] == body[..], "the file's bytes, in order");
    }

    /// A client that never closes its side does not keep the pump once the handler is gone.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_stays_is_let_go_after_the_handler_closed() {
        let (handler, pump_end) = pair().expect("pair");
        let (_client, far) = tokio::io::duplex(1024);
        let shutdown = CancellationToken::new();
        let pumping = tokio::spawn(async move { pump(far, pump_end, &shutdown).await });
        drop(handler);
        timeout(LINGER * 4, pumping)
            .await
            .expect("let go after the linger")
            .unwrap();
    }

    /// Shutdown ends a pump whose sides are both still open, after the goodbye time.
    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_a_busy_pump() {
        let (_handler, pump_end) = pair().expect("pair");
        let (_client, far) = tokio::io::duplex(1024);
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let pumping = tokio::spawn(async move { pump(far, pump_end, &token).await });
        sleep(Duration::from_secs(60)).await;
        assert!(
            !pumping.is_finished(),
            "nothing ends an open pair but shutdown"
        );
        shutdown.cancel();
        timeout(GOODBYE * 4, pumping)
            .await
            .expect("ended after the drain")
            .unwrap();
    }
}
