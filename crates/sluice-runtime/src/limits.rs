//! `[limits]`: what one client address and the node may use, and refusals that are counted
//! every time but logged once per address and reason per interval.
//!
//! Per-address state lives in sharded maps (no lock across an `.await`); an entry goes when
//! its address has no connection open and its minute is over, so a scan of many addresses
//! leaves nothing behind.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use sluice_core::StreamKey;
use tokio::time::Instant;
use tracing::info;

use crate::Context;

/// Entries kept in the refusal log before old ones are swept; at this size after a sweep, a
/// refusal from a new address is counted but not logged (a flood from many addresses).
const LOG_SWEEP_AT: usize = 4096;
/// Address entries kept before those with nothing left to count are swept (an entry stays
/// after its last connection while its publish-attempt minute runs).
const ADDRESS_SWEEP_AT: usize = 4096;
/// At most one sweep of a map per this long, so a flood pays for a scan per interval, not
/// per attempt.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// The publish-attempt window.
const MINUTE: Duration = Duration::from_secs(60);

/// Why a limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `max_connections_per_address`.
    AddressConnections,
    /// `publish_attempts_per_minute`.
    PublishRate,
    /// `max_streams`.
    NodeStreams,
    /// `max_streams_per_app`.
    AppStreams,
    /// `ingest_memory_bytes`.
    IngestMemory,
}

impl Limit {
    /// The `reason` label of `sluice_connections_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            Limit::AddressConnections => "address_connections",
            Limit::PublishRate => "publish_rate",
            Limit::NodeStreams => "max_streams",
            Limit::AppStreams => "app_streams",
            Limit::IngestMemory => "ingest_memory",
        }
    }

    /// What the client is told.
    pub fn describe(self) -> &'static str {
        match self {
            Limit::AddressConnections => "too many connections from this address",
            Limit::PublishRate => "too many publish attempts from this address",
            Limit::NodeStreams => "this node publishes its maximum of streams",
            Limit::AppStreams => "this application publishes its maximum of streams",
            Limit::IngestMemory => "this node's ingest memory budget is spent",
        }
    }
}

#[derive(Debug, Default)]
struct Address {
    connections: u32,
    /// Start of the current publish-attempt minute, and attempts in it.
    minute: Option<(Instant, u32)>,
}

