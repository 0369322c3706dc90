//! `cold`: time to first frame at an edge whose first viewer makes it pull the stream from
//! the origin, against the same at the origin directly, and the edge's pull count.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use sluice_runtime::client::RtmpUrl;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use crate::cluster::admin;
use crate::cluster::play::{self, Ttff};
use crate::cluster::publish;
use crate::cluster::stats::{Summary, ratio, round2};
use crate::fixture::{self, Fixture};
use crate::{ColdArgs, check_local, note};

/// The edge counter that counts pulls that started a stream.
const PULL_STARTS: &str = "sluice_pull_starts";

/// Time-to-first-frame samples of one side.
#[derive(Debug, Default)]
struct Side {
    key_ms: Vec<f64>,
    play_ms: Vec<f64>,
    headers_ok: usize,
    inter_first: usize,
    errors: BTreeMap<String, usize>,
}

impl Side {
    fn record(&mut self, r: anyhow::Result<Ttff>) {
        match r {
            Ok(t) => {
                self.key_ms.push(t.key_ms);
                self.play_ms.push(t.play_ms);
                self.headers_ok += usize::from(t.headers_ok);
                self.inter_first += usize::from(t.inter_first);
            }
            Err(e) => *self.errors.entry(format!("{e:#}")).or_default() += 1,
        }
    }

    fn report(&self) -> SideReport {
        SideReport {
            ttff: Summary::of(&self.key_ms),
            play_start: Summary::of(&self.play_ms),
            headers_ok: self.headers_ok,
            inter_first: self.inter_first,
            failed: self.errors.values().sum(),
            errors: self
                .errors
                .iter()
                .take(5)
                .map(|(e, n)| format!("{n}x {e}"))
                .collect(),
        }
    }
}

/// One side in the report.
#[derive(Debug, Serialize)]
struct SideReport {
    /// Connect → first video keyframe.
    ttff: Summary,
    /// Connect → NetStream.Play.Start.
    play_start: Summary,
    /// Viewers whose keyframe followed the sequence headers.
    headers_ok: usize,
    /// Viewers that got an inter frame before their first keyframe.
    inter_first: usize,
    /// Viewers that got no keyframe.
    failed: usize,
    /// Up to 5 distinct errors with counts.
    errors: Vec<String>,
}

/// The `cold` report.
#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
    label: Option<String>,
    origin: String,
    edge: String,
    fixture: String,
    fixture_kbps: u64,
    streams: usize,
    viewers_per_stream: usize,
    /// Viewers at the origin directly (one per stream): the baseline.
    origin_direct: SideReport,
    /// Viewers at the edge, all of a stream's connecting together before it has it.
    edge_cold: SideReport,
    ratio_p50: Option<f64>,
    ratio_p99: Option<f64>,
    /// Edge `sluice_pull_starts_total` after − before (`--edge-admin`); should be `streams`.
    pull_starts_delta: Option<f64>,
    pulls_per_stream: Option<f64>,
    /// The edge's running pulls of this run's streams at the end (`/api/pulls`).
    edge_pulls_listed: Option<usize>,
    wall_s: f64,
}

