//! A node's part in a cluster, as configured (`[cluster]`): its role, the upstreams each
//! application pulls missing streams from, and the hook through which viewers ask for a pull.
//!
//! The pull machinery itself (connections, failover, the QUIC relay) lives in
//! `sluice-cluster`; front ends only see [`Puller`], so they need not know how a stream
//! arrives. The pure parts — upstream URLs, the rendezvous order of candidates, the via-list
//! that refuses loops — are here, where they are unit-tested without sockets.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::ConfigError;
use crate::stream::StreamKey;

/// What this node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Accepts publishers and serves viewers; pulls nothing.
    Origin,
    /// Serves viewers and pulls streams it lacks from upstreams; refuses publishers.
    Edge,
    /// Accepts publishers, and pulls what no local publisher has from upstreams.
    Both,
}

impl Role {
    /// Whether publishers are accepted.
    pub fn accepts_publishers(self) -> bool {
        !matches!(self, Role::Edge)
    }
    /// Whether missing streams are pulled from upstreams.
    pub fn pulls(self) -> bool {
        !matches!(self, Role::Origin)
    }
}

/// How the first upstream to ask is chosen among an application's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Select {
    /// In the order listed: the first is the primary, the rest are backups.
    Ordered,
    /// Rendezvous hashing of the stream key: every edge asks the same owner first, and the
    /// rest follow in that key's own order.
    Hash,
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's role.
    pub role: Role,
    /// This node's name in pull requests; empty: `HOSTNAME:RTMP_PORT`.
    pub node_id: String,
    /// Longest chain of nodes a pull may have passed through before reaching this one.
    pub max_hops: usize,
    /// UDP address of the QUIC relay listener other nodes pull from; empty: no listener.
    pub quic_listen: String,
    /// PEM certificate chain of this node (QUIC relay, both directions).
    pub tls_cert: String,
    /// PEM private key of `tls_cert`.
    pub tls_key: String,
    /// PEM CA certificate that signs every node's certificate.
    pub tls_ca: String,
    /// The DNS name every node's certificate carries, checked when connecting.
    pub tls_server_name: String,
    /// Pull behaviour.
    pub pull: PullConfig,
    /// Upstreams per application.
    pub apps: BTreeMap<String, AppUpstreams>,
    /// The stream registry on etcd (optional).
    pub registry: RegistryConfig,
    #[serde(skip)]
    resolved: Resolved,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Resolved {
    node_id: Arc<str>,
    quic_listen: Option<SocketAddr>,
    apps: BTreeMap<String, Arc<[Upstream]>>,
}

/// `[cluster.pull]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullConfig {
    /// How long viewers of a missing stream wait for a pull's first frame.
    pub timeout_ms: u64,
    /// Deadline for connecting to one upstream and having it accept the pull.
    pub connect_timeout_ms: u64,
    /// An upstream silent this long is given up for the next candidate.
    pub no_data_timeout_ms: u64,
    /// A pull stops this long after its last viewer left.
    pub idle_timeout_ms: u64,
    /// A stream no upstream had is answered "not found" at once for this long.
    pub miss_ttl_ms: u64,
    /// First wait before an upstream that failed is tried again; doubles per failure.
    pub backoff_initial_ms: u64,
    /// Longest such wait.
    pub backoff_max_ms: u64,
    /// Query added to this node's RTMP pulls (its credentials at the upstream, e.g.
    /// `key=...`); empty: none.
    pub credentials: String,
    /// Id of a key in `auth.signing_keys` this node signs each RTMP pull with (a play URL of
    /// the stream, valid 5 minutes); empty: unsigned.
    pub sign_with: String,
}

