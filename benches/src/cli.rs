//! Command-line arguments.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// How viewers play.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    /// RTMP play.
    Rtmp,
    /// HTTP-FLV (a GET of http://host:port/app/key.flv).
    Flv,
    /// LL-HLS: the media playlist (http://host:port/app/key/media.m3u8), then blocking
    /// reloads for the next part and a GET of each new part. Against a server without
    /// LL-HLS (no EXT-X-PART-INF) it polls as `hls-classic` does.
    Hls,
    /// Classic HLS: the media playlist every target duration / 2 and a GET of each new
    /// segment (nginx-rtmp: http://host:port/hls/key.m3u8).
    HlsClassic,
}

/// Most publishers one run drives: a bound, not a target (at 2.5 Mbit/s, 1,000 paced
/// publishers already fill a generator core).
pub const MAX_STREAMS: i64 = 1000;

/// Which RTMP reader viewers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Reader {
    /// The sans-IO `ClientConnection` with a scratch buffer shared by all viewers; counts
    /// reads and socket bytes.
    Lean,
    /// `sluice_runtime::client::Client` (its own 64 KiB buffer per viewer; no read counts).
    Client,
}

/// Load generator: S RTMP publishers paced from an FLV fixture and N RTMP or HTTP-FLV
/// viewers spread evenly over their streams, against any server on this machine; prints one
/// JSON report.
///
/// Timeline: warm-up (publishers alone) → ramp (viewers connect) → settle → the measured
/// window (--duration) → drain. Latency, delivery, reads, bytes and CPU are measured over the
/// window; time to first frame and the first-frame check over the whole run.
#[derive(Debug, Parser)]
#[command(name = "sluice-bench", version)]
pub struct Args {
    /// Where the publisher pushes: rtmp://host:port/app/key.
    #[arg(long, default_value = "rtmp://127.0.0.1:1935/live/bench")]
    pub publish: String,
    /// What viewers play: rtmp://host:port/app/key, http://host:port/app/key.flv or an HLS
    /// media playlist http://host:port/app/key/media.m3u8 [default: the publish URL].
    #[arg(long)]
    pub play: Option<String>,
    /// Viewer protocol [default: from the play URL: rtmp://, .m3u8 (hls), else flv].
    #[arg(long, value_enum)]
    pub proto: Option<Proto>,
    /// Viewers to connect, spread evenly over the streams (viewer i plays stream i mod S).
    /// 0 measures ingest alone: the report's `ingest_us_per_frame`.
    #[arg(long, default_value_t = 100)]
    pub viewers: usize,
    /// Publishers (streams), each pacing the fixture. With more than one, stream k's key is
    /// the URLs' key with `-k` appended (live/bench -> live/bench-0 ... live/bench-{S-1};
    /// bench.flv -> bench-0.flv); with one, the URLs are used as given.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=MAX_STREAMS))]
    pub streams: u16,
    /// Publisher k starts k/S of this many ms after the first, so that the streams' frames
    /// (and keyframes) are out of phase as independent broadcasters' are [default: the
    /// fixture's keyframe interval]. The warm-up starts after the last one.
    #[arg(long)]
    pub stagger_ms: Option<u64>,
    /// Length of the measured window, seconds (after warm-up, ramp and settle).
    #[arg(long, default_value_t = 15.0)]
    pub duration: f64,
    /// FLV file to publish, looped (relative paths also tried from the workspace root).
    /// For the 720p30 2.5 Mbit/s target run benches/make-fixture.sh and pass
    /// target/bench/bench_720p30.flv.
    #[arg(long, default_value = "fixtures/h264_aac.flv")]
    pub fixture: PathBuf,
    /// Spread viewer connects evenly over this many ms.
    #[arg(long, default_value_t = 1000)]
    pub ramp_ms: u64,
    /// Publish alone this long before the first viewer (fills the server's GOP cache), after
    /// the last publisher started.
    #[arg(long, default_value_t = 2500)]
    pub warmup_ms: u64,
    /// Wait this long after the ramp before the window starts.
    #[arg(long, default_value_t = 2000)]
    pub settle_ms: u64,
    /// Keep viewers reading this long after the window, for frames still in flight.
    #[arg(long, default_value_t = 1000)]
    pub drain_ms: u64,
    /// A gap longer than this between media messages at a viewer is a stall, ms.
    #[arg(long, default_value_t = 1000)]
    pub stall_ms: u64,
    /// Deadline for each connection to be playing (or publishing), ms.
    #[arg(long, default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
    /// The server's PID: report its CPU, RSS and write syscalls from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Read at most this many kbit/s per viewer (lean RTMP viewers only), with a small socket
    /// receive buffer: slow viewers, to measure how a server keeps them within its latency
    /// budget. 0 reads as fast as the server sends.
    #[arg(long, default_value_t = 0)]
    pub read_kbps: u64,
    /// LL-HLS viewers also GET the preload hint's part (held by the server until it is cut)
    /// before reloading the playlist, as LL-HLS players do; without it they fetch each part
    /// once a blocking reload lists it.
    #[arg(long)]
    pub hls_preload: bool,
    /// Viewers connect over TLS (RTMPS, or HTTPS-FLV over HTTP/1.1) to the play URL's
    /// address, a TLS listener; any certificate is accepted. Lean RTMP and HTTP-FLV viewers
    /// only (`reads` then counts decrypted pieces). `rtmps://` and `https://` play URLs imply
    /// it. Publishers stay in clear text.
    #[arg(long)]
    pub tls: bool,
    /// RTMP viewer implementation.
    #[arg(long, value_enum, default_value_t = Reader::Lean)]
    pub rtmp_reader: Reader,
    /// A label copied into the report.
    #[arg(long)]
    pub label: Option<String>,
    /// Print the report as one JSON line (default: indented JSON).
    #[arg(long)]
    pub json: bool,
    /// Allow non-loopback targets.
    #[arg(long)]
    pub allow_remote: bool,
}

