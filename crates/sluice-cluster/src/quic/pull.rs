//! The edge side of the relay: one QUIC connection per upstream address, shared by every
//! pull to it; a router task per connection that hands each GOP stream to its pull; and
//! [`QuicSource`], which reads a pull's newest GOP.
//!
//! Locks here (the peer table, a connection's routes, a pull's inbox) are held for a map
//! or queue operation only, never across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::pending;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use parking_lot::Mutex;
use quinn::{Connection, ReadError, RecvStream, SendStream};
use sluice_core::topology::Via;
use sluice_media::{Frame, FrameParts};
use sluice_relay::{
    Control, ControlDecoder, ControlEncoder, GopDecoder, GopEvent, GopHeader, Limits, Pull,
    RefuseCode,
};
use tokio::sync::{Notify, OnceCell};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};

use super::{CONTROL_READ, HeaderSet, QuicRelay, ReadFail, code, read_control};
use crate::source::PullError;

/// When a newer GOP stream begins, the current one is still read to its end for this long
/// (its last packets may merely have been overtaken by the newer stream's first); then it is
/// abandoned for the newer one.
pub const SWITCH_GRACE: Duration = Duration::from_millis(100);
/// GOP streams waiting for a pull to take them; beyond this the oldest is dropped (stopped).
const INBOX: usize = 4;
/// Deadline for a GOP stream's header once the stream is open.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes asked of QUIC per read of a GOP stream.
const GOP_READ: usize = 64 << 10;

/// The connection to one peer address, made once by whichever pull needs it first.
#[derive(Debug, Default)]
pub(super) struct Peer {
    link: OnceCell<Arc<Link>>,
}

/// An open connection and the pulls on it.
#[derive(Debug)]
struct Link {
    conn: Connection,
    routes: Arc<Routes>,
}

/// Each pull's inbox, by pull id (its control stream's id).
type Routes = Mutex<HashMap<u64, Arc<Inbox>>>;

/// GOP streams that arrived for one pull, newest last.
#[derive(Debug, Default)]
struct Inbox {
    queue: Mutex<VecDeque<Gop>>,
    notify: Notify,
}

impl Inbox {
    fn push(&self, gop: Gop) {
        let dropped = {
            let mut queue = self.queue.lock();
            queue.push_back(gop);
            (queue.len() > INBOX).then(|| queue.pop_front())
        };
        // Dropping a stream stops it, which takes quinn's lock: not under ours.
        drop(dropped);
        self.notify.notify_one();
    }

    fn pop(&self) -> Option<Gop> {
        self.queue.lock().pop_front()
    }
}

/// One GOP stream being read.
#[derive(Debug)]
struct Gop {
    seq: u64,
    recv: RecvStream,
    decoder: GopDecoder,
    /// The upstream finished the stream (everything is in the decoder).
    finished: bool,
    /// When its header arrived.
    arrived: Instant,
}

/// Removes a pull's route when the pull is dropped, so its late GOP streams are stopped.
#[derive(Debug)]
struct Route {
    routes: Arc<Routes>,
    pull_id: u64,
}

impl Drop for Route {
    fn drop(&mut self) {
        self.routes.lock().remove(&self.pull_id);
    }
}

/// Opens a pull (the caller bounds it with the deadline).
pub(super) async fn open(
    relay: &QuicRelay,
    addr: &str,
    app: &str,
    name: &str,
    via: &Via,
) -> Result<QuicSource, PullError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (peer, link) = link(relay, addr).await?;
        match link.conn.open_bi().await {
            Ok((send, recv)) => return start(&link, addr, send, recv, app, name, via).await,
            Err(error) if attempts < 2 => {
                // The cached connection closed meanwhile: connect again once.
                debug!(%error, peer = addr, "cached relay connection closed");
                forget(relay, addr, &peer);
            }
            Err(error) => return Err(PullError::Connect(format!("{addr}: {error}"))),
        }
    }
}

