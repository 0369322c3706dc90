//! The typed configuration: one TOML file, every key documented in `config/sluice.toml`,
//! unknown keys refused, environment overrides (`SLUICE__SECTION__KEY=value`).
//!
//! The embedded default (`DEFAULT_TOML`) is that same documented file, so the binary runs with
//! no file at all and the documentation cannot drift from the defaults (a test checks it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::schedule::{Schedule, ScheduleSettings};
use crate::topology::ClusterConfig;

/// The documented default configuration, embedded in the binary.
pub const DEFAULT_TOML: &str = include_str!("../../../config/sluice.toml");

/// Prefix of environment variables that override config keys: `SLUICE__RTMP__LISTEN=...`.
pub const ENV_PREFIX: &str = "SLUICE__";

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The text is not valid TOML, or does not match the schema (unknown key, wrong type).
    #[error(transparent)]
    Parse(#[from] toml::de::Error),
    /// An environment override names no config key or has an unusable value.
    #[error("environment override {var}: {reason}")]
    Env {
        /// The variable's name.
        var: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Values that parse but cannot work together.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process-wide settings.
    pub server: ProcessConfig,
    /// RTMP listener (ingest and play).
    pub rtmp: RtmpConfig,
    /// HTTP listener (HTTP-FLV playback).
    pub http: HttpConfig,
    /// HLS and LL-HLS on the HTTP listener.
    pub hls: HlsConfig,
    /// The player page on the HTTP listener.
    pub player: PlayerConfig,
    /// Admin listener (metrics, API, health).
    pub admin: AdminConfig,
    /// Per-address and per-node limits on connections, publish attempts and streams.
    pub limits: LimitsConfig,
    /// Stream behaviour: publishers, waiting viewers, GOP cache.
    pub streams: StreamsConfig,
    /// Frame scheduling for viewers: latency budget, drops, start position, write batching.
    pub schedule: ScheduleConfig,
    /// This node's part in a cluster: role, upstreams to pull from, the QUIC relay.
    pub cluster: ClusterConfig,
    /// TLS for viewers and publishers: RTMPS and HTTPS listeners, their certificate.
    pub tls: TlsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Access control: who may publish and play (`[auth]`, documented in
    /// `crates/sluice-auth/README-config.toml`).
    #[serde(default)]
    pub auth: sluice_auth::AuthConfig,
}

/// Process-wide settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// How long shutdown waits for sessions to close before exiting anyway.
    pub shutdown_timeout_ms: u64,
    /// How long a drain (SIGTERM, `POST /api/drain`) lets connected viewers and publishers
    /// go on, at most, before shutdown proceeds.
    pub drain_grace_ms: u64,
    /// Where RTMP clients that connect while the node drains are sent (`ex.redirect` in
    /// NetConnection.Connect.Rejected); empty: they are refused at publish or play instead.
    pub drain_redirect: String,
}

/// The longest drain grace accepted: an hour.
const MAX_DRAIN_GRACE_MS: u64 = 3_600_000;

impl ProcessConfig {
    /// The drain grace period.
    pub fn drain_grace(&self) -> Duration {
        Duration::from_millis(self.drain_grace_ms)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.drain_grace_ms > MAX_DRAIN_GRACE_MS {
            return Err(ConfigError::Invalid(format!(
                "server.drain_grace_ms ({}) must be at most {MAX_DRAIN_GRACE_MS} (an hour)",
                self.drain_grace_ms
            )));
        }
        let redirect = self.drain_redirect.as_str();
        if !redirect.is_empty() {
            // Sent to clients as it is: an rtmp(s):// URL with a host, of visible ASCII.
            let host = redirect
                .strip_prefix("rtmp://")
                .or_else(|| redirect.strip_prefix("rtmps://"))
                .map(|rest| rest.split('/').next().unwrap_or_default());
            let printable = redirect.bytes().all(|b| b.is_ascii_graphic());
            if host.is_none_or(str::is_empty) || !printable {
                return Err(ConfigError::Invalid(format!(
                    "server.drain_redirect {redirect:?} must be empty or an rtmp:// or \
                     rtmps:// URL with a host (e.g. \"rtmp://other.example/live\")"
                )));
            }
        }
        Ok(())
    }
}

/// RTMP listener settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtmpConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Connections accepted at once; more are refused at accept.
    pub max_connections: usize,
    /// Deadline for the handshake and the connect command.
    pub handshake_timeout_ms: u64,
    /// A publisher silent this long, or a player whose socket takes nothing this long, is
    /// closed.
    pub idle_timeout_ms: u64,
    /// Outgoing chunk size announced to every peer (128..=65536).
    pub chunk_size: u32,
    /// Largest chunk size a peer may announce.
    pub max_incoming_chunk_size: u32,
    /// Largest message a peer may send.
    pub max_message_size: u32,
    /// Bytes one connection may hold in incomplete messages, all chunk streams together (at
    /// least `max_message_size`).
    pub max_buffered_message_bytes: usize,
    /// Window acknowledgement size and peer bandwidth we announce.
    pub window_ack_size: u32,
}

