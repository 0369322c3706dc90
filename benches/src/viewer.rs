//! Viewer connections: RTMP (our `Client`, or a lean reader on the sans-IO
//! `ClientConnection`) and HTTP-FLV. Each is one task on the generator's single thread.
//!
//! The lean readers wait for readability and then `recvmsg` into one scratch buffer shared
//! by every viewer of the thread (no task holds it across an `.await`), so a viewer costs a
//! socket, its protocol state and a few hundred bytes of counters, not a read buffer.
//!
//! They also ask the kernel for receive timestamps (SO_TIMESTAMPNS): with 1,000 viewers on
//! one thread, a frame's bytes can wait tens of milliseconds for their viewer's turn, and
//! that wait is the generator's, not the server's. The kernel's timestamp is when the bytes
//! reached the socket (on loopback: when the server wrote them).
//!
//! With `--tls` the same readers read ciphertext into the scratch buffer and decrypt it into
//! a second one shared the same way (see [`crate::tls`]); the receive timestamps are the
//! ciphertext's.

use std::cell::RefCell;
use std::io::IoSliceMut;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::BytesMut;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use nix::sys::time::TimeSpec;
use sluice_rtmp::chunk::ChunkLimits;
use sluice_rtmp::client::{ClientConfig, ClientEvent};
use sluice_rtmp::connection::ClientConnection;
use sluice_rtmp::handshake::{Handshake, Progress, Role};
use sluice_runtime::client::{Client, RtmpUrl};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::hls_viewer::{self, HlsTarget};
use crate::http::{BodyDecoder, HttpUrl, MAX_HEAD, head_end, parse_head};
use crate::media::{PROBE, TagScanner, classify};
use crate::state::{Clock, Rx, Shared, Viewer};
use crate::tls::Session;

/// Size of the scratch buffer every lean reader reads into. Larger reads save no syscalls at
/// these rates (a read returns what arrived since the last one) and made each connection's
/// chunk reader keep a larger buffer.
const SCRATCH: usize = 64 * 1024;

/// The read buffer and control-message buffer all lean readers of this thread share, and
/// the buffer TLS viewers decrypt into.
pub(crate) struct Scratch {
    pub(crate) buf: Vec<u8>,
    cmsg: Vec<u8>,
    plain: Vec<u8>,
}

thread_local! {
    pub(crate) static SCRATCH_BUF: RefCell<Scratch> = RefCell::new(Scratch {
        buf: vec![0; SCRATCH],
        cmsg: nix::cmsg_space!(TimeSpec),
        plain: Vec::new(),
    });
}

/// Hands what one read returned (`scratch.buf[..n]`) to `input`: as it is, or decrypted by
/// `tls` in pieces. Stops when `input` returns true, and returns whether it did.
fn deliver(
    tls: &mut Option<Session>,
    scratch: &mut Scratch,
    n: usize,
    mut input: impl FnMut(&[u8]) -> anyhow::Result<bool>,
) -> anyhow::Result<bool> {
    match tls {
        None => input(&scratch.buf[..n]),
        Some(session) => {
            if scratch.plain.is_empty() {
                scratch.plain = vec![0; SCRATCH];
            }
            session.decrypt(&scratch.buf[..n], &mut scratch.plain, input)
        }
    }
}

/// Writes `data` to the server, sealed when the viewer uses TLS.
async fn send(
    socket: &mut TcpStream,
    tls: &mut Option<Session>,
    data: &[u8],
) -> anyhow::Result<()> {
    match tls {
        Some(session) => session.write_all(socket, data).await,
        None => Ok(socket.write_all(data).await?),
    }
}

/// Reads from the server (decrypted when the viewer uses TLS); 0 is the end of the stream.
async fn receive(
    socket: &mut TcpStream,
    tls: &mut Option<Session>,
    buf: &mut [u8],
) -> anyhow::Result<usize> {
    match tls {
        Some(session) => session.read(socket, buf).await,
        None => Ok(socket.read(buf).await?),
    }
}

