//! The part muxers the segmenter drives: fMP4 fragments or MPEG-TS packets, chosen by the
//! container. Both describe their tracks with the same RFC 6381 codec strings (worked out from
//! the sequence headers by [`crate::fmp4`]) for the multivariant playlist's `CODECS`.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sluice_media::Frame;

use crate::fmp4::{self, Fragmenter};
use crate::segmenter::{MuxerFactory, PartMuxer, Tracks};
use crate::ts::TsMuxer;
use crate::window::Container;

/// The factory the segmenter calls whenever a stream's tracks (sequence headers) change.
pub fn factory(container: Container) -> MuxerFactory {
    Box::new(move |video: Option<&Frame>, audio: Option<&Frame>| {
        let init = fmp4::init_segment(video, audio)?;
        let resolution = (init.width > 0 && init.height > 0).then_some((init.width, init.height));
        match container {
            Container::Fmp4 => {
                let muxer = Fmp4Parts(Fragmenter::new(&init));
                let tracks = Tracks {
                    init: init.bytes,
                    codecs: init.codecs,
                    resolution,
                };
                Ok((Box::new(muxer) as Box<dyn PartMuxer>, tracks))
            }
            Container::Ts => {
                let muxer = TsParts(TsMuxer::new(video, audio)?);
                let tracks = Tracks {
                    init: Bytes::new(),
                    codecs: init.codecs,
                    resolution,
                };
                Ok((Box::new(muxer) as Box<dyn PartMuxer>, tracks))
            }
        }
    })
}

/// One moof+mdat fragment per part.
struct Fmp4Parts(Fragmenter);

impl PartMuxer for Fmp4Parts {
    fn part(&mut self, frames: &[Arc<Frame>], _segment_start: bool) -> Bytes {
        self.0.fragment(frames)
    }
}

/// TS packets per part, each part starting with the tables so that it (and so every segment)
/// decodes on its own.
struct TsParts(TsMuxer);

impl PartMuxer for TsParts {
    fn part(&mut self, frames: &[Arc<Frame>], _segment_start: bool) -> Bytes {
        let size: usize = frames.iter().map(|f| f.payload.len()).sum();
        // Payload plus TS/PES overhead (4 bytes per 188, headers, tables).
        let mut out = BytesMut::with_capacity(size + size / 16 + 1024);
        self.0.write_tables(&mut out);
        for frame in frames {
            self.0.write_frame(frame, &mut out);
        }
        out.freeze()
    }
}
