//! The shared writer: viewers that have caught up with a stream are written by one task per
//! stream (per wire format and runtime worker), straight from the ring's tail, instead of
//! each being woken to read the ring itself.
//!
//! Why: with every frame written at once (`merge_write_ms = 0`), a thousand viewers meant a
//! thousand task wake-ups, change notifications, ring reads and readiness polls per frame,
//! on top of the write each needs; that overhead was a third of the server's CPU (see
//! benches/README.md). The writer pays one wake-up and one ring read per frame (or per
//! batching window, which it keeps for all its members) and builds each frame's wire form
//! once.
//!
//! A viewer joins ([`join`]) only when its cursor stands at the ring's end with nothing
//! pending ([`Cursor::live_position`]). Each new frame goes to each member in one
//! non-blocking vectored write. The writer hands a member back to its own task, which then
//! reads its cursor from where the writer stopped (so the schedule's skips and drops apply
//! again), when: its socket does not take a whole frame (the task finishes that frame
//! first), the writer falls further behind than the schedule allows, a reload sets a byte
//! trigger (which counts per viewer), or the publisher leaves. A viewer that must write on
//! its own (session output, its goodbye) leaves first ([`Joined::leave`]).
//!
//! A pass writes a chunk of members at a time under the group's lock (non-blocking system
//! calls, no `.await`) and yields between chunks; a member leaving meanwhile waits for at
//! most one chunk.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::Mutex;
use sluice_core::metrics::ProtocolCounters;
use sluice_core::{Cursor, Schedule, Stream, Tail};
use sluice_media::{Frame, FrameKind};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tracing::{Instrument, debug, info_span};

use crate::Context;
use crate::io::MAX_SLICES;
use crate::pacing::ScheduleCache;
use crate::wire::Wire;

/// Most frames one pass reads from the ring (a writer this far behind hands its viewers
/// back long before, by the schedule's thresholds).
const PASS_FRAMES: usize = 256;

/// Which writer a viewer joins.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    /// The stream's address: a group holds its stream, so the address is not reused while
    /// the entry exists.
    stream: usize,
    wire: Wire,
    shard: usize,
}

/// The writers of a node (in its [`Context`]).
#[derive(Debug, Default)]
pub(crate) struct Fanout {
    groups: DashMap<GroupKey, Arc<Group>>,
    next_shard: AtomicUsize,
    shards: OnceLock<usize>,
}

impl Fanout {
    /// Writers per stream and format: one per runtime worker, so that one stream's viewers
    /// are written on every core.
    fn shard(&self) -> usize {
        let shards = *self.shards.get_or_init(|| {
            tokio::runtime::Handle::try_current()
                .map(|h| h.metrics().num_workers())
                .unwrap_or(1)
                .max(1)
        });
        self.next_shard.fetch_add(1, Ordering::Relaxed) % shards
    }
}

#[derive(Debug)]
struct Group {
    key: GroupKey,
    stream: Arc<Stream>,
    inner: Mutex<Members>,
    /// Signalled when the last member leaves on its own, so the writer ends (and lets go
    /// of the stream) even if the stream never changes again.
    emptied: Notify,
}

#[derive(Debug)]
struct Members {
    /// The next ring frame this writer delivers.
    pos: u64,
    members: Vec<Member>,
    /// The writer's task has ended (or is ending); joiners make a new group.
    closed: bool,
}

#[derive(Debug)]
struct Member {
    seat: Arc<Seat>,
    socket: Arc<TcpStream>,
    /// The member's next frame (at or after the writer's position).
    next: u64,
    /// Header frames delivered, for the member's cursor to count as sent.
    headers: Vec<Arc<Frame>>,
}

/// A viewer's side of a writer: where the writer leaves what it hands back.
#[derive(Debug, Default)]
struct Seat {
    woken: Notify,
    back: Mutex<Option<Handback>>,
}

/// What a viewer's task takes over when it leaves or is handed back.
#[derive(Debug)]
pub(crate) struct Handback {
    /// The viewer's next ring frame.
    pub(crate) next: u64,
    /// Header frames the writer delivered.
    pub(crate) headers: Vec<Arc<Frame>>,
    /// The rest of a frame the socket took only part of: the task writes it before
    /// anything else.
    pub(crate) rest: VecDeque<Bytes>,
    /// A write failed; the connection is done.
    pub(crate) failed: bool,
}