/// The connection to `addr`, made now if there is none or it closed.
async fn link(relay: &QuicRelay, addr: &str) -> Result<(Arc<Peer>, Arc<Link>), PullError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let peer = relay
            .peers
            .lock()
            .entry(addr.to_owned())
            .or_default()
            .clone();
        let link = peer
            .link
            .get_or_try_init(|| connect(relay, addr))
            .await?
            .clone();
        if link.conn.close_reason().is_none() || attempts >= 2 {
            return Ok((peer, link));
        }
        forget(relay, addr, &peer);
    }
}

/// Drops `peer` from the table (unless another pull already replaced it).
fn forget(relay: &QuicRelay, addr: &str, peer: &Arc<Peer>) {
    let mut peers = relay.peers.lock();
    if peers.get(addr).is_some_and(|p| Arc::ptr_eq(p, peer)) {
        peers.remove(addr);
    }
}

async fn connect(relay: &QuicRelay, addr: &str) -> Result<Arc<Link>, PullError> {
    let connect_error = |e: &dyn fmt::Display| PullError::Connect(format!("{addr}: {e}"));
    let v4_only = relay.endpoint.local_addr().is_ok_and(|a| a.is_ipv4());
    let target: SocketAddr = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| connect_error(&e))?
        .find(|a| !v4_only || a.is_ipv4())
        .ok_or_else(|| connect_error(&"no usable address"))?;
    let conn = relay
        .endpoint
        .connect_with(relay.client.clone(), target, &relay.server_name)
        .map_err(|e| connect_error(&e))?
        .await
        .map_err(|e| connect_error(&e))?;
    let routes = Arc::new(Routes::default());
    relay.tracker.spawn(
        route(conn.clone(), routes.clone(), relay.closing.clone())
            .instrument(info_span!("relay_link", peer = addr)),
    );
    Ok(Arc::new(Link { conn, routes }))
}

/// Accepts a connection's GOP streams, reads each one's header and hands it to its pull;
/// streams for no current pull are stopped. Ends with the connection.
async fn route(conn: Connection, routes: Arc<Routes>, closing: CancellationToken) {
    let mut heads = FuturesUnordered::new();
    loop {
        tokio::select! {
            accepted = conn.accept_uni() => match accepted {
                Ok(recv) => heads.push(read_head(recv)),
                Err(error) => {
                    debug!(%error, "relay connection closed");
                    break;
                }
            },
            Some(head) = heads.next(), if !heads.is_empty() => {
                let Some((header, mut gop)) = head else { continue };
                let inbox = routes.lock().get(&header.pull_id).cloned();
                match inbox {
                    Some(inbox) => inbox.push(gop),
                    None => {
                        let _ = gop.recv.stop(code::UNKNOWN_PULL);
                    }
                }
            }
            _ = closing.cancelled() => break,
        }
    }
    // Pulls notice the closed connection on their control streams.
    routes.lock().clear();
}

/// Reads a GOP stream's header (stopping the stream if it does not come, or is wrong).
async fn read_head(mut recv: RecvStream) -> Option<(GopHeader, Gop)> {
    let mut decoder = GopDecoder::new(Limits::default());
    let mut finished = false;
    let read = async {
        loop {
            match decoder.poll() {
                Ok(Some(GopEvent::Header(header))) => return Some(header),
                Ok(None) if !finished => {}
                _ => return None,
            }
            match recv.read_chunk(GOP_READ, true).await {
                Ok(Some(chunk)) => decoder.feed(chunk.bytes),
                Ok(None) => finished = true,
                Err(_) => return None,
            }
        }
    };
    let header = timeout(HEAD_TIMEOUT, read).await.ok().flatten();
    let Some(header) = header else {
        let _ = recv.stop(code::PROTOCOL);
        return None;
    };
    let gop = Gop {
        seq: header.gop_seq,
        recv,
        decoder,
        finished,
        arrived: Instant::now(),
    };
    Some((header, gop))
}

