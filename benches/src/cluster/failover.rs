//! `failover`: viewers watch a stream at an edge; the origin the edge pulls it from is
//! killed (SIGKILL), and with `--republish` the broadcaster moves to another origin at that
//! moment; each viewer's time from the kill to its next keyframe, its largest gap between
//! media messages, and whether it stayed connected.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;
use sluice_runtime::client::RtmpUrl;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use crate::cluster::admin;
use crate::cluster::play::{self, Watched};
use crate::cluster::publish;
use crate::cluster::stats::{Summary, round2};
use crate::fixture::{self, Fixture};
use crate::{FailoverArgs, check_local, note};

/// The `failover` report.
#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
    label: Option<String>,
    edge: String,
    killed_pid: i32,
    /// The upstream the edge pulled from when it was killed (`--kill-upstream`).
    killed_upstream: Option<String>,
    /// The upstream the edge pulls from at the end.
    upstream_after: Option<String>,
    /// The pull's switch count at the end.
    switches_after: Option<u64>,
    viewers: usize,
    all_stayed_connected: bool,
    /// Kill → first keyframe, over the viewers.
    kill_to_keyframe: Summary,
    /// Kill → first media message, over the viewers.
    kill_to_media: Summary,
    /// Largest gap between media messages after the kill, over the viewers.
    max_gap_after_kill_ms: f64,
    /// Every viewer had a keyframe within 1 s of the kill.
    within_1s: bool,
    per_viewer: Vec<Watched>,
}