/// Why a viewer could not be taken back from the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TakeBackError {
    /// The socket took nothing of the started frame's rest for the stall deadline.
    Stalled,
    /// A write failed.
    Io,
}

impl Handback {
    /// Takes the viewer back: writes the rest of the frame the writer started (waiting at
    /// most `stall` for the socket), then moves `cursor` to where the writer stopped.
    /// Returns the bytes written.
    pub(crate) async fn finish(
        self,
        socket: &TcpStream,
        cursor: &mut Cursor,
        stall: Duration,
    ) -> Result<u64, TakeBackError> {
        if self.failed {
            return Err(TakeBackError::Io);
        }
        let mut rest = self.rest;
        let mut written = 0;
        if !rest.is_empty() {
            written = tokio::time::timeout(stall, crate::io::write_bufs(socket, &mut rest))
                .await
                .map_err(|_| TakeBackError::Stalled)?
                .map_err(|_| TakeBackError::Io)?;
        }
        cursor.resume_at(self.next, &self.headers);
        Ok(written)
    }
}

/// A viewer the writer serves, until [`Joined::leave`] (or drop).
#[derive(Debug)]
pub(crate) struct Joined {
    group: Arc<Group>,
    seat: Arc<Seat>,
    ctx: Arc<Context>,
    protocol: &'static str,
    left: bool,
}

impl Joined {
    /// Resolves when the writer has handed this viewer back.
    pub(crate) async fn handed_back(&self) {
        self.seat.woken.notified().await;
    }

    /// Leaves the writer (if it has not handed the viewer back already) and returns what
    /// the viewer's task takes over.
    pub(crate) fn leave(mut self) -> Handback {
        self.take()
    }

    fn take(&mut self) -> Handback {
        self.left = true;
        let mut inner = self.group.inner.lock();
        if let Some(i) = inner
            .members
            .iter()
            .position(|m| Arc::ptr_eq(&m.seat, &self.seat))
        {
            let member = inner.members.swap_remove(i);
            let emptied = inner.members.is_empty();
            drop(inner);
            if emptied {
                self.group.emptied.notify_one();
            }
            self.ctx.metrics.fanout_left(self.protocol, "viewer");
            return Handback {
                next: member.next,
                headers: member.headers,
                rest: VecDeque::new(),
                failed: false,
            };
        }
        drop(inner);
        self.seat.back.lock().take().unwrap_or(Handback {
            // Unreachable in practice: a member is either in the group or handed back.
            next: 0,
            headers: Vec::new(),
            rest: VecDeque::new(),
            failed: true,
        })
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        if !self.left {
            let _ = self.take();
        }
    }
}

/// Hands a caught-up viewer to its stream's writer for `wire`; None when the cursor is not
/// caught up, or the writer has already passed where it stands (the viewer reads on and
/// tries again).
pub(crate) fn join(
    ctx: &Arc<Context>,
    cursor: &Cursor,
    socket: &Arc<TcpStream>,
    wire: Wire,
) -> Option<Joined> {
    let at = cursor.live_position()?;
    let stream = cursor.stream();
    let key = GroupKey {
        stream: Arc::as_ptr(stream) as usize,
        wire,
        shard: ctx.fanout.shard(),
    };
    // Twice at most: a group found closing is replaced once.
    for _ in 0..2 {
        let mut created = None;
        let group = ctx
            .fanout
            .groups
            .entry(key.clone())
            .or_insert_with(|| {
                let group = Arc::new(Group {
                    key: key.clone(),
                    stream: stream.clone(),
                    inner: Mutex::new(Members {
                        pos: at,
                        members: Vec::new(),
                        closed: false,
                    }),
                    emptied: Notify::new(),
                });
                created = Some(group.clone());
                group
            })
            .clone();
        let seat = Arc::new(Seat::default());
        {
            let mut inner = group.inner.lock();
            if inner.closed {
                drop(inner);
                ctx.fanout
                    .groups
                    .remove_if(&key, |_, g| Arc::ptr_eq(g, &group));
                continue;
            }
            if at < inner.pos {
                return None;
            }
            inner.members.push(Member {
                seat: seat.clone(),
                socket: socket.clone(),
                next: at,
                headers: Vec::new(),
            });
        }
        if let Some(group) = created {
            spawn_writer(ctx.clone(), group, wire);
        }
        let protocol = wire.protocol();
        ctx.metrics
            .fanout_viewers
            .get_or_create(&[("protocol", protocol)])
            .inc();
        return Some(Joined {
            group,
            seat,
            ctx: ctx.clone(),
            protocol,
            left: false,
        });
    }
    None
}

