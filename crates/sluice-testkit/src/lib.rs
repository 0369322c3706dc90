//! Test infrastructure for Sluice's integration tests.
//!
//! * [`tools`] finds (and on a fresh CI machine, installs) the real clients the tests drive:
//!   Debian's ffmpeg/ffprobe 5.1 and a modern static ffmpeg from the PyPI package
//!   `imageio-ffmpeg` (the only one that speaks enhanced RTMP/FLV: HEVC, AV1, Opus).
//! * [`probe`] runs ffprobe on a file or URL under a hard deadline and parses what it saw.
//! * [`process`] wraps child processes so that they are killed when the test ends, whatever
//!   way it ends, and keeps the tail of their stderr for error messages.
//! * [`nginx`] runs nginx-rtmp (Debian's nginx with libnginx-mod-rtmp) as a third-party RTMP
//!   server, installed when missing like the tools.
//! * [`etcd`] runs a one-member etcd (Debian's etcd-server, installed when missing) for the
//!   stream registry's tests.
//! * [`browser`] plays a page in Debian's headless Chromium (driven by playwright-core, all
//!   installed on first use) and reports whether the video played, changed and how far
//!   behind live it was.
//! * [`fixture`] resolves the checked-in media in `<workspace>/fixtures/` (see its README for
//!   codecs and exact frame counts; `fixtures/make.sh` regenerates them).
//!
//! And the builders the integration tests share, so that no test file keeps its own copy:
//!
//! * [`media`]: a fixture as FLV tags; keyframe and sequence-header checks on tag bodies.
//! * [`rtmp`]: a paced or real-time [`rtmp::Publisher`] of fixture tags, viewers that record
//!   what they receive ([`rtmp::record`], [`rtmp::Player`]), a raw handshaken socket.
//! * [`node`]: origins and edges as `sluice serve` child processes ([`node::Spec`],
//!   [`node::Process`]), and reading their JSON logs.
//! * [`http`]: plain HTTP/1.0 requests and reading Prometheus text.
//! * [`hls`]: an independent HLS playlist reader and the RFC 8216bis rules Sluice's
//!   playlists are checked against.
//! * [`wait`]: [`wait::eventually`], the bounded poll for state a test cannot be told about.
//!
//! Nothing here may hang a test: every external process runs with a deadline and is killed by
//! PID when it passes.

pub mod browser;
pub mod etcd;
pub mod hls;
pub mod hooks;
pub mod http;
pub mod media;
pub mod nginx;
pub mod node;
pub mod probe;
pub mod process;
pub mod rtmp;
pub mod tools;
pub mod wait;

use std::path::{Path, PathBuf};

/// Path of `<workspace root>/fixtures/<name>`. Panics if the file does not exist.
pub fn fixture(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let dir = dir.canonicalize().unwrap_or(dir);
    let path = dir.join(name);
    assert!(
        path.exists(),
        "fixture {name:?} not found at {} (regenerate with fixtures/make.sh)",
        path.display()
    );
    path
}

/// Names of the checked-in fixtures, as constants so a typo fails to compile.
pub mod fixtures {
    /// H.264 Main (no B-frames) + AAC LC 44.1 kHz stereo, FLV, 640x360 25 fps, 2 s.
    /// 50 video frames, 88 audio frames.
    pub const H264_AAC: &str = "h264_aac.flv";
    /// H.264 High with 2 B-frames (non-zero composition offsets) + AAC LC, FLV, 640x360 25 fps.
    /// 50 video frames, 88 audio frames.
    pub const H264_AAC_BFRAMES: &str = "h264_aac_bframes.flv";
    /// HEVC Main (x265, 2 B-frames) + AAC LC 44.1 kHz stereo, Matroska, 640x360 25 fps.
    /// 50 video frames, 88 audio frames. Publish with [`crate::tools::ffmpeg_modern`].
    pub const HEVC_AAC: &str = "hevc_aac.mkv";
    /// AV1 Main (libaom) + Opus 48 kHz stereo, Matroska, 640x360 25 fps.
    /// 50 video frames, 101 audio frames. Publish with [`crate::tools::ffmpeg_modern`].
    pub const AV1_OPUS: &str = "av1_opus.mkv";
}
