//! Property tests of the chunk layer: writer→reader roundtrips, interleaved chunk streams,
//! robustness against arbitrary bytes, and `encode_full` checked by rml_rtmp as an
//! independent peer.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use rml_rtmp::chunk_io::ChunkDeserializer;
use sluice_rtmp::Message;
use sluice_rtmp::chunk::{ChunkError, ChunkLimits, ChunkReader, ChunkWriter, encode_full};

/// Chunk stream ids covering the 1-, 2- and 3-byte basic header forms and their edges.
fn csid() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(3u32),
        Just(4),
        Just(63),
        Just(64),
        Just(319),
        Just(320),
        Just(65599),
        3u32..65600,
    ]
}

/// Any type id except SetChunkSize and Abort, whose payloads would change reader state.
fn type_id() -> impl Strategy<Value = u8> {
    any::<u8>().prop_filter("chunk control", |t| *t != 1 && *t != 2)
}

/// Timestamp steps: small, zero, and around the 0xFFFFFF extended-timestamp boundary.
fn step() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 0u32..100,
        1 => Just(0u32),
        1 => 0xFF_FFFDu32..0x100_0002,
        1 => any::<u32>(),
    ]
}

fn base() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        0xFF_FF00u32..0x100_0000,
        (u32::MAX - 300)..=u32::MAX,
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Send {
        csid: u32,
        type_id: u8,
        step: u32,
        stream_id: u32,
        len: usize,
    },
    ChunkSize(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (csid(), type_id(), step(), 0u32..3, prop_oneof![0usize..300, 0usize..3000])
            .prop_map(|(csid, type_id, step, stream_id, len)| Op::Send {
                csid, type_id, step, stream_id, len
            }),
        1 => prop_oneof![1u32..300, 1u32..=65536, Just(65536u32)].prop_map(Op::ChunkSize),
    ]
}

fn payload(len: usize, seed: u64) -> Bytes {
    (0..len)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) >> 3) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Feeds `bytes` to `reader` in pieces cut at `cuts` (cycled), collecting every message.
fn feed(reader: &mut ChunkReader, bytes: &[u8], cuts: &[usize]) -> Vec<Message> {
    let mut got = Vec::new();
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let n = cuts
            .get(i % cuts.len().max(1))
            .copied()
            .unwrap_or(usize::MAX);
        let (piece, tail) = rest.split_at(n.clamp(1, rest.len()));
        rest = tail;
        i += 1;
        reader.push(piece);
        while let Some(m) = reader.next_message().expect("valid stream") {
            got.push(m);
        }
    }
    got
}