fn spawn_writer(ctx: Arc<Context>, group: Arc<Group>, wire: Wire) {
    let span = info_span!("fanout", stream = %group.stream.key(), ?wire, shard = group.key.shard);
    ctx.metrics.fanout_writers.inc();
    let task_ctx = ctx.clone();
    ctx.tracker.spawn(
        async move {
            Writer::new(task_ctx.clone(), group.clone(), wire)
                .run()
                .await;
            task_ctx
                .fanout
                .groups
                .remove_if(&group.key, |_, g| Arc::ptr_eq(g, &group));
            task_ctx.metrics.fanout_writers.dec();
        }
        .instrument(span),
    );
}

/// One writer's task state.
struct Writer {
    ctx: Arc<Context>,
    group: Arc<Group>,
    wire: Wire,
    counters: ProtocolCounters,
    schedule: ScheduleCache,
    frames: Vec<Arc<Frame>>,
    bufs: Vec<Bytes>,
    /// The pass's frames include headers (rare): members must note the ones they get.
    headers_read: bool,
}

/// Why the writer handed a viewer back (the `reason` label of `fanout_handbacks`).
mod reason {
    pub(super) const SOCKET_FULL: &str = "socket_full";
    pub(super) const WRITE_ERROR: &str = "write_error";
    pub(super) const BEHIND: &str = "behind";
    pub(super) const BATCHING: &str = "batching";
    pub(super) const UNPUBLISHED: &str = "unpublished";
    pub(super) const SHUTDOWN: &str = "shutdown";
}

impl Writer {
    fn new(ctx: Arc<Context>, group: Arc<Group>, wire: Wire) -> Self {
        let counters = ctx.metrics.protocol_counters(wire.protocol());
        Writer {
            ctx,
            group,
            wire,
            counters,
            schedule: ScheduleCache::default(),
            frames: Vec::new(),
            bufs: Vec::new(),
            headers_read: false,
        }
    }

    async fn run(mut self) {
        let mut changes = self.group.stream.subscribe_changes();
        let shutdown = self.ctx.shutdown.clone();
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        loop {
            changes.mark_unchanged();
            let started = tokio::time::Instant::now();
            let pass = tokio::select! {
                pass = self.pass() => pass,
                _ = &mut cancelled => Pass::Shutdown,
            };
            let wrote = match pass {
                Pass::Done => {
                    debug!("writer done");
                    return;
                }
                Pass::Shutdown => break,
                Pass::Again => continue,
                Pass::Idle { wrote } => wrote,
            };
            // Batching: a window opens when frames arrive for an idle writer and again with
            // each write (as for a viewer on its own, see `pacing::Window`), and the writer
            // writes everyone at its end. It opens when the pass started, not when it ended:
            // from its end the period between two writes to a member would grow by a pass
            // (measured: p99 138 -> 146 ms with 130 ms windows at 1,000 viewers).
            let window = self.schedule.merge_write();
            let mut opened = started;
            if !wrote || window.is_zero() {
                tokio::select! {
                    _ = changes.changed() => {}
                    () = self.group.emptied.notified() => {}
                    _ = &mut cancelled => break,
                }
                opened = tokio::time::Instant::now();
            }
            if !window.is_zero() {
                let end = crate::pacing::on_grid(opened + window, window);
                tokio::select! {
                    () = tokio::time::sleep_until(end) => {}
                    () = self.group.emptied.notified() => {}
                    _ = &mut cancelled => break,
                }
            }
        }
        let mut inner = self.group.inner.lock();
        self.disband(&mut inner, reason::SHUTDOWN);
    }

