//! Health of each upstream, shared by every pull of this node: failures and successes, how
//! long connecting took, and a backoff that keeps pulls away from an upstream that just
//! failed (exponential, with jitter so that edges do not retry in step).
//!
//! Pure state with injected time; the pull tasks report into it and ask it for the order in
//! which to try candidates.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;
use sluice_core::topology::Upstream;

/// Backoff bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Wait after the first failure.
    pub initial: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl Backoff {
    /// The wait after `failures` consecutive failures, before jitter.
    fn base(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.initial.saturating_mul(1 << doublings).min(self.max)
    }
}

#[derive(Debug, Clone, Default)]
struct Entry {
    consecutive_failures: u32,
    failures: u64,
    successes: u64,
    last_error: Option<String>,
    last_connect: Option<Duration>,
    last_change: Option<Instant>,
    backoff_until: Option<Instant>,
    up: Option<bool>,
}

impl Entry {
    /// Answering again: the failure streak and any backoff end.
    fn mark_up(&mut self, now: Instant) {
        if self.up != Some(true) {
            self.last_change = Some(now);
        }
        self.up = Some(true);
        self.consecutive_failures = 0;
        self.backoff_until = None;
    }
}

/// The health table.
#[derive(Debug, Default)]
pub struct Health {
    entries: Mutex<HashMap<Arc<str>, Entry>>,
}

/// One upstream in the health table, for the API.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamHealth {
    /// The upstream as configured.
    pub url: String,
    /// `up`, `down` or `unknown` (never tried).
    pub state: &'static str,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Failures in all.
    pub failures: u64,
    /// Pulls started in all.
    pub successes: u64,
    /// The latest failure.
    pub last_error: Option<String>,
    /// How long the latest successful connect took, ms.
    pub last_connect_ms: Option<f64>,
    /// Seconds since the state last changed.
    pub since_secs: Option<f64>,
    /// Milliseconds until it is tried again first, while backing off.
    pub backoff_ms: Option<u64>,
}

impl Health {
    /// Records a pull started on `url` after `connect` time.
    pub fn success(&self, url: &Arc<str>, connect: Duration, now: Instant) {
        let mut entries = self.entries.lock();
        let e = entries.entry(url.clone()).or_default();
        e.mark_up(now);
        e.successes += 1;
        e.last_connect = Some(connect);
    }

    /// Records a failure of `url` (unreachable, silent, broken) and backs it off;
    /// `jitter` in [0, 1) spreads the wait over ±25 %.
    pub fn failure(
        &self,
        url: &Arc<str>,
        error: String,
        backoff: Backoff,
        now: Instant,
        jitter: f64,
    ) {
        let mut entries = self.entries.lock();
        let e = entries.entry(url.clone()).or_default();
        if e.up != Some(false) {
            e.last_change = Some(now);
        }
        e.up = Some(false);
        e.consecutive_failures = e.consecutive_failures.saturating_add(1);
        e.failures += 1;
        e.last_error = Some(error);
        let wait = backoff
            .base(e.consecutive_failures)
            .mul_f64(0.75 + jitter.clamp(0.0, 1.0) * 0.5);
        e.backoff_until = Some(now + wait);
    }

    /// Records that `url` answered but lacks a stream: it is healthy, so no backoff.
    pub fn reachable(&self, url: &Arc<str>, now: Instant) {
        self.entries
            .lock()
            .entry(url.clone())
            .or_default()
            .mark_up(now);
    }

    /// `candidates` in the order to try them: the configured (or rendezvous) order, with
    /// upstreams backing off moved behind the others, soonest retry first.
    pub fn order(&self, candidates: &mut [Upstream], now: Instant) {
        let entries = self.entries.lock();
        let until = |u: &Upstream| {
            entries
                .get(&u.url)
                .and_then(|e| e.backoff_until)
                .filter(|t| *t > now)
        };
        // A stable sort: ready ones keep their relative order.
        candidates.sort_by_key(|u| match until(u) {
            None => (false, None),
            Some(t) => (true, Some(t)),
        });
    }

