//! RTMP written by hand, for the tests that feed a node bytes no client library would send:
//! chunk headers in every format, whole messages, AMF0 commands, and a writer that
//! interleaves chunk streams. (Publishers, players and the raw handshake are in
//! `sluice_testkit::rtmp`.)
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};
use sluice_rtmp::message::Message;

/// A chunk header exactly as the spec lays it out; used to build streams by hand.
pub fn basic_header(out: &mut BytesMut, fmt: u8, csid: u32) {
    match csid {
        2..=63 => out.put_u8(fmt << 6 | csid as u8),
        64..=319 => {
            out.put_u8(fmt << 6);
            out.put_u8((csid - 64) as u8);
        }
        _ => {
            out.put_u8(fmt << 6 | 1);
            out.put_u16_le((csid - 64) as u16);
        }
    }
}

fn put_u24(out: &mut BytesMut, v: u32) {
    out.put_slice(&v.to_be_bytes()[1..]);
}

/// An AMF0 command message (type 20) encoded by rml_amf0.
pub fn amf0_command(values: Vec<rml_amf0::Amf0Value>) -> Bytes {
    Bytes::from(rml_amf0::serialize(&values).expect("amf0"))
}

/// One whole message in a single type-0 chunk sequence with chunk size `chunk_size`.
pub fn whole_message(msg: &Message, chunk_size: usize) -> BytesMut {
    let mut out = BytesMut::new();
    let ext = msg.timestamp >= 0xFF_FFFF;
    for (i, part) in msg.payload.chunks(chunk_size.max(1)).enumerate() {
        if i == 0 {
            basic_header(&mut out, 0, msg.csid);
            put_u24(&mut out, if ext { 0xFF_FFFF } else { msg.timestamp });
            put_u24(&mut out, msg.payload.len() as u32);
            out.put_u8(msg.type_id);
            out.put_u32_le(msg.stream_id);
        } else {
            basic_header(&mut out, 3, msg.csid);
        }
        if ext {
            out.put_u32(msg.timestamp);
        }
        out.put_slice(part);
    }
    if msg.payload.is_empty() {
        basic_header(&mut out, 0, msg.csid);
        put_u24(&mut out, msg.timestamp.min(0xFF_FFFF));
        put_u24(&mut out, 0);
        out.put_u8(msg.type_id);
        out.put_u32_le(msg.stream_id);
    }
    out
}

/// Writes messages the way a newer OBS does and worse: every chunk stream with a message in
/// flight gets one chunk in turn, so messages on different chunk streams interrupt each
/// other. Headers use all four formats: type 0 for a chunk stream's first message and every
/// `absolute_every`-th, type 1 for a new length, type 2 for a repeated length, type 3 for
/// continuations, with extended timestamps (also repeated on type-3 chunks) when needed.
/// Returns the bytes and the messages in the order they complete, which is the order a
/// correct reader yields them.
pub struct Interleaver {
    pub chunk_size: usize,
    pub absolute_every: usize,
}

#[derive(Default)]
struct ChunkStreamState {
    queue: VecDeque<Message>,
    /// The message being sent, how much of it went out, and the extended timestamp field
    /// its header carried (repeated on each type-3 continuation).
    in_flight: Option<(Message, usize, Option<u32>)>,
    last: Option<(u32, u32, u8)>,
    sent: usize,
}

impl Interleaver {
    pub fn write(&self, messages: Vec<Message>) -> (BytesMut, Vec<Message>) {
        let mut streams: BTreeMap<u32, ChunkStreamState> = BTreeMap::new();
        for msg in messages {
            streams.entry(msg.csid).or_default().queue.push_back(msg);
        }
        let mut out = BytesMut::new();
        let mut completed = Vec::new();
        loop {
            let mut progressed = false;
            for (&csid, st) in streams.iter_mut() {
                if st.in_flight.is_none() {
                    let Some(msg) = st.queue.pop_front() else {
                        continue;
                    };
                    // Header for the first chunk of a new message.
                    let len = msg.payload.len() as u32;
                    let absolute = st.last.is_none() || st.sent % self.absolute_every == 0;
                    let ext;
                    match st.last {
                        Some((prev_ts, prev_len, prev_type)) if !absolute => {
                            let delta = msg.timestamp.wrapping_sub(prev_ts);
                            ext = (delta >= 0xFF_FFFF).then_some(delta);
                            let field = delta.min(0xFF_FFFF);
                            if prev_len == len && prev_type == msg.type_id {
                                basic_header(&mut out, 2, csid);
                                put_u24(&mut out, field);
                            } else {
                                basic_header(&mut out, 1, csid);
                                put_u24(&mut out, field);
                                put_u24(&mut out, len);
                                out.put_u8(msg.type_id);
                            }
                            if let Some(v) = ext {
                                out.put_u32(v);
                            }
                        }
                        _ => {
                            ext = (msg.timestamp >= 0xFF_FFFF).then_some(msg.timestamp);
                            basic_header(&mut out, 0, csid);
                            put_u24(&mut out, msg.timestamp.min(0xFF_FFFF));
                            put_u24(&mut out, len);
                            out.put_u8(msg.type_id);
                            out.put_u32_le(msg.stream_id);
                            if let Some(v) = ext {
                                out.put_u32(v);
                            }
                        }
                    }
                    st.last = Some((msg.timestamp, len, msg.type_id));
                    st.sent += 1;
                    let n = self.chunk_size.min(msg.payload.len());
                    out.put_slice(&msg.payload[..n]);
                    st.in_flight = Some((msg, n, ext));
                } else if let Some((msg, offset, ext)) = &mut st.in_flight {
                    basic_header(&mut out, 3, csid);
                    if let Some(v) = ext {
                        out.put_u32(*v);
                    }
                    let n = self.chunk_size.min(msg.payload.len() - *offset);
                    out.put_slice(&msg.payload[*offset..*offset + n]);
                    *offset += n;
                }
                progressed = true;
                if let Some((msg, offset, _)) = &st.in_flight
                    && *offset >= msg.payload.len()
                {
                    let (msg, _, _) = st.in_flight.take().expect("in flight");
                    completed.push(msg);
                }
            }
            if !progressed {
                return (out, completed);
            }
        }
    }
}
