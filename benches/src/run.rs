//! One run: warm-up with the publisher alone, viewers ramped in, settle, the measured
//! window, a drain, then the report. Every phase is bounded in time.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, bail};
use sluice_runtime::client::RtmpUrl;
use tokio::task::{JoinHandle, spawn_local};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::cli::{Args, Proto, Reader, stream_url};
use crate::fixture::{self, Fixture};
use crate::hist::Hist;
use crate::hls_viewer::HlsTarget;
use crate::http::HttpUrl;
use crate::local::check_local;
use crate::procfs::{self, Sample};
use crate::publisher;
use crate::report::{Report, note};
use crate::state::{AUDIO, Clock, Shared, VIDEO, Viewer};
use crate::viewer::{self, Target};

/// How often the server's RSS is sampled.
const RSS_EVERY: Duration = Duration::from_millis(200);
/// How long to wait for tasks to finish once told to stop.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Reads the server's counters if `--server-pid` was given.
fn server_sample(pid: Option<u32>) -> anyhow::Result<Option<Sample>> {
    pid.map(|p| procfs::sample(&p.to_string())).transpose()
}

/// Sleeps until `at` or until interrupted (Ctrl-C): an interrupted run still reports.
async fn pause_until(at: Instant, interrupted: &CancellationToken) {
    tokio::select! {
        _ = sleep_until(at) => {}
        _ = interrupted.cancelled() => {}
    }
}