    /// When the earliest backing-off upstream among `candidates` may be tried again.
    pub fn next_retry(&self, candidates: &[Upstream], now: Instant) -> Option<Instant> {
        let entries = self.entries.lock();
        candidates
            .iter()
            .filter_map(|u| entries.get(&u.url).and_then(|e| e.backoff_until))
            .filter(|t| *t > now)
            .min()
    }

    /// The table, for the API, sorted by URL.
    pub fn snapshot(&self, now: Instant) -> Vec<UpstreamHealth> {
        let entries = self.entries.lock();
        let mut out: Vec<_> = entries
            .iter()
            .map(|(url, e)| UpstreamHealth {
                url: url.to_string(),
                state: match e.up {
                    Some(true) => "up",
                    Some(false) => "down",
                    None => "unknown",
                },
                consecutive_failures: e.consecutive_failures,
                failures: e.failures,
                successes: e.successes,
                last_error: e.last_error.clone(),
                last_connect_ms: e.last_connect.map(|d| d.as_secs_f64() * 1000.0),
                since_secs: e
                    .last_change
                    .map(|t| now.saturating_duration_since(t).as_secs_f64()),
                backoff_ms: e
                    .backoff_until
                    .filter(|t| *t > now)
                    .map(|t| (t - now).as_millis() as u64),
            })
            .collect();
        out.sort_by(|a, b| a.url.cmp(&b.url));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(url: &str) -> Upstream {
        Upstream::parse(url).unwrap()
    }

    const BACKOFF: Backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(1000),
    };

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        assert_eq!(BACKOFF.base(1), Duration::from_millis(100));
        assert_eq!(BACKOFF.base(3), Duration::from_millis(400));
        assert_eq!(BACKOFF.base(10), Duration::from_millis(1000));
        let h = Health::default();
        let t0 = Instant::now();
        let url: Arc<str> = "rtmp://a:1/live".into();
        h.failure(&url, "refused".into(), BACKOFF, t0, 0.0);
        let wait = h.snapshot(t0)[0].backoff_ms.unwrap();
        assert_eq!(wait, 75);
        h.failure(&url, "refused".into(), BACKOFF, t0, 0.999);
        let wait = h.snapshot(t0)[0].backoff_ms.unwrap();
        assert!((240..=250).contains(&wait), "{wait}");
    }

    #[test]
    fn failed_upstreams_move_behind_healthy_ones_until_their_backoff_ends() {
        let h = Health::default();
        let t0 = Instant::now();
        let list = [up("rtmp://a:1/x"), up("rtmp://b:1/x"), up("rtmp://c:1/x")];
        h.failure(&list[0].url, "down".into(), BACKOFF, t0, 0.5);
        let mut order = list.to_vec();
        h.order(&mut order, t0);
        let urls: Vec<_> = order.iter().map(|u| &*u.url).collect();
        assert_eq!(urls, ["rtmp://b:1/x", "rtmp://c:1/x", "rtmp://a:1/x"]);
        assert_eq!(
            h.next_retry(&list, t0),
            Some(t0 + Duration::from_millis(100))
        );
        // After the backoff the primary is first again.
        let later = t0 + Duration::from_millis(101);
        let mut order = list.to_vec();
        h.order(&mut order, later);
        assert_eq!(&*order[0].url, "rtmp://a:1/x");
        // A success clears the failure streak.
        h.success(&list[0].url, Duration::from_millis(3), later);
        let snap = h.snapshot(later);
        assert_eq!((snap[0].state, snap[0].consecutive_failures), ("up", 0));
        assert_eq!(snap[0].failures, 1);
    }

    #[test]
    fn a_miss_is_not_a_failure() {
        let h = Health::default();
        let t0 = Instant::now();
        let u = up("rtmp://a:1/x");
        h.reachable(&u.url, t0);
        let mut order = vec![u.clone(), up("rtmp://b:1/x")];
        h.order(&mut order, t0);
        assert_eq!(order[0], u);
        assert_eq!(h.snapshot(t0)[0].state, "up");
    }
}
