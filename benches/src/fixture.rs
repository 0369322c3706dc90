//! The publisher's material: an FLV file's tags, and how to loop them in real time.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use bytes::Bytes;
use sluice_media::flv::{Demuxer, TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO};

use crate::media::{Class, PROBE, classify};

/// One media tag of the fixture.
#[derive(Debug, Clone)]
pub struct Tag {
    /// 8 audio, 9 video.
    pub type_id: u8,
    /// Timestamp in the file, ms.
    pub ts: u32,
    /// The tag body (an RTMP message body).
    pub payload: Bytes,
    /// What it is.
    pub class: Class,
}

/// A fixture, ready to loop.
#[derive(Debug)]
pub struct Fixture {
    /// Where it came from.
    pub path: PathBuf,
    /// Audio and video tags in file order (end-of-sequence and other non-media tags dropped).
    pub tags: Vec<Tag>,
    /// The first onMetaData body, if any.
    pub metadata: Option<Bytes>,
    /// The smallest timestamp: the schedule's zero.
    pub first_ts: u32,
    /// One loop's length, ms: the last timestamp of each kind plus that kind's last frame
    /// interval, so timestamps keep increasing per kind across the loop boundary.
    pub loop_ms: u32,
    /// Whether there is audio (then viewers must get an audio sequence header first too).
    pub has_audio: bool,
    /// Payload bitrate of one loop, kbit/s.
    pub kbps: u64,
}

impl Fixture {
    /// Reads and checks an FLV file: it must have a video sequence header and a keyframe.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let file =
            std::fs::read(path).with_context(|| format!("reading fixture {}", path.display()))?;
        let mut demuxer = Demuxer::new();
        demuxer.push(&file);
        let mut tags = Vec::new();
        let mut metadata = None;
        while let Some((header, body)) = demuxer
            .next_tag()
            .with_context(|| format!("parsing fixture {}", path.display()))?
        {
            match header.tag_type {
                TAG_SCRIPT => {
                    metadata.get_or_insert(body);
                }
                TAG_AUDIO | TAG_VIDEO => {
                    let class = classify(header.tag_type, &body[..body.len().min(PROBE)]);
                    if class != Class::Other {
                        tags.push(Tag {
                            type_id: header.tag_type,
                            ts: header.timestamp,
                            payload: body,
                            class,
                        });
                    }
                }
                _ => {}
            }
        }
        if !tags.iter().any(|t| t.class == Class::VideoHeader)
            || !tags.iter().any(|t| t.class == Class::Video { key: true })
        {
            bail!(
                "fixture {} needs a video sequence header and a keyframe",
                path.display()
            );
        }
        let first_ts = tags.iter().map(|t| t.ts).min().unwrap_or(0);
        let end = |type_id: u8| {
            let ts: Vec<u32> = tags
                .iter()
                .filter(|t| {
                    t.type_id == type_id && matches!(t.class, Class::Video { .. } | Class::Audio)
                })
                .map(|t| t.ts)
                .collect();
            match ts.as_slice() {
                [.., a, b] => b + (b - a).max(1),
                [b] => b + 1,
                [] => 0,
            }
        };
        let loop_ms = end(TAG_VIDEO).max(end(TAG_AUDIO)) - first_ts;
        let bytes: u64 = tags.iter().map(|t| t.payload.len() as u64).sum();
        Ok(Self {
            path: path.to_owned(),
            has_audio: tags.iter().any(|t| t.class == Class::AudioHeader),
            kbps: bytes * 8 / u64::from(loop_ms.max(1)),
            tags,
            metadata,
            first_ts,
            loop_ms,
        })
    }
}

/// One tag of the looped schedule: when it is due after the start, and its timestamp.
#[derive(Debug)]
pub struct Due<'a> {
    /// Offset from the publisher's start.
    pub after: std::time::Duration,
    /// The timestamp to send (the file's, plus one loop length per earlier loop).
    pub ts: u32,
    /// The tag.
    pub tag: &'a Tag,
}

impl Fixture {
    /// The tags in publishing order, looping for ever with increasing timestamps; sequence
    /// headers only on the first loop (a publisher sends them once).
    pub fn looped(&self) -> impl Iterator<Item = Due<'_>> {
        (0u64..).flat_map(move |round| {
            let offset = round * u64::from(self.loop_ms);
            self.tags
                .iter()
                .filter(move |tag| {
                    round == 0 || !matches!(tag.class, Class::VideoHeader | Class::AudioHeader)
                })
                .map(move |tag| Due {
                    after: std::time::Duration::from_millis(
                        offset + u64::from(tag.ts - self.first_ts),
                    ),
                    ts: (u64::from(tag.ts) + offset) as u32,
                    tag,
                })
        })
    }
}

/// Resolves `--fixture`: as given, else relative to the workspace root (so the default
/// works from any directory of the checkout).
pub fn resolve(path: &Path) -> PathBuf {
    if path.exists() || path.is_absolute() {
        return path.to_owned();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    if root.exists() { root } else { path.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_the_small_fixture() {
        let f = Fixture::load(&resolve(Path::new("fixtures/h264_aac.flv"))).unwrap();
        assert!(f.has_audio && f.metadata.is_some());
        let frames = |c: fn(&Class) -> bool| f.tags.iter().filter(|t| c(&t.class)).count();
        assert_eq!(frames(|c| matches!(c, Class::Video { .. })), 50);
        assert_eq!(frames(|c| *c == Class::Audio), 88);
        assert_eq!(frames(|c| *c == Class::Video { key: true }), 2);
        // 2 s at 25 fps: the last video frame is at 23 + 49 * 40 ms; audio ends a bit later.
        assert!((2000..=2100).contains(&f.loop_ms), "{}", f.loop_ms);
        // Looping: headers once, timestamps and due times increasing per kind.
        let two_loops: Vec<_> = f.looped().take(2 * f.tags.len() - 2).collect();
        let headers = two_loops
            .iter()
            .filter(|d| matches!(d.tag.class, Class::VideoHeader | Class::AudioHeader))
            .count();
        assert_eq!(headers, 2);
        for kind in [TAG_VIDEO, TAG_AUDIO] {
            let ts: Vec<_> = two_loops
                .iter()
                .filter(|d| d.tag.type_id == kind)
                .map(|d| d.ts)
                .collect();
            assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
        }
        assert!(two_loops.windows(2).all(|w| w[0].after <= w[1].after));
    }
}