/// HTTP listener settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Connections accepted at once; more are refused at accept.
    pub max_connections: usize,
    /// Deadline for a request head to arrive (and for a short answer to be written).
    pub request_timeout_ms: u64,
    /// A viewer whose socket takes nothing this long is closed.
    pub idle_timeout_ms: u64,
    /// Value of Access-Control-Allow-Origin on playback responses; empty disables CORS.
    pub cors_allow_origin: String,
}

/// HLS and LL-HLS settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HlsConfig {
    /// Serve HLS at all.
    pub enabled: bool,
    /// Segment container: fMP4/CMAF with LL-HLS parts, or MPEG-TS (classic HLS).
    pub container: HlsContainer,
    /// A segment lasts at least this long; it ends at the next keyframe after it.
    pub target_duration_ms: u32,
    /// LL-HLS part target.
    pub part_target_ms: u32,
    /// Complete segments a playlist lists (and the cache keeps).
    pub window_segments: usize,
    /// Byte budget of the segment cache, all streams together.
    pub cache_max_bytes: u64,
    /// A stream's segmenter stops this long after its last HLS request.
    pub idle_timeout_ms: u64,
}

/// The container HLS segments are muxed into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HlsContainer {
    /// fMP4/CMAF: LL-HLS parts, H.264, HEVC, AV1, AAC, Opus.
    Fmp4,
    /// MPEG-TS: classic HLS for old players, H.264, HEVC, AAC.
    Ts,
}

impl HlsConfig {
    /// The segmenter's idle deadline.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

/// `[player]`: the web player page served on the HTTP listener (`{path}/APP/NAME`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlayerConfig {
    /// Serve the page at all.
    pub enabled: bool,
    /// URL prefix of the page and its assets: `/`, then path segments, no trailing `/`.
    pub path: String,
    /// Directory holding `hls.min.js` and `mpegts.js` (`deploy/player-assets.sh`), served
    /// under `{path}/assets/`; empty loads them from `script_base` instead.
    pub assets_dir: String,
    /// Base URL of an npm CDN the page loads the player libraries from when `assets_dir` is
    /// empty (`{script_base}/hls.js@1/dist/hls.min.js`).
    pub script_base: String,
}

/// Admin listener settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Bearer token every admin request but `/healthz` and `/readyz` must carry; empty: none.
    pub token: String,
    /// File holding the token (trailing whitespace ignored), read at start and on reload;
    /// used when `token` is empty.
    pub token_file: String,
}

impl AdminConfig {
    /// The token in force: `token`, else the contents of `token_file`, else none.
    pub fn resolve_token(&self) -> Result<Option<String>, ConfigError> {
        if !self.token.is_empty() {
            return Ok(Some(self.token.clone()));
        }
        if self.token_file.is_empty() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&self.token_file).map_err(|e| {
            ConfigError::Invalid(format!("admin.token_file {}: {e}", self.token_file))
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "admin.token_file {} is empty",
                self.token_file
            )));
        }
        Ok(Some(token.to_owned()))
    }
}