/// Runs `cold`; prints the report; returns whether it met its own checks.
pub async fn run(args: ColdArgs) -> anyhow::Result<bool> {
    let started = Instant::now();
    let fixture = Arc::new(Fixture::load(&fixture::resolve(&args.fixture))?);
    let base = |u: &str| u.trim_end_matches('/').to_owned();
    let (origin, edge) = (base(&args.origin), base(&args.edge));
    let url = |b: &str, i: usize| RtmpUrl::parse(&format!("{b}/{}-{i}", args.prefix));
    check_local(&url(&origin, 0)?.addr, args.allow_remote).await?;
    check_local(&url(&edge, 0)?.addr, args.allow_remote).await?;
    let timeout = Duration::from_millis(args.timeout_ms);
    let starts_before = match &args.edge_admin {
        Some(a) => Some(admin::read_counter(a, PULL_STARTS).await?),
        None => None,
    };

    // Publishers, one per stream, to the origin; bounded by `until` and by `stop`.
    let stop = CancellationToken::new();
    let until = Instant::now()
        + Duration::from_millis(args.warmup_ms)
        + (timeout * 2 + Duration::from_millis(500)) * args.streams as u32
        + Duration::from_secs(30);
    let mut publishers = JoinSet::new();
    let mut keyframes = Vec::with_capacity(args.streams);
    for i in 0..args.streams {
        let k = Arc::new(AtomicU64::new(0));
        keyframes.push(k.clone());
        let run = publish::run(
            url(&origin, i)?,
            fixture.clone(),
            timeout,
            until,
            k,
            stop.clone(),
        );
        publishers.spawn(async move { run.await.with_context(|| format!("publisher {i}")) });
    }
    note(&format!("cold: {} publishers to {origin}", args.streams));
    let ready_by = Instant::now() + timeout + Duration::from_secs(5);
    while keyframes.iter().any(|k| k.load(Ordering::Relaxed) == 0) {
        if Instant::now() > ready_by {
            bail!(
                "not every publisher sent a keyframe within {:?}",
                ready_by - started
            );
        }
        if let Some(Ok(Err(e))) = publishers.try_join_next() {
            return Err(e);
        }
        sleep(Duration::from_millis(20)).await;
    }
    // The origin's GOP cache holds a keyframe of every stream from here on.
    sleep(Duration::from_millis(args.warmup_ms)).await;
    if let Some(Ok(Err(e))) = publishers.try_join_next() {
        return Err(e);
    }

    let (mut at_origin, mut at_edge) = (Side::default(), Side::default());
    for i in 0..args.streams {
        // The edge first, so its viewers are always the stream's first there.
        let mut viewers = JoinSet::new();
        for _ in 0..args.viewers {
            let u = url(&edge, i)?;
            let has_audio = fixture.has_audio;
            viewers.spawn(async move { play::first_keyframe(&u, timeout, has_audio).await });
        }
        while let Some(r) = viewers.join_next().await {
            at_edge.record(r.context("viewer task")?);
        }
        at_origin.record(play::first_keyframe(&url(&origin, i)?, timeout, fixture.has_audio).await);
        if let Some(Ok(Err(e))) = publishers.try_join_next() {
            note(&format!("{e:#}"));
        }
    }

    let (mut pull_starts_delta, mut edge_pulls_listed) = (None, None);
    if let (Some(a), Some(before)) = (&args.edge_admin, starts_before) {
        pull_starts_delta = Some(admin::read_counter(a, PULL_STARTS).await? - before);
        let prefix = format!("{}-", args.prefix);
        let pulls = admin::pulls(a).await?;
        edge_pulls_listed = Some(pulls.iter().filter(|p| p.0.starts_with(&prefix)).count());
    }
    publish::stop_all(&stop, &mut publishers).await;

    let (o, e) = (at_origin.report(), at_edge.report());
    let report = Report {
        mode: "cold",
        label: args.label.clone(),
        origin,
        edge,
        fixture: fixture.path.display().to_string(),
        fixture_kbps: fixture.kbps,
        streams: args.streams,
        viewers_per_stream: args.viewers,
        ratio_p50: ratio(e.ttff.p50_ms, o.ttff.p50_ms),
        ratio_p99: ratio(e.ttff.p99_ms, o.ttff.p99_ms),
        pull_starts_delta,
        pulls_per_stream: pull_starts_delta.map(|d| round2(d / args.streams.max(1) as f64)),
        edge_pulls_listed,
        origin_direct: o,
        edge_cold: e,
        wall_s: round2(started.elapsed().as_secs_f64()),
    };
    note(&format!(
        "cold: edge ttff p50 {} p99 {} max {} ms ({} failed) | origin ttff p50 {} p99 {} max {} ms | ratio p50 {:?} p99 {:?} | pull starts {:?} for {} streams",
        report.edge_cold.ttff.p50_ms,
        report.edge_cold.ttff.p99_ms,
        report.edge_cold.ttff.max_ms,
        report.edge_cold.failed,
        report.origin_direct.ttff.p50_ms,
        report.origin_direct.ttff.p99_ms,
        report.origin_direct.ttff.max_ms,
        report.ratio_p50,
        report.ratio_p99,
        report.pull_starts_delta,
        report.streams,
    ));
    crate::print(&report, args.json)?;
    let ok = report.edge_cold.failed == 0
        && report.origin_direct.failed == 0
        && pull_starts_delta.is_none_or(|d| d == args.streams as f64);
    Ok(ok)
}
