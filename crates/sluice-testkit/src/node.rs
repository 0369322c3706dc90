//! Sluice nodes as `sluice serve` child processes (so a test can SIGKILL one): a [`Spec`] for
//! an origin or an edge, its config in a temporary directory, every listener on loopback port
//! 0, JSON logs, and the bound addresses read from the "sluice listening" log line.
//!
//! The binary is the caller's to name (`env!("CARGO_BIN_EXE_sluice")` in the `sluice`
//! crate's tests): the testkit does not depend on the binary crate.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::process::Child;

/// Deadline for a node to come up, and for the state a test waits on. Generous: CI runs
/// these tests beside others on two cores.
pub const WAIT: Duration = Duration::from_secs(30);

/// How frames travel between nodes. A test written against this runs over either transport
/// by passing the other variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// RTMP play (`rtmp://` upstreams).
    Rtmp,
    /// Sluice's QUIC relay (`quic://` upstreams; every node listens on one and carries the
    /// demo cluster's certificates from `config/examples/tls`).
    Quic,
}

impl Transport {
    /// Its label in metrics (`sluice_pull_starts_total{transport=…}`).
    pub fn label(self) -> &'static str {
        match self {
            Transport::Rtmp => "rtmp",
            Transport::Quic => "quic",
        }
    }

    /// `[cluster]` keys every node needs for this transport.
    fn cluster_keys(self) -> String {
        match self {
            Transport::Rtmp => String::new(),
            Transport::Quic => {
                let tls = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/examples/tls");
                let file = |name: &str| tls.join(name).display().to_string();
                format!(
                    "quic_listen = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\n\
                     tls_ca = {:?}\n",
                    file("node.pem"),
                    file("node.key"),
                    file("ca.pem")
                )
            }
        }
    }
}

/// What a node is: the `[cluster]` essentials, plus any other config text.
#[derive(Debug, Clone)]
pub struct Spec {
    /// `cluster.node_id` (the default, HOSTNAME:PORT, would be "…:0" for every test node).
    pub id: String,
    /// `cluster.role`: "origin", "edge" or "both".
    pub role: &'static str,
    /// `cluster.apps.live.upstreams`; none: no `[cluster.apps.live]`.
    pub upstreams: Vec<String>,
    /// How it pulls, and whether it listens for the QUIC relay.
    pub transport: Transport,
    /// More TOML; sections may repeat the ones the base config has (later keys win).
    pub extra: String,
}

impl Spec {
    /// An origin: accepts publishers, pulls nothing.
    pub fn origin(id: &str, transport: Transport) -> Spec {
        Spec {
            id: id.to_owned(),
            role: "origin",
            upstreams: Vec::new(),
            transport,
            extra: String::new(),
        }
    }

    /// An edge pulling application `live` from `upstreams`.
    pub fn edge(id: &str, transport: Transport, upstreams: &[String]) -> Spec {
        Spec {
            id: id.to_owned(),
            role: "edge",
            upstreams: upstreams.to_vec(),
            transport,
            extra: String::new(),
        }
    }

    /// Appends config text.
    pub fn with(mut self, extra: &str) -> Spec {
        self.extra.push_str(extra);
        self.extra.push('\n');
        self
    }

    /// The config file's text.
    pub fn toml(&self) -> String {
        let mut text = format!(
            "[server]\nshutdown_timeout_ms = 500\ndrain_grace_ms = 0\n\
             [rtmp]\nlisten = \"127.0.0.1:0\"\nhandshake_timeout_ms = 5000\n\
             [http]\nlisten = \"127.0.0.1:0\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [log]\nformat = \"json\"\nlevel = \"info\"\n\
             [streams]\nwait_for_publisher_ms = 5000\nrepublish_grace_ms = 500\n\
             [cluster]\nrole = {:?}\nnode_id = {:?}\n{}\
             [cluster.pull]\ntimeout_ms = 5000\nconnect_timeout_ms = 1000\n\
             no_data_timeout_ms = 1000\nidle_timeout_ms = 5000\nmiss_ttl_ms = 2000\n\
             backoff_initial_ms = 100\nbackoff_max_ms = 1000\n",
            self.role,
            self.id,
            self.transport.cluster_keys()
        );
        if !self.upstreams.is_empty() {
            text.push_str(&format!(
                "[cluster.apps.live]\nupstreams = {:?}\n",
                self.upstreams
            ));
        }
        text.push_str(&self.extra);
        merge_sections(&text)
    }
}