impl PullConfig {
    /// See the field.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
    /// See the field.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    /// See the field.
    pub fn no_data_timeout(&self) -> Duration {
        Duration::from_millis(self.no_data_timeout_ms)
    }
    /// See the field.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    /// See the field.
    pub fn miss_ttl(&self) -> Duration {
        Duration::from_millis(self.miss_ttl_ms)
    }
    /// See the field.
    pub fn backoff_initial(&self) -> Duration {
        Duration::from_millis(self.backoff_initial_ms)
    }
    /// See the field.
    pub fn backoff_max(&self) -> Duration {
        Duration::from_millis(self.backoff_max_ms)
    }
}

/// `[cluster.registry]`: where streams are published and which nodes make the cluster, kept
/// in etcd. Off while `endpoints` is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// etcd client URLs (`http://host:2379`); empty: no registry.
    pub endpoints: Vec<String>,
    /// Key prefix of this cluster (`/sluice`): streams under `PREFIX/streams/APP/NAME`, nodes
    /// under `PREFIX/nodes/NODE_ID`.
    pub prefix: String,
    /// Base URLs other nodes pull this node's streams from (`rtmp://host:port`,
    /// `quic://host:port`; the application is appended); empty: this node's RTMP listener
    /// (and QUIC relay), as bound.
    pub advertise: Vec<String>,
    /// Lease of this node's keys: they vanish this long after the node stops renewing it.
    pub lease_ttl_s: u64,
    /// Deadline for connecting to etcd.
    pub connect_timeout_ms: u64,
    /// Deadline of one etcd request (keep-alives, writes, listing).
    pub request_timeout_ms: u64,
    /// Deadline of a viewer's lookup of a stream the watch has not shown; past it the
    /// static upstreams are asked.
    pub lookup_timeout_ms: u64,
    /// First wait before reconnecting to etcd; doubles per failure.
    pub backoff_initial_ms: u64,
    /// Longest such wait.
    pub backoff_max_ms: u64,
}

impl RegistryConfig {
    /// Whether the registry is on.
    pub fn enabled(&self) -> bool {
        !self.endpoints.is_empty()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !self.enabled() {
            return Ok(());
        }
        for e in &self.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) || e.len() <= 8 {
                return invalid(format!(
                    "cluster.registry.endpoints: {e:?} must be http://HOST:PORT"
                ));
            }
            if e.starts_with("https://") {
                return invalid(format!(
                    "cluster.registry.endpoints: {e:?}: TLS to etcd is not supported yet"
                ));
            }
        }
        if !self.prefix.starts_with('/') || self.prefix.ends_with('/') {
            return invalid(format!(
                "cluster.registry.prefix {:?} must start with / and not end with one",
                self.prefix
            ));
        }
        for a in &self.advertise {
            match Upstream::parse(a) {
                Ok(u) if u.app.is_none() => {}
                Ok(_) => {
                    return invalid(format!(
                        "cluster.registry.advertise: {a:?} names no application (it is appended)"
                    ));
                }
                Err(e) => return invalid(format!("cluster.registry.advertise: {e}")),
            }
        }
        if !(1..=3600).contains(&self.lease_ttl_s) {
            return invalid("cluster.registry.lease_ttl_s must be within 1..=3600".to_owned());
        }
        if [
            self.connect_timeout_ms,
            self.request_timeout_ms,
            self.lookup_timeout_ms,
            self.backoff_initial_ms,
        ]
        .contains(&0)
            || self.backoff_max_ms < self.backoff_initial_ms
        {
            return invalid(
                "cluster.registry timeouts and backoff must be positive, backoff_max_ms at \
                 least backoff_initial_ms"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// See the field.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_s)
    }
    /// See the field.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    /// See the field.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    /// See the field.
    pub fn lookup_timeout(&self) -> Duration {
        Duration::from_millis(self.lookup_timeout_ms)
    }
    /// See the field.
    pub fn backoff_initial(&self) -> Duration {
        Duration::from_millis(self.backoff_initial_ms)
    }
    /// See the field.
    pub fn backoff_max(&self) -> Duration {
        Duration::from_millis(self.backoff_max_ms)
    }
}

