//! ffprobe with a deadline.
//!
//! [`probe`] runs Debian's `ffprobe -v error -show_streams -count_frames -of json` on a file or
//! URL (it reads to the end, so on a live URL it returns once the server ends the stream). It
//! decodes every frame: `nb_read_frames` is the number of frames that decoded.
//!
//! [`probe_via_modern`] is for streams Debian's 5.1 cannot demux (enhanced FLV/RTMP: HEVC,
//! AV1, Opus): the modern ffmpeg reads the input and stream-copies it into a temporary
//! Matroska file, which Debian's ffprobe then probes. Both steps share one deadline.
//!
//! On the deadline the child is killed (by PID) and an error is returned; a test never hangs.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::process;
use crate::tools;

/// What ffprobe reported.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProbeReport {
    pub streams: Vec<StreamReport>,
}

/// One stream as ffprobe reported it. Fields ffprobe did not report are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamReport {
    pub index: u32,
    /// `"video"`, `"audio"`, `"data"`, …
    pub codec_type: String,
    /// `"h264"`, `"hevc"`, `"av1"`, `"aac"`, `"opus"`, …
    pub codec_name: Option<String>,
    /// `"Main"`, `"High"`, `"LC"`, … (ffprobe's spelling).
    pub profile: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub sample_rate: Option<u32>,
    pub channels: Option<u32>,
    /// Frames decoded (from `-count_frames`).
    pub nb_read_frames: Option<u64>,
}

impl ProbeReport {
    /// The first video stream.
    pub fn video(&self) -> Option<&StreamReport> {
        self.of_type("video").next()
    }

    /// The first audio stream.
    pub fn audio(&self) -> Option<&StreamReport> {
        self.of_type("audio").next()
    }

    /// All streams of a codec type.
    pub fn of_type<'a>(
        &'a self,
        codec_type: &'a str,
    ) -> impl Iterator<Item = &'a StreamReport> + 'a {
        self.streams
            .iter()
            .filter(move |s| s.codec_type == codec_type)
    }

    /// Parses ffprobe's `-of json` output.
    pub fn from_json(json: &[u8]) -> anyhow::Result<ProbeReport> {
        let v: Value = serde_json::from_slice(json).context("ffprobe output is not JSON")?;
        let streams = match v.get("streams") {
            None => Vec::new(),
            Some(Value::Array(streams)) => streams.iter().map(StreamReport::from_json).collect(),
            Some(_) => bail!("ffprobe output: \"streams\" is not an array"),
        };
        Ok(ProbeReport { streams })
    }
}

impl StreamReport {
    fn from_json(v: &Value) -> StreamReport {
        let string = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        // ffprobe prints some numbers as JSON strings ("sample_rate": "44100").
        let number = |k: &str| match v.get(k)? {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        };
        let small = |k: &str| number(k).and_then(|n| u32::try_from(n).ok());
        StreamReport {
            index: small("index").unwrap_or_default(),
            codec_type: string("codec_type").unwrap_or_default(),
            codec_name: string("codec_name"),
            profile: string("profile"),
            width: small("width"),
            height: small("height"),
            sample_rate: small("sample_rate"),
            channels: small("channels"),
            nb_read_frames: number("nb_read_frames"),
        }
    }

    /// `codec_name` or `""`.
    pub fn codec(&self) -> &str {
        self.codec_name.as_deref().unwrap_or_default()
    }

    /// `nb_read_frames` or 0.
    pub fn frames(&self) -> u64 {
        self.nb_read_frames.unwrap_or_default()
    }
}

/// Probes `input` (a file path or URL) with Debian's ffprobe, killed after `timeout`.
pub fn probe(input: &str, timeout: Duration) -> anyhow::Result<ProbeReport> {
    probe_with(input, &[], timeout)
}

/// Like [`probe`], with extra ffprobe options placed before the input (e.g.
/// `["-rw_timeout", "5000000"]`, or `["-read_intervals", "%+3"]` to read only 3 s of a live
/// stream).
pub fn probe_with(
    input: &str,
    extra_args: &[&str],
    timeout: Duration,
) -> anyhow::Result<ProbeReport> {
    let mut cmd = Command::new(tools::ffprobe());
    cmd.args([
        "-hide_banner",
        "-v",
        "error",
        "-show_streams",
        "-count_frames",
        "-of",
        "json",
    ])
    .args(extra_args)
    .arg(input);
    let out = process::run(&mut cmd, timeout)?;
    ProbeReport::from_json(&out.stdout).with_context(|| format!("probing {input}"))
}

/// Probes `input` by reading it with the modern ffmpeg (enhanced FLV/RTMP aware), stream
/// copying its audio and video into a temporary Matroska file, and probing that with Debian's
/// ffprobe. Data streams are left out: Matroska cannot hold the one ffmpeg makes of the
/// `|RtmpSampleAccess` message RTMP servers send players.
/// `timeout` covers both steps.
pub fn probe_via_modern(input: &str, timeout: Duration) -> anyhow::Result<ProbeReport> {
    probe_via_modern_with(input, &[], timeout)
}

/// Like [`probe_via_modern`], with extra ffmpeg input options placed before `-i` (e.g.
/// `["-rw_timeout", "5000000"]`).
pub fn probe_via_modern_with(
    input: &str,
    extra_input_args: &[&str],
    timeout: Duration,
) -> anyhow::Result<ProbeReport> {
    let deadline = Instant::now() + timeout;
    let dir = tempfile::Builder::new().prefix("sluice-probe-").tempdir()?;
    let remux = dir.path().join("remux.mkv");
    let mut cmd = Command::new(tools::ffmpeg_modern());
    cmd.args(["-hide_banner", "-nostdin", "-v", "error", "-y"])
        .args(extra_input_args)
        .args(["-i", input, "-map", "0:v?", "-map", "0:a?"])
        .args(["-c", "copy", "-f", "matroska"])
        .arg(&remux);
    process::run(&mut cmd, timeout)
        .with_context(|| format!("remuxing {input} with the modern ffmpeg"))?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    probe(path_str(&remux)?, left).with_context(|| format!("probing the remux of {input}"))
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("non-UTF-8 path {}", path.display()))
}