/// Runs the benchmark described by `args`.
pub async fn run(args: Args) -> anyhow::Result<Report> {
    let streams = usize::from(args.streams);
    let play = args.play.clone().unwrap_or_else(|| args.publish.clone());
    // rtmps:// and https:// are the clear-text URLs over TLS.
    let (play, tls) = match (play.strip_prefix("rtmps://"), play.strip_prefix("https://")) {
        (Some(rest), _) => (format!("rtmp://{rest}"), true),
        (_, Some(rest)) => (format!("http://{rest}"), true),
        _ => (play, args.tls),
    };
    let proto = match (args.proto, play.starts_with("http://")) {
        (Some(p), _) => p,
        (None, true)
            if play
                .split('?')
                .next()
                .unwrap_or_default()
                .ends_with(".m3u8") =>
        {
            Proto::Hls
        }
        (None, true) => Proto::Flv,
        (None, false) => Proto::Rtmp,
    };
    if tls && !matches!(proto, Proto::Flv | Proto::Rtmp) {
        bail!("--tls is for RTMP and HTTP-FLV viewers");
    }
    if tls && proto == Proto::Rtmp && args.rtmp_reader != Reader::Lean {
        bail!("--tls needs the lean RTMP reader");
    }
    let mut publish = Vec::with_capacity(streams);
    let mut targets = Vec::with_capacity(streams);
    for k in 0..streams {
        publish.push(RtmpUrl::parse(&stream_url(&args.publish, k, streams)).context("--publish")?);
        let play = stream_url(&play, k, streams);
        targets.push(match proto {
            Proto::Rtmp => Target::Rtmp {
                url: RtmpUrl::parse(&play).context("--play")?,
                lean: args.rtmp_reader == Reader::Lean,
            },
            Proto::Flv => Target::Flv(HttpUrl::parse(&play).context("--play")?),
            Proto::Hls | Proto::HlsClassic => Target::Hls(HlsTarget {
                url: HttpUrl::parse(&play).context("--play")?,
                low_latency: proto == Proto::Hls,
                preload: args.hls_preload,
            }),
        });
    }
    // Every stream's URL has the same host: checking the first ones checks them all.
    check_local(&publish[0].addr, args.allow_remote).await?;
    match &targets[0] {
        Target::Rtmp { url, .. } => check_local(&url.addr, args.allow_remote).await?,
        Target::Flv(url) => check_local(&url.addr, args.allow_remote).await?,
        Target::Hls(t) => check_local(&t.url.addr, args.allow_remote).await?,
    }
    let fixture = Rc::new(Fixture::load(&fixture::resolve(&args.fixture))?);
    let connect_timeout = Duration::from_millis(args.connect_timeout_ms);
    let stall_ns = args.stall_ms * 1_000_000;
    let clock = Clock::start();
    let sh = Rc::new(RefCell::new(Shared::new(streams)));

    let interrupted = CancellationToken::new();
    {
        let interrupted = interrupted.clone();
        spawn_local(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                note("interrupted: ending the window now");
                interrupted.cancel();
            }
        });
    }

    let server_start = server_sample(args.server_pid)?;
    let t0 = Instant::now();
    let stagger = Duration::from_millis(
        args.stagger_ms
            .unwrap_or(u64::from(publisher::keyframe_interval_ms(&fixture))),
    );
    let start_of = |k: usize| t0 + stagger * k as u32 / streams as u32;
    let warmup_end = start_of(streams - 1) + Duration::from_millis(args.warmup_ms);
    let ramp_end = warmup_end + Duration::from_millis(args.ramp_ms);
    let window_start = ramp_end + Duration::from_millis(args.settle_ms);
    let window_end = window_start + Duration::from_secs_f64(args.duration);
    let drain_end = window_end + Duration::from_millis(args.drain_ms);

    // The publishers, their starts spread over `stagger`.
    let publishers = Rc::new(publisher::Context {
        fixture: fixture.clone(),
        clock,
        sh: sh.clone(),
        connect_timeout,
        give_up: drain_end + STOP_GRACE,
        stop: CancellationToken::new(),
        ended_early: CancellationToken::new(),
    });
    let publisher_tasks: Vec<JoinHandle<()>> = publish
        .into_iter()
        .enumerate()
        .map(|(k, url)| spawn_local(publisher::run(publishers.clone(), k, url, start_of(k))))
        .collect();

    // The server's RSS, sampled until told to stop.
    let stop_sampler = CancellationToken::new();
    let rss_max = Rc::new(RefCell::new(None::<u64>));
    if let Some(pid) = args.server_pid {
        let (stop, rss_max) = (stop_sampler.clone(), rss_max.clone());
        spawn_local(async move {
            while !stop.is_cancelled() {
                if let Ok(s) = procfs::sample(&pid.to_string()) {
                    let mut m = rss_max.borrow_mut();
                    *m = Some(m.unwrap_or(0).max(s.rss_kib));
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = sleep(RSS_EVERY) => {}
                }
            }
        });
    }

    // Warm-up: the server gets every stream (and fills its GOP caches) before any viewer.
    tokio::select! {
        _ = pause_until(warmup_end, &interrupted) => {}
        _ = publishers.ended_early.cancelled() => {
            bail!("a publisher stopped during warm-up: {}", publisher_error(&sh.borrow()).unwrap_or_default());
        }
    }
    if let Some(p) = sh
        .borrow()
        .streams
        .iter()
        .position(|p| p.keyframes_sent == 0)
    {
        bail!("publisher {p} sent no keyframe during the warm-up; raise --warmup-ms");
    }
    let server_before = server_sample(args.server_pid)?;

    // Viewers, spread over the ramp and, round robin, over the streams.
    let cfg = Rc::new(viewer::Config {
        targets,
        connect_timeout,
        stall_ns,
        has_audio: fixture.has_audio,
        clock,
        read_bytes_per_sec: args.read_kbps * 1000 / 8,
        tls: tls.then(|| crate::tls::client_config(proto == Proto::Flv)),
    });
    let stop_viewers = CancellationToken::new();
    let mut viewers: Vec<JoinHandle<Viewer>> = Vec::with_capacity(args.viewers);
    let ramp_start = Instant::now();
    for i in 0..args.viewers {
        let at = ramp_start
            + Duration::from_millis(args.ramp_ms) * i as u32 / args.viewers.max(1) as u32;
        pause_until(at, &interrupted).await;
        viewers.push(spawn_local(viewer::run(
            cfg.clone(),
            i % streams,
            sh.clone(),
            stop_viewers.clone(),
        )));
    }
    pause_until(window_start.max(Instant::now()), &interrupted).await;

    // The measured window.
    let server_ws = server_sample(args.server_pid)?;
    let gen_ws = procfs::sample("self")?;
    let ws = Instant::now();
    sh.borrow_mut().open_window();
    let mut publisher_failed = false;
    tokio::select! {
        _ = pause_until(window_end, &interrupted) => {}
        _ = publishers.ended_early.cancelled() => {
            note(&format!("a publisher stopped: {}", publisher_error(&sh.borrow()).unwrap_or_default()));
            publisher_failed = true;
        }
    }
    let window_s = ws.elapsed().as_secs_f64();
    let server_we = server_sample(args.server_pid)?;
    let gen_we = procfs::sample("self")?;
    sh.borrow_mut().close_window(clock.now_ns());

    // Drain: frames sent at the end of the window are still on their way.
    if !publisher_failed {
        pause_until(drain_end, &interrupted).await;
    }
    stop_viewers.cancel();
    let mut done = Vec::with_capacity(viewers.len());
    let give_up = Instant::now() + STOP_GRACE;
    for handle in viewers {
        let abort = handle.abort_handle();
        match timeout(give_up.saturating_duration_since(Instant::now()), handle).await {
            Ok(Ok(v)) => done.push(v),
            Ok(Err(e)) => note(&format!("a viewer task failed: {e}")),
            Err(_) => {
                abort.abort();
                note("a viewer did not stop in time");
            }
        }
    }
    publishers.stop.cancel();
    let give_up = Instant::now() + STOP_GRACE;
    for handle in publisher_tasks {
        let abort = handle.abort_handle();
        match timeout(give_up.saturating_duration_since(Instant::now()), handle).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => note(&format!("a publisher task failed: {e}")),
            Err(_) => {
                abort.abort();
                note("a publisher did not stop in time");
            }
        }
    }
    stop_sampler.cancel();
    let server_end = server_sample(args.server_pid)?;
    let gen_end = procfs::sample("self")?;

    let sh = sh.borrow();
    let mut report = summarise(&sh, &mut done, &args, proto, &fixture, window_s, stall_ns);
    report.tls = tls;
    report.publisher_error = publisher_error(&sh);
    let gen_cpu = procfs::cpu_pct(&gen_ws, &gen_we, window_s);
    report.generator_cpu_pct = round(gen_cpu, 1);
    report.generator_hwm_kib = gen_end.hwm_kib;
    report.generator_saturated = gen_cpu > 90.0;
    report.publisher_lag_max_ms = round(sh.publisher_lag_max_us as f64 / 1000.0, 1);
    if let (Some(start), Some(before), Some(a), Some(b), Some(end)) = (
        server_start,
        server_before,
        server_ws,
        server_we,
        server_end,
    ) {
        let cpu = procfs::cpu_pct(&a, &b, window_s);
        report.server_cpu_pct = Some(round(cpu, 1));
        if report.delivered_mbps > 0.0 {
            report.server_cpu_pct_per_gbps = Some(round(cpu / (report.delivered_mbps / 1000.0), 1));
        }
        // With no viewer the server's CPU is ingest's (plus its idle timers): per frame
        // published, that is what one ingested frame costs.
        let frames = report.video_frames_sent + report.audio_frames_sent;
        if args.viewers == 0 && frames > 0 {
            report.ingest_us_per_frame =
                Some(round(procfs::cpu_secs(&a, &b) * 1e6 / frames as f64, 2));
        }
        let viewer_s = report.viewers_connected as f64 * window_s;
        // syscw counts write/writev only: a server that sends with send()/sendmsg() (nginx-rtmp
        // does) shows none, which is "not measurable", not zero.
        if let (Some(w0), Some(w1)) = (a.syscw, b.syscw)
            && viewer_s > 0.0
            && w1 > w0
        {
            report.server_writes_per_viewer_s = Some(round((w1 - w0) as f64 / viewer_s, 1));
        }
        report.server_rss_start_kib = Some(start.rss_kib);
        report.server_rss_before_viewers_kib = Some(before.rss_kib);
        report.server_rss_end_kib = Some(b.rss_kib);
        report.server_rss_max_kib = *rss_max.borrow();
        report.server_hwm_kib = Some(end.hwm_kib);
        if report.viewers_connected > 0 {
            let grown = b.rss_kib as f64 - before.rss_kib as f64;
            report.server_rss_per_viewer_kib =
                Some(round(grown / report.viewers_connected as f64, 2));
        }
    }
    Ok(report)
}