/// `[cluster.apps.NAME]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppUpstreams {
    /// `rtmp://host[:port][/app]` or `quic://host:port[/app]`; the app defaults to the
    /// viewer's.
    pub upstreams: Vec<String>,
    /// Which upstream is asked first.
    #[serde(default = "default_select")]
    pub select: Select,
}

fn default_select() -> Select {
    Select::Ordered
}

/// How frames travel from an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// RTMP play: any RTMP server.
    Rtmp,
    /// Sluice's QUIC relay.
    Quic,
}

impl Transport {
    /// Its name in metrics and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Rtmp => "rtmp",
            Transport::Quic => "quic",
        }
    }
}

/// One upstream, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upstream {
    /// The URL as configured (its identity in health tables).
    pub url: Arc<str>,
    /// How to reach it.
    pub transport: Transport,
    /// `host:port`.
    pub addr: String,
    /// The application to ask for there; `None`: the viewer's.
    pub app: Option<String>,
}

impl Upstream {
    /// Parses `rtmp://host[:port][/app]` or `quic://host:port[/app]`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (transport, rest, default_port) = if let Some(rest) = url.strip_prefix("rtmp://") {
            (Transport::Rtmp, rest, Some(1935))
        } else if let Some(rest) = url.strip_prefix("quic://") {
            (Transport::Quic, rest, None)
        } else {
            return Err(format!("{url:?}: must start with rtmp:// or quic://"));
        };
        let (host, app) = match rest.split_once('/') {
            Some((host, app)) => (host, Some(app.trim_end_matches('/'))),
            None => (rest, None),
        };
        let app = app.filter(|a| !a.is_empty());
        if app.is_some_and(|a| a.contains('/')) {
            return Err(format!("{url:?}: name an application, not a stream"));
        }
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        let has_port = host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !host.ends_with(']');
        let addr = match (has_port, default_port) {
            (true, _) => host.to_owned(),
            (false, Some(port)) => format!("{host}:{port}"),
            (false, None) => return Err(format!("{url:?}: a QUIC upstream needs a port")),
        };
        Ok(Upstream {
            url: url.into(),
            transport,
            addr,
            app: app.map(str::to_owned),
        })
    }

    /// The application to ask this upstream for, for a viewer of `key`.
    pub fn app_for<'a>(&'a self, key: &'a StreamKey) -> &'a str {
        self.app.as_deref().unwrap_or(&key.app)
    }

    /// Whether this names `listen` (one of this node's own listeners), so pulling from it
    /// would ask ourselves.
    fn points_at(&self, listen: SocketAddr) -> bool {
        let Ok(addr) = self.addr.parse::<SocketAddr>() else {
            return matches!(self.addr.rsplit_once(':'), Some(("localhost", port)) if port == listen.port().to_string());
        };
        addr.port() == listen.port()
            && (addr.ip() == listen.ip()
                || (listen.ip().is_unspecified() && is_local(addr.ip()))
                || (addr.ip().is_loopback() && listen.ip().is_loopback()))
    }
}

fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified()
}

impl ClusterConfig {
    /// This node's id (resolved: never empty).
    pub fn node_id(&self) -> &Arc<str> {
        &self.resolved.node_id
    }

    /// The QUIC relay listener, if configured.
    pub fn quic_listen(&self) -> Option<SocketAddr> {
        self.resolved.quic_listen
    }

    /// The upstreams of `app`, if this node pulls for it.
    pub fn upstreams(&self, app: &str) -> Option<&Arc<[Upstream]>> {
        if !self.role.pulls() {
            return None;
        }
        self.resolved.apps.get(app)
    }

    /// The upstreams of `key`'s application in the order to try them.
    pub fn candidates(&self, key: &StreamKey) -> Vec<Upstream> {
        let Some(list) = self.upstreams(&key.app) else {
            return Vec::new();
        };
        let mut list = list.to_vec();
        if self.apps.get(&*key.app).map(|a| a.select) == Some(Select::Hash) {
            rendezvous_order(&mut list, key);
        }
        list
    }