/// Sends the request on a new control stream and waits for the answer.
async fn start(
    link: &Link,
    addr: &str,
    mut send: SendStream,
    mut recv: RecvStream,
    app: &str,
    name: &str,
    via: &Via,
) -> Result<QuicSource, PullError> {
    // The control stream's id names the pull, so its GOP streams are routed even before
    // the answer arrives.
    let pull_id = u64::from(send.id());
    let inbox = Arc::new(Inbox::default());
    link.routes.lock().insert(pull_id, inbox.clone());
    let route = Route {
        routes: link.routes.clone(),
        pull_id,
    };
    let _ = send.set_priority(i32::MAX);
    let request = Control::Pull(Pull {
        app: app.to_owned(),
        name: name.to_owned(),
        via: via.0.iter().map(|n| n.to_string()).collect(),
    });
    let bytes = ControlEncoder::new()
        .encode(&request)
        .map_err(|e| PullError::Protocol(e.to_string()))?;
    send.write_all(&bytes)
        .await
        .map_err(|e| PullError::Connect(format!("{addr}: {e}")))?;
    let mut control = ControlDecoder::new(Limits::default());
    match read_control(&mut recv, &mut control).await {
        Ok(Some(Control::Accepted { pull_id: id })) if id == pull_id => {}
        Ok(Some(Control::Refused { code, message })) => {
            return Err(match code {
                RefuseCode::NotFound => PullError::NotFound(message),
                RefuseCode::Loop | RefuseCode::TooDeep | RefuseCode::NotAllowed => {
                    PullError::Refused(message)
                }
                RefuseCode::Unsupported(version) => {
                    debug!(peer = addr, version, %message, "upstream speaks another relay version");
                    PullError::Version(version)
                }
            });
        }
        Ok(Some(other)) => {
            return Err(PullError::Protocol(format!(
                "{addr} answered a pull with {other:?}"
            )));
        }
        Ok(None) => return Err(PullError::Closed),
        Err(ReadFail::Decode(e)) => return Err(PullError::Protocol(format!("{addr}: {e}"))),
        Err(ReadFail::Read(ReadError::ConnectionLost(e))) => {
            return Err(PullError::Connect(format!("{addr}: {e}")));
        }
        Err(ReadFail::Read(_)) => return Err(PullError::Closed),
    }
    Ok(QuicSource(Box::new(Pulling {
        peer: addr.to_owned(),
        pull_id,
        send,
        recv,
        control,
        inbox,
        current: None,
        newer: None,
        switch_at: None,
        delivered: Default::default(),
        failed: None,
        _route: route,
    })))
}

/// A pull over the relay, yielding the stream's frames in order, from its newest GOP.
/// Dropping it finishes its control stream, so the upstream stops sending.
#[derive(Debug)]
pub struct QuicSource(Box<Pulling>);

/// A pull's state (boxed: a [`crate::source::Source`] stays small).
struct Pulling {
    peer: String,
    pull_id: u64,
    send: SendStream,
    recv: RecvStream,
    control: ControlDecoder,
    inbox: Arc<Inbox>,
    /// The GOP being delivered.
    current: Option<Gop>,
    /// The newest GOP that arrived since (set only while `current` is).
    newer: Option<Gop>,
    /// When `current` is abandoned for `newer`.
    switch_at: Option<Instant>,
    /// The header payloads last delivered (repeats are skipped).
    delivered: HeaderSet<Bytes>,
    /// How the pull ended, returned again on later calls.
    failed: Option<PullError>,
    _route: Route,
}

impl fmt::Debug for Pulling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pulling")
            .field("peer", &self.peer)
            .field("pull_id", &self.pull_id)
            .field("gop", &self.current.as_ref().map(|g| g.seq))
            .field("newer", &self.newer.as_ref().map(|g| g.seq))
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Drop for Pulling {
    fn drop(&mut self) {
        let _ = self.send.finish();
        let _ = self.recv.stop(code::DONE);
    }
}

impl QuicSource {
    /// The next frame, in order, built from the parts the upstream sent (not parsed again;
    /// `dts` on the upstream's 64-bit timeline); `Err(Ended)` when the upstream said the
    /// stream ended, `Err(Closed)` when the connection or the control stream closed.
    /// Cancel-safe.
    pub async fn next(&mut self) -> Result<Frame, PullError> {
        let pull = &mut *self.0;
        if let Some(error) = &pull.failed {
            return Err(error.clone());
        }
        let result = pull.next_frame().await;
        if let Err(error) = &result {
            pull.failed = Some(error.clone());
        }
        result
    }
}

