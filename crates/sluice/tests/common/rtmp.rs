//! RTMP test peers: fixture tags, a hand-made chunk writer that interleaves chunk streams, a
//! raw handshake, and a viewer that records what it receives.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use sluice_media::flv::{Demuxer, TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO};
use sluice_rtmp::client::ClientEvent;
use sluice_rtmp::message::Message;
use sluice_runtime::client::{Client, RtmpUrl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const DEADLINE: Duration = Duration::from_secs(10);

/// One FLV tag of a fixture: RTMP message type, timestamp and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub type_id: u8,
    pub timestamp: u32,
    pub payload: Bytes,
}

/// The tags of a checked-in fixture, in file order.
pub fn fixture_tags(name: &str) -> Vec<Tag> {
    let file = std::fs::read(sluice_testkit::fixture(name)).expect("fixture");
    let mut demuxer = Demuxer::new();
    demuxer.push(&file);
    let mut tags = Vec::new();
    while let Some((header, payload)) = demuxer.next_tag().expect("valid fixture") {
        assert!(matches!(
            header.tag_type,
            TAG_AUDIO | TAG_VIDEO | TAG_SCRIPT
        ));
        tags.push(Tag {
            type_id: header.tag_type,
            timestamp: header.timestamp,
            payload,
        });
    }
    tags
}

/// The fixture's media tags (audio and video) and its onMetaData body.
pub fn fixture_media(name: &str) -> (Vec<Tag>, Bytes) {
    let tags = fixture_tags(name);
    let metadata = tags
        .iter()
        .find(|t| t.type_id == TAG_SCRIPT)
        .map(|t| t.payload.clone())
        .expect("fixture has onMetaData");
    let media = tags
        .into_iter()
        .filter(|t| t.type_id != TAG_SCRIPT)
        .collect();
    (media, metadata)
}

pub fn url(s: &str) -> RtmpUrl {
    RtmpUrl::parse(s).expect("url")
}

/// What a viewer received, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    Metadata(Bytes),
    Media(Tag),
    Begin,
    Eof,
}

/// Reads events until the stream ends (StreamEOF or close), `limit` media tags arrived, or
/// `within` passed.
pub async fn record(client: &mut Client, limit: usize, within: Duration) -> Vec<Got> {
    let mut got = Vec::new();
    let mut media = 0;
    let _ = tokio::time::timeout(within, async {
        while media < limit {
            match client.next_event().await {
                Ok(Some(ClientEvent::Media {
                    type_id,
                    timestamp,
                    payload,
                })) => {
                    media += 1;
                    got.push(Got::Media(Tag {
                        type_id,
                        timestamp,
                        payload,
                    }));
                }
                Ok(Some(ClientEvent::Metadata { payload, .. })) => got.push(Got::Metadata(payload)),
                Ok(Some(ClientEvent::StreamBegin)) => got.push(Got::Begin),
                Ok(Some(ClientEvent::StreamEof)) => {
                    got.push(Got::Eof);
                    return;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    got
}

pub fn media_of(got: &[Got]) -> Vec<Tag> {
    got.iter()
        .filter_map(|g| match g {
            Got::Media(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

pub fn is_video_keyframe(tag: &Tag) -> bool {
    tag.type_id == TAG_VIDEO && tag.payload.first().is_some_and(|b| b >> 4 == 1)
}

/// AVC or AAC sequence header (legacy tags: packet type byte 0).
pub fn is_sequence_header(tag: &Tag) -> bool {
    tag.payload.get(1) == Some(&0)
        && match tag.type_id {
            TAG_VIDEO => tag.payload[0] & 0x0f == 7,
            TAG_AUDIO => tag.payload[0] >> 4 == 10,
            _ => false,
        }
}

/// Publishes `tags` from a task, paced `gap` apart, looping with increasing timestamps until
/// `loops` passes are done. Returns the task; abort it to stop.
pub fn spawn_paced_publisher(
    url_text: String,
    metadata: Bytes,
    tags: Vec<Tag>,
    gap: Duration,
    loops: u32,
) -> tokio::task::JoinHandle<Client> {
    tokio::spawn(async move {
        let mut publisher = Client::publish(&url(&url_text), DEADLINE)
            .await
            .expect("publish");
        publisher.send_metadata(metadata).await.expect("metadata");
        let span = tags.last().map_or(0, |t| t.timestamp) + 40;
        for pass in 0..loops {
            for tag in &tags {
                if pass > 0 && is_sequence_header(tag) {
                    continue;
                }
                let ts = tag.timestamp + pass * span;
                publisher
                    .send_media(tag.type_id, ts, tag.payload.clone())
                    .await
                    .expect("send");
                tokio::time::sleep(gap).await;
            }
        }
        publisher
    })
}

/// A TCP connection that completed the RTMP handshake as a client (rml_rtmp's handshake, an
/// independent implementation), with nothing else sent yet.
pub async fn handshaken(addr: std::net::SocketAddr) -> TcpStream {
    handshake_on(TcpStream::connect(addr).await.expect("connect")).await
}

/// [`handshaken`] on a socket the caller connected (with its own socket options).
pub async fn handshake_on(mut socket: TcpStream) -> TcpStream {
    use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
    let mut hs = Handshake::new(PeerType::Client);
    let c0c1 = hs.generate_outbound_p0_and_p1().expect("c0c1");
    socket.write_all(&c0c1).await.expect("write");
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(DEADLINE, socket.read(&mut buf))
            .await
            .expect("handshake answer")
            .expect("read");
        assert!(n > 0, "server closed during handshake");
        match hs.process_bytes(&buf[..n]).expect("handshake") {
            HandshakeProcessResult::InProgress { response_bytes } => {
                socket.write_all(&response_bytes).await.expect("write");
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                socket.write_all(&response_bytes).await.expect("write");
                assert!(remaining_bytes.is_empty());
                return socket;
            }
        }
    }
}

/// Reads and discards until the peer closes; true if it closed within `within`.
pub async fn closed_within(socket: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 8192];
    tokio::time::timeout(within, async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

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