    /// Parses upstream URLs, fills in the node id and refuses what cannot work.
    pub(crate) fn resolve(&mut self, rtmp_listen: SocketAddr) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let node_id: Arc<str> = if self.node_id.is_empty() {
            format!("{}:{}", hostname(), rtmp_listen.port()).into()
        } else if self.node_id.contains([',', '?', '&', '/', ' ']) {
            return invalid(format!(
                "cluster.node_id {:?} may not contain , ? & / or spaces",
                self.node_id
            ));
        } else {
            self.node_id.as_str().into()
        };
        if self.max_hops == 0 {
            return invalid("cluster.max_hops must be at least 1".to_owned());
        }
        let quic_listen = if self.quic_listen.is_empty() {
            None
        } else {
            match self.quic_listen.parse() {
                Ok(a) => Some(a),
                Err(e) => return invalid(format!("cluster.quic_listen: {e}")),
            }
        };
        if quic_listen.is_some()
            && [&self.tls_ca, &self.tls_cert, &self.tls_key]
                .iter()
                .any(|f| f.is_empty())
        {
            return invalid(
                "cluster.quic_listen needs cluster.tls_cert, tls_key and tls_ca (the relay \
                 checks both ends)"
                    .to_owned(),
            );
        }
        let mut apps = BTreeMap::new();
        for (app, conf) in &self.apps {
            if conf.upstreams.is_empty() {
                return invalid(format!("cluster.apps.{app}.upstreams is empty"));
            }
            let mut list = Vec::with_capacity(conf.upstreams.len());
            for url in &conf.upstreams {
                let up = Upstream::parse(url).map_err(|e| {
                    ConfigError::Invalid(format!("cluster.apps.{app}.upstreams: {e}"))
                })?;
                let own = match up.transport {
                    Transport::Rtmp => Some(rtmp_listen),
                    Transport::Quic => quic_listen,
                };
                if own.is_some_and(|l| up.points_at(l))
                    && up.app_for(&StreamKey::new(app, "")) == app
                {
                    return invalid(format!(
                        "cluster.apps.{app}.upstreams: {url} is this node itself (a pull loop)"
                    ));
                }
                if up.transport == Transport::Quic
                    && [&self.tls_ca, &self.tls_cert, &self.tls_key]
                        .iter()
                        .any(|f| f.is_empty())
                {
                    return invalid(format!(
                        "cluster.apps.{app}.upstreams: {url} needs cluster.tls_ca (to check the \
                         peer) and tls_cert/tls_key (the relay checks both ends)"
                    ));
                }
                list.push(up);
            }
            apps.insert(app.clone(), list.into());
        }
        self.registry.validate()?;
        if self.pull.timeout_ms == 0 || self.pull.connect_timeout_ms == 0 {
            return invalid("cluster.pull timeouts must be positive".to_owned());
        }
        self.resolved = Resolved {
            node_id,
            quic_listen,
            apps,
        };
        Ok(())
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "sluice".to_owned())
}

/// Orders `list` by rendezvous (highest random weight) hashing of `key`: each upstream's
/// weight is a hash of (upstream, key), so every node computes the same order, and removing
/// one upstream moves only the keys it owned.
pub fn rendezvous_order(list: &mut [Upstream], key: &StreamKey) {
    list.sort_by_cached_key(|u| std::cmp::Reverse(weight(&u.url, key)));
}