/// The first publisher's reason for stopping early, and how many others did.
fn publisher_error(sh: &Shared) -> Option<String> {
    let (first, others) = sh.publisher_errors.split_first()?;
    Some(match others.len() {
        0 => first.clone(),
        n => format!("{first} (and {n} more publishers)"),
    })
}

fn round(x: f64, digits: i32) -> f64 {
    let k = 10f64.powi(digits);
    (x * k).round() / k
}

fn ms(us: u64) -> f64 {
    round(us as f64 / 1000.0, 2)
}

/// Folds the viewers' counters into the report.
fn summarise(
    sh: &Shared,
    viewers: &mut [Viewer],
    args: &Args,
    proto: Proto,
    fixture: &Fixture,
    window_s: f64,
    stall_ns: u64,
) -> Report {
    let mut ttff = Hist::default();
    let mut play_start = Hist::default();
    let mut errors: HashMap<String, usize> = HashMap::new();
    let (mut received, mut expected) = ([0u64; 2], [0u64; 2]);
    let mut r = Report {
        label: args.label.clone().unwrap_or_default(),
        proto: match proto {
            Proto::Rtmp => "rtmp",
            Proto::Flv => "flv",
            Proto::Hls => "hls",
            Proto::HlsClassic => "hls-classic",
        }
        .to_owned(),
        reader: match (proto, args.rtmp_reader) {
            (Proto::Flv | Proto::Hls | Proto::HlsClassic, _) => "http",
            (Proto::Rtmp, Reader::Lean) => "lean",
            (Proto::Rtmp, Reader::Client) => "client",
        }
        .to_owned(),
        publish: args.publish.clone(),
        play: args.play.clone().unwrap_or_else(|| args.publish.clone()),
        fixture: fixture.path.display().to_string(),
        fixture_kbps: fixture.kbps,
        window_s: round(window_s, 3),
        streams: sh.streams.len(),
        viewers_requested: args.viewers,
        ..Report::default()
    };
    for p in &sh.streams {
        let [video, audio] = p.sent_in_window_count();
        r.video_frames_sent += video;
        r.audio_frames_sent += audio;
    }
    if window_s > 0.0 {
        r.frames_published_per_s = round(
            (r.video_frames_sent + r.audio_frames_sent) as f64 / window_s,
            1,
        );
    }
    let mut reads = 0;
    for v in viewers.iter_mut() {
        v.close_window(sh, stall_ns);
        if let Some(e) = &v.error {
            *errors.entry(e.clone()).or_default() += 1;
        }
        if v.started_ns.is_none() {
            r.viewers_failed += 1;
            continue;
        }
        r.viewers_connected += 1;
        if let Some(t) = v.started_ns {
            play_start.record(t.saturating_sub(v.connect_ns) / 1000);
        }
        r.viewers_dropped += usize::from(v.error.is_some());
        for kind in [VIDEO, AUDIO] {
            received[kind] += v.received[kind];
            expected[kind] += v.expected(sh, kind);
        }
        match v.first_video_ns {
            Some(t) => {
                ttff.record(t.saturating_sub(v.connect_ns) / 1000);
                r.first_frame_ok += usize::from(v.first_ok);
            }
            None => r.viewers_without_video += 1,
        }
        r.stalls += u64::from(v.stalls);
        r.stalled_viewers += usize::from(v.stalls > 0);
        r.stall_ms_total += v.stall_ms;
        r.ts_offset_viewers += usize::from(v.offset.is_some_and(|o| o != 0));
        r.unmatched_frames += v.unmatched;
        r.bytes_received += if v.wire_bytes > 0 {
            v.wire_bytes
        } else {
            v.media_bytes
        };
        reads += v.reads;
    }
    let ratio = |a: u64, b: u64| {
        if b == 0 {
            0.0
        } else {
            round(a as f64 / b as f64, 5)
        }
    };
    r.delivery_ratio = ratio(
        received[VIDEO] + received[AUDIO],
        expected[VIDEO] + expected[AUDIO],
    );
    r.delivery_ratio_video = ratio(received[VIDEO], expected[VIDEO]);
    let with_video = r.viewers_connected - r.viewers_without_video;
    r.first_frame_all_ok = with_video > 0 && r.first_frame_ok == with_video;
    r.latency_p50_ms = ms(sh.latency.quantile(0.5));
    r.latency_p99_ms = ms(sh.latency.quantile(0.99));
    r.latency_max_ms = ms(sh.latency.max());
    r.latency_samples = sh.latency.count();
    r.latency_clock = match sh.latency_kernel_samples {
        0 => "user",
        n if n == sh.latency.count() => "kernel",
        _ => "mixed",
    }
    .to_owned();
    r.latency_user_p50_ms = ms(sh.latency_user.quantile(0.5));
    r.latency_user_p99_ms = ms(sh.latency_user.quantile(0.99));
    r.latency_user_max_ms = ms(sh.latency_user.max());
    r.ttff_p50_ms = ms(ttff.quantile(0.5));
    r.ttff_p99_ms = ms(ttff.quantile(0.99));
    r.ttff_max_ms = ms(ttff.max());
    r.play_start_p50_ms = ms(play_start.quantile(0.5));
    r.play_start_p99_ms = ms(play_start.quantile(0.99));
    r.play_start_max_ms = ms(play_start.max());
    if window_s > 0.0 {
        r.delivered_mbps = round(r.bytes_received as f64 * 8.0 / window_s / 1e6, 2);
        r.delivered_gbps = round(r.bytes_received as f64 * 8.0 / window_s / 1e9, 4);
        if reads > 0 && r.viewers_connected > 0 {
            r.viewer_reads_per_viewer_s = Some(round(
                reads as f64 / (r.viewers_connected as f64 * window_s),
                1,
            ));
        }
    }
    if matches!(proto, Proto::Hls | Proto::HlsClassic) {
        hls_summary(&mut r, sh, window_s, args.hls_preload);
    }
    let mut errors: Vec<(String, usize)> = errors.into_iter().collect();
    errors.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    r.errors = errors
        .into_iter()
        .take(5)
        .map(|(e, n)| format!("{e} (x{n})"))
        .collect();
    r
}

