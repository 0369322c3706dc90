//! Real FLV streams written by ffmpeg (see `tests/data/make.sh`): demux them, classify every
//! tag, and read the sequence headers.

use bytes::Bytes;
use sluice_media::flv::{Demuxer, TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO, TagHeader};
use sluice_media::{AudioInfo, CodecId, Frame, FrameKind, VideoInfo, audio_info, video_info};

fn demux(file: &[u8]) -> Vec<(TagHeader, Bytes)> {
    let mut d = Demuxer::new();
    d.push(file);
    let mut tags = Vec::new();
    while let Some(tag) = d.next_tag().expect("valid FLV") {
        tags.push(tag);
    }
    tags
}

fn frames(file: &[u8]) -> Vec<Frame> {
    demux(file)
        .into_iter()
        .map(|(h, body)| {
            let kind = match h.tag_type {
                TAG_AUDIO => FrameKind::Audio,
                TAG_VIDEO => FrameKind::Video,
                TAG_SCRIPT => FrameKind::Script,
                t => panic!("tag type {t}"),
            };
            Frame::parse(kind, u64::from(h.timestamp), body).expect("classifiable")
        })
        .collect()
}

/// The stream's video and audio info, from its first sequence headers (MP3 from a frame).
fn infos(file: &[u8]) -> (Option<VideoInfo>, Option<AudioInfo>, Vec<Frame>) {
    let frames = frames(file);
    let seq = |kind| {
        frames
            .iter()
            .find(|f| f.kind == kind && (f.seq_header || f.codec == CodecId::Mp3))
    };
    let video = seq(FrameKind::Video).map(|f| video_info(&f.payload).expect("video info"));
    let audio = seq(FrameKind::Audio).map(|f| audio_info(&f.payload).expect("audio info"));
    (video, audio, frames)
}

fn video(codec: CodecId, profile: &str, level: &str, width: u32, height: u32) -> Option<VideoInfo> {
    Some(VideoInfo {
        codec: Some(codec),
        profile: profile.into(),
        level: level.into(),
        width,
        height,
    })
}

fn audio(codec: CodecId, profile: &str, sample_rate: u32, channels: u8) -> Option<AudioInfo> {
    Some(AudioInfo {
        codec: Some(codec),
        profile: profile.into(),
        sample_rate,
        channels,
    })
}

#[test]
fn h264_high_aac() {
    let (v, a, frames) = infos(include_bytes!("data/h264_aac.flv"));
    assert_eq!(v, video(CodecId::Avc, "High", "3.1", 320, 240));
    assert_eq!(a, audio(CodecId::Aac, "LC", 44100, 2));
    // The fixture keeps the inter frames that fit (the IDR does not): none is a keyframe, and
    // B-frame reordering gives some a composition offset.
    let inter = frames
        .iter()
        .filter(|f| f.kind == FrameKind::Video && f.payload[0] == 0x27);
    assert!(inter.clone().count() > 2);
    assert!(inter.clone().all(|f| !f.keyframe && !f.seq_header));
    assert!(inter.clone().any(|f| f.cts > 0));
    assert_eq!(frames[0].codec, CodecId::Amf0);
}

#[test]
fn h264_baseline_mp3() {
    let (v, a, _) = infos(include_bytes!("data/h264_mp3.flv"));
    assert_eq!(
        v,
        video(CodecId::Avc, "Constrained Baseline", "2.0", 176, 144)
    );
    assert_eq!(a, audio(CodecId::Mp3, "", 22050, 1));
}

#[test]
fn h264_444_cropped() {
    // 318x238 4:4:4: cropping counts luma samples (no chroma subsampling).
    let (v, _, _) = infos(include_bytes!("data/h264_444.flv"));
    assert_eq!(
        v,
        video(CodecId::Avc, "High 4:4:4 Predictive", "1.3", 318, 238)
    );
}

#[test]
fn enhanced_hevc_opus() {
    let (v, a, frames) = infos(include_bytes!("data/hevc_opus.flv"));
    assert_eq!(v, video(CodecId::Hevc, "Main", "2.0", 320, 240));
    assert_eq!(a, audio(CodecId::Opus, "", 48000, 2));
    // ffmpeg sends colorInfo metadata with frame type 5: neither keyframe nor sequence header.
    let meta = frames
        .iter()
        .find(|f| f.kind == FrameKind::Video && f.payload[0] & 0x0f == 4)
        .unwrap();
    assert!(!meta.keyframe && !meta.seq_header);
    // Enhanced CodedFrames carry an SI24 composition offset for hvc1 (CodedFramesX do not).
    assert!(
        frames
            .iter()
            .any(|f| f.codec == CodecId::Hevc && f.cts > 0 && !f.keyframe)
    );
}

#[test]
fn enhanced_hevc_main10() {
    let (v, _, _) = infos(include_bytes!("data/hevc10.flv"));
    assert_eq!(v, video(CodecId::Hevc, "Main 10", "2.0", 320, 240));
}

#[test]
fn enhanced_av1_aac() {
    let (v, a, _) = infos(include_bytes!("data/av1_aac.flv"));
    assert_eq!(v, video(CodecId::Av1, "Main", "2.0", 320, 240));
    assert_eq!(a, audio(CodecId::Aac, "LC", 48000, 1));
}

#[test]
fn enhanced_vp9() {
    let (v, _, frames) = infos(include_bytes!("data/vp9.flv"));
    assert_eq!(v, video(CodecId::Vp9, "Profile 0", "2.0", 0, 0));
    assert!(frames.iter().any(|f| f.keyframe && f.codec == CodecId::Vp9));
}

proptest::proptest! {
    #[test]
    fn demuxer_split_anywhere(cuts in proptest::collection::vec(0usize..4096, 0..16)) {
        let file: &[u8] = include_bytes!("data/hevc_opus.flv");
        let want = demux(file);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % file.len()).collect();
        cuts.sort_unstable();
        let mut d = Demuxer::new();
        let mut got = Vec::new();
        let mut last = 0;
        for cut in cuts.into_iter().chain([file.len()]) {
            d.push(&file[last..cut]);
            last = cut;
            while let Some(tag) = d.next_tag().unwrap() {
                got.push(tag);
            }
        }
        proptest::prop_assert_eq!(got, want);
    }

    #[test]
    fn corrupted_streams_never_panic(pos in 0usize..4096, byte: u8) {
        let mut file = include_bytes!("data/av1_aac.flv").to_vec();
        let at = pos % file.len();
        file[at] = byte;
        let mut d = Demuxer::new();
        d.push(&file);
        while let Ok(Some((h, body))) = d.next_tag() {
            let _ = video_info(&body);
            let _ = audio_info(&body);
            if h.tag_type == TAG_VIDEO {
                let _ = Frame::parse(FrameKind::Video, 0, body);
            }
        }
    }
}

/// ffmpeg marks no H.264 frame disposable in the tag header; the NAL headers tell: the
/// B-frame fixture's non-reference B pictures are found, and nothing in the fixture
/// without B-frames.
#[test]
fn non_reference_b_frames_are_disposable() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let count = |name: &str| {
        let file = std::fs::read(dir.join(name)).expect("fixture");
        frames(&file).iter().filter(|f| f.disposable).count()
    };
    assert_eq!(count("h264_aac_bframes.flv"), 16);
    assert_eq!(count("h264_aac.flv"), 0);
}