    /// Delivers what the ring has past the writer's position to every member, a chunk of
    /// members at a time. Between chunks the task yields, so the publisher (on the same
    /// core, at most) appends what has arrived meanwhile, and the members still to come
    /// get those frames in the same write: a frame that arrives during a pass waits for
    /// part of it, not for all of it and then its own. Measured at 1,000 low-latency RTMP
    /// viewers (one core): p99 12.4 -> 8.4 ms, server CPU 43 -> 35 % (fewer writes).
    async fn pass(&mut self) -> Pass {
        let cfg = self.ctx.config.load();
        let schedule = self.schedule.get(&cfg, Some(&self.group.stream.key().app));
        drop(cfg);
        let group = self.group.clone();
        self.frames.clear();
        self.bufs.clear();
        self.headers_read = false;
        let base = {
            let mut inner = group.inner.lock();
            if inner.members.is_empty() {
                inner.closed = true;
                return Pass::Done;
            }
            if schedule.merge_write_bytes > 0 {
                // A byte trigger counts each viewer's own batch: those viewers wait for
                // their windows in their own tasks.
                self.disband(&mut inner, reason::BATCHING);
                return Pass::Done;
            }
            let base = inner.pos;
            match group.stream.tail(base, &mut self.frames, PASS_FRAMES) {
                Tail::Frames { first_arrived } => {
                    if first_arrived.is_some_and(|at| too_late(&schedule, at, Instant::now())) {
                        // Their cursors decide what to skip.
                        self.disband(&mut inner, reason::BEHIND);
                        return Pass::Done;
                    }
                }
                lost => {
                    self.disband(&mut inner, lost_reason(lost));
                    return Pass::Done;
                }
            }
            base
        };
        if self.frames.is_empty() {
            return Pass::Idle { wrote: false };
        }
        self.serialise(0);
        // Frames that arrive during the pass go to the members still to come. Without
        // batching the members already written get them at once, in another pass; with
        // it, at the next window (at once would be a write outside it: measured, 7.1 ->
        // 8.7 writes per viewer-second with 130 ms windows).
        let batching = !schedule.merge_write.is_zero();
        let mut index = 0;
        loop {
            if let Some(pass) = self.chunk(&group, base, &mut index, batching) {
                return pass;
            }
            tokio::task::yield_now().await;
        }
    }

    /// Writes the members from `index` on, [`CHUNK`] of them, after reading the frames
    /// that arrived since the last chunk; the pass's end when it has reached the last
    /// member (or the writer ends).
    fn chunk(
        &mut self,
        group: &Group,
        base: u64,
        index: &mut usize,
        batching: bool,
    ) -> Option<Pass> {
        let unit = self.wire.unit();
        let (mut bytes, mut frames_out, mut writes) = (0u64, 0u64, 0u64);
        let mut inner = group.inner.lock();
        if *index > 0 && self.frames.len() < PASS_FRAMES {
            // Frames that arrived since the last chunk.
            let had = self.frames.len();
            let from = base + had as u64;
            match group.stream.tail(from, &mut self.frames, PASS_FRAMES - had) {
                Tail::Frames { .. } => self.serialise(had),
                lost => {
                    self.disband(&mut inner, lost_reason(lost));
                    return Some(Pass::Done);
                }
            }
        }
        let mut end = (*index + CHUNK).min(inner.members.len());
        while *index < end {
            let member = &mut inner.members[*index];
            let skip = usize::try_from(member.next - base).unwrap_or(usize::MAX);
            if skip >= self.frames.len() {
                *index += 1;
                continue;
            }
            let sent = write_now(&member.socket, &self.bufs[skip * unit..], unit);
            writes += 1;
            bytes += sent.bytes;
            frames_out += sent.units as u64;
            if self.headers_read {
                let delivered = &self.frames[skip..skip + sent.units];
                member
                    .headers
                    .extend(delivered.iter().filter(|f| is_header(f)).cloned());
            }
            member.next += sent.units as u64;
            if sent.complete && !sent.failed {
                *index += 1;
                continue;
            }
            // The last member moves here and is written next.
            let member = inner.members.swap_remove(*index);
            end -= 1;
            let why = if sent.failed {
                reason::WRITE_ERROR
            } else {
                reason::SOCKET_FULL
            };
            self.hand_back(member, sent.rest, sent.failed, why);
        }
        self.counters.bytes_out.inc_by(bytes);
        self.counters.frames_out.inc_by(frames_out);
        self.counters.media_writes.inc_by(writes);
        if *index < inner.members.len() {
            return None;
        }
        let written = base + self.frames.len() as u64;
        let Some(pos) = inner.members.iter().map(|m| m.next).min() else {
            inner.closed = true;
            return Some(Pass::Done);
        };
        inner.pos = pos;
        // Members written before frames arrived (or one that moved to an earlier place while
        // another left) go again at once, or at the next window.
        Some(if pos < written && !batching {
            Pass::Again
        } else {
            Pass::Idle { wrote: true }
        })
    }

