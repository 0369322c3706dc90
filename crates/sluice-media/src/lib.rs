//! Sluice's media model, without I/O.
//!
//! A [`Frame`] is one audio, video or script-data message of a stream, carrying the payload
//! exactly as RTMP and FLV carry it (the FLV tag body), so that egress formats only add
//! framing. Codec knowledge (FLV tag headers, legacy and enhanced; codec configuration
//! records) lives here and nowhere else.

mod bits;
pub mod codec;
pub mod flv;
pub mod frame;
pub mod time;

pub use codec::{AudioInfo, CodecId, VideoInfo, audio_info, is_non_reference, video_info};
pub use flv::FlvError;
pub use frame::{Frame, FrameKind, FrameParts, RtmpForm};