/// Sets up TLS on a connected socket when the run uses it.
async fn start_tls(
    socket: &mut TcpStream,
    cfg: &Config,
    addr: &str,
) -> anyhow::Result<Option<Session>> {
    match &cfg.tls {
        Some(config) => Ok(Some(Session::connect(socket, config.clone(), addr).await?)),
        None => Ok(None),
    }
}

/// Asks the kernel to timestamp what this socket receives; without it latency falls back to
/// the generator's read time.
pub(crate) fn enable_rx_timestamps(socket: &TcpStream) {
    let _ = setsockopt(socket, sockopt::ReceiveTimestampns, &true);
}

/// One non-blocking read into the scratch buffer: bytes read and the kernel's receive
/// timestamp of the last of them (realtime ns), if reported. `WouldBlock` clears tokio's
/// readiness, as `try_read` does.
pub(crate) fn recv(
    socket: &TcpStream,
    scratch: &mut Scratch,
) -> std::io::Result<(usize, Option<u64>)> {
    socket.try_io(Interest::READABLE, || {
        let mut iov = [IoSliceMut::new(&mut scratch.buf)];
        let msg = recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut scratch.cmsg),
            MsgFlags::empty(),
        )
        .map_err(std::io::Error::from)?;
        let mut stamp = None;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmTimestampns(ts) = c {
                    stamp = Some(ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64);
                }
            }
        }
        Ok((msg.bytes, stamp))
    })
}

/// Where and how viewers play.
#[derive(Debug)]
pub enum Target {
    /// RTMP with our `Client` (`lean: false`) or the lean reader.
    Rtmp { url: RtmpUrl, lean: bool },
    /// HTTP-FLV.
    Flv(HttpUrl),
    /// HLS (LL-HLS or classic).
    Hls(HlsTarget),
}

/// What every viewer task needs.
#[derive(Debug)]
pub struct Config {
    /// What to play, one per stream.
    pub targets: Vec<Target>,
    /// Deadline for connecting until the play starts.
    pub connect_timeout: Duration,
    /// A gap longer than this between media messages is a stall, ns.
    pub stall_ns: u64,
    /// The fixture has audio (viewers must get an audio sequence header first too).
    pub has_audio: bool,
    /// The run's clock.
    pub clock: Clock,
    /// Lean RTMP viewers read no faster than this (0: no limit).
    pub read_bytes_per_sec: u64,
    /// RTMP and HTTP-FLV viewers connect over TLS with this config (`--tls`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Socket receive buffer of rate-limited viewers (the kernel doubles it): what piles up in a
/// slow viewer's own buffer is latency the server cannot see.
const SLOW_VIEWER_RCVBUF: u32 = 8 * 1024;

fn slow_rcvbuf(cfg: &Config) -> Option<u32> {
    (cfg.read_bytes_per_sec > 0).then_some(SLOW_VIEWER_RCVBUF)
}

/// Runs one viewer of stream `stream` until `stop`; returns its counters.
pub async fn run(
    cfg: Rc<Config>,
    stream: usize,
    sh: Rc<RefCell<Shared>>,
    stop: CancellationToken,
) -> Viewer {
    let mut v = Viewer::new(cfg.clock.now_ns(), stream);
    let result = match &cfg.targets[stream] {
        Target::Rtmp { url, lean: false } => rtmp_client(&cfg, url, &sh, &stop, &mut v).await,
        Target::Rtmp { url, lean: true } => rtmp_lean(&cfg, url, &sh, &stop, &mut v).await,
        Target::Flv(url) => flv(&cfg, url, &sh, &stop, &mut v).await,
        Target::Hls(target) => hls_viewer::run(&cfg, target, &sh, &stop, &mut v).await,
    };
    if let Err(e) = result {
        v.ended(&sh.borrow(), format!("{e:#}"));
    }
    v
}

/// RTMP through `sluice_runtime::client::Client`: one event at a time, its own 64 KiB buffer.
async fn rtmp_client(
    cfg: &Config,
    url: &RtmpUrl,
    sh: &RefCell<Shared>,
    stop: &CancellationToken,
    v: &mut Viewer,
) -> anyhow::Result<()> {
    let mut client = tokio::select! {
        _ = stop.cancelled() => bail!("stopped while connecting"),
        c = Client::play(url, cfg.connect_timeout) => c.context("play")?,
    };
    v.started(cfg.clock.now_ns());
    loop {
        let event = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            e = client.next_event() => e.context("reading")?,
        };
        let rx = Rx {
            user_ns: cfg.clock.now_ns(),
            kernel_real_ns: None,
        };
        match event {
            Some(ClientEvent::Media {
                type_id,
                timestamp,
                payload,
            }) => {
                let class = classify(type_id, &payload[..payload.len().min(PROBE)]);
                let frame = (type_id, timestamp, payload.len() as u32, class);
                v.media(&mut sh.borrow_mut(), rx, cfg.stall_ns, cfg.has_audio, frame);
            }
            Some(ClientEvent::StreamEof) => bail!("StreamEOF"),
            Some(ClientEvent::Failed { code, description }) => bail!("{code}: {description}"),
            Some(_) => {}
            None => bail!("closed by the server"),
        }
    }
}