impl Pulling {
    async fn next_frame(&mut self) -> Result<Frame, PullError> {
        loop {
            self.take_arrivals();
            if self.switch_at.is_some_and(|at| at <= Instant::now()) {
                self.advance();
            }
            if let Some(gop) = &mut self.current {
                match gop.decoder.poll() {
                    Ok(Some(GopEvent::Frame(parts))) => {
                        if self.is_repeat(&parts) {
                            continue;
                        }
                        return Ok(Frame::from_parts(parts));
                    }
                    Ok(Some(GopEvent::Header(_))) => {
                        return Err(PullError::Protocol("a GOP stream with two headers".into()));
                    }
                    Ok(None) if gop.finished => {
                        gop.decoder
                            .finish()
                            .map_err(|e| PullError::Protocol(format!("GOP stream: {e}")))?;
                        self.advance();
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => return Err(PullError::Protocol(format!("GOP stream: {e}"))),
                }
            }
            let Self {
                recv,
                inbox,
                current,
                switch_at,
                ..
            } = self;
            let switch = async {
                match *switch_at {
                    Some(at) => sleep_until(at).await,
                    None => pending().await,
                }
            };
            let gop_read = async {
                match current {
                    Some(gop) if !gop.finished => gop.recv.read_chunk(GOP_READ, true).await,
                    _ => pending().await,
                }
            };
            tokio::select! {
                biased;
                read = recv.read_chunk(CONTROL_READ, true) => match read {
                    Ok(Some(chunk)) => {
                        self.control.feed(chunk.bytes);
                        if let Some(msg) = self
                            .control
                            .poll()
                            .map_err(|e| PullError::Protocol(e.to_string()))?
                        {
                            return Err(match msg {
                                Control::Ended => PullError::Ended,
                                other => PullError::Protocol(format!("unexpected {other:?} during a pull")),
                            });
                        }
                    }
                    Ok(None) | Err(_) => return Err(PullError::Closed),
                },
                _ = inbox.notify.notified() => {}
                read = gop_read => match read {
                    Ok(Some(chunk)) => {
                        if let Some(gop) = &mut self.current {
                            gop.decoder.feed(chunk.bytes);
                        }
                    }
                    Ok(None) => {
                        if let Some(gop) = &mut self.current {
                            gop.finished = true;
                        }
                    }
                    Err(ReadError::ConnectionLost(_)) => return Err(PullError::Closed),
                    // Reset by the upstream: the GOP came too late and was cancelled.
                    Err(_) => self.advance(),
                },
                _ = switch => self.advance(),
            }
        }
    }

    /// Takes GOP streams that arrived: older than what is already here, they are dropped;
    /// else the newest becomes `newer` (or `current`, if there is none).
    fn take_arrivals(&mut self) {
        while let Some(gop) = self.inbox.pop() {
            let newest = self.newer.as_ref().or(self.current.as_ref()).map(|g| g.seq);
            if newest.is_some_and(|seq| gop.seq <= seq) {
                continue;
            }
            if self.current.is_none() {
                self.current = Some(gop);
            } else {
                // The grace runs from the first newer GOP's arrival, not from this call: a
                // pull read late switches at once rather than delivering a stale tail.
                self.switch_at.get_or_insert(gop.arrived + SWITCH_GRACE);
                self.newer = Some(gop);
            }
        }
    }

    /// Drops the current GOP (stopping its stream if unfinished) for the newer one.
    fn advance(&mut self) {
        self.current = self.newer.take();
        self.switch_at = None;
    }

    /// Whether `frame` repeats the header of its kind last delivered.
    fn is_repeat(&mut self, frame: &FrameParts) -> bool {
        let Some(slot) = self.delivered.slot(frame.kind, frame.seq_header) else {
            return false;
        };
        if slot.as_ref() == Some(&frame.payload) {
            return true;
        }
        *slot = Some(frame.payload.clone());
        false
    }
}
