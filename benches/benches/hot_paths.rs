//! Criterion benches of the hot paths (issue 3, item 6): the RTMP chunk reader and writer, FLV
//! tag parsing, the GOP ring (append and cursor reads) and the vectored-write batch building
//! of the send path.
//!
//! Inputs are the `fixtures/h264_aac.flv` tags (640x360, ~700 kbit/s) and a synthetic
//! 720p30-like mix of ~2.5 Mbit/s: a 1 s GOP of one ~60 KB keyframe and 29 ~8 KB inter frames,
//! with ~300 B AAC frames at 44.1 kHz between them, behind the fixture's sequence headers.
//! Every bench sets a `Throughput`, so criterion prints MiB/s or elements (frames, messages,
//! reads) per second next to the time per iteration.
//!
//! Run: `cargo bench -p sluice-bench --bench hot_paths` (about two minutes; each bench warms
//! up for 1 s and measures for 2 s, see [`config`]).

use std::collections::VecDeque;
use std::hint::black_box;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice_core::stream::CacheSettings;
use sluice_core::{Cursor, ReadState, Registry, Schedule, StreamKey};
use sluice_media::flv::Demuxer;
use sluice_media::{Frame, FrameKind, RtmpForm};
use sluice_rtmp::Message;
use sluice_rtmp::chunk::{ChunkLimits, ChunkReader, ChunkWriter, encode_full};
use sluice_runtime::io::{MAX_SLICES, consume, fill_slices};
use sluice_runtime::wire::{FIRST_STREAM_ID, rtmp_chunks};
use sluice_testkit::fixture;
use sluice_testkit::fixtures::H264_AAC;
use sluice_testkit::media::fixture_tags;

/// Pieces the reader benches push, like one socket read into a 16 KiB buffer.
const READ_PIECE: usize = 16 * 1024;
/// Chunk sizes benched: what FFmpeg/OBS and Sluice use, and the RTMP default.
const CHUNK_SIZES: [u32; 2] = [4096, 128];
/// Chunk size of the shared serialisation in the ring and send-path benches.
const SERVE_CHUNK_SIZE: u32 = 4096;
/// Chunk stream ids, as FFmpeg and Sluice's shared serialisation use them.
const CSID_CONTROL: u32 = 2;
const CSID_AUDIO: u32 = 4;
const CSID_DATA: u32 = 5;
const CSID_VIDEO: u32 = 6;
/// Frames a cursor copies out per read (what the RTMP and HTTP-FLV front ends ask for).
const READ_MAX: usize = 64;

/// Short runs: the whole file stays within a few minutes on a 2-core machine.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/// One media message of a test stream: what a publisher sends and the ring stores.
#[derive(Clone)]
struct Media {
    kind: FrameKind,
    timestamp: u32,
    payload: Bytes,
}

impl Media {
    fn message(&self) -> Message {
        Message {
            csid: match self.kind {
                FrameKind::Audio => CSID_AUDIO,
                FrameKind::Video => CSID_VIDEO,
                FrameKind::Script => CSID_DATA,
            },
            type_id: self.kind.type_id(),
            timestamp: self.timestamp,
            stream_id: FIRST_STREAM_ID,
            payload: self.payload.clone(),
        }
    }

    fn frame(&self) -> Frame {
        Frame::parse(self.kind, u64::from(self.timestamp), self.payload.clone())
            .expect("test media parses")
    }
}

fn kind_of(tag_type: u8) -> FrameKind {
    match tag_type {
        8 => FrameKind::Audio,
        9 => FrameKind::Video,
        18 => FrameKind::Script,
        t => panic!("unexpected FLV tag type {t}"),
    }
}

/// The file every bench of real tags reads.
fn fixture_bytes() -> Vec<u8> {
    std::fs::read(fixture(H264_AAC)).expect("read fixtures/h264_aac.flv")
}

/// The fixture's tags as media messages (onMetaData included, as FFmpeg publishes it).
fn fixture_media() -> Vec<Media> {
    fixture_tags(H264_AAC)
        .into_iter()
        .map(|t| Media {
            kind: kind_of(t.type_id),
            timestamp: t.timestamp,
            payload: t.payload,
        })
        .collect()
}