/// A connected viewer socket, its TLS session with `--tls`, and the sans-IO connection.
type Connected = (TcpStream, Option<Session>, ClientConnection, Vec<u8>);

/// Connects (with TLS under `--tls`) and handshakes; returns the socket, its TLS session, a
/// connection asked to play, and the bytes that followed the handshake.
async fn rtmp_connect(
    cfg: &Config,
    url: &RtmpUrl,
    rcvbuf: Option<u32>,
) -> anyhow::Result<Connected> {
    let mut socket = match rcvbuf {
        // Set before connecting, so the window the peer sees is small from the start.
        Some(size) => {
            let addr = tokio::net::lookup_host(&url.addr)
                .await?
                .next()
                .context("no address")?;
            let s = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            s.set_recv_buffer_size(size)?;
            s.connect(addr).await.context("connect")?
        }
        None => TcpStream::connect(&url.addr).await.context("connect")?,
    };
    socket.set_nodelay(true)?;
    enable_rx_timestamps(&socket);
    let mut tls = start_tls(&mut socket, cfg, &url.addr).await?;
    let mut hs = Handshake::new(Role::Client);
    send(&mut socket, &mut tls, &hs.start()?).await?;
    let mut buf = vec![0u8; 4096];
    let mut remaining = loop {
        let n = receive(&mut socket, &mut tls, &mut buf).await?;
        if n == 0 {
            bail!("closed during the handshake");
        }
        match hs.process(&buf[..n])? {
            Progress::InProgress { out } => send(&mut socket, &mut tls, &out).await?,
            Progress::Done { out, remaining } => {
                send(&mut socket, &mut tls, &out).await?;
                break remaining;
            }
        }
    };
    if let Some(session) = &mut tls {
        remaining.extend(session.take_buffered()?);
    }
    let mut conn = ClientConnection::new(
        ClientConfig {
            app: url.app.clone(),
            tc_url: url.tc_url.clone(),
            ..ClientConfig::default()
        },
        ChunkLimits::default(),
    );
    conn.session.connect();
    conn.session.play(&url.stream);
    Ok((socket, tls, conn, remaining))
}

