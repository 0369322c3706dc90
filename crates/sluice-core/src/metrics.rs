//! The Prometheus metrics every front end reports into, and their text encoding.
//!
//! Counters are atomics: front ends add per batch, never log per frame. Label values are
//! `'static` strings, so families cannot grow from peer input.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::schedule::Drops;

/// One label.
pub type Label1 = [(&'static str, &'static str); 1];
/// Two labels.
pub type Label2 = [(&'static str, &'static str); 2];
/// A histogram per label value, all with the same buckets.
pub type HistogramFamily1 = Family<Label1, Histogram, fn() -> Histogram>;

/// Protocol label values.
pub mod proto {
    /// RTMP (ingest and play).
    pub const RTMP: &str = "rtmp";
    /// HTTP-FLV.
    pub const HTTP_FLV: &str = "http_flv";
    /// HLS and LL-HLS.
    pub const HLS: &str = "hls";
    /// The RTMPS listener (TLS handshakes only: once decrypted, its connections count as
    /// [`RTMP`]).
    pub const RTMPS: &str = "rtmps";
    /// The HTTPS listener (TLS handshakes only: its requests count as [`HTTP_FLV`] and
    /// [`HLS`]).
    pub const HTTPS: &str = "https";
}

/// All metrics of a node.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Streams known (published or waited for).
    pub streams: Gauge,
    /// Publishers attached.
    pub publishers: Gauge,
    /// Viewers attached, by protocol.
    pub viewers: Family<Label1, Gauge>,
    /// Bytes received from peers, by protocol.
    pub bytes_in: Family<Label1, Counter>,
    /// Bytes sent to peers, by protocol.
    pub bytes_out: Family<Label1, Counter>,
    /// Media frames ingested, by kind (audio, video, script).
    pub frames_in: Family<Label1, Counter>,
    /// Frames sent to viewers, by protocol.
    pub frames_out: Family<Label1, Counter>,
    /// Batches of frames handed to viewers' sockets, by protocol: about one write system
    /// call each, the main cost of fan-out (divide by viewers for writes per viewer-second).
    pub media_writes: Family<Label1, Counter>,
    /// Connections accepted, by protocol.
    pub connections: Family<Label1, Counter>,
    /// Connections refused, by protocol and reason.
    pub connections_refused: Family<Label2, Counter>,
    /// Connections closed, by protocol and reason.
    pub connections_closed: Family<Label2, Counter>,
    /// Viewers moved forward in the ring, by reason (`latency`: over the budget; `ring`:
    /// fell out of the cache's byte budget).
    pub viewer_skips: Family<Label1, Counter>,
    /// Frames not sent to a viewer by the schedule, by reason (`disposable`, `inter`, `jump`).
    pub frames_dropped: Family<Label1, Counter>,
    /// RTMP messages a session dropped or refused without closing the connection (unknown
    /// commands, malformed metadata, media on a stream not publishing), by reason.
    pub rtmp_messages_dropped: Family<Label1, Counter>,
    /// Config reloads (SIGHUP or file change), by result (`ok`, `invalid`).
    pub config_reloads: Family<Label1, Counter>,
    /// Pulls from upstream running now (one per stream at most).
    pub pulls: Gauge,
    /// Stream-registry (etcd) operations that failed, by operation.
    pub registry_errors: Family<Label1, Counter>,
    /// 1 while this node has a working session with the stream registry.
    pub registry_up: Gauge,
    /// Stream resolutions through the registry, by result (`cached`, `found`, `missing`,
    /// `error`).
    pub registry_lookups: Family<Label1, Counter>,
    /// Pull attempts that reached an upstream and started the stream, by transport.
    pub pull_starts: Family<Label1, Counter>,
    /// Pull attempts that failed, by reason (`not_found`, `refused`, `timeout`, `connect`,
    /// `protocol`, `closed`, `ended`, `silent`).
    pub pull_failures: Family<Label1, Counter>,
    /// Switches of a live pull to another upstream (or back), by reason.
    pub pull_switches: Family<Label1, Counter>,
    /// Viewers answered "not found" from the remembered misses without asking upstream.
    pub pull_misses_cached: Counter,
    /// Payload bytes received by pulls, by transport.
    pub pull_bytes: Family<Label1, Counter>,
    /// QUIC relay connections from other nodes open now.
    pub relay_connections: Gauge,
    /// Streams served to other nodes over the QUIC relay now.
    pub relay_streams: Gauge,
    /// GOPs sent over the QUIC relay, by outcome (`sent`, `cancelled`: a newer GOP began
    /// before the peer took this one).
    pub relay_gops: Family<Label1, Counter>,
    /// Viewers written by their stream's shared writer now, by protocol.
    pub fanout_viewers: Family<Label1, Gauge>,
    /// Shared writers running (one per stream, format and runtime worker with viewers).
    pub fanout_writers: Gauge,
    /// Viewers leaving a shared writer for their own task, by protocol and reason.
    pub fanout_handbacks: Family<Label2, Counter>,
    /// Subsystems of the node (`rtmp`, `http_flv`, `rtmps`, `https`, `admin`, `quic_relay`, `reload`) that
    /// ended before shutdown or panicked. Any but `reload` stops the node.
    pub subsystem_failures: Family<Label1, Counter>,
    /// HLS requests answered, by resource (`multivariant`, `playlist`, `part`, `segment`,
    /// `init`, `other`) and status code.
    pub hls_requests: Family<Label2, Counter>,
    /// How long blocking playlist and part requests waited, seconds.
    pub hls_blocked_wait: Histogram,
    /// HLS viewers: connections that asked for a media playlist within the last few target
    /// durations, all streams.
    pub hls_viewers: Gauge,
    /// Streams being segmented for HLS now.
    pub hls_segmenters: Gauge,
    /// LL-HLS parts cut.
    pub hls_parts: Counter,
    /// Bytes held by the HLS segment cache.
    pub hls_cache_bytes: Gauge,
    /// Webhook decisions and notifications, by hook (`publish`, `play`, `publish_done`,
    /// `play_done`) and result (`allow`, `deny`, `rename`, `failed`; `cached`: answered from
    /// the cache without a request; `dropped`: a notification not sent, too many in flight).
    pub webhook_requests: Family<Label2, Counter>,
    /// How long webhook requests took (connect to answer, or to failure), by hook, seconds.
    pub webhook_duration: HistogramFamily1,
    /// TLS handshakes on the RTMPS and HTTPS listeners, by protocol (`rtmps`, `https`) and
    /// result (`ok`, `error`, `timeout`).
    pub tls_handshakes: Family<Label2, Counter>,
    /// Certificate reloads (SIGHUP or a change to its files), by result (`ok`, `invalid`: the
    /// certificate in use stays).
    pub tls_reloads: Family<Label1, Counter>,
    /// When the certificate in use expires (its notAfter), seconds since the Unix epoch; 0
    /// without TLS.
    pub tls_certificate_not_after: Gauge,
    /// 1 once the node drains (SIGTERM or `POST /api/drain`): it refuses new viewers and
    /// publishers, counted as `connections_refused{reason="draining"}`.
    pub draining: Gauge,
}