    /// Builds the wire buffers of the frames read from `from` (an index into the pass's
    /// frames) on.
    fn serialise(&mut self, from: usize) {
        for frame in &self.frames[from..] {
            self.wire.push(frame, &mut self.bufs);
            self.headers_read |= is_header(frame);
        }
    }

    fn disband(&self, inner: &mut Members, why: &'static str) {
        inner.closed = true;
        for member in std::mem::take(&mut inner.members) {
            self.hand_back(member, VecDeque::new(), false, why);
        }
    }

    fn hand_back(&self, member: Member, rest: VecDeque<Bytes>, failed: bool, why: &'static str) {
        *member.seat.back.lock() = Some(Handback {
            next: member.next,
            headers: member.headers,
            rest,
            failed,
        });
        member.seat.woken.notify_one();
        self.ctx.metrics.fanout_left(self.wire.protocol(), why);
    }
}

/// Whether a viewer's cursor tracks `frame` as a header it has been sent.
fn is_header(frame: &Frame) -> bool {
    frame.kind == FrameKind::Script || frame.seq_header
}

/// Whether a frame that arrived at `arrived` is past the lag at which `schedule` starts
/// treating a viewer as behind (its smallest threshold).
fn too_late(schedule: &Schedule, arrived: Instant, now: Instant) -> bool {
    let limit = [
        schedule.max_latency,
        schedule.drop_disposable_after,
        schedule.drop_inter_after,
    ]
    .into_iter()
    .flatten()
    .min();
    // Frames wait for a batching window by design.
    let floor = MIN_LAG + schedule.merge_write;
    limit.is_some_and(|limit| now.saturating_duration_since(arrived) > limit.max(floor))
}

/// The writer never hands viewers back for lag below this (on top of a batching window):
/// one pass over a thousand viewers takes a few milliseconds.
const MIN_LAG: Duration = Duration::from_millis(50);

/// Members written between two yields of a pass (a few hundred microseconds of writes).
const CHUNK: usize = 64;

/// How a pass ended.
enum Pass {
    /// Everything delivered (`wrote`: this pass wrote something); wait for the stream to
    /// change, or for the next batching window.
    Idle { wrote: bool },
    /// A member is still behind the frames read; go again.
    Again,
    /// No members left (the writer ends).
    Done,
    /// The node is shutting down.
    Shutdown,
}

fn lost_reason(tail: Tail) -> &'static str {
    match tail {
        Tail::Unpublished => reason::UNPUBLISHED,
        _ => reason::BEHIND,
    }
}

/// What one non-blocking write of whole frames did.
#[derive(Debug, PartialEq, Eq)]
struct Sent {
    bytes: u64,
    /// Frames written whole or started.
    units: usize,
    /// Everything was written.
    complete: bool,
    /// The rest of a started frame.
    rest: VecDeque<Bytes>,
    failed: bool,
}