/// Per-address counters and the refusal log; one per node, in the [`Context`].
#[derive(Debug, Default)]
pub struct Limits {
    addresses: DashMap<IpAddr, Address>,
    /// When a refusal was last logged, per address and reason.
    logged: DashMap<(IpAddr, &'static str), Instant>,
    /// When each map was last swept.
    addresses_swept: Sweeps,
    logged_swept: Sweeps,
}

/// When a map was last swept; a sweep is due [`SWEEP_EVERY`] after the last one, and only one
/// caller at a time gets it.
#[derive(Debug, Default)]
struct Sweeps(parking_lot::Mutex<Option<Instant>>);

impl Sweeps {
    fn due(&self, now: Instant) -> bool {
        let Some(mut last) = self.0.try_lock() else {
            return false;
        };
        if last.is_some_and(|at| now.duration_since(at) < SWEEP_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

impl Address {
    /// Whether the entry still counts something at `now`.
    fn in_use(&self, now: Instant) -> bool {
        self.connections > 0
            || self
                .minute
                .is_some_and(|(start, _)| now.duration_since(start) < MINUTE)
    }
}

/// One open connection of an address; dropping it gives the place back.
#[derive(Debug)]
pub struct AddressSlot {
    ctx: Arc<Context>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let limits = &self.ctx.limits;
        if let Some(mut entry) = limits.addresses.get_mut(&self.ip) {
            entry.connections = entry.connections.saturating_sub(1);
        }
        let now = Instant::now();
        limits.addresses.remove_if(&self.ip, |_, a| !a.in_use(now));
    }
}

/// An IPv4-mapped IPv6 address counts as its IPv4 address (a dual-stack listener).
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

impl Limits {
    /// Takes a connection slot for `ip`, or refuses when the address has its maximum open.
    pub fn connection(ctx: &Arc<Context>, ip: IpAddr) -> Result<AddressSlot, Limit> {
        let ip = canonical(ip);
        let max = ctx.config.load().limits.max_connections_per_address;
        let mut entry = ctx.limits.addresses.entry(ip).or_default();
        if max > 0 && entry.connections >= max {
            return Err(Limit::AddressConnections);
        }
        entry.connections += 1;
        drop(entry);
        Ok(AddressSlot {
            ctx: ctx.clone(),
            ip,
        })
    }

    /// Counts a publish attempt of `ip`; refuses past `publish_attempts_per_minute`.
    pub fn publish_attempt(&self, ctx: &Context, ip: IpAddr) -> Result<(), Limit> {
        let max = ctx.config.load().limits.publish_attempts_per_minute;
        if max == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut entry = self.addresses.entry(canonical(ip)).or_default();
        let (start, attempts) = match entry.minute {
            Some((start, n)) if now.duration_since(start) < MINUTE => (start, n),
            _ => (now, 0),
        };
        entry.minute = Some((start, attempts.saturating_add(1)));
        drop(entry);
        // Entries of addresses that left stay for their minute; sweep them now and then.
        if self.addresses.len() >= ADDRESS_SWEEP_AT && self.addresses_swept.due(now) {
            self.addresses.retain(|_, a| a.in_use(now));
        }
        if attempts >= max {
            return Err(Limit::PublishRate);
        }
        Ok(())
    }

    /// Whether a new publisher of `key` fits the node's stream and memory limits.
    pub fn new_stream(ctx: &Context, key: &StreamKey) -> Result<(), Limit> {
        let config = ctx.config.load();
        let limits = &config.limits;
        if limits.max_streams == 0
            && limits.max_streams_per_app == 0
            && limits.ingest_memory_bytes == 0
        {
            return Ok(());
        }
        let published: Vec<_> = ctx
            .registry
            .streams()
            .into_iter()
            .filter(|s| s.is_publishing() && s.key() != key)
            .collect();
        if limits.max_streams > 0 && published.len() >= limits.max_streams {
            return Err(Limit::NodeStreams);
        }
        if limits.max_streams_per_app > 0
            && published.iter().filter(|s| s.key().app == key.app).count()
                >= limits.max_streams_per_app
        {
            return Err(Limit::AppStreams);
        }
        if limits.ingest_memory_bytes > 0 {
            let now = Instant::now();
            let held: u64 = published
                .iter()
                .map(|s| s.info(now).cached_bytes as u64)
                .sum();
            let room = limits
                .ingest_memory_bytes
                .saturating_sub(config.streams.gop_cache_max_bytes as u64);
            if held > room {
                return Err(Limit::IngestMemory);
            }
        }
        Ok(())
    }

    /// Counts a refusal of `ip` for `reason` on `protocol`, and says whether to log it (once
    /// per address and reason per `limits.refusal_log_interval_ms`).
    pub fn refused(
        ctx: &Context,
        protocol: &'static str,
        reason: &'static str,
        ip: IpAddr,
    ) -> bool {
        ctx.metrics.refused(protocol, reason);
        let interval = Duration::from_millis(ctx.config.load().limits.refusal_log_interval_ms);
        let now = Instant::now();
        let limits = &ctx.limits;
        let logged = &limits.logged;
        let key = (canonical(ip), reason);
        if logged.len() >= LOG_SWEEP_AT {
            if limits.logged_swept.due(now) {
                logged.retain(|_, at| now.duration_since(*at) < interval);
            }
            if logged.len() >= LOG_SWEEP_AT && !logged.contains_key(&key) {
                return false;
            }
        }
        let mut log = false;
        logged
            .entry(key)
            .and_modify(|at| {
                if now.duration_since(*at) >= interval {
                    *at = now;
                    log = true;
                }
            })
            .or_insert_with(|| {
                log = true;
                now
            });
        log
    }

    /// Counts a refusal, logging it at most once per interval per address and reason.
    pub fn refuse(ctx: &Context, protocol: &'static str, reason: &'static str, ip: IpAddr) {
        if Self::refused(ctx, protocol, reason, ip) {
            info!(protocol, reason, client = %ip, "refused (logged once per address and interval)");
        }
    }

    /// Addresses with state (for tests and the admin API).
    pub fn tracked_addresses(&self) -> usize {
        self.addresses.len()
    }
}

/// The unspecified address, for connections whose client address is not known.
pub const UNKNOWN_CLIENT: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::Config;

    fn ctx(limits: &str) -> Arc<Context> {
        Context::new(Config::load(Some(&format!("[limits]\n{limits}")), []).unwrap())
    }

    #[test]
    fn connections_per_address_are_bounded_and_given_back() {
        let ctx = ctx("max_connections_per_address = 2\n");
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let one = Limits::connection(&ctx, a).unwrap();
        let two = Limits::connection(&ctx, mapped).unwrap();
        assert_eq!(
            Limits::connection(&ctx, a).unwrap_err(),
            Limit::AddressConnections
        );
        let other = Limits::connection(&ctx, b).unwrap();
        drop(one);
        let three = Limits::connection(&ctx, a).unwrap();
        drop((two, three, other));
        assert_eq!(ctx.limits.tracked_addresses(), 0, "nothing left behind");
    }

    #[tokio::test(start_paused = true)]
    async fn publish_attempts_are_counted_per_minute() {
        let ctx = ctx("publish_attempts_per_minute = 3\n");
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            ctx.limits.publish_attempt(&ctx, a).unwrap();
        }
        assert_eq!(
            ctx.limits.publish_attempt(&ctx, a).unwrap_err(),
            Limit::PublishRate
        );
        ctx.limits
            .publish_attempt(&ctx, "10.0.0.9".parse().unwrap())
            .unwrap();
        tokio::time::advance(MINUTE).await;
        ctx.limits.publish_attempt(&ctx, a).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn addresses_that_attempted_once_are_swept_after_their_minute() {
        let ctx = ctx("publish_attempts_per_minute = 3\n");
        let many = u32::try_from(ADDRESS_SWEEP_AT).unwrap() + 10;
        let address = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        for i in 0..many {
            let slot = Limits::connection(&ctx, address(i)).unwrap();
            ctx.limits.publish_attempt(&ctx, address(i)).unwrap();
            drop(slot);
        }
        // Inside their minute they stay: they still count.
        assert_eq!(ctx.limits.tracked_addresses(), many as usize);
        tokio::time::advance(MINUTE + SWEEP_EVERY).await;
        ctx.limits
            .publish_attempt(&ctx, "192.0.2.1".parse().unwrap())
            .unwrap();
        assert_eq!(
            ctx.limits.tracked_addresses(),
            1,
            "only the new attempt left"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_from_many_addresses_is_counted_but_the_log_stays_bounded() {
        let ctx = ctx("refusal_log_interval_ms = 10000\n");
        let many = u32::try_from(LOG_SWEEP_AT).unwrap() * 2;
        let address = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        let logged = (0..many)
            .filter(|&i| Limits::refused(&ctx, "rtmp", "auth_missing", address(i)))
            .count();
        assert_eq!(logged, LOG_SWEEP_AT, "logged until the log was full");
        assert_eq!(ctx.limits.logged.len(), LOG_SWEEP_AT);
        let text = ctx.metrics.encode();
        assert!(
            text.contains(&format!(
                r#"sluice_connections_refused_total{{protocol="rtmp",reason="auth_missing"}} {many}"#
            )),
            "{text}"
        );
        // Once the entries are older than the interval, a sweep makes room again.
        tokio::time::advance(Duration::from_millis(10_000)).await;
        assert!(Limits::refused(&ctx, "rtmp", "auth_missing", address(many)));
        assert_eq!(ctx.limits.logged.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_counted_always_and_logged_once_per_interval() {
        let ctx = ctx("refusal_log_interval_ms = 1000\n");
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(Limits::refused(&ctx, "rtmp", "publish_rate", a));
        assert!(!Limits::refused(&ctx, "rtmp", "publish_rate", a));
        assert!(Limits::refused(&ctx, "rtmp", "auth_invalid", a));
        assert!(Limits::refused(
            &ctx,
            "rtmp",
            "publish_rate",
            "10.0.0.2".parse().unwrap()
        ));
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert!(Limits::refused(&ctx, "rtmp", "publish_rate", a));
        let text = ctx.metrics.encode();
        assert!(
            text.contains(
                r#"sluice_connections_refused_total{protocol="rtmp",reason="publish_rate"} 4"#
            ),
            "{text}"
        );
    }

    #[test]
    fn streams_per_node_and_app_are_bounded() {
        let ctx = ctx("max_streams = 2\nmax_streams_per_app = 1\n");
        let now = Instant::now();
        let cache = ctx.cache_settings();
        let live_a = StreamKey::new("live", "a");
        assert!(Limits::new_stream(&ctx, &live_a).is_ok());
        let _a = ctx.registry.publish(&live_a, cache, false, now).unwrap();
        // The same stream again (a republish) is not a new one.
        assert!(Limits::new_stream(&ctx, &live_a).is_ok());
        assert_eq!(
            Limits::new_stream(&ctx, &StreamKey::new("live", "b")),
            Err(Limit::AppStreams)
        );
        let _b = ctx
            .registry
            .publish(&StreamKey::new("other", "b"), cache, false, now)
            .unwrap();
        assert_eq!(
            Limits::new_stream(&ctx, &StreamKey::new("third", "c")),
            Err(Limit::NodeStreams)
        );
    }
}