/// `host:port` of an upstream URL (`rtmp://h:p/app`, `quic://h:p`).
fn upstream_addr(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// The edge's pull of `stream`: (upstream URL, switches).
async fn edge_pull(admin_url: &str, stream: &str) -> anyhow::Result<Option<(String, u64)>> {
    Ok(admin::pulls(admin_url)
        .await?
        .into_iter()
        .find(|p| p.0 == stream)
        .and_then(|p| Some((p.1?, p.2))))
}

/// Runs `failover`; prints the report; returns whether it met its own checks.
pub async fn run(args: FailoverArgs) -> anyhow::Result<bool> {
    let fixture = Arc::new(Fixture::load(&fixture::resolve(&args.fixture))?);
    let edge = RtmpUrl::parse(&args.edge).context("--edge")?;
    check_local(&edge.addr, args.allow_remote).await?;
    let mut targets = BTreeMap::new();
    for pair in &args.kill_upstream {
        let (addr, pid) = pair
            .split_once('=')
            .with_context(|| format!("--kill-upstream wants ADDR=PID, not {pair}"))?;
        targets.insert(
            addr.to_owned(),
            pid.parse::<i32>().context("--kill-upstream PID")?,
        );
    }
    if args.kill_pid.is_none() && (targets.is_empty() || args.edge_admin.is_none()) {
        bail!("give --kill-pid, or --kill-upstream ADDR=PID (one per origin) with --edge-admin");
    }
    let timeout = Duration::from_millis(args.connect_timeout_ms);
    let stop = CancellationToken::new();
    let until = Instant::now()
        + Duration::from_millis(args.after_ms + args.observe_ms)
        + Duration::from_secs(30);

    // Publishers to every origin (one of them is killed: its publisher then ends).
    let mut publishers = JoinSet::new();
    let mut keyframes = Vec::new();
    for p in &args.publish {
        let u = RtmpUrl::parse(p).context("--publish")?;
        check_local(&u.addr, args.allow_remote).await?;
        let k = Arc::new(AtomicU64::new(0));
        keyframes.push(k.clone());
        let run = publish::run(u, fixture.clone(), timeout, until, k, stop.clone());
        let p = p.clone();
        publishers.spawn(async move {
            if let Err(e) = run.await {
                note(&format!("publisher to {p} ended: {e:#}"));
            }
        });
    }
    let ready_by = Instant::now() + timeout + Duration::from_secs(5);
    while keyframes.iter().any(|k| k.load(Ordering::Relaxed) == 0) {
        if Instant::now() > ready_by {
            bail!("not every publisher sent a keyframe");
        }
        sleep(Duration::from_millis(20)).await;
    }
    sleep(Duration::from_millis(args.warmup_ms)).await;

    let kill_at = Arc::new(OnceLock::new());
    let stop_viewers = CancellationToken::new();
    let mut viewers = JoinSet::new();
    for _ in 0..args.viewers {
        viewers.spawn(play::watch(
            edge.clone(),
            timeout,
            kill_at.clone(),
            stop_viewers.clone(),
        ));
    }
    sleep(Duration::from_millis(args.after_ms)).await;

    let (pid, killed_upstream) = match args.kill_pid {
        Some(pid) => (pid, None),
        None => {
            let admin_url = args.edge_admin.as_deref().unwrap_or_default();
            let (upstream, _) = edge_pull(admin_url, &edge.stream)
                .await?
                .with_context(|| format!("the edge has no live pull of {}", edge.stream))?;
            let pid = *targets
                .get(upstream_addr(&upstream))
                .with_context(|| format!("no --kill-upstream for {upstream}"))?;
            (pid, Some(upstream))
        }
    };
    note(&format!("failover: SIGKILL to {pid} ({killed_upstream:?})"));
    let _ = kill_at.set(Instant::now());
    kill(Pid::from_raw(pid), Signal::SIGKILL).with_context(|| format!("kill -9 {pid}"))?;
    if let Some(url) = &args.republish {
        let u = RtmpUrl::parse(url).context("--republish")?;
        check_local(&u.addr, args.allow_remote).await?;
        let keyframe = Arc::new(AtomicU64::new(0));
        let run = publish::run(u, fixture.clone(), timeout, until, keyframe, stop.clone());
        let url = url.clone();
        publishers.spawn(async move {
            if let Err(e) = run.await {
                note(&format!("publisher to {url} ended: {e:#}"));
            }
        });
    }
    sleep(Duration::from_millis(args.observe_ms)).await;

    let after = match &args.edge_admin {
        Some(a) => edge_pull(a, &edge.stream).await.unwrap_or_else(|e| {
            note(&format!("{e:#}"));
            None
        }),
        None => None,
    };
    stop_viewers.cancel();
    let mut per_viewer = Vec::new();
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(5), viewers.join_next()).await
    {
        per_viewer.push(r.context("viewer task")?);
    }
    viewers.abort_all();
    publish::stop_all(&stop, &mut publishers).await;

    let keys: Vec<f64> = per_viewer
        .iter()
        .filter_map(|w| w.kill_to_keyframe_ms)
        .collect();
    let media: Vec<f64> = per_viewer
        .iter()
        .filter_map(|w| w.kill_to_media_ms)
        .collect();
    let report = Report {
        mode: "failover",
        label: args.label.clone(),
        edge: args.edge.clone(),
        killed_pid: pid,
        killed_upstream,
        upstream_after: after.as_ref().map(|a| a.0.clone()),
        switches_after: after.map(|a| a.1),
        viewers: args.viewers,
        all_stayed_connected: per_viewer.len() == args.viewers
            && per_viewer.iter().all(|w| w.stayed_connected),
        within_1s: keys.len() == args.viewers && keys.iter().all(|k| *k <= 1000.0),
        kill_to_keyframe: Summary::of(&keys),
        kill_to_media: Summary::of(&media),
        max_gap_after_kill_ms: round2(
            per_viewer
                .iter()
                .map(|w| w.max_gap_after_kill_ms)
                .fold(0.0, f64::max),
        ),
        per_viewer,
    };
    note(&format!(
        "failover: kill -> keyframe p50 {} max {} ms, largest gap {} ms, all connected {}, upstream {:?} -> {:?}",
        report.kill_to_keyframe.p50_ms,
        report.kill_to_keyframe.max_ms,
        report.max_gap_after_kill_ms,
        report.all_stayed_connected,
        report.killed_upstream,
        report.upstream_after,
    ));
    crate::print(&report, args.json)?;
    Ok(report.all_stayed_connected && report.within_1s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_addresses() {
        assert_eq!(
            upstream_addr("rtmp://127.0.0.1:19450/live"),
            "127.0.0.1:19450"
        );
        assert_eq!(upstream_addr("quic://127.0.0.1:19460"), "127.0.0.1:19460");
    }
}