/// TOML forbids repeating a table header: folds repeated sections of `text` together (a
/// repeated key keeps its last value), so tests can append overrides to a base config.
pub fn merge_sections(text: &str) -> String {
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    let mut current = 0;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            current = match sections.iter().position(|(header, _)| header == line) {
                Some(i) => i,
                None => {
                    sections.push((line.to_owned(), Vec::new()));
                    sections.len() - 1
                }
            };
        } else if !line.is_empty() {
            if sections.is_empty() {
                sections.push((String::new(), Vec::new()));
            }
            let lines = &mut sections[current].1;
            let key = |l: &str| l.split('=').next().unwrap_or("").trim().to_owned();
            let new_key = key(line);
            lines.retain(|l| key(l) != new_key);
            lines.push(line.to_owned());
        }
    }
    let mut out = String::new();
    for (header, lines) in sections {
        if !header.is_empty() {
            out.push_str(&header);
            out.push('\n');
        }
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

/// Where a node listens, from its "sluice listening" log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    /// RTMP ingest and play.
    pub rtmp: SocketAddr,
    /// HTTP-FLV.
    pub http: SocketAddr,
    /// The admin API and `/metrics`.
    pub admin: SocketAddr,
    /// The QUIC relay, when the node has one.
    pub quic: Option<SocketAddr>,
    /// RTMPS, when the node has `[tls]`.
    pub rtmps: Option<SocketAddr>,
    /// HTTPS, when the node has `[tls]`.
    pub https: Option<SocketAddr>,
}

/// The addresses in a JSON log's "sluice listening" line (`quic`, `rtmps` and `https` are
/// logged as `Some(ADDR)`/`None`).
pub fn listening(log: &str) -> Option<Listening> {
    log.lines().find_map(|line| {
        let v: Value = serde_json::from_str(line).ok()?;
        let f = &v["fields"];
        if f["message"] != "sluice listening" {
            return None;
        }
        let addr = |k: &str| f[k].as_str()?.parse::<SocketAddr>().ok();
        let optional = |k: &str| {
            f[k].as_str()
                .and_then(|q| q.strip_prefix("Some(")?.strip_suffix(')')?.parse().ok())
        };
        Some(Listening {
            rtmp: addr("rtmp")?,
            http: addr("http")?,
            admin: addr("admin")?,
            quic: optional("quic"),
            rtmps: optional("rtmps"),
            https: optional("https"),
        })
    })
}