/// Webhook durations: 1 ms to about 4 s, doubling.
fn webhook_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 13))
}

/// One protocol's counters, looked up once (see [`Metrics::protocol_counters`]).
#[derive(Debug, Clone)]
pub struct ProtocolCounters {
    /// Bytes received.
    pub bytes_in: Counter,
    /// Bytes sent.
    pub bytes_out: Counter,
    /// Frames sent to viewers.
    pub frames_out: Counter,
    /// Batches written to viewers.
    pub media_writes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `sluice_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let m = Metrics {
            streams: Gauge::default(),
            publishers: Gauge::default(),
            viewers: Family::default(),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            frames_in: Family::default(),
            frames_out: Family::default(),
            media_writes: Family::default(),
            connections: Family::default(),
            connections_refused: Family::default(),
            connections_closed: Family::default(),
            viewer_skips: Family::default(),
            frames_dropped: Family::default(),
            rtmp_messages_dropped: Family::default(),
            config_reloads: Family::default(),
            pulls: Gauge::default(),
            registry_errors: Family::default(),
            registry_up: Gauge::default(),
            registry_lookups: Family::default(),
            pull_starts: Family::default(),
            pull_failures: Family::default(),
            pull_switches: Family::default(),
            pull_misses_cached: Counter::default(),
            pull_bytes: Family::default(),
            relay_connections: Gauge::default(),
            relay_streams: Gauge::default(),
            relay_gops: Family::default(),
            fanout_viewers: Family::default(),
            fanout_writers: Gauge::default(),
            fanout_handbacks: Family::default(),
            subsystem_failures: Family::default(),
            hls_requests: Family::default(),
            hls_blocked_wait: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            hls_viewers: Gauge::default(),
            hls_segmenters: Gauge::default(),
            hls_parts: Counter::default(),
            hls_cache_bytes: Gauge::default(),
            webhook_requests: Family::default(),
            webhook_duration: Family::new_with_constructor(webhook_buckets as fn() -> Histogram),
            tls_handshakes: Family::default(),
            tls_reloads: Family::default(),
            tls_certificate_not_after: Gauge::default(),
            draining: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("streams", "Streams known", m.streams.clone());
        registry.register(
            "draining",
            "1 while the node drains (refusing new viewers and publishers)",
            m.draining.clone(),
        );
        registry.register("publishers", "Publishers attached", m.publishers.clone());
        registry.register("viewers", "Viewers attached", m.viewers.clone());
        registry.register("bytes_in", "Bytes received from peers", m.bytes_in.clone());
        registry.register("bytes_out", "Bytes sent to peers", m.bytes_out.clone());
        registry.register("frames_in", "Media frames ingested", m.frames_in.clone());
        registry.register("frames_out", "Frames sent to viewers", m.frames_out.clone());
        registry.register(
            "media_writes",
            "Batches of frames written to viewers (about one write system call each)",
            m.media_writes.clone(),
        );
        registry.register("connections", "Connections accepted", m.connections.clone());
        registry.register(
            "connections_refused",
            "Connections refused",
            m.connections_refused.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections closed",
            m.connections_closed.clone(),
        );
        registry.register(
            "viewer_skips",
            "Viewers moved forward in the ring",
            m.viewer_skips.clone(),
        );
        registry.register(
            "frames_dropped",
            "Frames not sent to a viewer by the schedule",
            m.frames_dropped.clone(),
        );
        registry.register(
            "rtmp_messages_dropped",
            "RTMP messages dropped without closing the connection",
            m.rtmp_messages_dropped.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads by result",
            m.config_reloads.clone(),
        );
        registry.register("pulls", "Pulls from upstream running", m.pulls.clone());
        registry.register(
            "registry_errors",
            "Stream registry operations that failed, by operation",
            m.registry_errors.clone(),
        );
        registry.register(
            "registry_up",
            "1 while the stream registry session works",
            m.registry_up.clone(),
        );
        registry.register(
            "registry_lookups",
            "Stream resolutions through the registry, by result",
            m.registry_lookups.clone(),
        );
        registry.register(
            "pull_starts",
            "Pull attempts that started the stream, by transport",
            m.pull_starts.clone(),
        );
        registry.register(
            "pull_failures",
            "Pull attempts that failed, by reason",
            m.pull_failures.clone(),
        );
        registry.register(
            "pull_switches",
            "Switches of a live pull to another upstream, by reason",
            m.pull_switches.clone(),
        );
        registry.register(
            "pull_misses_cached",
            "Viewers answered not found from remembered misses",
            m.pull_misses_cached.clone(),
        );
        registry.register(
            "pull_bytes",
            "Payload bytes received by pulls, by transport",
            m.pull_bytes.clone(),
        );
        registry.register(
            "relay_connections",
            "QUIC relay connections from other nodes",
            m.relay_connections.clone(),
        );
        registry.register(
            "relay_streams",
            "Streams served over the QUIC relay",
            m.relay_streams.clone(),
        );
        registry.register(
            "relay_gops",
            "GOPs sent over the QUIC relay, by outcome",
            m.relay_gops.clone(),
        );
        registry.register(
            "fanout_viewers",
            "Viewers written by their stream's shared writer",
            m.fanout_viewers.clone(),
        );
        registry.register(
            "fanout_writers",
            "Shared writers running",
            m.fanout_writers.clone(),
        );
        registry.register(
            "fanout_handbacks",
            "Viewers leaving a shared writer for their own task, by reason",
            m.fanout_handbacks.clone(),
        );
        registry.register(
            "subsystem_failures",
            "Subsystems that ended before shutdown or panicked, by subsystem",
            m.subsystem_failures.clone(),
        );
        registry.register(
            "hls_requests",
            "HLS requests answered, by resource and status",
            m.hls_requests.clone(),
        );
        registry.register(
            "hls_blocked_wait_seconds",
            "How long blocking HLS playlist and part requests waited",
            m.hls_blocked_wait.clone(),
        );
        registry.register(
            "hls_viewers",
            "Connections that asked for an HLS media playlist recently",
            m.hls_viewers.clone(),
        );
        registry.register(
            "hls_segmenters",
            "Streams being segmented for HLS",
            m.hls_segmenters.clone(),
        );
        registry.register("hls_parts", "LL-HLS parts cut", m.hls_parts.clone());
        registry.register(
            "hls_cache_bytes",
            "Bytes held by the HLS segment cache",
            m.hls_cache_bytes.clone(),
        );
        registry.register(
            "webhook_requests",
            "Webhook decisions and notifications, by hook and result",
            m.webhook_requests.clone(),
        );
        registry.register(
            "webhook_duration_seconds",
            "How long webhook requests took, by hook",
            m.webhook_duration.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes by protocol and result",
            m.tls_handshakes.clone(),
        );
        registry.register(
            "tls_reloads",
            "Certificate reloads by result",
            m.tls_reloads.clone(),
        );
        registry.register(
            "tls_certificate_not_after_seconds",
            "When the certificate in use expires, Unix time",
            m.tls_certificate_not_after.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Counts a closed connection.
    pub fn closed(&self, protocol: &'static str, reason: &'static str) {
        self.connections_closed
            .get_or_create(&[("protocol", protocol), ("reason", reason)])
            .inc();
    }

    /// Handles on one protocol's per-connection counters, for a connection to keep: a family
    /// lookup takes a lock and hashes the labels, which adds up on the per-frame path.
    pub fn protocol_counters(&self, protocol: &'static str) -> ProtocolCounters {
        let labels: Label1 = [("protocol", protocol)];
        ProtocolCounters {
            bytes_in: self.bytes_in.get_or_create(&labels).clone(),
            bytes_out: self.bytes_out.get_or_create(&labels).clone(),
            frames_out: self.frames_out.get_or_create(&labels).clone(),
            media_writes: self.media_writes.get_or_create(&labels).clone(),
        }
    }

    /// Counts what a viewer's cursor left out.
    pub fn count_drops(&self, drops: &Drops) {
        if drops.is_empty() {
            return;
        }
        let counts = [
            (&self.viewer_skips, "latency", drops.latency_jumps),
            (&self.viewer_skips, "ring", drops.ring_jumps),
            (&self.frames_dropped, "jump", drops.skipped_frames),
            (&self.frames_dropped, "disposable", drops.disposable),
            (&self.frames_dropped, "inter", drops.inter),
        ];
        for (family, reason, n) in counts {
            if n > 0 {
                family.get_or_create(&[("reason", reason)]).inc_by(n);
            }
        }
    }

    /// Counts a viewer leaving a shared writer.
    pub fn fanout_left(&self, protocol: &'static str, reason: &'static str) {
        self.fanout_viewers
            .get_or_create(&[("protocol", protocol)])
            .dec();
        self.fanout_handbacks
            .get_or_create(&[("protocol", protocol), ("reason", reason)])
            .inc();
    }

    /// Counts a subsystem that ended before shutdown or panicked.
    pub fn subsystem_failed(&self, subsystem: &'static str) {
        self.subsystem_failures
            .get_or_create(&[("subsystem", subsystem)])
            .inc();
    }

    /// Counts a webhook result (see [`Metrics::webhook_requests`]).
    pub fn webhook(&self, hook: &'static str, result: &'static str) {
        self.webhook_requests
            .get_or_create(&[("hook", hook), ("result", result)])
            .inc();
    }

    /// Counts a refused connection.
    pub fn refused(&self, protocol: &'static str, reason: &'static str) {
        self.connections_refused
            .get_or_create(&[("protocol", protocol), ("reason", reason)])
            .inc();
    }
}