/// Independent chunker for hand-built streams: type-0 first chunk, type-3 continuations, with
/// the extended timestamp repeated on continuations or not.
fn chunks_of(m: &Message, chunk_size: usize, repeat_ext: bool) -> Vec<Vec<u8>> {
    let basic = |fmt: u8| -> Vec<u8> {
        match m.csid {
            2..=63 => vec![fmt << 6 | m.csid as u8],
            64..=319 => vec![fmt << 6, (m.csid - 64) as u8],
            _ => vec![
                fmt << 6 | 1,
                (m.csid - 64) as u8,
                ((m.csid - 64) >> 8) as u8,
            ],
        }
    };
    let ext = m.timestamp >= 0xFF_FFFF;
    let mut first = basic(0);
    first.extend_from_slice(&m.timestamp.min(0xFF_FFFF).to_be_bytes()[1..]);
    first.extend_from_slice(&(m.payload.len() as u32).to_be_bytes()[1..]);
    first.push(m.type_id);
    first.extend_from_slice(&m.stream_id.to_le_bytes());
    if ext {
        first.extend_from_slice(&m.timestamp.to_be_bytes());
    }
    let mut out = vec![first];
    for (i, c) in m.payload.chunks(chunk_size).enumerate() {
        if i > 0 {
            let mut h = basic(3);
            if ext && repeat_ext {
                h.extend_from_slice(&m.timestamp.to_be_bytes());
            }
            out.push(h);
        }
        out.last_mut().expect("first chunk").extend_from_slice(c);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever the writer produces (compressed headers, extended timestamps, chunk size
    /// changes mid-stream), the reader returns the same messages, however the bytes are split.
    #[test]
    fn writer_to_reader_roundtrip(
        base in base(),
        ops in prop::collection::vec(op(), 1..40),
        cuts in prop::collection::vec(1usize..5000, 1..8),
    ) {
        let mut writer = ChunkWriter::new();
        let mut out = BytesMut::new();
        let mut expected = Vec::new();
        let mut ts = base;
        for (i, op) in ops.iter().enumerate() {
            let msg = match op {
                Op::ChunkSize(size) => writer.set_chunk_size(*size),
                Op::Send { csid, type_id, step, stream_id, len } => {
                    ts = ts.wrapping_add(*step);
                    Message {
                        csid: *csid,
                        type_id: *type_id,
                        timestamp: ts,
                        stream_id: *stream_id,
                        payload: payload(*len, i as u64),
                    }
                }
            };
            writer.write(&msg, &mut out);
            expected.push(msg);
        }
        let mut reader = ChunkReader::new(ChunkLimits::default());
        let got = feed(&mut reader, &out, &cuts);
        prop_assert_eq!(got, expected);
        prop_assert_eq!(reader.peer_chunk_size(), writer.chunk_size());
        prop_assert_eq!(reader.bytes_received(), out.len() as u64);
    }

    /// Several messages on distinct chunk streams, their chunks interleaved at random (as
    /// newer OBS does): each chunk stream keeps its own partial message.
    #[test]
    fn interleaved_chunk_streams(
        specs in prop::collection::vec(
            (prop_oneof![0u32..100, 0xFF_FFF0u32..0x100_0010, (u32::MAX - 5)..=u32::MAX],
             type_id(), 0usize..1000),
            1..6),
        order in prop::collection::vec(any::<u8>(), 0..200),
        repeat_ext in any::<bool>(),
        cuts in prop::collection::vec(1usize..700, 1..5),
    ) {
        let csids = [3u32, 4, 70, 400, 65599, 6];
        let msgs: Vec<Message> = specs
            .iter()
            .zip(csids)
            .enumerate()
            .map(|(i, (&(timestamp, type_id, len), csid))| Message {
                csid,
                type_id,
                timestamp,
                stream_id: 1,
                payload: payload(len, i as u64 + 99),
            })
            .collect();
        let mut queues: Vec<std::collections::VecDeque<Vec<u8>>> =
            msgs.iter().map(|m| chunks_of(m, 128, repeat_ext).into()).collect();
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        let mut picks = order.iter().copied().chain(std::iter::repeat(0));
        loop {
            let live: Vec<usize> = (0..queues.len()).filter(|&i| !queues[i].is_empty()).collect();
            if live.is_empty() {
                break;
            }
            let q = live[usize::from(picks.next().unwrap_or(0)) % live.len()];
            stream.extend(queues[q].pop_front().unwrap_or_default());
            if queues[q].is_empty() {
                expected.push(msgs[q].clone());
            }
        }
        // A trailing message, so a non-repeating peer's last type-3 peek has bytes to look at.
        let sentinel = Message {
            csid: 2,
            type_id: 20,
            timestamp: 0,
            stream_id: 0,
            payload: Bytes::from_static(b"sentinel"),
        };
        stream.extend(encode_full(&sentinel, 128));
        expected.push(sentinel);
        let mut reader = ChunkReader::new(ChunkLimits::default());
        prop_assert_eq!(feed(&mut reader, &stream, &cuts), expected);
    }

    /// Interleaved messages against a budget for incomplete ones: a peer whose incomplete
    /// messages hold more than the budget at some point is refused with `BufferBudget`; one
    /// whose messages in flight at once announce no more than the budget in total parses
    /// whole (buffers never grow past an announced length). In between, either may happen,
    /// but nothing else. What the reader holds never exceeds the budget.
    #[test]
    fn buffer_budget_on_interleaved_messages(
        // Messages over 64 KiB outgrow their first allocation.
        lens in prop::collection::vec(
            prop_oneof![2 => 0usize..300, 2 => 0usize..5000, 1 => 60_000usize..200_000],
            1..8,
        ),
        order in prop::collection::vec(any::<u8>(), 0..400),
        chunk_size in prop_oneof![Just(128usize), 1usize..700, 700usize..20_000],
        budget in prop_oneof![1usize..20_000, 1usize..3000, 1usize..800_000],
        cuts in prop::collection::vec(1usize..30_000, 1..5),
    ) {
        // Large messages in tiny chunks would only make the case slow.
        let chunk_size = if lens.iter().any(|&l| l > 5000) { chunk_size.max(100) } else { chunk_size };
        let msgs: Vec<Message> = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| Message {
                csid: 3 + i as u32,
                type_id: 9,
                timestamp: i as u32,
                stream_id: 1,
                payload: payload(len, i as u64),
            })
            .collect();
        let mut writer = ChunkWriter::new();
        let mut stream = BytesMut::new();
        let scs = writer.set_chunk_size(chunk_size as u32);
        writer.write(&scs, &mut stream);
        let mut expected = vec![scs];
        // The model: per message, bytes received so far while it spans chunks.
        let mut queues: Vec<std::collections::VecDeque<Vec<u8>>> =
            msgs.iter().map(|m| chunks_of(m, chunk_size, true).into()).collect();
        let mut held = vec![0usize; msgs.len()];
        let mut in_flight = vec![false; msgs.len()];
        let (mut peak_held, mut peak_announced) = (0, 0);
        let mut picks = order.iter().copied().chain(std::iter::repeat(0));
        loop {
            let live: Vec<usize> = (0..queues.len()).filter(|&i| !queues[i].is_empty()).collect();
            if live.is_empty() {
                break;
            }
            let q = live[usize::from(picks.next().unwrap_or(0)) % live.len()];
            stream.extend(queues[q].pop_front().unwrap_or_default());
            let len = msgs[q].payload.len();
            if len > chunk_size {
                in_flight[q] = true;
                held[q] = (held[q] + chunk_size).min(len);
                peak_held = peak_held.max(held.iter().sum::<usize>());
                let announced: usize = (0..msgs.len())
                    .filter(|&i| in_flight[i])
                    .map(|i| msgs[i].payload.len())
                    .sum();
                peak_announced = peak_announced.max(announced);
            }
            if queues[q].is_empty() {
                in_flight[q] = false;
                held[q] = 0;
                expected.push(msgs[q].clone());
            }
        }

        let mut reader = ChunkReader::new(ChunkLimits {
            max_buffered_bytes: budget,
            ..ChunkLimits::default()
        });
        let mut got = Vec::new();
        let mut error = None;
        let mut rest = &stream[..];
        'feed: for &c in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at(c.min(rest.len()));
            rest = tail;
            reader.push(piece);
            loop {
                prop_assert!(reader.buffered_bytes() <= budget);
                match reader.next_message() {
                    Ok(Some(m)) => got.push(m),
                    Ok(None) => break,
                    Err(e) => {
                        error = Some(e);
                        break 'feed;
                    }
                }
            }
        }
        match error {
            None => {
                prop_assert!(peak_held <= budget, "held {} over {}", peak_held, budget);
                prop_assert_eq!(&got, &expected);
                prop_assert_eq!(reader.buffered_bytes(), 0);
            }
            Some(ChunkError::BufferBudget { max, needed, .. }) => {
                prop_assert!(peak_announced > budget, "announced {} within {}", peak_announced, budget);
                prop_assert_eq!(max, budget);
                prop_assert!(needed > budget);
                // Refused at the chunk that did not fit: what came before was delivered.
                prop_assert_eq!(&got[..], &expected[..got.len()]);
            }
            Some(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }

    /// Arbitrary bytes never panic the reader.
    #[test]
    fn random_bytes_never_panic(
        data in prop::collection::vec(any::<u8>(), 0..4000),
        cuts in prop::collection::vec(1usize..600, 1..6),
        max_streams in 1usize..8,
    ) {
        let mut reader = ChunkReader::new(ChunkLimits {
            max_chunk_streams: max_streams,
            max_message_size: 5000,
            ..ChunkLimits::default()
        });
        let mut rest = &data[..];
        'outer: for &c in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at(c.min(rest.len()));
            rest = tail;
            reader.push(piece);
            loop {
                match reader.next_message() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => break 'outer,
                }
            }
        }
    }

    /// Valid writer output with random corruption never panics the reader either (random
    /// bytes alone rarely get past the first header).
    #[test]
    fn corrupted_streams_never_panic(
        ops in prop::collection::vec(op(), 1..12),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut writer = ChunkWriter::new();
        let mut out = BytesMut::new();
        for (i, op) in ops.iter().enumerate() {
            let msg = match op {
                Op::ChunkSize(size) => writer.set_chunk_size(*size),
                Op::Send { csid, type_id, step, stream_id, len } => Message {
                    csid: *csid,
                    type_id: *type_id,
                    timestamp: *step,
                    stream_id: *stream_id,
                    payload: payload(*len, i as u64),
                },
            };
            writer.write(&msg, &mut out);
        }
        let mut bytes = out.to_vec();
        for (at, v) in flips {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        let mut reader = ChunkReader::new(ChunkLimits::default());
        reader.push(&bytes);
        while let Ok(Some(_)) = reader.next_message() {}
    }

    /// `encode_full` output is read back by a fresh reader and by rml_rtmp's deserializer.
    #[test]
    fn encode_full_is_understood_by_both_readers(
        csid in csid(),
        type_id in type_id(),
        timestamp in prop_oneof![0u32..1000, 0xFF_FFF0u32..0x100_0010, (u32::MAX - 5)..=u32::MAX],
        stream_id in any::<u32>(),
        len in 1usize..5000,
        chunk_size in prop_oneof![Just(128u32), 1u32..600, 1u32..=65536],
    ) {
        let msg = Message { csid, type_id, timestamp, stream_id, payload: payload(len, 7) };
        let bytes = encode_full(&msg, chunk_size);

        let mut ours = ChunkReader::new(ChunkLimits::default());
        let mut writer = ChunkWriter::new();
        let mut prefix = BytesMut::new();
        let scs = writer.set_chunk_size(chunk_size);
        writer.write(&scs, &mut prefix);
        ours.push(&prefix);
        prop_assert_eq!(ours.next_message().unwrap(), Some(scs));
        ours.push(&bytes);
        prop_assert_eq!(ours.next_message().unwrap(), Some(msg.clone()));

        let mut rml = ChunkDeserializer::new();
        rml.set_max_chunk_size(chunk_size as usize).unwrap();
        let got = rml.get_next_message(&bytes).unwrap().expect("a whole message");
        prop_assert_eq!(got.timestamp.value, msg.timestamp);
        prop_assert_eq!(got.type_id, msg.type_id);
        prop_assert_eq!(got.message_stream_id, msg.stream_id);
        prop_assert_eq!(&got.data[..], &msg.payload[..]);
    }
}