/// Feeds bytes to the connection and handles its events. Errors end the viewer.
fn rtmp_input(
    cfg: &Config,
    conn: &mut ClientConnection,
    sh: &RefCell<Shared>,
    v: &mut Viewer,
    data: &[u8],
    kernel_real_ns: Option<u64>,
) -> anyhow::Result<()> {
    let now = cfg.clock.now_ns();
    let rx = Rx {
        user_ns: now,
        kernel_real_ns,
    };
    let mut sh = sh.borrow_mut();
    v.read(&sh, data.len());
    conn.handle_input(data).context("protocol")?;
    while let Some(event) = conn.session.poll_event() {
        match event {
            ClientEvent::PlayStarted => v.started(now),
            ClientEvent::Media {
                type_id,
                timestamp,
                payload,
            } => {
                let class = classify(type_id, &payload[..payload.len().min(PROBE)]);
                let frame = (type_id, timestamp, payload.len() as u32, class);
                v.media(&mut sh, rx, cfg.stall_ns, cfg.has_audio, frame);
            }
            ClientEvent::StreamEof => bail!("StreamEOF"),
            ClientEvent::Failed { code, description } => bail!("{code}: {description}"),
            ClientEvent::ConnectRejected { description } => {
                bail!("connect rejected: {description}")
            }
            _ => {}
        }
    }
    Ok(())
}

/// RTMP through the sans-IO `ClientConnection` and the shared scratch buffer.
async fn rtmp_lean(
    cfg: &Config,
    url: &RtmpUrl,
    sh: &RefCell<Shared>,
    stop: &CancellationToken,
    v: &mut Viewer,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + cfg.connect_timeout;
    let connected = tokio::select! {
        _ = stop.cancelled() => bail!("stopped while connecting"),
        c = timeout(cfg.connect_timeout, rtmp_connect(cfg, url, slow_rcvbuf(cfg))) => c,
    };
    let (mut socket, mut tls, mut conn, remaining) =
        connected.context("timed out connecting")??;
    rtmp_input(cfg, &mut conn, sh, v, &remaining, None)?;
    let mut out = BytesMut::new();
    let reading_since = tokio::time::Instant::now();
    let mut read_total = 0u64;
    loop {
        if cfg.read_bytes_per_sec > 0 {
            // Token bucket: sleep until the bytes read so far are within the rate.
            let due = reading_since
                + Duration::from_secs_f64(read_total as f64 / cfg.read_bytes_per_sec as f64);
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(due) => {}
            }
        }
        conn.drain_output(&mut out);
        if !out.is_empty() {
            send(&mut socket, &mut tls, &out).await.context("writing")?;
            out.clear();
        }
        if let Some(session) = tls.as_mut().filter(|s| s.wants_write()) {
            session.flush(&mut socket).await?;
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep_until(deadline), if v.started_ns.is_none() => {
                bail!("timed out waiting for the play to start")
            }
            r = socket.readable() => r.context("reading")?,
        }
        let read = SCRATCH_BUF.with_borrow_mut(|scratch| match recv(&socket, scratch) {
            Ok((0, _)) => Err(anyhow::anyhow!("closed by the server")),
            Ok((n, stamp)) => {
                read_total += n as u64;
                deliver(&mut tls, scratch, n, |data| {
                    rtmp_input(cfg, &mut conn, sh, v, data, stamp).map(|()| false)
                })
                .map(|_| ())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(anyhow::Error::new(e).context("reading")),
        });
        read?;
    }
}