/// The URL of stream `index` of `streams`: `url` itself for a single stream, else its stream
/// key with `-{index}` appended, before a `.flv` or `.m3u8` extension (before
/// `/media.m3u8`: `live/bench/media.m3u8` → `live/bench-7/media.m3u8`) and any query string.
pub fn stream_url(url: &str, index: usize, streams: usize) -> String {
    if streams <= 1 {
        return url.to_owned();
    }
    let (path, query) = match url.find('?') {
        Some(i) => url.split_at(i),
        None => (url, ""),
    };
    for suffix in ["/media.m3u8", ".m3u8", ".flv"] {
        if let Some(stem) = path.strip_suffix(suffix) {
            return format!("{stem}-{index}{suffix}{query}");
        }
    }
    format!("{path}-{index}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_urls() {
        let rtmp = "rtmp://127.0.0.1:1935/live/bench";
        assert_eq!(stream_url(rtmp, 0, 1), rtmp);
        assert_eq!(
            stream_url(rtmp, 0, 20),
            "rtmp://127.0.0.1:1935/live/bench-0"
        );
        assert_eq!(
            stream_url(rtmp, 19, 20),
            "rtmp://127.0.0.1:1935/live/bench-19"
        );
        assert_eq!(
            stream_url("rtmp://h/live/bench?token=a.flv", 3, 4),
            "rtmp://h/live/bench-3?token=a.flv"
        );
        assert_eq!(
            stream_url("http://127.0.0.1:8080/live/bench.flv", 7, 200),
            "http://127.0.0.1:8080/live/bench-7.flv"
        );
        assert_eq!(
            stream_url("http://h/live/bench.flv?x=1", 1, 2),
            "http://h/live/bench-1.flv?x=1"
        );
        assert_eq!(
            stream_url("http://h:1/live/bench/media.m3u8", 7, 200),
            "http://h:1/live/bench-7/media.m3u8"
        );
        assert_eq!(
            stream_url("http://h:1/hls/bench.m3u8", 3, 4),
            "http://h:1/hls/bench-3.m3u8"
        );
    }
}