/// `[limits]`: what one client address, and the node, may use. 0 means no limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Connections open at once from one client address (RTMP, RTMPS, HTTP, HTTPS together).
    pub max_connections_per_address: u32,
    /// Publish requests one client address may make per minute (accepted or not).
    pub publish_attempts_per_minute: u32,
    /// Streams published on this node at once.
    pub max_streams: usize,
    /// Streams published at once in one application.
    pub max_streams_per_app: usize,
    /// Bytes all published streams' frame rings may hold together; a new publisher is
    /// refused when the rings hold more than this minus one stream's `gop_cache_max_bytes`.
    pub ingest_memory_bytes: u64,
    /// A refusal is logged once per client address and reason per this interval (it is
    /// counted every time).
    pub refusal_log_interval_ms: u64,
}

/// What happens when a second publisher asks for a key that is being published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishConflict {
    /// Refuse the newcomer with NetStream.Publish.BadName.
    Reject,
    /// The newcomer takes over; the old publisher is disconnected.
    Takeover,
}

/// Stream behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamsConfig {
    /// Applications that accept publishers and viewers; empty accepts any.
    pub apps: Vec<String>,
    /// What a second publisher on the same key gets.
    pub publish_conflict: PublishConflict,
    /// How long a viewer waits for a publisher that has not started yet.
    pub wait_for_publisher_ms: u64,
    /// How long viewers stay attached after their publisher drops, waiting for it to return.
    pub republish_grace_ms: u64,
    /// Keep the current GOP so new viewers start on a keyframe at once.
    pub gop_cache: bool,
    /// GOPs kept per stream, live one included (at least 1).
    pub gop_cache_gops: usize,
    /// Byte budget of a stream's frame ring; older GOPs are evicted first, the live one last.
    pub gop_cache_max_bytes: usize,
}

/// `[schedule]`: the default profile and per-application overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Settings of every application without its own.
    pub default: ScheduleSettings,
    /// Per-application overrides: any subset of the default's keys.
    pub apps: BTreeMap<String, toml::Table>,
    /// The above, resolved once per load for the read path.
    #[serde(skip)]
    resolved: ResolvedSchedules,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct ResolvedSchedules {
    default: Schedule,
    apps: BTreeMap<String, Schedule>,
}

impl ScheduleConfig {
    /// The default schedule (applications without their own, and connections whose
    /// application is not known yet).
    pub fn default_schedule(&self) -> &Schedule {
        &self.resolved.default
    }

    /// The schedule of application `app`.
    pub fn for_app(&self, app: &str) -> &Schedule {
        self.resolved
            .apps
            .get(app)
            .unwrap_or(&self.resolved.default)
    }

    /// Merges each application's overrides over the default and checks them.
    fn resolve(&mut self) -> Result<(), ConfigError> {
        let base = toml::Table::try_from(&self.default)
            .map_err(|e| ConfigError::Invalid(format!("schedule.default: {e}")))?;
        let mut apps = BTreeMap::new();
        for (app, over) in &self.apps {
            let mut merged = base.clone();
            merge(&mut merged, over.clone());
            let settings: ScheduleSettings = toml::Value::Table(merged)
                .try_into()
                .map_err(|e| ConfigError::Invalid(format!("schedule.apps.{app}: {e}")))?;
            apps.insert(app.clone(), settings.resolve());
        }
        self.resolved = ResolvedSchedules {
            default: self.default.resolve(),
            apps,
        };
        Ok(())
    }
}

/// `[tls]`: RTMPS and HTTPS (HTTP/1.1 and HTTP/2) listeners sharing one certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first; empty (with `key_file`): no TLS listeners.
    pub cert_file: String,
    /// PEM private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// Address of the RTMPS listener (ingest and play over TLS).
    pub rtmps_listen: SocketAddr,
    /// Address of the HTTPS listener (HTTP-FLV, HLS, the player page; ALPN h2 and http/1.1).
    pub https_listen: SocketAddr,
    /// Deadline for a TLS handshake.
    pub handshake_timeout_ms: u64,
    /// Reload the certificate when either file changes (SIGHUP reloads it either way).
    pub watch: bool,
}