/// HTTP-FLV: a GET, the response head, then the body through the de-chunker and the tag
/// scanner, reading into the shared scratch buffer.
async fn flv(
    cfg: &Config,
    url: &HttpUrl,
    sh: &RefCell<Shared>,
    stop: &CancellationToken,
    v: &mut Viewer,
) -> anyhow::Result<()> {
    let opened = tokio::select! {
        _ = stop.cancelled() => bail!("stopped while connecting"),
        c = timeout(cfg.connect_timeout, http_open(cfg, url)) => c,
    };
    let (mut socket, mut tls, framing, rest) =
        opened.context("timed out waiting for the response")??;
    v.started(cfg.clock.now_ns());
    let mut body = BodyDecoder::new(framing);
    let mut scanner = TagScanner::default();
    let mut input = |data: &[u8], stamp: Option<u64>, v: &mut Viewer| -> anyhow::Result<bool> {
        let rx = Rx {
            user_ns: cfg.clock.now_ns(),
            kernel_real_ns: stamp,
        };
        let mut sh = sh.borrow_mut();
        v.read(&sh, data.len());
        let mut bad = None;
        let done = body.feed(data, |bytes| {
            if bad.is_some() {
                return;
            }
            bad = scanner
                .feed(bytes, |t| {
                    let frame = (t.tag_type, t.timestamp, t.size, t.class);
                    v.media(&mut sh, rx, cfg.stall_ns, cfg.has_audio, frame);
                })
                .err();
        })?;
        if let Some(e) = bad {
            bail!(e);
        }
        Ok(done)
    };
    if input(&rest, None, v)? {
        bail!("response body ended");
    }
    loop {
        if let Some(session) = tls.as_mut().filter(|s| s.wants_write()) {
            session.flush(&mut socket).await?;
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            r = socket.readable() => r.context("reading")?,
        }
        let done = SCRATCH_BUF.with_borrow_mut(|scratch| match recv(&socket, scratch) {
            Ok((0, _)) => Err(anyhow::anyhow!("closed by the server")),
            Ok((n, stamp)) => deliver(&mut tls, scratch, n, |data| input(data, stamp, v)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(anyhow::Error::new(e).context("reading")),
        })?;
        if done {
            bail!("response body ended");
        }
    }
}

/// An opened HTTP-FLV response: the socket, its TLS session with `--tls`, the body framing
/// and the body bytes read with the head.
type Opened = (TcpStream, Option<Session>, crate::http::Framing, Vec<u8>);

/// Connects (with TLS under `--tls`), sends the GET and reads the response head; a status
/// other than 200 is an error.
async fn http_open(cfg: &Config, url: &HttpUrl) -> anyhow::Result<Opened> {
    let mut socket = TcpStream::connect(&url.addr).await.context("connect")?;
    socket.set_nodelay(true)?;
    enable_rx_timestamps(&socket);
    let mut tls = start_tls(&mut socket, cfg, &url.host).await?;
    send(&mut socket, &mut tls, url.request().as_bytes()).await?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    loop {
        let n = receive(&mut socket, &mut tls, &mut buf).await?;
        if n == 0 {
            bail!("closed before the response head");
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head_end(&head) {
            let (status, framing) = parse_head(&head[..end])?;
            if status != 200 {
                bail!("HTTP {status}");
            }
            let mut rest = head.split_off(end);
            if let Some(session) = &mut tls {
                rest.extend(session.take_buffered()?);
            }
            return Ok((socket, tls, framing, rest));
        }
        if head.len() > MAX_HEAD {
            bail!("response head over {MAX_HEAD} bytes");
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn recv_reports_kernel_receive_timestamps() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        enable_rx_timestamps(&client);
        let (mut server, _) = listener.accept().await.unwrap();
        let mut scratch = Scratch {
            buf: vec![0; 64],
            cmsg: nix::cmsg_space!(TimeSpec),
            plain: Vec::new(),
        };
        // The kernel turns receive timestamping on for the machine a moment after the first
        // socket asks (deferred work), so the first segments may carry none.
        let mut stamped = None;
        for _ in 0..100 {
            let before = Clock::real_ns();
            server.write_all(b"hello").await.unwrap();
            client.readable().await.unwrap();
            let (n, stamp) = recv(&client, &mut scratch).unwrap();
            assert_eq!(&scratch.buf[..n], b"hello");
            if let Some(stamp) = stamp {
                stamped = Some((before, stamp, Clock::real_ns()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (before, stamp, after) = stamped.expect("SO_TIMESTAMPNS on loopback TCP");
        assert!(
            before <= stamp && stamp <= after,
            "{before} {stamp} {after}"
        );
        let again = recv(&client, &mut scratch);
        assert_eq!(again.unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
    }
}
