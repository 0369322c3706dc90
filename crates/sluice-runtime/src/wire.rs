//! How a frame goes on the wire to a viewer: the formats the front ends play, each with
//! every parameter its bytes depend on, and the one place that builds (or fetches from the
//! frame's cache) a frame's wire form for them.
//!
//! A wire form is cached on the frame under its format and parameters
//! ([`sluice_media::RtmpForm`] for RTMP), so two viewers whose parameters differ (a reload
//! changed `rtmp.chunk_size` between their connects, or a client plays on another message
//! stream) never share bytes; viewers with the same parameters always do.

use bytes::Bytes;
use sluice_core::metrics::proto;
use sluice_media::{Frame, FrameKind, RtmpForm};
use sluice_rtmp::Message;
use sluice_rtmp::chunk::encode_full;

/// The message stream id of the first (and with ffmpeg, OBS-style players and VLC, the only)
/// stream a client creates.
pub const FIRST_STREAM_ID: u32 = 1;
/// Chunk stream ids of media, one per kind so type-0 headers never collide.
const CSID_AUDIO: u32 = 4;
const CSID_DATA: u32 = 5;
const CSID_VIDEO: u32 = 6;

/// A viewer's wire format, with every parameter its bytes depend on. Viewers with equal
/// `Wire`s share each frame's bytes (and a shared writer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wire {
    /// RTMP messages: full (type 0) header on each message's first chunk.
    Rtmp(RtmpForm),
    /// An HTTP/1.1 chunked FLV body: each tag in its own chunk.
    FlvChunked,
    /// An HTTP/1.0 FLV body: the tags as they are.
    FlvPlain,
}

impl Wire {
    /// The `protocol` label of this format's metrics.
    pub fn protocol(self) -> &'static str {
        match self {
            Wire::Rtmp(_) => proto::RTMP,
            Wire::FlvChunked | Wire::FlvPlain => proto::HTTP_FLV,
        }
    }

    /// Buffers per frame (a frame is written whole or not started).
    pub fn unit(self) -> usize {
        match self {
            Wire::FlvChunked => 2,
            Wire::Rtmp(_) | Wire::FlvPlain => 1,
        }
    }

    /// Appends `frame`'s buffers, shared by every viewer of this exact format, to `out`.
    pub fn push(self, frame: &Frame, out: &mut impl Extend<Bytes>) {
        match self {
            Wire::Rtmp(form) => out.extend([rtmp_chunks(frame, form)]),
            Wire::FlvChunked => out.extend([frame.flv_chunk_line(), frame.flv_tag()]),
            Wire::FlvPlain => out.extend([frame.flv_tag()]),
        }
    }
}

/// The RTMP message carrying `frame` on message stream `stream_id`.
fn frame_message(frame: &Frame, stream_id: u32) -> Message {
    let csid = match frame.kind {
        FrameKind::Audio => CSID_AUDIO,
        FrameKind::Video => CSID_VIDEO,
        FrameKind::Script => CSID_DATA,
    };
    Message {
        csid,
        type_id: frame.kind.type_id(),
        timestamp: frame.wire_timestamp(),
        stream_id,
        payload: frame.payload.clone(),
    }
}

/// `frame` chunked for `form`: built once per frame and form, then shared.
pub fn rtmp_chunks(frame: &Frame, form: RtmpForm) -> Bytes {
    frame.rtmp_chunks(form, |f| {
        encode_full(&frame_message(f, form.stream_id), form.chunk_size)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_rtmp::chunk::{ChunkLimits, ChunkReader, ChunkWriter};
    use sluice_rtmp::message::MessageType;

    /// Reads back the media messages in `bytes` with a reader told `chunk_size` first.
    fn read_back(bytes: &[u8], chunk_size: u32) -> Vec<Message> {
        let mut announce = bytes::BytesMut::new();
        let mut writer = ChunkWriter::new();
        let set = writer.set_chunk_size(chunk_size);
        writer.write(&set, &mut announce);
        let mut reader = ChunkReader::new(ChunkLimits::default());
        reader.push(&announce);
        reader.push(bytes);
        let mut out = Vec::new();
        while let Some(message) = reader.next_message().expect("well-formed") {
            if message.type_id == MessageType::Video as u8 {
                out.push(message);
            }
        }
        out
    }

    #[test]
    fn each_form_reads_back_at_its_own_chunk_size() {
        let mut body = vec![0x17, 1, 0, 0, 0];
        body.resize(5000, 7);
        let frame = Frame::parse(FrameKind::Video, 40, Bytes::from(body.clone())).expect("frame");
        for (chunk_size, stream_id) in [(128, 1), (4096, 1), (60000, 1), (128, 3)] {
            let form = RtmpForm {
                chunk_size,
                stream_id,
            };
            let bytes = rtmp_chunks(&frame, form);
            let messages = read_back(&bytes, chunk_size);
            assert_eq!(messages.len(), 1, "{form:?}");
            assert_eq!(messages[0].stream_id, stream_id);
            assert_eq!(messages[0].type_id, MessageType::Video as u8);
            assert_eq!(messages[0].timestamp, 40);
            assert_eq!(&messages[0].payload[..], &body[..]);
        }
        // The same form twice is the same bytes.
        let form = RtmpForm {
            chunk_size: 128,
            stream_id: 1,
        };
        assert_eq!(
            rtmp_chunks(&frame, form).as_ptr(),
            rtmp_chunks(&frame, form).as_ptr()
        );
    }
}
