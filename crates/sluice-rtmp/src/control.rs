//! Protocol control messages (types 1, 2, 3, 5, 6) and user control events (type 4).
//!
//! This module owns their wire form only. Which of them change chunk-layer state
//! (SetChunkSize, Abort) is decided by [`crate::chunk::ChunkReader`]; acknowledgement windows
//! and ping answers are session policy and live with the sessions.

use bytes::{BufMut, Bytes, BytesMut};

use crate::message::{Message, MessageType};

/// A user control event (message type 4, RTMP spec 7.1.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserControl {
    /// Event 0: the stream (message stream id) became functional.
    StreamBegin(u32),
    /// Event 1: playback of the stream is over.
    StreamEof(u32),
    /// Event 2: no more data on the stream for now.
    StreamDry(u32),
    /// Event 3: the client's buffer length for a stream, in milliseconds.
    SetBufferLength {
        /// Message stream id the buffer belongs to.
        stream_id: u32,
        /// Buffer length in milliseconds.
        ms: u32,
    },
    /// Event 4: the stream is a recorded one.
    StreamIsRecorded(u32),
    /// Event 6: ping from the server, carrying its timestamp.
    PingRequest(u32),
    /// Event 7: answer to a ping, echoing the request's timestamp.
    PingResponse(u32),
    /// Any other event (e.g. buffer empty/ready 31/32, SWF verification 26), kept raw.
    Other {
        /// Event type.
        event: u16,
        /// Event data after the 2-byte event type.
        data: Bytes,
    },
}

/// A protocol control or user control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Type 1: the sender's chunk size from now on (raw; range checks are the reader's job).
    SetChunkSize(u32),
    /// Type 2: discard the partial message on this chunk stream id.
    Abort(u32),
    /// Type 3: bytes received so far (sequence number).
    Acknowledgement(u32),
    /// Type 5: acknowledge every this many bytes.
    WindowAckSize(u32),
    /// Type 6: limit the peer's output bandwidth.
    SetPeerBandwidth {
        /// Window size in bytes.
        size: u32,
        /// Limit type: 0 hard, 1 soft, 2 dynamic.
        limit: u8,
    },
    /// Type 4: a user control event.
    User(UserControl),
}

/// A control message whose payload is too short for its type.
#[non_exhaustive]
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// The payload is shorter than the type (or user control event) requires.
    #[error("malformed {what}: payload is {got} bytes, needs {need}")]
    Truncated {
        /// Which message or event was malformed.
        what: &'static str,
        /// Bytes required.
        need: usize,
        /// Bytes present.
        got: usize,
    },
}

/// Chunk stream id that carries protocol control messages (RTMP spec 5.4).
const CONTROL_CSID: u32 = 2;

/// Reads a big-endian u32 at `at`, or reports `what` as truncated.
fn be_u32(data: &[u8], at: usize, what: &'static str) -> Result<u32, ControlError> {
    let need = at.saturating_add(4);
    match data.get(at..need) {
        Some(&[a, b, c, d]) => Ok(u32::from_be_bytes([a, b, c, d])),
        _ => Err(ControlError::Truncated {
            what,
            need,
            got: data.len(),
        }),
    }
}

impl Control {
    /// Decodes a protocol control / user control message; `Ok(None)` if `type_id` is not a
    /// control type.
    ///
    /// Bytes past what the type needs are ignored: some peers pad, and refusing them would
    /// only cost interoperability.
    pub fn decode(msg: &Message) -> Result<Option<Control>, ControlError> {
        let p = &msg.payload[..];
        let Some(kind) = MessageType::from_id(msg.type_id) else {
            return Ok(None);
        };
        Ok(Some(match kind {
            MessageType::SetChunkSize => Control::SetChunkSize(be_u32(p, 0, "SetChunkSize")?),
            MessageType::Abort => Control::Abort(be_u32(p, 0, "Abort")?),
            MessageType::Acknowledgement => {
                Control::Acknowledgement(be_u32(p, 0, "Acknowledgement")?)
            }
            MessageType::WindowAckSize => Control::WindowAckSize(be_u32(p, 0, "WindowAckSize")?),
            MessageType::SetPeerBandwidth => {
                let size = be_u32(p, 0, "SetPeerBandwidth")?;
                let limit = *p.get(4).ok_or(ControlError::Truncated {
                    what: "SetPeerBandwidth",
                    need: 5,
                    got: p.len(),
                })?;
                Control::SetPeerBandwidth { size, limit }
            }
            MessageType::UserControl => Control::User(decode_user(&msg.payload)?),
            _ => return Ok(None),
        }))
    }

    /// The message for this control (csid 2, stream id 0, timestamp 0).
    pub fn to_message(&self) -> Message {
        let mut p = BytesMut::with_capacity(10);
        let kind = match self {
            Control::SetChunkSize(v) => {
                p.put_u32(*v);
                MessageType::SetChunkSize
            }
            Control::Abort(v) => {
                p.put_u32(*v);
                MessageType::Abort
            }
            Control::Acknowledgement(v) => {
                p.put_u32(*v);
                MessageType::Acknowledgement
            }
            Control::WindowAckSize(v) => {
                p.put_u32(*v);
                MessageType::WindowAckSize
            }
            Control::SetPeerBandwidth { size, limit } => {
                p.put_u32(*size);
                p.put_u8(*limit);
                MessageType::SetPeerBandwidth
            }
            Control::User(u) => {
                encode_user(u, &mut p);
                MessageType::UserControl
            }
        };
        Message {
            csid: CONTROL_CSID,
            type_id: kind as u8,
            timestamp: 0,
            stream_id: 0,
            payload: p.freeze(),
        }
    }
}

