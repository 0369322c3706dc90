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
}

/// Which RTMP reader viewers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Reader {
    /// The sans-IO `ClientConnection` with a scratch buffer shared by all viewers; counts
    /// reads and socket bytes.
    Lean,
    /// `sluice_runtime::client::Client` (its own 64 KiB buffer per viewer; no read counts).
    Client,
}

/// Load generator: one RTMP publisher paced from an FLV fixture and N RTMP or HTTP-FLV
/// viewers against any server on this machine; prints one JSON report.
///
/// Timeline: warm-up (publisher alone) → ramp (viewers connect) → settle → the measured
/// window (--duration) → drain. Latency, delivery, reads, bytes and CPU are measured over the
/// window; time to first frame and the first-frame check over the whole run.
#[derive(Debug, Parser)]
#[command(name = "sluice-bench", version)]
pub struct Args {
    /// Where the publisher pushes: rtmp://host:port/app/key.
    #[arg(long, default_value = "rtmp://127.0.0.1:1935/live/bench")]
    pub publish: String,
    /// What viewers play: rtmp://host:port/app/key or http://host:port/app/key.flv
    /// [default: the publish URL].
    #[arg(long)]
    pub play: Option<String>,
    /// Viewer protocol [default: from the play URL's scheme].
    #[arg(long, value_enum)]
    pub proto: Option<Proto>,
    /// Viewers to connect.
    #[arg(long, default_value_t = 100)]
    pub viewers: usize,
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
    /// Publish alone this long before the first viewer (fills the server's GOP cache).
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