/// Writes `bufs` (frames of `unit` buffers each) with non-blocking vectored writes until
/// done or the socket is full; never waits.
fn write_now(socket: &TcpStream, bufs: &[Bytes], unit: usize) -> Sent {
    let (mut index, mut offset, mut bytes) = (0usize, 0usize, 0u64);
    let mut failed = false;
    while index < bufs.len() {
        let result = {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            slices[0] = IoSlice::new(&bufs[index][offset..]);
            let mut count = 1;
            for (slot, buf) in slices[1..].iter_mut().zip(&bufs[index + 1..]) {
                *slot = IoSlice::new(buf);
                count += 1;
            }
            // Straight to the socket, not through tokio's `try_write_vectored`: that reads
            // the socket's readiness record first, a cache miss per member (6 % of the
            // samples at 1,000 viewers), and `sendmsg` skips `writev`'s file-position
            // lock. A WouldBlock here leaves tokio's readiness set; the viewer's own task
            // then learns it on its first write and waits as usual.
            socket2::SockRef::from(socket).send_vectored(&slices[..count])
        };
        match result {
            Ok(0) => {
                failed = true;
                break;
            }
            Ok(n) => {
                bytes += n as u64;
                let mut left = n;
                while left > 0 && index < bufs.len() {
                    let remaining = bufs[index].len() - offset;
                    if left >= remaining {
                        left -= remaining;
                        index += 1;
                        offset = 0;
                    } else {
                        offset += left;
                        left = 0;
                    }
                }
                // Empty buffers count as written.
                while index < bufs.len() && bufs[index].len() == offset {
                    index += 1;
                    offset = 0;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    let unit = unit.max(1);
    if index == bufs.len() {
        return Sent {
            bytes,
            units: bufs.len() / unit,
            complete: true,
            rest: VecDeque::new(),
            failed,
        };
    }
    let started = offset > 0 || index % unit != 0;
    let mut rest = VecDeque::new();
    if started && !failed {
        let unit_end = (index / unit + 1) * unit;
        rest.push_back(bufs[index].slice(offset..));
        rest.extend(bufs[index + 1..unit_end].iter().cloned());
    }
    Sent {
        bytes,
        units: index / unit + usize::from(started),
        complete: false,
        rest,
        failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    use crate::io::tests::{pair, small_pair};

    /// Waits (bounded) for the writers to end, and checks they left no entry behind.
    async fn assert_writers_ended(ctx: &Context) {
        for _ in 0..100 {
            if ctx.metrics.fanout_writers.get() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(ctx.metrics.fanout_writers.get(), 0);
        assert!(ctx.fanout.groups.is_empty());
    }

    fn avc(keyframe: bool, marker: u8, len: usize) -> Bytes {
        let mut body = vec![if keyframe { 0x17 } else { 0x27 }, 1, 0, 0, 0];
        body.resize(len, marker);
        Bytes::from(body)
    }

    /// A publisher with one keyframe, and a viewer that has read it (so it is caught up).
    fn caught_up_viewer(ctx: &Arc<Context>) -> (sluice_core::Publisher, Cursor) {
        let key = sluice_core::StreamKey::new("live", "w");
        let mut publisher = ctx
            .registry
            .publish(&key, ctx.cache_settings(), false, Instant::now())
            .expect("publish");
        publisher
            .push_media(FrameKind::Video, 0, avc(true, 1, 64), Instant::now())
            .expect("frame");
        let (mut cursor, _) = ctx.watch(&key, &sluice_core::topology::Via::default());
        let mut frames = Vec::new();
        cursor.read(&mut frames, 16, Instant::now(), &Schedule::default());
        assert_eq!(frames.len(), 1);
        (publisher, cursor)
    }

    #[tokio::test]
    async fn the_writer_delivers_hands_back_a_full_socket_and_ends_with_its_members() {
        let ctx = Context::new(sluice_core::Config::default());
        let (mut publisher, mut cursor) = caught_up_viewer(&ctx);
        let (a, mut b) = small_pair().await;
        let a = Arc::new(a);
        let joined = join(&ctx, &cursor, &a, Wire::FlvPlain).expect("caught up");
        assert_eq!(ctx.metrics.fanout_writers.get(), 1);

        // A frame reaches the socket without the viewer's task doing anything.
        publisher
            .push_media(FrameKind::Video, 40, avc(false, 2, 100), Instant::now())
            .expect("frame");
        let tag_len = 11 + 100 + 4;
        let mut got = vec![0u8; tag_len];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[11..16], &[0x27, 1, 0, 0, 0]);

        // Frames the socket cannot take: the viewer is handed back with the rest of the one
        // started, positioned after it.
        for i in 0..64u32 {
            publisher
                .push_media(
                    FrameKind::Video,
                    80 + i * 40,
                    avc(false, 3, 4000),
                    Instant::now(),
                )
                .expect("frame");
        }
        tokio::time::timeout(Duration::from_secs(5), joined.handed_back())
            .await
            .expect("handed back");
        let back = joined.leave();
        assert!(!back.failed);
        let first_unsent = 2 + back.rest.len().min(1) as u64;
        assert!(back.next >= first_unsent && back.next < 66, "{}", back.next);
        let full = ctx
            .metrics
            .fanout_handbacks
            .get_or_create(&[("protocol", "http_flv"), ("reason", reason::SOCKET_FULL)])
            .get();
        assert_eq!(full, 1);
        cursor.resume_at(back.next, &back.headers);
        assert_eq!(cursor.live_position(), None, "frames left for the cursor");

        // The writer has no members left: it ends and lets go of the stream.
        assert_writers_ended(&ctx).await;
    }

    #[tokio::test]
    async fn headers_the_writer_delivered_go_back_to_the_cursor() {
        let ctx = Context::new(sluice_core::Config::default());
        let (mut publisher, mut cursor) = caught_up_viewer(&ctx);
        let (a, mut b) = pair().await;
        let joined = join(&ctx, &cursor, &Arc::new(a), Wire::FlvPlain).expect("caught up");
        let header = Bytes::from_static(&[0x17, 0, 0, 0, 0, 9, 9]);
        publisher
            .push_media(FrameKind::Video, 40, header.clone(), Instant::now())
            .expect("header");
        publisher
            .push_media(FrameKind::Video, 40, avc(true, 2, 50), Instant::now())
            .expect("keyframe");
        let mut got = vec![0u8; (11 + header.len() + 4) + (11 + 50 + 4)];
        b.read_exact(&mut got).await.unwrap();
        let back = joined.leave();
        assert_eq!(back.next, 3);
        assert_eq!(back.headers.len(), 1);
        assert_eq!(back.headers[0].payload, header);
        cursor.resume_at(back.next, &back.headers);
        assert_eq!(cursor.live_position(), Some(3));
    }

    #[tokio::test]
    async fn a_writer_whose_last_viewer_leaves_ends_without_a_stream_change() {
        let ctx = Context::new(sluice_core::Config::default());
        let (_publisher, cursor) = caught_up_viewer(&ctx);
        let (a, _b) = pair().await;
        let joined = join(&ctx, &cursor, &Arc::new(a), Wire::FlvChunked).expect("caught up");
        tokio::task::yield_now().await;
        let back = joined.leave();
        assert_eq!(back.next, 1);
        assert!(back.rest.is_empty());
        assert_writers_ended(&ctx).await;
    }

    #[tokio::test]
    async fn a_write_that_fits_is_complete() {
        let (a, mut b) = pair().await;
        let bufs: Vec<Bytes> = [&b"ab"[..], b"", b"cde", b"f"]
            .into_iter()
            .map(Bytes::from_static)
            .collect();
        let sent = write_now(&a, &bufs, 2);
        assert!(sent.complete && !sent.failed);
        assert_eq!((sent.bytes, sent.units), (6, 2));
        drop(a);
        let mut out = Vec::new();
        b.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"abcdef");
    }

    #[tokio::test]
    async fn a_full_socket_leaves_the_rest_of_the_started_frame_only() {
        let (a, mut b) = small_pair().await;
        // Frames of a 3-byte line and a 997-byte body.
        let line = Bytes::from_static(b"ln:");
        let body = Bytes::from(vec![9u8; 997]);
        let bufs: Vec<Bytes> = (0..2000)
            .flat_map(|_| [line.clone(), body.clone()])
            .collect();
        let sent = write_now(&a, &bufs, 2);
        assert!(!sent.complete && !sent.failed);
        let rest: usize = sent.rest.iter().map(Bytes::len).sum();
        assert_eq!(
            sent.bytes as usize + rest,
            sent.units * 1000,
            "the started frame's rest completes it"
        );
        assert!(sent.units < 2000);
        // Finish the started frame as a viewer's task would, reading alongside.
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            b.read_to_end(&mut out).await.unwrap();
            out.len()
        });
        let mut rest = sent.rest.clone();
        crate::io::write_bufs(&a, &mut rest).await.unwrap();
        drop(a);
        assert_eq!(
            reader.await.unwrap(),
            sent.units * 1000,
            "whole frames only"
        );
    }
}