impl TlsConfig {
    /// Whether TLS is served (both files are named; [`Config::validate`] refuses one alone).
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty() && !self.key_file.is_empty()
    }

    /// TLS handshake deadline.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Default filter (tracing EnvFilter syntax); RUST_LOG overrides it.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        // The embedded file is checked by a unit test, so this cannot fail in a release.
        Self::from_toml(DEFAULT_TOML).expect("embedded default config is valid")
    }
}

impl Config {
    /// Parses a complete config from TOML text (every key must be present: the defaults are
    /// merged in by [`Config::load`]).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// The effective config: embedded defaults, then `file_text` (if any) merged over them,
    /// then environment overrides from `env` (pairs of name and value).
    pub fn load(
        file_text: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut merged: toml::Table = toml::from_str(DEFAULT_TOML)?;
        if let Some(text) = file_text {
            let file: toml::Table = toml::from_str(text)?;
            merge(&mut merged, file);
        }
        for (var, value) in env {
            if let Some(path) = var.strip_prefix(ENV_PREFIX) {
                apply_env(&mut merged, &var, path, &value)?;
            }
        }
        let mut config: Config = toml::Value::Table(merged).try_into()?;
        config.validate()?;
        Ok(config)
    }

    /// The config as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks values that parse but cannot work, and resolves derived settings (schedules,
    /// upstreams, the node id). Loading does this; call it again after editing fields.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        self.schedule.resolve()?;
        self.cluster.resolve(self.rtmp.listen)?;
        self.server.validate()?;
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if !(128..=65536).contains(&self.rtmp.chunk_size) {
            return invalid("rtmp.chunk_size must be within 128..=65536");
        }
        if self.rtmp.max_incoming_chunk_size < 128 {
            return invalid("rtmp.max_incoming_chunk_size must be at least 128");
        }
        if self.rtmp.max_message_size < 1024 {
            return invalid("rtmp.max_message_size must be at least 1024");
        }
        if self.rtmp.max_buffered_message_bytes < self.rtmp.max_message_size as usize {
            return Err(ConfigError::Invalid(format!(
                "rtmp.max_buffered_message_bytes ({}) must be at least rtmp.max_message_size ({}): \
                 a message of the largest allowed size must fit",
                self.rtmp.max_buffered_message_bytes, self.rtmp.max_message_size
            )));
        }
        if self.streams.gop_cache_gops == 0 {
            return invalid("streams.gop_cache_gops must be at least 1");
        }
        if self.rtmp.max_connections == 0 || self.http.max_connections == 0 {
            return invalid("max_connections must be at least 1");
        }
        if self.rtmp.handshake_timeout_ms == 0 {
            return invalid("rtmp.handshake_timeout_ms must be positive");
        }
        if self.http.request_timeout_ms == 0 {
            return invalid("http.request_timeout_ms must be positive");
        }
        if !(100..=60_000).contains(&self.hls.target_duration_ms) {
            return invalid("hls.target_duration_ms must be within 100..=60000");
        }
        if self.hls.part_target_ms < 50 || self.hls.part_target_ms > self.hls.target_duration_ms {
            return invalid(
                "hls.part_target_ms must be at least 50 and at most hls.target_duration_ms",
            );
        }
        if !(2..=1000).contains(&self.hls.window_segments) {
            return invalid("hls.window_segments must be within 2..=1000");
        }
        self.player.validate()?;
        self.auth.validate().map_err(ConfigError::Invalid)?;
        let sign_with = &self.cluster.pull.sign_with;
        if !sign_with.is_empty() {
            let keys = sluice_auth::load_signing_keys(&self.auth)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            if !keys.contains_key(sign_with) {
                return Err(ConfigError::Invalid(format!(
                    "cluster.pull.sign_with = {sign_with:?}: no such key in auth.signing_keys \
                     or auth.signing_key_file"
                )));
            }
        }
        if !self.admin.listen.ip().is_loopback() && self.admin.resolve_token()?.is_none() {
            return Err(ConfigError::Invalid(format!(
                "admin.listen {} is not a loopback address: set admin.token or \
                 admin.token_file (or SLUICE__ADMIN__TOKEN), or listen on 127.0.0.1",
                self.admin.listen
            )));
        }
        if self.tls.cert_file.is_empty() != self.tls.key_file.is_empty() {
            return invalid(
                "tls.cert_file and tls.key_file go together: set both (TLS on) or neither (off)",
            );
        }
        if self.tls.handshake_timeout_ms == 0 {
            return invalid("tls.handshake_timeout_ms must be positive");
        }
        Ok(())
    }
}

