//! A publisher's frames, whatever their bytes, through the HLS segmenter into both muxers
//! (fMP4 and MPEG-TS): codec records, NAL lengths, OBUs and AAC/Opus headers all come from
//! the peer. Each record of the input is `[kind, dts step, flags, len_hi, len_lo, payload…]`.

#![no_main]

use std::sync::Arc;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_hls::mux;
use sluice_hls::segmenter::{Segmenter, Settings};
use sluice_hls::window::Container;
use sluice_media::{Frame, FrameKind};

fuzz_target!(|data: &[u8]| {
    for container in [Container::Fmp4, Container::Ts] {
        let settings = Settings {
            container,
            target_duration_ms: 500,
            part_target_ms: 100,
            window_segments: 3,
            first_msn: 0,
        };
        let mut segmenter = Segmenter::new(settings, mux::factory(container));
        let mut out = Vec::new();
        let mut rest = data;
        let mut dts = 0u64;
        while let [kind, step, _flags, hi, lo, tail @ ..] = rest {
            let len = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
            let (payload, next) = tail.split_at(len);
            rest = next;
            // Mostly forward, sometimes back (a new timeline).
            dts = if *step == 0xff { dts / 2 } else { dts + u64::from(*step) };
            let kind = match kind % 3 {
                0 => FrameKind::Audio,
                1 => FrameKind::Video,
                _ => FrameKind::Script,
            };
            if let Ok(frame) = Frame::parse(kind, dts, Bytes::copy_from_slice(payload)) {
                segmenter.push(&Arc::new(frame), dts, &mut out);
            }
            out.clear();
        }
        segmenter.end(&mut out);
    }
});
