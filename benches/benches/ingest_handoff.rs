//! Does handing ingest to a shard worker pay? Per-frame cost of a publisher's frames taken
//! into a stream (parse the FLV tag, append to the ring, wake viewers) done inline by the
//! connection that read them, against handing each raw message over a bounded lock-free
//! queue (crossbeam `ArrayQueue`) to a worker thread that does the same — the split DESIGN.md
//! sketches. The worker parks when its queue is empty and is unparked by the producer, as a
//! worker waiting on a notification would be.
//!
//! Run pinned to one core (`taskset -c 0 cargo bench -p sluice-bench --bench ingest_handoff`)
//! for the operating point (server on one core), and unpinned for two.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_queue::ArrayQueue;
use sluice_core::{CacheSettings, Publisher, Registry, StreamKey};
use sluice_media::FrameKind;
use sluice_media::flv::TAG_AUDIO;
use sluice_testkit::fixtures::H264_AAC;
use sluice_testkit::media::fixture_media;

const CACHE: CacheSettings = CacheSettings {
    gop_cache: true,
    gops: 2,
    max_bytes: 32 << 20,
};

/// The fixture's audio and video tags, as (kind, timestamp, body).
fn messages() -> Vec<(FrameKind, u32, Bytes)> {
    let (media, _) = fixture_media(H264_AAC);
    media
        .into_iter()
        .map(|t| {
            let kind = if t.type_id == TAG_AUDIO {
                FrameKind::Audio
            } else {
                FrameKind::Video
            };
            (kind, t.timestamp, t.payload)
        })
        .collect()
}

fn publisher(reg: &Registry, name: &str) -> Publisher {
    let p = reg
        .publish(&StreamKey::new("live", name), CACHE, false, Instant::now())
        .expect("publish");
    // A viewer, so appends wake someone as in a server.
    std::mem::forget(reg.subscribe(&StreamKey::new("live", name), CACHE));
    p
}

/// Runs `loops` passes over the messages with increasing timestamps.
fn feed(msgs: &[(FrameKind, u32, Bytes)], pass: u32, mut take: impl FnMut(FrameKind, u32, Bytes)) {
    for (kind, ts, body) in msgs {
        take(*kind, ts + pass * 2100, body.clone());
    }
}

struct Worker {
    queue: Arc<ArrayQueue<(FrameKind, u32, Bytes)>>,
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<()>,
}

fn spawn_worker(mut p: Publisher) -> Worker {
    let queue = Arc::new(ArrayQueue::new(1024));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (q, d, s) = (queue.clone(), done.clone(), stop.clone());
    let thread = thread::spawn(move || {
        while !s.load(Ordering::Acquire) {
            match q.pop() {
                Some((kind, ts, body)) => {
                    let _ = p.push_media(kind, ts, body, Instant::now());
                    d.fetch_add(1, Ordering::Release);
                }
                None => thread::park_timeout(Duration::from_millis(1)),
            }
        }
    });
    Worker {
        queue,
        done,
        stop,
        thread,
    }
}

fn bench(c: &mut Criterion) {
    let msgs = messages();
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(msgs.len() as u64));

    let reg = Registry::new();
    let mut inline = publisher(&reg, "inline");
    let mut pass = 0;
    group.bench_function("inline", |b| {
        b.iter(|| {
            pass += 1;
            feed(&msgs, pass, |kind, ts, body| {
                let _ = inline.push_media(kind, ts, body, Instant::now());
            });
        })
    });

    let worker = spawn_worker(publisher(&reg, "handoff"));
    let mut sent = 0u64;
    let mut pass = 0;
    group.bench_function("handoff_to_worker", |b| {
        b.iter(|| {
            pass += 1;
            feed(&msgs, pass, |kind, ts, body| {
                let mut item = (kind, ts, body);
                // A full queue is back-pressure: the producer waits, as a socket would.
                while let Err(back) = worker.queue.push(item) {
                    item = back;
                    worker.thread.thread().unpark();
                    thread::yield_now();
                }
                worker.thread.thread().unpark();
                sent += 1;
            });
            while worker.done.load(Ordering::Acquire) < sent {
                thread::yield_now();
            }
        })
    });
    worker.stop.store(true, Ordering::Release);
    worker.thread.thread().unpark();
    let _ = worker.thread.join();
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