/// Waits (up to `within`) until `child`, a `sluice serve` logging JSON, logged where it
/// listens. Err, with its log, if it exits first or the deadline passes.
pub async fn wait_listening(child: &mut Child, within: Duration) -> Result<Listening, String> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = listening(&child.stderr_tail()) {
            return Ok(found);
        }
        if let Some(status) = child.try_wait() {
            return Err(format!(
                "{} exited ({status}):\n{}",
                child.program(),
                child.stderr_tail()
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} did not log its addresses within {within:?}:\n{}",
                child.program(),
                child.stderr_tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether a JSON log has a line whose message is `message` and whose text contains `part`
/// (`""`: any such line).
pub fn logged(log: &str, message: &str, part: &str) -> bool {
    log.lines().any(|line| {
        line.contains(part)
            && serde_json::from_str::<Value>(line).is_ok_and(|v| v["fields"]["message"] == message)
    })
}

/// A `sluice serve` child process of a [`Spec`]; SIGTERMed (then SIGKILLed) when dropped.
#[derive(Debug)]
pub struct Process {
    /// Its `cluster.node_id`.
    pub id: String,
    /// RTMP ingest and play.
    pub rtmp: SocketAddr,
    /// HTTP-FLV.
    pub http: SocketAddr,
    /// The admin API.
    pub admin: SocketAddr,
    /// The QUIC relay listener, when the node has one.
    pub quic: Option<SocketAddr>,
    /// RTMPS, when the node has `[tls]`.
    pub rtmps: Option<SocketAddr>,
    /// HTTPS, when the node has `[tls]`.
    pub https: Option<SocketAddr>,
    child: Child,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Starts `bin serve` with the config of `spec` and waits until it logged its addresses.
    pub async fn start(bin: impl AsRef<OsStr>, spec: Spec) -> Process {
        let dir = tempfile::Builder::new()
            .prefix("sluice-node-")
            .tempdir()
            .expect("tempdir");
        let config = dir.path().join(format!("{}.toml", spec.id));
        std::fs::write(&config, spec.toml()).expect("write config");
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg("--config").arg(&config).env_clear();
        let mut child = Child::spawn(&mut cmd).expect("spawn sluice serve");
        let addrs = wait_listening(&mut child, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}\nconfig:\n{}", spec.id, spec.toml()));
        Process {
            id: spec.id,
            rtmp: addrs.rtmp,
            http: addrs.http,
            admin: addrs.admin,
            quic: addrs.quic,
            rtmps: addrs.rtmps,
            https: addrs.https,
            child,
            config,
            _dir: dir,
        }
    }

    /// `rtmp://RTMP/live/<stream>`.
    pub fn rtmp_url(&self, stream: &str) -> String {
        format!("rtmp://{}/live/{stream}", self.rtmp)
    }

    /// `http://HTTP/live/<stream>.flv`.
    pub fn flv_url(&self, stream: &str) -> String {
        format!("http://{}/live/{stream}.flv", self.http)
    }

    /// This node as another node's upstream for application `live`.
    pub fn upstream(&self, transport: Transport) -> String {
        match transport {
            Transport::Rtmp => format!("rtmp://{}/live", self.rtmp),
            Transport::Quic => format!(
                "quic://{}/live",
                self.quic
                    .unwrap_or_else(|| panic!("{} has no QUIC listener", self.id))
            ),
        }
    }

    /// Its config file (rewrite it, then [`Process::hup`], to reload).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Sends SIGHUP (reload the config) to the process, by its PID.
    pub fn hup(&self) {
        self.signal("HUP");
    }

    /// Sends SIGTERM (drain, then stop) to the process, by its PID.
    pub fn term(&self) {
        self.signal("TERM");
    }

    /// Sends SIGINT (stop at once) to the process, by its PID.
    pub fn interrupt(&self) {
        self.signal("INT");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {}", self.child.id());
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// Waits up to `within` for the process to exit by itself; its status, `None` if it is
    /// still running (it is left running).
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs the process: no goodbye to anyone.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Its log so far (the last 16 KiB), JSON lines.
    pub fn log(&self) -> String {
        self.child.stderr_tail()
    }

    /// Its `/metrics` text.
    pub async fn metrics(&self) -> String {
        crate::http::get(self.admin, "/metrics").await.1
    }

    /// One series (exact name with labels as printed), 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        crate::http::metric_value(&self.metrics().await, series)
    }

    /// The sum of every series of the metric `name` (all label sets).
    pub async fn metric_sum(&self, name: &str) -> f64 {
        crate::http::metric_sum(&self.metrics().await, name)
    }

    async fn api(&self, path: &str, list: &str) -> Vec<Value> {
        let (status, body) = crate::http::get(self.admin, path).await;
        assert_eq!(status, 200, "{} {path}: {body}", self.id);
        let v: Value = serde_json::from_str(&body).expect("admin JSON");
        v[list].as_array().cloned().unwrap_or_default()
    }

    /// The entry of live/`stream` in `/api/streams`.
    pub async fn stream(&self, stream: &str) -> Option<Value> {
        find(self.api("/api/streams", "streams").await, stream)
    }

    /// The entry of live/`stream` in `/api/pulls`.
    pub async fn pull(&self, stream: &str) -> Option<Value> {
        find(self.api("/api/pulls", "pulls").await, stream)
    }

    /// Waits until live/`stream` has a publisher here (a local one or a pull) that sent
    /// frames.
    pub async fn wait_publishing(&self, stream: &str) {
        let ok = crate::wait::eventually(WAIT, || async {
            self.stream(stream)
                .await
                .is_some_and(|s| s["publishing"] == true && s["frames_in"].as_u64() > Some(0))
        })
        .await;
        assert!(
            ok,
            "{}: live/{stream} never published; log:\n{}",
            self.id,
            self.log()
        );
    }
}

fn find(list: Vec<Value>, stream: &str) -> Option<Value> {
    list.into_iter()
        .find(|s| s["app"] == "live" && s["stream"] == stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_sections_fold_together_and_later_keys_win() {
        let merged =
            merge_sections("[a]\nx = 1\ny = 2\n[b]\nz = 3\n[a]\nx = 10\n\n[c.d]\nw = \"=\"\n");
        assert_eq!(merged, "[a]\ny = 2\nx = 10\n[b]\nz = 3\n[c.d]\nw = \"=\"\n");
    }

    #[test]
    fn the_listening_line_gives_every_address() {
        let log = concat!(
            "not json\n",
            r#"{"fields":{"message":"other","rtmp":"127.0.0.1:1"}}"#,
            "\n",
            r#"{"fields":{"message":"sluice listening","rtmp":"127.0.0.1:1935","#,
            r#""http":"127.0.0.1:8080","admin":"[::1]:9090","quic":"Some(127.0.0.1:4433)"}}"#,
            "\n"
        );
        let found = listening(log).expect("listening");
        assert_eq!(found.rtmp, "127.0.0.1:1935".parse().unwrap());
        assert_eq!(found.http, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(found.admin, "[::1]:9090".parse().unwrap());
        assert_eq!(found.quic, Some("127.0.0.1:4433".parse().unwrap()));
        assert!(logged(log, "sluice listening", "4433"));
        assert!(logged(log, "other", ""));
        assert!(!logged(log, "other", "4433"));
        let no_quic = log.replace("Some(127.0.0.1:4433)", "None");
        assert_eq!(listening(&no_quic).expect("listening").quic, None);
        assert_eq!(found.rtmps, None, "no TLS listeners logged");
        let tls = log.replace(
            r#""quic":"#,
            r#""rtmps":"Some(127.0.0.1:1936)","https":"Some(127.0.0.1:8443)","quic":"#,
        );
        let found = listening(&tls).expect("listening");
        assert_eq!(found.rtmps, Some("127.0.0.1:1936".parse().unwrap()));
        assert_eq!(found.https, Some("127.0.0.1:8443".parse().unwrap()));
        assert!(listening("{}").is_none());
    }
}