/// The HLS viewers' fields of the report.
fn hls_summary(r: &mut Report, sh: &Shared, window_s: f64, args_preload: bool) {
    let h = &sh.hls;
    let per_s = |n: u64| (window_s > 0.0).then(|| round(n as f64 / window_s, 1));
    r.hls_requests = Some(h.requests);
    r.hls_requests_per_s = per_s(h.requests);
    r.hls_playlists = Some(h.playlists);
    r.hls_blocking_playlists = Some(h.blocking_playlists);
    r.hls_media = Some(h.media);
    r.hls_bytes_per_s = per_s(r.bytes_received);
    r.hls_http_4xx = Some(h.status_4xx);
    r.hls_http_5xx = Some(h.status_5xx);
    r.hls_reconnects = Some(h.reconnects);
    r.hls_preload = Some(args_preload);
    r.hls_preload_misses = Some(h.preload_misses);
    r.hls_unmatched = Some(h.unmatched);
    r.hls_samples = Some(h.available.count());
    r.hls_listed_p50_ms = Some(ms(h.announced.quantile(0.5)));
    r.hls_listed_p99_ms = Some(ms(h.announced.quantile(0.99)));
    r.hls_listed_max_ms = Some(ms(h.announced.max()));
    r.hls_available_p50_ms = Some(ms(h.available.quantile(0.5)));
    r.hls_available_p99_ms = Some(ms(h.available.quantile(0.99)));
    r.hls_available_max_ms = Some(ms(h.available.max()));
    r.hls_download_p50_ms = Some(ms(h.download.quantile(0.5)));
    r.hls_download_p99_ms = Some(ms(h.download.quantile(0.99)));
    r.hls_window_bytes = Some(h.window_bytes.iter().sum());
}
