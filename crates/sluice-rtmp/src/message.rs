//! A whole RTMP message, as chunk streams carry it.

use bytes::Bytes;

/// RTMP message type ids (RTMP spec 5.4 and 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// Set Chunk Size (protocol control).
    SetChunkSize = 1,
    /// Abort Message (protocol control).
    Abort = 2,
    /// Acknowledgement (protocol control).
    Acknowledgement = 3,
    /// User Control Message.
    UserControl = 4,
    /// Window Acknowledgement Size (protocol control).
    WindowAckSize = 5,
    /// Set Peer Bandwidth (protocol control).
    SetPeerBandwidth = 6,
    /// Audio data: an FLV audio tag body.
    Audio = 8,
    /// Video data: an FLV video tag body.
    Video = 9,
    /// AMF3 data message.
    DataAmf3 = 15,
    /// AMF3 shared object.
    SharedObjectAmf3 = 16,
    /// AMF3 command message.
    CommandAmf3 = 17,
    /// AMF0 data message (@setDataFrame, onMetaData).
    DataAmf0 = 18,
    /// AMF0 shared object.
    SharedObjectAmf0 = 19,
    /// AMF0 command message (connect, publish, play, ...).
    CommandAmf0 = 20,
    /// Aggregate message.
    Aggregate = 22,
}

impl MessageType {
    /// The type for a raw type id, or `None` for an id RTMP does not define.
    pub fn from_id(id: u8) -> Option<Self> {
        use MessageType::*;
        Some(match id {
            1 => SetChunkSize,
            2 => Abort,
            3 => Acknowledgement,
            4 => UserControl,
            5 => WindowAckSize,
            6 => SetPeerBandwidth,
            8 => Audio,
            9 => Video,
            15 => DataAmf3,
            16 => SharedObjectAmf3,
            17 => CommandAmf3,
            18 => DataAmf0,
            19 => SharedObjectAmf0,
            20 => CommandAmf0,
            22 => Aggregate,
            _ => return None,
        })
    }
}

/// One complete RTMP message (all its chunks reassembled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Chunk stream id it arrived on or is to be sent on (2..=65599).
    pub csid: u32,
    /// Raw message type id (see [`MessageType::from_id`]); kept raw so unknown types can be
    /// skipped rather than refused.
    pub type_id: u8,
    /// Message timestamp in milliseconds, 32-bit RTMP time (wraps).
    pub timestamp: u32,
    /// Message stream id (0 for control and connection-level commands).
    pub stream_id: u32,
    /// The message body.
    pub payload: Bytes,
}
