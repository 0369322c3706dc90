//! Feeds arbitrary bytes to the FLV demuxer (split at a fuzzer-chosen point, as a network
//! would) and every tag body, and the raw input itself, to every sluice-media parser.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_media::flv::{AudioTag, Demuxer, VideoTag};
use sluice_media::{Frame, FrameKind, audio_info, video_info};

fn parse_all(body: &[u8]) {
    let _ = VideoTag::parse(body);
    let _ = AudioTag::parse(body);
    let _ = video_info(body);
    let _ = audio_info(body);
    for kind in [FrameKind::Audio, FrameKind::Video, FrameKind::Script] {
        let _ = Frame::parse(kind, 0, Bytes::copy_from_slice(body));
    }
}

fuzz_target!(|data: &[u8]| {
    parse_all(data);
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut demuxer = Demuxer::with_max_tag_size(1 << 16);
    // Prefix a valid file header so the fuzzer reaches the tag loop without guessing it.
    demuxer.push(b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00");
    for chunk in [&data[..split], &data[split..]] {
        demuxer.push(chunk);
        while let Ok(Some((_, body))) = demuxer.next_tag() {
            parse_all(&body);
        }
    }
});