fn decode_user(p: &Bytes) -> Result<UserControl, ControlError> {
    let event = match p.get(..2) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => {
            return Err(ControlError::Truncated {
                what: "UserControl",
                need: 2,
                got: p.len(),
            });
        }
    };
    Ok(match event {
        0 => UserControl::StreamBegin(be_u32(p, 2, "StreamBegin")?),
        1 => UserControl::StreamEof(be_u32(p, 2, "StreamEof")?),
        2 => UserControl::StreamDry(be_u32(p, 2, "StreamDry")?),
        3 => UserControl::SetBufferLength {
            stream_id: be_u32(p, 2, "SetBufferLength")?,
            ms: be_u32(p, 6, "SetBufferLength")?,
        },
        4 => UserControl::StreamIsRecorded(be_u32(p, 2, "StreamIsRecorded")?),
        6 => UserControl::PingRequest(be_u32(p, 2, "PingRequest")?),
        7 => UserControl::PingResponse(be_u32(p, 2, "PingResponse")?),
        _ => UserControl::Other {
            event,
            data: p.slice(2..),
        },
    })
}

fn encode_user(u: &UserControl, p: &mut BytesMut) {
    let (event, a, b) = match u {
        UserControl::StreamBegin(v) => (0, *v, None),
        UserControl::StreamEof(v) => (1, *v, None),
        UserControl::StreamDry(v) => (2, *v, None),
        UserControl::SetBufferLength { stream_id, ms } => (3, *stream_id, Some(*ms)),
        UserControl::StreamIsRecorded(v) => (4, *v, None),
        UserControl::PingRequest(v) => (6, *v, None),
        UserControl::PingResponse(v) => (7, *v, None),
        UserControl::Other { event, data } => {
            p.put_u16(*event);
            p.put_slice(data);
            return;
        }
    };
    p.put_u16(event);
    p.put_u32(a);
    if let Some(b) = b {
        p.put_u32(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Control> {
        vec![
            Control::SetChunkSize(4096),
            Control::Abort(7),
            Control::Acknowledgement(123_456),
            Control::WindowAckSize(2_500_000),
            Control::SetPeerBandwidth {
                size: 2_500_000,
                limit: 2,
            },
            Control::User(UserControl::StreamBegin(1)),
            Control::User(UserControl::StreamEof(1)),
            Control::User(UserControl::StreamDry(1)),
            Control::User(UserControl::SetBufferLength {
                stream_id: 1,
                ms: 3000,
            }),
            Control::User(UserControl::StreamIsRecorded(1)),
            Control::User(UserControl::PingRequest(99)),
            Control::User(UserControl::PingResponse(99)),
            Control::User(UserControl::Other {
                event: 31,
                data: Bytes::from_static(&[0, 0, 0, 1]),
            }),
        ]
    }

    #[test]
    fn roundtrip_every_control() {
        for c in all() {
            let m = c.to_message();
            assert_eq!((m.csid, m.stream_id, m.timestamp), (2, 0, 0));
            assert_eq!(Control::decode(&m).unwrap(), Some(c));
        }
    }

    #[test]
    fn wire_bytes_match_spec() {
        let m = Control::SetPeerBandwidth {
            size: 0x0102_0304,
            limit: 1,
        }
        .to_message();
        assert_eq!((m.type_id, &m.payload[..]), (6, &[1, 2, 3, 4, 1][..]));
        let m = Control::User(UserControl::SetBufferLength {
            stream_id: 1,
            ms: 2,
        })
        .to_message();
        assert_eq!(
            (m.type_id, &m.payload[..]),
            (4, &[0, 3, 0, 0, 0, 1, 0, 0, 0, 2][..])
        );
    }

    #[test]
    fn non_control_types_are_none() {
        for type_id in [0, 8, 9, 18, 20, 22, 200] {
            let m = Message {
                csid: 3,
                type_id,
                timestamp: 0,
                stream_id: 1,
                payload: Bytes::new(),
            };
            assert_eq!(Control::decode(&m).unwrap(), None);
        }
    }

    #[test]
    fn every_truncation_is_an_error_and_padding_is_ignored() {
        for c in all() {
            let full = c.to_message();
            if matches!(c, Control::User(UserControl::Other { .. })) {
                continue; // raw data has no required length beyond the event type
            }
            for cut in 0..full.payload.len() {
                let mut m = full.clone();
                m.payload = full.payload.slice(..cut);
                assert!(
                    matches!(Control::decode(&m), Err(ControlError::Truncated { .. })),
                    "{c:?} cut at {cut}"
                );
            }
            let mut padded = full.clone();
            padded.payload = [&full.payload[..], &[0xAA]].concat().into();
            assert_eq!(Control::decode(&padded).unwrap(), Some(c));
        }
    }
}