/// FNV-1a over the parts, then a 64-bit finaliser: stable across processes and versions
/// (std's hasher is not), and well mixed for short similar strings.
fn weight(url: &str, key: &StreamKey) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [
        url.as_bytes(),
        b"\0",
        key.app.as_bytes(),
        b"/",
        key.name.as_bytes(),
    ] {
        for &b in part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The nodes a pull request has passed through, nearest the viewer first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Via(pub Vec<Arc<str>>);

/// The query parameter that carries [`Via`] in an RTMP play name.
pub const VIA_PARAM: &str = "sluice_via";

impl Via {
    /// Reads the via-list from a play name's query string (`name?sluice_via=a,b`).
    pub fn from_query(query: &str) -> Via {
        let list = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == VIA_PARAM)
            .map(|(_, v)| {
                v.split(',')
                    .filter(|n| !n.is_empty())
                    .map(Arc::from)
                    .collect()
            })
            .unwrap_or_default();
        Via(list)
    }

    /// The list with `node` appended, for the request this node sends upstream.
    pub fn through(&self, node: &Arc<str>) -> Via {
        let mut list = self.0.clone();
        list.push(node.clone());
        Via(list)
    }

    /// The query-string form, `sluice_via=a,b`.
    pub fn to_query(&self) -> String {
        format!("{VIA_PARAM}={}", self.0.join(","))
    }

    /// Why a request with this via-list may not be pulled further by `node`, if it may not.
    pub fn refuse(&self, node: &str, max_hops: usize) -> Option<PullRefusal> {
        if self.0.iter().any(|n| &**n == node) {
            return Some(PullRefusal::Loop(self.0.join(" -> ")));
        }
        if self.0.len() >= max_hops {
            return Some(PullRefusal::TooDeep(self.0.len()));
        }
        None
    }
}

/// Why a pull was refused before asking any upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PullRefusal {
    /// This node is already on the request's path.
    #[error("pull loop: the request already passed {0}")]
    Loop(String),
    /// The request passed as many nodes as `cluster.max_hops` allows.
    #[error("pull chain too deep: {0} hops")]
    TooDeep(usize),
}

/// What viewers waiting on a pull see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullStatus {
    /// Asking upstreams.
    Pulling,
    /// Frames are arriving.
    Live,
    /// No upstream has the stream (or the request was refused); the reason is for the viewer.
    Failed(Arc<str>),
}

/// A viewer's handle on the pull of its stream.
#[derive(Debug, Clone)]
pub struct PullTicket {
    /// Status changes.
    pub status: watch::Receiver<PullStatus>,
    /// How long the viewer should wait for a first frame.
    pub wait: Duration,
}

impl PullTicket {
    /// A ticket that has already failed (a remembered miss, a loop).
    pub fn failed(reason: impl Into<Arc<str>>) -> Self {
        PullTicket {
            status: watch::channel(PullStatus::Failed(reason.into())).1,
            wait: Duration::ZERO,
        }
    }

    /// The failure reason, if the pull failed.
    pub fn failure(&self) -> Option<Arc<str>> {
        match &*self.status.borrow() {
            PullStatus::Failed(r) => Some(r.clone()),
            _ => None,
        }
    }

    /// Resolves when the status changes (never, once the sender is gone).
    pub async fn changed(&mut self) {
        if self.status.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Where a stream is published now, as a registry knows it: the pull manager asks it before
/// the static upstreams. Implemented by `sluice-registry` (etcd).
pub trait Directory: Send + Sync + fmt::Debug {
    /// What the registry's in-memory view says of `key`: upstreams to pull it from, best
    /// first (empty: unknown). Never waits.
    fn upstreams(&self, key: &StreamKey) -> Vec<Upstream>;
    /// Asks the registry itself about `key` (the view may lag), within its short lookup
    /// deadline; empty on a miss, an error or the deadline.
    fn lookup<'a>(
        &'a self,
        key: &'a StreamKey,
    ) -> std::pin::Pin<Box<dyn Future<Output = Vec<Upstream>> + Send + 'a>>;
    /// Changes whenever the view changes (a stream moved, appeared or went).
    fn changes(&self) -> watch::Receiver<u64>;
}

/// The front ends' view of the pull machinery: called when a viewer asks for a stream that
/// has no local publisher.
pub trait Puller: Send + Sync + fmt::Debug {
    /// Starts (or joins) the pull of `key` for a viewer whose request passed `via`. `None`:
    /// this node does not pull `key`; the viewer waits for a local publisher as usual.
    fn demand(&self, key: &StreamKey, via: &Via) -> Option<PullTicket>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(url: &str) -> Upstream {
        Upstream::parse(url).unwrap()
    }

