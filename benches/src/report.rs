//! The run's result: one JSON object (see `benches/README.md` for every field).

use serde::Serialize;

/// Everything one run measured. Rates and percentages are over the measured window; `None`
/// fields (JSON `null`) were not measurable in this run (e.g. no `--server-pid`).
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// `--label`, to tell runs apart.
    pub label: String,
    /// `rtmp` or `flv`.
    pub proto: String,
    /// RTMP reader (`lean` or `client`); `http` for HTTP-FLV.
    pub reader: String,
    /// Viewers played over TLS (`--tls`: RTMPS, HTTPS-FLV).
    pub tls: bool,
    /// The publish URL.
    pub publish: String,
    /// The play URL.
    pub play: String,
    /// The fixture file.
    pub fixture: String,
    /// The fixture's payload bitrate, kbit/s.
    pub fixture_kbps: u64,
    /// Length of the measured window, s.
    pub window_s: f64,
    /// Publishers (streams); viewers were spread evenly over them.
    pub streams: usize,
    /// Viewers asked for.
    pub viewers_requested: usize,
    /// Viewers whose play the server accepted.
    pub viewers_connected: usize,
    /// Viewers that never started (refused, timed out, connection failed).
    pub viewers_failed: usize,
    /// Viewers that started and then ended before the run did (closed, StreamEOF, errors).
    pub viewers_dropped: usize,
    /// Distinct error messages with their counts (at most 5).
    pub errors: Vec<String>,
    /// Coded video frames the publishers sent in the window (all streams).
    pub video_frames_sent: u64,
    /// Coded audio frames the publishers sent in the window (all streams).
    pub audio_frames_sent: u64,
    /// Coded frames (audio + video) the publishers sent per second of the window: the
    /// server's ingest rate.
    pub frames_published_per_s: f64,
    /// Frames (audio + video) received / frames sent while each viewer was connected.
    pub delivery_ratio: f64,
    /// The same for video alone.
    pub delivery_ratio_video: f64,
    /// Video latency (receive − send, matched by timestamp) of frames sent in the window, ms;
    /// receive is the kernel's receive timestamp when `latency_clock` is `kernel`.
    pub latency_p50_ms: f64,
    /// 99th percentile.
    pub latency_p99_ms: f64,
    /// Largest.
    pub latency_max_ms: f64,
    /// Latency samples.
    pub latency_samples: u64,
    /// `kernel`: receive instants are the kernel's (SO_TIMESTAMPNS), so the generator's own
    /// scheduling delay is excluded; `user`: when the generator read the bytes; `mixed`.
    pub latency_clock: String,
    /// Latency with receive = when the generator read the bytes, ms (includes the
    /// generator's own delay; the difference to `latency_*` is that delay).
    pub latency_user_p50_ms: f64,
    /// 99th percentile.
    pub latency_user_p99_ms: f64,
    /// Largest.
    pub latency_user_max_ms: f64,
    /// Time from starting to connect to the first coded video frame, ms.
    pub ttff_p50_ms: f64,
    /// 99th percentile.
    pub ttff_p99_ms: f64,
    /// Largest.
    pub ttff_max_ms: f64,
    /// Time from starting to connect until the server accepted the play (RTMP
    /// NetStream.Play.Start, HTTP response head), ms: the connection part of `ttff`.
    pub play_start_p50_ms: f64,
    /// 99th percentile.
    pub play_start_p99_ms: f64,
    /// Largest.
    pub play_start_max_ms: f64,
    /// Viewers whose first video frame was a keyframe preceded by the sequence headers.
    pub first_frame_ok: usize,
    /// Whether that held for every viewer that got a video frame (and at least one did).
    pub first_frame_all_ok: bool,
    /// Viewers that got no video frame at all.
    pub viewers_without_video: usize,
    /// Gaps of more than `--stall-ms` between consecutive media messages at a viewer.
    pub stalls: u64,
    /// Viewers with at least one stall.
    pub stalled_viewers: usize,
    /// Total stall time over all viewers, ms.
    pub stall_ms_total: u64,
    /// Viewers whose server rewrote timestamps (matched by an offset found on the first
    /// video frame).
    pub ts_offset_viewers: usize,
    /// Received frames with no matching sent frame.
    pub unmatched_frames: u64,
    /// Bytes received by all viewers in the window (socket bytes; media payload bytes with
    /// `--rtmp-reader client`).
    pub bytes_received: u64,
    /// `bytes_received` as a rate, Mbit/s.
    pub delivered_mbps: f64,
    /// The same in Gbit/s.
    pub delivered_gbps: f64,
    /// Viewer read() calls that returned data, per viewer-second (lean readers only): a lower
    /// bound of the server's writes per viewer-second.
    pub viewer_reads_per_viewer_s: Option<f64>,
    /// Server CPU, % of one core over the window: its threads' run time (schedstat, ns) when
    /// readable, else utime + stime (10 ms ticks).
    pub server_cpu_pct: Option<f64>,
    /// Server CPU % per delivered Gbit/s.
    pub server_cpu_pct_per_gbps: Option<f64>,
    /// With `--viewers 0` only: server CPU time over the window / frames published in it, µs
    /// (the server's idle work included, which a run of a few frames per second shows).
    pub ingest_us_per_frame: Option<f64>,
    /// Server write/writev syscalls (/proc/PID/io `syscw`) per viewer-second; `null` when
    /// none were counted (servers that send with send()/sendmsg(), such as nginx-rtmp).
    pub server_writes_per_viewer_s: Option<f64>,
    /// Server RSS before the publisher started, KiB.
    pub server_rss_start_kib: Option<u64>,
    /// Server RSS after warm-up, before any viewer, KiB.
    pub server_rss_before_viewers_kib: Option<u64>,
    /// Server RSS at the end of the window, KiB.
    pub server_rss_end_kib: Option<u64>,
    /// Largest sampled server RSS (every 200 ms), KiB.
    pub server_rss_max_kib: Option<u64>,
    /// Server peak RSS since it started (VmHWM), KiB.
    pub server_hwm_kib: Option<u64>,
    /// (RSS at the end of the window − RSS before viewers) / viewers connected, KiB.
    pub server_rss_per_viewer_kib: Option<f64>,
    /// The generator's CPU over the window, % of one core.
    pub generator_cpu_pct: f64,
    /// The generator's peak RSS, KiB.
    pub generator_hwm_kib: u64,
    /// The generator used over 90 % of a core: its own lag inflates latency and stalls.
    pub generator_saturated: bool,
    /// Largest delay of the publisher behind its real-time schedule in the window, ms: above a
    /// few ms the generator (or a server's back-pressure) delayed sending.
    pub publisher_lag_max_ms: f64,
    /// Why the publisher stopped early, if it did.
    pub publisher_error: Option<String>,
    /// HLS viewers only (else `null`): HTTP requests answered in the window.
    pub hls_requests: Option<u64>,
    /// The same per second.
    pub hls_requests_per_s: Option<f64>,
    /// Playlist responses in the window.
    pub hls_playlists: Option<u64>,
    /// Of those, answers to blocking reloads (LL-HLS `_HLS_msn`/`_HLS_part`).
    pub hls_blocking_playlists: Option<u64>,
    /// Parts (LL-HLS) or segments (classic) downloaded in the window.
    pub hls_media: Option<u64>,
    /// Socket bytes read per second (`bytes_received` / window).
    pub hls_bytes_per_s: Option<f64>,
    /// Responses with a 4xx status in the window.
    pub hls_http_4xx: Option<u64>,
    /// Responses with a 5xx status in the window.
    pub hls_http_5xx: Option<u64>,
    /// Kept-alive connections the server closed between requests (the viewer reconnected).
    pub hls_reconnects: Option<u64>,
    /// `--hls-preload`: LL-HLS viewers also fetched the preload hint's part.
    pub hls_preload: Option<bool>,
    /// Preload-hint requests answered 404 (the hinted part was never cut): not in
    /// `hls_http_4xx`.
    pub hls_preload_misses: Option<u64>,
    /// Parts (segments) whose last frame was not found among the frames sent.
    pub hls_unmatched: Option<u64>,
    /// Parts (segments) timed: listed after the viewer's first playlist, last frame sent in
    /// the window.
    pub hls_samples: Option<u64>,
    /// Listed: the playlist response that first listed a part (segment) − the send of its
    /// last frame, ms. For LL-HLS that response answers a blocking reload, so this is when
    /// the server published the part; for classic HLS it includes the polling interval.
    pub hls_listed_p50_ms: Option<f64>,
    /// 99th percentile.
    pub hls_listed_p99_ms: Option<f64>,
    /// Largest.
    pub hls_listed_max_ms: Option<f64>,
    /// Available: a part (segment) downloaded − the send of its last frame, ms.
    pub hls_available_p50_ms: Option<f64>,
    /// 99th percentile.
    pub hls_available_p99_ms: Option<f64>,
    /// Largest.
    pub hls_available_max_ms: Option<f64>,
    /// Download: downloaded − listed, ms.
    pub hls_download_p50_ms: Option<f64>,
    /// 99th percentile.
    pub hls_download_p99_ms: Option<f64>,
    /// The bytes the streams' playlists list at the end (media and init segment; sizes
    /// downloaded, the rest estimated from the stream's rate), summed over streams.
    pub hls_window_bytes: Option<u64>,
}

/// Prints the report: one JSON line with `json`, else indented JSON.
// A CLI's own output: stdout is the interface.
#[allow(clippy::print_stdout)]
pub fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    let text = if json {
        serde_json::to_string(report)?
    } else {
        serde_json::to_string_pretty(report)?
    };
    println!("{text}");
    Ok(())
}

/// A progress note on stderr (connect failures, phases); never per frame.
// A CLI's own output: stderr carries progress so stdout stays one JSON line.
#[allow(clippy::print_stderr)]
pub fn note(msg: &str) {
    eprintln!("sluice-bench: {msg}");
}