impl HttpConfig {
    /// Request head deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    /// How long a viewer's socket may take nothing.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

impl PlayerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(format!("player.{m}")));
        // Segments of unreserved URL characters: the prefix goes into the page's URLs as it is.
        let segments_ok = self.path.strip_prefix('/').is_some_and(|rest| {
            rest.split('/').all(|segment| {
                !segment.is_empty()
                    && segment != "."
                    && segment != ".."
                    && segment
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
            })
        });
        if !segments_ok {
            return invalid(&format!(
                "path {:?} must be `/` and segments of letters, digits, `-._~` (e.g. \"/play\")",
                self.path
            ));
        }
        if self.enabled && self.assets_dir.is_empty() && self.script_base.is_empty() {
            return invalid("script_base or player.assets_dir must be set");
        }
        Ok(())
    }
}

impl RtmpConfig {
    /// Handshake deadline.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    /// Idle deadline.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

impl StreamsConfig {
    /// Whether `app` may publish and play.
    pub fn app_allowed(&self, app: &str) -> bool {
        self.apps.is_empty() || self.apps.iter().any(|a| a == app)
    }
    /// Viewer wait for a publisher.
    pub fn wait_for_publisher(&self) -> Duration {
        Duration::from_millis(self.wait_for_publisher_ms)
    }
    /// Viewer wait for a returning publisher.
    pub fn republish_grace(&self) -> Duration {
        Duration::from_millis(self.republish_grace_ms)
    }
}

/// Merges `over` into `base`, table by table; leaves replace.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Applies `SLUICE__SECTION__KEY=value`: the value is read as a TOML value when it parses as
/// one (numbers, booleans, arrays), else taken as a string.
fn apply_env(
    table: &mut toml::Table,
    var: &str,
    path: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let err = |reason: &str| ConfigError::Env {
        var: var.to_owned(),
        reason: reason.to_owned(),
    };
    let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
    let (leaf, sections) = keys.split_last().ok_or_else(|| err("empty key"))?;
    let mut cursor = table;
    for section in sections {
        cursor = match cursor.get_mut(section) {
            Some(toml::Value::Table(t)) => t,
            _ => return Err(err(&format!("no config section `{section}`"))),
        };
    }
    if !cursor.contains_key(leaf) {
        return Err(err(&format!("no config key `{leaf}`")));
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    cursor.insert(leaf.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses_and_has_documented_ports() {
        let c = Config::default();
        assert_eq!(c.rtmp.listen.port(), 1935);
        assert_eq!(c.http.listen.port(), 8080);
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9580");
        assert_eq!(c.rtmp.max_buffered_message_bytes, 16 << 20);
        // print-config output parses back to the same config
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn drain_settings_are_validated() {
        let load = |server: &str| Config::load(Some(&format!("[server]\n{server}")), []);
        let c = Config::default();
        assert_eq!(c.server.drain_grace(), Duration::from_secs(30));
        assert_eq!(c.server.drain_redirect, "");
        let c = load("drain_grace_ms = 0\ndrain_redirect = \"rtmp://other:1935/live\"\n").unwrap();
        assert_eq!(c.server.drain_grace(), Duration::ZERO);
        assert!(load("drain_redirect = \"rtmps://other.example/live\"\n").is_ok());
        for bad in [
            "drain_grace_ms = 3600001",
            "drain_redirect = \"other.example/live\"",
            "drain_redirect = \"http://other.example/live\"",
            "drain_redirect = \"rtmp:///live\"",
            "drain_redirect = \"rtmp://other/a b\"",
        ] {
            let error = load(bad).expect_err(bad).to_string();
            assert!(error.contains("server.drain_"), "{bad}: {error}");
        }
    }

    #[test]
    fn file_merges_over_defaults_and_env_over_file() {
        let file = "[rtmp]\nchunk_size = 8192\n[streams]\napps = [\"live\"]\n";
        let env = vec![
            (
                "SLUICE__RTMP__LISTEN".to_owned(),
                "127.0.0.1:1999".to_owned(),
            ),
            ("SLUICE__STREAMS__GOP_CACHE".to_owned(), "false".to_owned()),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ];
        let c = Config::load(Some(file), env).unwrap();
        assert_eq!(c.rtmp.chunk_size, 8192);
        assert_eq!(c.rtmp.listen.port(), 1999);
        assert!(!c.streams.gop_cache);
        assert!(c.streams.app_allowed("live"));
        assert!(!c.streams.app_allowed("other"));
        assert_eq!(c.http.listen.port(), 8080);
    }

    #[test]
    fn example_configs_load_with_their_schedules() {
        let low = Config::load(
            Some(include_str!("../../../config/examples/low-latency.toml")),
            [],
        )
        .unwrap();
        let live = low.schedule.for_app("live");
        assert_eq!(live.merge_write, Duration::ZERO);
        assert_eq!(live.max_latency, Some(Duration::from_millis(1000)));
        // Other apps keep the default profile.
        assert_eq!(*low.schedule.for_app("other"), Schedule::default());
        let efficient = Config::load(
            Some(include_str!("../../../config/examples/efficient.toml")),
            [],
        )
        .unwrap();
        assert_eq!(
            efficient.schedule.for_app("live").merge_write,
            Duration::from_millis(130)
        );
        assert_eq!(Config::from_toml(&efficient.to_toml()).unwrap(), efficient);
    }

    #[test]
    fn cluster_example_configs_load_and_use_their_documented_ports() {
        use crate::topology::{Role, Transport};
        let load = |text: &str| Config::load(Some(text), []).unwrap();
        let origin = load(include_str!("../../../config/examples/origin.toml"));
        assert_eq!(origin.cluster.role, Role::Origin);
        assert_eq!(origin.rtmp.listen.port(), 1935);
        assert_eq!(origin.cluster.quic_listen().map(|a| a.port()), Some(1937));
        for (text, transport) in [
            (
                include_str!("../../../config/examples/edge.toml"),
                Transport::Rtmp,
            ),
            (
                include_str!("../../../config/examples/edge-quic.toml"),
                Transport::Quic,
            ),
        ] {
            let edge = load(text);
            assert_eq!(edge.cluster.role, Role::Edge);
            assert_eq!(
                (
                    edge.rtmp.listen.port(),
                    edge.http.listen.port(),
                    edge.admin.listen.port()
                ),
                (1936, 8081, 9581)
            );
            let ups = edge.cluster.upstreams("live").unwrap();
            assert_eq!(ups[0].transport, transport);
            assert!(edge.cluster.upstreams("other").is_none());
            assert_eq!(Config::from_toml(&edge.to_toml()).unwrap(), edge);
        }
    }

    #[test]
    fn cluster_settings_that_cannot_work_are_refused() {
        let err = |text: &str| Config::load(Some(text), []).unwrap_err().to_string();
        let own = "[rtmp]\nlisten = \"127.0.0.1:1935\"\n[cluster.apps.live]\nupstreams = [\"rtmp://127.0.0.1:1935/live\"]\n";
        assert!(err(own).contains("pull loop"), "{}", err(own));
        // The same listener under another application is a different stream: allowed.
        let other_app = "[cluster.apps.live]\nupstreams = [\"rtmp://127.0.0.1:1935/ingest\"]\n";
        assert!(Config::load(Some(other_app), []).is_ok());
        let no_ca = "[cluster.apps.live]\nupstreams = [\"quic://10.0.0.1:1937\"]\n";
        assert!(err(no_ca).contains("tls_ca"), "{}", err(no_ca));
        let bad_url = "[cluster.apps.live]\nupstreams = [\"http://x/live\"]\n";
        assert!(
            err(bad_url).contains("cluster.apps.live"),
            "{}",
            err(bad_url)
        );
        let empty = "[cluster.apps.live]\nupstreams = []\n";
        assert!(err(empty).contains("empty"));
        assert!(err("[cluster]\nnode_id = \"a,b\"\n").contains("node_id"));
        assert!(err("[cluster]\nquic_listen = \"127.0.0.1:1937\"\n").contains("tls_cert"));
    }

    #[test]
    fn the_player_section_has_documented_defaults_and_checks_its_path() {
        let c = Config::default();
        assert!(c.player.enabled);
        assert_eq!(c.player.path, "/play");
        assert_eq!(c.player.assets_dir, "");
        assert_eq!(c.player.script_base, "https://cdn.jsdelivr.net/npm");
        let env = vec![(
            "SLUICE__PLAYER__ASSETS_DIR".to_owned(),
            "/srv/player".to_owned(),
        )];
        let c = Config::load(Some("[player]\npath = \"/watch/v1\"\n"), env).unwrap();
        assert_eq!(
            (c.player.path.as_str(), c.player.assets_dir.as_str()),
            ("/watch/v1", "/srv/player")
        );
        for path in [
            "", "/", "play", "/play/", "//play", "/a/../b", "/pl ay", "/p?x", "/p\"x",
        ] {
            let file = format!("[player]\npath = {path:?}\n");
            let e = Config::load(Some(&file), []).unwrap_err();
            assert!(e.to_string().contains("player.path"), "{path:?}: {e}");
        }
        let nowhere = "[player]\nscript_base = \"\"\n";
        assert!(Config::load(Some(nowhere), []).is_err());
        let local = "[player]\nscript_base = \"\"\nassets_dir = \"/srv/player\"\n";
        assert!(Config::load(Some(local), []).is_ok());
    }

    #[test]
    fn the_secure_example_loads_with_its_rules_limits_and_token_file() {
        use sluice_auth::Check;
        let c = Config::load(
            Some(include_str!("../../../config/examples/secure.toml")),
            [],
        )
        .unwrap();
        assert_eq!(c.auth.rules("live").publish.check, Check::Key);
        assert_eq!(c.auth.rules("live").play.check, Check::Signed);
        assert_eq!(c.auth.rules("other").play.check, Check::Deny);
        assert_eq!(c.admin.token_file, "/etc/sluice/admin.token");
        assert_eq!(c.limits.max_connections_per_address, 200);
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn the_registry_is_off_by_default_and_checked_when_on() {
        let c = Config::load(None, []).unwrap();
        assert!(!c.cluster.registry.enabled());
        assert_eq!(c.cluster.registry.prefix, "/sluice");
        assert_eq!(c.cluster.registry.lease_ttl_s, 5);
        let on = |extra: &str| {
            Config::load(
                Some(&format!(
                    "[cluster.registry]\nendpoints = [\"http://127.0.0.1:2379\"]\n{extra}"
                )),
                [],
            )
        };
        let c = on("advertise = [\"rtmp://10.0.0.1:1935\", \"quic://10.0.0.1:1937\"]\n").unwrap();
        assert!(c.cluster.registry.enabled());
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
        for (bad, says) in [
            ("prefix = \"sluice\"\n", "prefix"),
            ("prefix = \"/sluice/\"\n", "prefix"),
            ("lease_ttl_s = 0\n", "lease_ttl_s"),
            ("lookup_timeout_ms = 0\n", "cluster.registry"),
            ("backoff_max_ms = 1\n", "backoff"),
            ("advertise = [\"rtmp://h:1/live\"]\n", "advertise"),
            ("advertise = [\"http://h:1\"]\n", "advertise"),
        ] {
            let e = on(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let e = Config::load(
            Some("[cluster.registry]\nendpoints = [\"127.0.0.1:2379\"]\n"),
            [],
        )
        .unwrap_err();
        assert!(e.to_string().contains("endpoints"), "{e}");
    }

    #[test]
    fn an_edge_signs_its_pulls_only_with_a_key_it_has() {
        let unknown = "[cluster.pull]\nsign_with = \"nodes\"\n";
        let e = Config::load(Some(unknown), []).unwrap_err();
        assert!(e.to_string().contains("cluster.pull.sign_with"), "{e}");
        let known = "[cluster.pull]\nsign_with = \"nodes\"\n\
                     [auth.signing_keys]\nnodes = \"0123456789abcdef0123\"\n";
        assert!(Config::load(Some(known), []).is_ok());
    }

    #[test]
    fn admin_on_a_public_address_needs_a_token() {
        let public = "[admin]\nlisten = \"0.0.0.0:9580\"\n";
        let e = Config::load(Some(public), []).unwrap_err();
        assert!(e.to_string().contains("admin.token"), "{e}");
        let with_token = "[admin]\nlisten = \"0.0.0.0:9580\"\ntoken = \"t0ken\"\n";
        let c = Config::load(Some(with_token), []).unwrap();
        assert_eq!(c.admin.resolve_token().unwrap().as_deref(), Some("t0ken"));
        let missing = "[admin]\nlisten = \"0.0.0.0:9580\"\ntoken_file = \"/nonexistent/t\"\n";
        let e = Config::load(Some(missing), []).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/t"), "{e}");
    }

    #[test]
    fn tls_is_off_by_default_and_needs_both_files() {
        let c = Config::default();
        assert!(!c.tls.enabled());
        assert_eq!(c.tls.rtmps_listen.port(), 1936);
        assert_eq!(c.tls.https_listen.port(), 8443);
        assert_eq!(c.tls.handshake_timeout(), Duration::from_secs(5));
        assert!(c.tls.watch);
        let both =
            "[tls]\ncert_file = \"/etc/sluice/cert.pem\"\nkey_file = \"/etc/sluice/key.pem\"\n";
        assert!(Config::load(Some(both), []).unwrap().tls.enabled());
        for one in [
            "[tls]\ncert_file = \"/etc/sluice/cert.pem\"\n",
            "[tls]\nkey_file = \"/etc/sluice/key.pem\"\n",
        ] {
            let e = Config::load(Some(one), []).unwrap_err();
            assert!(
                e.to_string().contains("tls.cert_file and tls.key_file"),
                "{e}"
            );
        }
        let e = Config::load(Some("[tls]\nhandshake_timeout_ms = 0\n"), []).unwrap_err();
        assert!(e.to_string().contains("tls.handshake_timeout_ms"), "{e}");
    }

    #[test]
    fn schedule_overrides_are_checked_key_by_key() {
        let bad = "[schedule.apps.live]\nmax_latency = 5\n";
        let e = Config::load(Some(bad), []).unwrap_err();
        assert!(e.to_string().contains("schedule.apps.live"), "{e}");
        let bad_type = "[schedule.apps.live]\nstart = \"middle\"\n";
        assert!(Config::load(Some(bad_type), []).is_err());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let e = Config::load(Some("[rtmp]\nchunk_sise = 1\n"), []).unwrap_err();
        assert!(e.to_string().contains("chunk_sise"), "{e}");
        assert!(Config::load(Some("[nope]\n"), []).is_err());
        assert!(Config::load(Some("[rtmp]\nchunk_size = 10\n"), []).is_err());
        let budget = "[rtmp]\nmax_message_size = 2000000\nmax_buffered_message_bytes = 1999999\n";
        let e = Config::load(Some(budget), []).unwrap_err();
        assert!(matches!(e, ConfigError::Invalid(_)), "{e}");
        assert!(e.to_string().contains("max_buffered_message_bytes"), "{e}");
        let fits = "[rtmp]\nmax_message_size = 2000000\nmax_buffered_message_bytes = 2000000\n";
        assert!(Config::load(Some(fits), []).is_ok());
        let env = vec![("SLUICE__RTMP__NOPE".to_owned(), "1".to_owned())];
        assert!(matches!(
            Config::load(None, env),
            Err(ConfigError::Env { .. })
        ));
    }
}