    #[test]
    fn parses_upstream_urls() {
        let u = up("rtmp://10.0.0.1/live");
        assert_eq!(
            (u.transport, u.addr.as_str()),
            (Transport::Rtmp, "10.0.0.1:1935")
        );
        assert_eq!(u.app.as_deref(), Some("live"));
        let q = up("quic://[::1]:1937");
        assert_eq!(
            (q.transport, q.addr.as_str(), q.app),
            (Transport::Quic, "[::1]:1937", None)
        );
        assert!(Upstream::parse("quic://host").is_err());
        assert!(Upstream::parse("http://host/live").is_err());
        assert!(Upstream::parse("rtmp://host/live/key").is_err());
        let k = StreamKey::new("live", "k");
        assert_eq!(up("rtmp://h:1/").app_for(&k), "live");
        assert_eq!(up("rtmp://h:1/other").app_for(&k), "other");
    }

    #[test]
    fn rendezvous_order_is_stable_and_moves_only_the_removed_owner() {
        let all: Vec<_> = (1..=5)
            .map(|i| up(&format!("rtmp://10.0.0.{i}/live")))
            .collect();
        let mut owners = BTreeMap::new();
        for n in 0..200 {
            let key = StreamKey::new("live", &format!("s{n}"));
            let mut order = all.clone();
            rendezvous_order(&mut order, &key);
            let mut again = all.clone();
            again.reverse();
            rendezvous_order(&mut again, &key);
            assert_eq!(
                order, again,
                "order must not depend on the configured order"
            );
            owners.insert(n, order[0].url.clone());
        }
        let per_owner = |url: &str| owners.values().filter(|o| &***o == url).count();
        for u in &all {
            assert!(per_owner(&u.url) > 15, "keys spread over every upstream");
        }
        let removed = all[2].url.clone();
        let rest: Vec<_> = all.iter().filter(|u| u.url != removed).cloned().collect();
        for (n, owner) in &owners {
            let key = StreamKey::new("live", &format!("s{n}"));
            let mut order = rest.clone();
            rendezvous_order(&mut order, &key);
            if *owner != removed {
                assert_eq!(order[0].url, *owner, "key {n} kept its owner");
            }
        }
    }

    #[test]
    fn via_refuses_loops_and_depth() {
        let via = Via::from_query("x=1&sluice_via=edge-a,mid-b");
        assert_eq!(via.0.len(), 2);
        assert!(matches!(via.refuse("mid-b", 4), Some(PullRefusal::Loop(_))));
        assert!(via.refuse("origin", 4).is_none());
        assert!(matches!(
            via.refuse("origin", 2),
            Some(PullRefusal::TooDeep(2))
        ));
        let next = via.through(&Arc::from("origin"));
        assert_eq!(next.to_query(), "sluice_via=edge-a,mid-b,origin");
        assert_eq!(Via::from_query(""), Via::default());
    }

    #[test]
    fn own_listener_as_upstream_is_refused() {
        let listen: SocketAddr = "0.0.0.0:1935".parse().unwrap();
        assert!(up("rtmp://127.0.0.1:1935/live").points_at(listen));
        assert!(up("rtmp://localhost/live").points_at(listen));
        assert!(!up("rtmp://127.0.0.1:1936/live").points_at(listen));
        assert!(!up("rtmp://10.1.1.1/live").points_at("127.0.0.1:1935".parse().unwrap()));
    }
}