/// Deterministic filler bytes (the content does not matter; all-zero pages might).
fn filler(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A video tag body: AVC NALU packet, composition offset 0.
fn avc_body(keyframe: bool, len: usize, seed: u32) -> Bytes {
    let mut body = vec![if keyframe { 0x17 } else { 0x27 }, 1, 0, 0, 0];
    body.extend(filler(len - body.len(), seed));
    body.into()
}

/// An audio tag body: AAC raw frame.
fn aac_body(len: usize, seed: u32) -> Bytes {
    let mut body = vec![0xAF, 1];
    body.extend(filler(len - body.len(), seed));
    body.into()
}

/// The synthetic 720p30 stream: its sequence headers (from the fixture) and `gops` one-second
/// GOPs of media in timestamp order: per GOP a 60 KB keyframe, 29 inter frames of 7.6-8.4 KB
/// and 43 AAC frames of 280-320 B, about 2.5 Mbit/s.
struct Synthetic {
    headers: Vec<Media>,
    media: Vec<Media>,
    /// Length of `media` in milliseconds (its timestamps restart after this when looped).
    duration_ms: u32,
}

fn synthetic(gops: u32) -> Synthetic {
    let headers = fixture_media()
        .into_iter()
        .filter(|m| m.kind != FrameKind::Script && m.frame().seq_header)
        .map(|m| Media { timestamp: 0, ..m })
        .collect::<Vec<_>>();
    assert_eq!(
        headers.len(),
        2,
        "fixture has one audio and one video header"
    );

    let mut media = Vec::new();
    let video_frames = 30 * gops;
    for i in 0..video_frames {
        let keyframe = i % 30 == 0;
        let len = if keyframe {
            60_000
        } else {
            7_600 + (i * 613 % 800) as usize
        };
        media.push(Media {
            kind: FrameKind::Video,
            timestamp: i * 1000 / 30,
            payload: avc_body(keyframe, len, i),
        });
    }
    // AAC: 1024 samples at 44.1 kHz, ~23.2 ms apart.
    let mut j = 0u32;
    loop {
        let timestamp = (u64::from(j) * 1024 * 1000 / 44_100) as u32;
        if timestamp >= 1000 * gops {
            break;
        }
        media.push(Media {
            kind: FrameKind::Audio,
            timestamp,
            payload: aac_body(280 + (j * 7 % 41) as usize, 1_000_000 + j),
        });
        j += 1;
    }
    // Stable: a video frame goes before audio of the same timestamp, as FFmpeg muxes.
    media.sort_by_key(|m| m.timestamp);
    Synthetic {
        headers,
        media,
        duration_ms: 1000 * gops,
    }
}

fn payload_bytes(media: &[Media]) -> u64 {
    media.iter().map(|m| m.payload.len() as u64).sum()
}

/// A publisher's chunk stream as `ChunkWriter` cuts it (header compression per chunk stream,
/// like FFmpeg): a SetChunkSize first unless the size is the default, then every message.
fn publisher_stream(media: &[Media], chunk_size: u32) -> Vec<u8> {
    let mut writer = ChunkWriter::new();
    let mut out = BytesMut::new();
    if chunk_size != writer.chunk_size() {
        let set = writer.set_chunk_size(chunk_size);
        writer.write(&set, &mut out);
    }
    for m in media {
        writer.write(&m.message(), &mut out);
    }
    out.to_vec()
}

/// The chunks of one message: a type-0 header on the first, type-3 headers after (csid < 64,
/// timestamps below the extended range).
fn chunks_of(msg: &Message, chunk_size: u32) -> VecDeque<Vec<u8>> {
    assert!(msg.csid < 64 && msg.timestamp < 0xFF_FFFF);
    let mut chunks = VecDeque::new();
    for (i, part) in msg.payload.chunks(chunk_size as usize).enumerate() {
        let mut chunk = Vec::with_capacity(part.len() + 12);
        if i == 0 {
            chunk.push(msg.csid as u8);
            chunk.extend_from_slice(&msg.timestamp.to_be_bytes()[1..]);
            chunk.extend_from_slice(&(msg.payload.len() as u32).to_be_bytes()[1..]);
            chunk.push(msg.type_id);
            chunk.extend_from_slice(&msg.stream_id.to_le_bytes());
        } else {
            chunk.push(0xC0 | msg.csid as u8);
        }
        chunk.extend_from_slice(part);
        chunks.push_back(chunk);
    }
    chunks
}

/// A publisher that interleaves chunks of different chunk streams (audio chunks between the
/// chunks of a large video message, as some encoders do): the chunks of all audio, video and
/// data messages are merged so that each chunk stream progresses evenly through the stream.
fn interleaved_stream(media: &[Media], chunk_size: u32) -> Vec<u8> {
    let mut out = Vec::new();
    if chunk_size != 128 {
        let set = Message {
            csid: CSID_CONTROL,
            type_id: 1,
            timestamp: 0,
            stream_id: 0,
            payload: Bytes::copy_from_slice(&chunk_size.to_be_bytes()),
        };
        chunks_of(&set, 128).into_iter().for_each(|c| out.extend(c));
    }
    let mut queues: Vec<VecDeque<Vec<u8>>> =
        [FrameKind::Script, FrameKind::Audio, FrameKind::Video]
            .into_iter()
            .map(|kind| {
                media
                    .iter()
                    .filter(|m| m.kind == kind)
                    .flat_map(|m| chunks_of(&m.message(), chunk_size))
                    .collect()
            })
            .collect();
    let totals: Vec<usize> = queues.iter().map(VecDeque::len).collect();
    let mut sent = vec![0usize; queues.len()];
    // Next chunk from the stream that is least far along (fraction of its chunks sent).
    while let Some(q) = (0..queues.len())
        .filter(|&q| !queues[q].is_empty())
        .min_by(|&a, &b| (sent[a] * totals[b]).cmp(&(sent[b] * totals[a])))
    {
        out.extend(queues[q].pop_front().expect("non-empty"));
        sent[q] += 1;
    }
    out
}

/// Pushes `input` in 16 KiB pieces and drains the messages after each; returns the count.
fn read_all(input: &[u8]) -> usize {
    let mut reader = ChunkReader::new(ChunkLimits::default());
    let mut n = 0;
    for piece in input.chunks(READ_PIECE) {
        reader.push(piece);
        while let Some(msg) = reader.next_message().expect("valid chunk stream") {
            black_box(&msg);
            n += 1;
        }
    }
    n
}

// ---------------------------------------------------------------------------------------------
// 1. RTMP chunk reader
// ---------------------------------------------------------------------------------------------

fn chunk_reader(c: &mut Criterion) {
    let fixture = fixture_media();
    let hd = synthetic(2);
    let mut g = c.benchmark_group("chunk_reader");
    let mut case = |name: &str, chunk_size: u32, media: &[Media], input: Vec<u8>| {
        // SetChunkSize counts as a message too.
        let expected = media.len() + usize::from(chunk_size != 128);
        assert_eq!(read_all(&input), expected, "{name}/{chunk_size} reads back");
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_with_input(BenchmarkId::new(name, chunk_size), &input, |b, input| {
            b.iter(|| read_all(input))
        });
    };
    for chunk_size in CHUNK_SIZES {
        case(
            "fixture",
            chunk_size,
            &fixture,
            publisher_stream(&fixture, chunk_size),
        );
    }
    for chunk_size in CHUNK_SIZES {
        case(
            "fixture_interleaved",
            chunk_size,
            &fixture,
            interleaved_stream(&fixture, chunk_size),
        );
    }
    case("720p", 4096, &hd.media, publisher_stream(&hd.media, 4096));
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// 2. RTMP chunk writer
// ---------------------------------------------------------------------------------------------

fn chunk_writer(c: &mut Criterion) {
    let hd = synthetic(2);
    let messages: Vec<Message> = hd.media.iter().map(Media::message).collect();
    let mut g = c.benchmark_group("chunk_writer");
    g.throughput(Throughput::Bytes(payload_bytes(&hd.media)));
    for chunk_size in CHUNK_SIZES {
        // One connection's writer; the output is drained after every message, as a session
        // does, so the buffer's capacity is reused.
        g.bench_with_input(
            BenchmarkId::new("write", chunk_size),
            &messages,
            |b, messages| {
                let mut out = BytesMut::with_capacity(128 * 1024);
                b.iter(|| {
                    let mut writer = ChunkWriter::new();
                    let set = writer.set_chunk_size(chunk_size);
                    writer.write(&set, &mut out);
                    out.clear();
                    for msg in messages {
                        writer.write(msg, &mut out);
                        black_box(&out);
                        out.clear();
                    }
                })
            },
        );
        // The shared per-frame serialisation: one allocation per frame.
        g.bench_with_input(
            BenchmarkId::new("encode_full", chunk_size),
            &messages,
            |b, messages| {
                b.iter(|| {
                    for msg in messages {
                        black_box(encode_full(msg, chunk_size));
                    }
                })
            },
        );
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// 3. FLV tag parsing
// ---------------------------------------------------------------------------------------------

fn flv(c: &mut Criterion) {
    let file = fixture_bytes();
    let media = fixture_media();
    let mut g = c.benchmark_group("flv");

    g.throughput(Throughput::Bytes(file.len() as u64));
    g.bench_function("demux_file", |b| {
        b.iter(|| {
            let mut demuxer = Demuxer::new();
            let mut n = 0;
            for piece in file.chunks(READ_PIECE) {
                demuxer.push(piece);
                while let Some(tag) = demuxer.next_tag().expect("fixture demuxes") {
                    black_box(&tag);
                    n += 1;
                }
            }
            assert_eq!(n, media.len());
        })
    });

    g.throughput(Throughput::Elements(media.len() as u64));
    g.bench_function("frame_parse", |b| {
        b.iter(|| {
            for m in &media {
                let frame = Frame::parse(m.kind, u64::from(m.timestamp), m.payload.clone());
                black_box(frame.expect("fixture tags parse"));
            }
        })
    });

    // Built once per frame and shared: the first call serialises, later ones clone.
    g.throughput(Throughput::Bytes(payload_bytes(&media)));
    g.bench_function("flv_tag_first", |b| {
        b.iter_batched(
            || media.iter().map(Media::frame).collect::<Vec<_>>(),
            |frames| {
                for f in &frames {
                    black_box(f.flv_tag());
                }
                frames // dropped outside the timing
            },
            BatchSize::LargeInput,
        )
    });
    let frames: Vec<Frame> = media.iter().map(Media::frame).collect();
    frames.iter().for_each(|f| drop(f.flv_tag()));
    g.throughput(Throughput::Elements(frames.len() as u64));
    g.bench_function("flv_tag_cached", |b| {
        b.iter(|| {
            for f in &frames {
                black_box(f.flv_tag());
            }
        })
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// 4. Ring append and cursor reads
// ---------------------------------------------------------------------------------------------

/// A publisher and `viewers` cursors on one stream, all started and caught up, with a fake
/// clock that advances with the media timestamps.
struct Ring {
    publisher: sluice_core::Publisher,
    cursors: Vec<Cursor>,
    schedule: Schedule,
    media: Vec<Media>,
    duration_ms: u32,
    /// Next index into `media` (looped, timestamps moved on by `duration_ms` per loop).
    i: usize,
    t0: Instant,
    out: Vec<Arc<Frame>>,
    // Kept last: dropped after the publisher and cursors, which report back to it.
    _registry: Registry,
}

impl Ring {
    fn new(viewers: usize) -> Ring {
        let hd = synthetic(1);
        let registry = Registry::new();
        let key = StreamKey::new("live", "bench");
        let cache = CacheSettings {
            gop_cache: true,
            gops: 2,
            max_bytes: 16 << 20,
        };
        let t0 = Instant::now();
        let mut publisher = registry.publish(&key, cache, false, t0).expect("publish");
        for h in &hd.headers {
            publisher
                .push_media(h.kind, h.timestamp, h.payload.clone(), t0)
                .expect("header");
        }
        let cursors = (0..viewers)
            .map(|_| registry.subscribe(&key, cache))
            .collect();
        let mut ring = Ring {
            publisher,
            cursors,
            // A latency budget and drop thresholds, so the policy's checks run (a viewer that
            // reads after every append never trips them).
            schedule: Schedule {
                max_latency: Some(Duration::from_millis(1000)),
                drop_disposable_after: Some(Duration::from_millis(300)),
                drop_inter_after: Some(Duration::from_millis(600)),
                ..Schedule::default()
            },
            media: hd.media,
            duration_ms: hd.duration_ms,
            i: 0,
            t0,
            out: Vec::with_capacity(READ_MAX + 4),
            _registry: registry,
        };
        // One GOP in, every viewer started (headers + GOP) and caught up.
        for _ in 0..ring.media.len() {
            ring.append();
        }
        let now = ring.now();
        for c in &mut ring.cursors {
            while c.read(&mut ring.out, READ_MAX, now, &ring.schedule) == ReadState::Frames {
                ring.out.clear();
            }
        }
        ring
    }

    fn now(&self) -> Instant {
        let loops = (self.i / self.media.len()) as u64;
        let ts = self.media[self.i % self.media.len()].timestamp;
        self.t0 + Duration::from_millis(loops * u64::from(self.duration_ms) + u64::from(ts))
    }

    /// Appends the next frame, then every viewer reads; returns the frames read.
    fn append_read(&mut self) -> usize {
        let now = self.append();
        let mut n = 0;
        for c in &mut self.cursors {
            c.read(&mut self.out, READ_MAX, now, &self.schedule);
            n += self.out.len();
            black_box(&self.out);
            self.out.clear();
        }
        n
    }

    /// Appends the next frame of the looped mix; returns the instant it arrived.
    fn append(&mut self) -> Instant {
        let now = self.now();
        let m = &self.media[self.i % self.media.len()];
        let loops = (self.i / self.media.len()) as u32;
        let timestamp = m
            .timestamp
            .wrapping_add(loops.wrapping_mul(self.duration_ms));
        self.publisher
            .push_media(m.kind, timestamp, m.payload.clone(), now)
            .expect("append");
        self.i += 1;
        now
    }
}

/// A writer that takes up to `limit` bytes per call, like a socket with that much send
/// buffer free; it only counts.
struct Sink {
    limit: usize,
    written: u64,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = bufs.iter().map(|b| b.len()).sum::<usize>().min(self.limit);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `sluice-runtime`'s vectored write loop over a blocking writer (a sink here): the same slice
/// building and consuming, without the socket.
fn write_all(w: &mut impl Write, bufs: &mut VecDeque<Bytes>) -> io::Result<u64> {
    let mut total = 0u64;
    while !bufs.is_empty() {
        let n = {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let count = fill_slices(&mut slices, bufs);
            w.write_vectored(&slices[..count])?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        total += n as u64;
        consume(bufs, n);
    }
    Ok(total)
}

/// The frame's shared RTMP form, as the viewer driver builds it (once per frame).
fn rtmp_wire(frame: &Frame) -> Bytes {
    rtmp_chunks(
        frame,
        RtmpForm {
            chunk_size: SERVE_CHUNK_SIZE,
            stream_id: FIRST_STREAM_ID,
        },
    )
}

/// A viewer task: waits for the stream to change, reads everything new, counts the frames.
async fn viewer(
    mut cursor: Cursor,
    schedule: Schedule,
    t0: Instant,
    clock: Arc<AtomicU64>,
    reads: Arc<AtomicU64>,
) {
    let mut out = Vec::with_capacity(READ_MAX + 4);
    loop {
        cursor.changed().await;
        let now = t0 + Duration::from_millis(clock.load(Ordering::Relaxed));
        while cursor.read(&mut out, READ_MAX, now, &schedule) == ReadState::Frames {
            reads.fetch_add(out.len() as u64, Ordering::Relaxed);
            black_box(&out);
            out.clear();
        }
    }
}

fn ring(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");

    // Append alone: parse, lock, push, evict, wake.
    g.throughput(Throughput::Elements(1));
    g.bench_function("append", |b| {
        let mut ring = Ring::new(0);
        b.iter(|| ring.append())
    });

    // One append, then every viewer reads it: elements are viewer reads.
    for viewers in [1, 100, 1000] {
        g.throughput(Throughput::Elements(viewers as u64));
        g.bench_function(BenchmarkId::new("append_read", viewers), |b| {
            let mut ring = Ring::new(viewers);
            // Every viewer gets exactly the appended frame.
            assert_eq!(ring.append_read(), viewers);
            b.iter(|| ring.append_read())
        });
    }

    // Viewers as tasks parked on `Cursor::changed`: an append wakes every one, which reads it.
    // Adds the watch channel's wake-ups and the task polls the loop above leaves out.
    for viewers in [100, 1000] {
        g.throughput(Throughput::Elements(viewers as u64));
        g.bench_function(BenchmarkId::new("append_wake_read", viewers), |b| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            let mut ring = Ring::new(viewers);
            let clock = Arc::new(AtomicU64::new(0));
            let reads = Arc::new(AtomicU64::new(0));
            for cursor in ring.cursors.drain(..) {
                rt.spawn(viewer(
                    cursor,
                    ring.schedule,
                    ring.t0,
                    clock.clone(),
                    reads.clone(),
                ));
            }
            let mut step = || {
                rt.block_on(async {
                    let target = reads.load(Ordering::Relaxed) + viewers as u64;
                    let now = ring.append();
                    clock.store((now - ring.t0).as_millis() as u64, Ordering::Relaxed);
                    while reads.load(Ordering::Relaxed) < target {
                        tokio::task::yield_now().await;
                    }
                })
            };
            step(); // parks every viewer; asserts nothing got lost on the way
            b.iter(&mut step);
            assert_eq!(reads.load(Ordering::Relaxed) % viewers as u64, 0);
        });
    }

    // The whole per-viewer send path short of the syscall: read, take the shared RTMP bytes,
    // build the slices and write to a sink.
    let viewers = 1000;
    g.throughput(Throughput::Elements(viewers as u64));
    g.bench_function(BenchmarkId::new("append_read_send", viewers), |b| {
        let mut ring = Ring::new(viewers);
        let mut sink = Sink {
            limit: usize::MAX,
            written: 0,
        };
        let mut batch = VecDeque::with_capacity(READ_MAX + 4);
        b.iter(|| {
            let now = ring.append();
            for c in &mut ring.cursors {
                c.read(&mut ring.out, READ_MAX, now, &ring.schedule);
                batch.extend(ring.out.drain(..).map(|f| rtmp_wire(&f)));
                write_all(&mut sink, &mut batch).expect("sink takes all");
            }
        });
        black_box(sink.written);
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// 5. Vectored-write batch building
// ---------------------------------------------------------------------------------------------

fn vectored(c: &mut Criterion) {
    let hd = synthetic(2);
    // Frames with their shared RTMP bytes already built, as viewers find them in the ring.
    let frames: Vec<Arc<Frame>> = hd.media.iter().map(|m| Arc::new(m.frame())).collect();
    frames.iter().for_each(|f| drop(rtmp_wire(f)));
    let inter = frames
        .iter()
        .position(|f| f.kind == FrameKind::Video && !f.keyframe)
        .expect("an inter frame");
    let mut g = c.benchmark_group("vectored");
    // Batches: 1 = an inter frame; 8 = the frames after it (video and audio); 64 = a GOP's
    // first 64 frames, keyframe included.
    for (n, from) in [(1, inter), (8, inter), (64, 0)] {
        let batch = &frames[from..from + n];
        // The slice array alone, from a ready batch: on the stack as `io::write_units_until_full` builds
        // it, and as a `Vec` (one allocation per write) for comparison. Elements are frames.
        let ready: VecDeque<Bytes> = batch.iter().map(|f| rtmp_wire(f)).collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("slices", n), &ready, |b, ready| {
            b.iter(|| {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let count = fill_slices(&mut slices, black_box(ready));
                black_box(&slices[..count]);
            })
        });
        g.bench_with_input(BenchmarkId::new("slices_vec", n), &ready, |b, ready| {
            b.iter(|| {
                let slices: Vec<IoSlice<'_>> = black_box(ready)
                    .iter()
                    .take(MAX_SLICES)
                    .map(|buf| IoSlice::new(buf))
                    .collect();
                black_box(slices);
            })
        });

        let bytes: u64 = batch.iter().map(|f| rtmp_wire(f).len() as u64).sum();
        g.throughput(Throughput::Bytes(bytes));

        // From frames to written: take each frame's shared bytes (a refcount), queue them and
        // write them with vectored writes to a sink that takes everything.
        g.bench_with_input(BenchmarkId::new("send", n), &batch, |b, batch| {
            let mut queue = VecDeque::with_capacity(MAX_SLICES + 4);
            let mut sink = Sink {
                limit: usize::MAX,
                written: 0,
            };
            b.iter(|| {
                queue.extend(batch.iter().map(|f| rtmp_wire(f)));
                write_all(&mut sink, &mut queue).expect("sink takes all")
            })
        });
    }
    // A socket that takes 64 KiB per write: partial writes, and the slices rebuilt each time.
    let batch = &frames[..64];
    g.throughput(Throughput::Bytes(
        batch.iter().map(|f| rtmp_wire(f).len() as u64).sum(),
    ));
    g.bench_with_input(
        BenchmarkId::new("send_64k_writes", 64),
        &batch,
        |b, batch| {
            let mut queue = VecDeque::with_capacity(MAX_SLICES + 4);
            let mut sink = Sink {
                limit: 64 * 1024,
                written: 0,
            };
            b.iter(|| {
                queue.extend(batch.iter().map(|f| rtmp_wire(f)));
                write_all(&mut sink, &mut queue).expect("sink takes all")
            })
        },
    );
    g.finish();
}

criterion_group! {
    name = hot_paths;
    config = config();
    targets = chunk_reader, chunk_writer, flv, ring, vectored
}
criterion_main!(hot_paths);
