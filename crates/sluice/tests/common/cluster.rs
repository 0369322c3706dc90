//! Cluster members as `sluice serve` child processes (so a test can SIGKILL one), each with
//! its config in a temporary directory, every listener on loopback port 0, JSON logs, and
//! its bound addresses read from its "sluice listening" log line. Plus RTMP viewers that
//! record what they receive, and the checks the cluster tests make on such recordings.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use sluice_rtmp::client::{ClientEvent, StatusCode};
use sluice_runtime::client::{Client, ClientError, RtmpUrl};
use sluice_testkit::process::Child;
use tokio_util::sync::CancellationToken;

/// The `sluice` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");
/// Deadline for a node to come up, for state a test waits on, for a viewer's next frame.
/// Generous: CI runs this beside other tests on two cores.
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
            "[server]\nshutdown_timeout_ms = 500\n\
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
        super::merge_sections(&text)
    }
}

/// A `sluice serve` child process; SIGTERMed (then SIGKILLed) when dropped.
#[derive(Debug)]
pub struct Sluice {
    pub id: String,
    pub rtmp: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    /// The QUIC relay listener, when the node has one.
    pub quic: Option<SocketAddr>,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Sluice {
    /// Starts a node and waits until it logged its addresses.
    pub async fn start(spec: Spec) -> Sluice {
        let dir = tempfile::Builder::new()
            .prefix("sluice-cluster-")
            .tempdir()
            .expect("tempdir");
        let config = dir.path().join(format!("{}.toml", spec.id));
        std::fs::write(&config, spec.toml()).expect("write config");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").arg("--config").arg(&config).env_clear();
        let mut child = Child::spawn(&mut cmd).expect("spawn sluice serve");
        let deadline = Instant::now() + WAIT;
        let listening = loop {
            if let Some(found) = listening(&child.stderr_tail()) {
                break found;
            }
            assert!(
                child.is_running(),
                "{}: sluice serve exited: {:?}\nconfig:\n{}\n{}",
                spec.id,
                child.try_wait(),
                spec.toml(),
                child.stderr_tail()
            );
            assert!(
                Instant::now() < deadline,
                "{}: sluice serve did not log its addresses:\n{}",
                spec.id,
                child.stderr_tail()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        Sluice {
            id: spec.id,
            rtmp: listening.rtmp,
            http: listening.http,
            admin: listening.admin,
            quic: listening.quic,
            child,
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

    /// SIGKILLs the process: no goodbye to anyone.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Its log so far (the last 16 KiB), JSON lines.
    pub fn log(&self) -> String {
        self.child.stderr_tail()
    }

    pub async fn metrics(&self) -> String {
        super::http_get(self.admin, "/metrics").await.1
    }

    /// One series (exact name with labels as printed), 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        super::metric_value(&self.metrics().await, series)
    }

    /// The sum of every series of the metric `name` (all label sets).
    pub async fn metric_sum(&self, name: &str) -> f64 {
        metric_sum(&self.metrics().await, name)
    }

    async fn api(&self, path: &str, list: &str) -> Vec<Value> {
        let (status, body) = super::http_get(self.admin, path).await;
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

    /// Waits until live/`stream` has a publisher here (a local one or a pull).
    pub async fn wait_publishing(&self, stream: &str) {
        let ok = super::eventually(WAIT, || async {
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

/// The sum of every series of the metric `name` in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = if rest.starts_with('{') {
                rest.split_once("} ")?.1
            } else {
                rest.strip_prefix(' ')?
            };
            value.trim().parse::<f64>().ok()
        })
        .sum()
}

struct Listening {
    rtmp: SocketAddr,
    http: SocketAddr,
    admin: SocketAddr,
    quic: Option<SocketAddr>,
}

/// The addresses in the "sluice listening" line (`quic` is logged as `Some(ADDR)`/`None`).
fn listening(log: &str) -> Option<Listening> {
    log.lines().find_map(|line| {
        let v: Value = serde_json::from_str(line).ok()?;
        let f = &v["fields"];
        if f["message"] != "sluice listening" {
            return None;
        }
        let addr = |k: &str| f[k].as_str()?.parse::<SocketAddr>().ok();
        let quic = f["quic"]
            .as_str()
            .and_then(|q| q.strip_prefix("Some(")?.strip_suffix(')')?.parse().ok());
        Some(Listening {
            rtmp: addr("rtmp")?,
            http: addr("http")?,
            admin: addr("admin")?,
            quic,
        })
    })
}

/// Whether a JSON log has a line whose message is `message` and whose text contains `part`.
pub fn logged(log: &str, message: &str, part: &str) -> bool {
    log.lines().any(|line| {
        line.contains(part)
            && serde_json::from_str::<Value>(line).is_ok_and(|v| v["fields"]["message"] == message)
    })
}

/// Runs `sluice <args>` to completion (bounded); returns (success, stderr).
pub fn sluice_once(args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_clear();
    let mut child = Child::spawn(&mut cmd).expect("spawn sluice");
    let status = child
        .wait_timeout(WAIT)
        .unwrap_or_else(|| panic!("sluice {} did not finish", args.join(" ")));
    (status.success(), child.stderr_tail())
}

/// One thing an RTMP viewer received.
#[derive(Debug, Clone)]
pub enum Seen {
    /// An audio (8) or video (9) message.
    Media {
        type_id: u8,
        timestamp: u32,
        payload: Bytes,
        at: Instant,
    },
    /// Any other event, by name (StreamEof, Failed, Status codes, …).
    Event(String),
    /// The connection ended (closed by the server, or an error).
    Ended(String),
}

/// An RTMP viewer recording everything it receives until stopped or disconnected.
#[derive(Debug)]
pub struct Recorder {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    /// Plays `url` (panics if the server refuses) and records from a task.
    pub async fn start(url: &str) -> Recorder {
        let mut client = Client::play(&RtmpUrl::parse(url).expect("url"), WAIT)
            .await
            .unwrap_or_else(|e| panic!("play {url}: {e}"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let seen = seen.clone();
            let stop = stop.clone();
            async move {
                loop {
                    let event = tokio::select! {
                        _ = stop.cancelled() => return,
                        e = client.next_event() => e,
                    };
                    let item = match event {
                        Ok(Some(ClientEvent::Media {
                            type_id,
                            timestamp,
                            payload,
                        })) => Seen::Media {
                            type_id,
                            timestamp,
                            payload,
                            at: Instant::now(),
                        },
                        Ok(Some(ClientEvent::Metadata { .. })) => continue,
                        Ok(Some(ClientEvent::Status { code, .. })) => Seen::Event(code),
                        Ok(Some(ClientEvent::Failed { code, .. })) => Seen::Event(code.to_string()),
                        Ok(Some(other)) => Seen::Event(format!("{other:?}")),
                        Ok(None) => Seen::Ended("closed by the server".to_owned()),
                        Err(e) => Seen::Ended(e.to_string()),
                    };
                    let ended = matches!(item, Seen::Ended(_));
                    seen.lock().expect("recording").push(item);
                    if ended {
                        return;
                    }
                }
            }
        });
        Recorder {
            url: url.to_owned(),
            seen,
            stop,
            task,
        }
    }

    /// What was received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("recording").clone()
    }

    /// Video messages received at or after `since`.
    pub fn videos_since(&self, since: Instant) -> usize {
        self.seen
            .lock()
            .expect("recording")
            .iter()
            .filter(|s| matches!(s, Seen::Media { type_id: 9, at, .. } if *at >= since))
            .count()
    }

    /// Waits until `n` video messages arrived at or after `since`.
    pub async fn wait_videos(&self, n: usize, since: Instant) {
        let ok = super::eventually(WAIT, || async { self.videos_since(since) >= n }).await;
        assert!(
            ok,
            "{}: {} of {n} video messages; last events: {:?}",
            self.url,
            self.videos_since(since),
            self.events()
        );
    }

    /// The non-media things seen (events, the end).
    pub fn events(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter_map(|s| match s {
                Seen::Media { .. } => None,
                Seen::Event(e) => Some(e),
                Seen::Ended(e) => Some(format!("ended: {e}")),
            })
            .collect()
    }

    /// Stops recording and returns everything seen.
    pub async fn stop(self) -> Vec<Seen> {
        self.stop.cancel();
        let _ = tokio::time::timeout(WAIT, self.task).await;
        Arc::try_unwrap(self.seen)
            .map(|m| m.into_inner().expect("recording"))
            .unwrap_or_else(|arc| arc.lock().expect("recording").clone())
    }
}

/// Plays `url` and expects NetStream.Play.StreamNotFound, either as the answer to play or
/// right after it started. Returns the server's description.
pub async fn expect_not_found(url: &str) -> String {
    let refused = |code: &StatusCode, description: String| {
        assert_eq!(
            code,
            &StatusCode::StreamNotFound,
            "{url}: refused with {code}: {description}"
        );
        description
    };
    match Client::play(&RtmpUrl::parse(url).expect("url"), WAIT).await {
        Err(ClientError::Refused { code, description }) => refused(&code, description),
        Err(e) => panic!("{url}: {e}"),
        Ok(mut client) => loop {
            match tokio::time::timeout(WAIT, client.next_event()).await {
                Ok(Ok(Some(ClientEvent::Failed { code, description }))) => {
                    return refused(&code, description);
                }
                Ok(Ok(Some(ClientEvent::Media { .. }))) => {
                    panic!("{url}: media for a stream nobody has")
                }
                Ok(Ok(Some(_))) => {}
                other => panic!("{url}: ended without StreamNotFound: {other:?}"),
            }
        },
    }
}

/// A video tag body: frame type in the high nibble (1 = keyframe), codec id in the low one.
pub fn is_keyframe(payload: &[u8]) -> bool {
    payload.first().is_some_and(|b| b >> 4 == 1)
}

/// An AVC packet that is not a coded frame (0 = sequence header, 2 = end of sequence).
pub fn is_avc_config(payload: &[u8]) -> bool {
    payload.first().is_some_and(|b| b & 0x0f == 7) && payload.get(1).is_some_and(|t| *t != 1)
}

/// The position in the fixture of each of its coded video frames, by payload: looped
/// publishers send the same bytes every pass, so a viewer's frames can be placed exactly.
pub fn fixture_video_index(fixture: &str) -> (HashMap<Bytes, usize>, usize) {
    let (media, _) = super::rtmp::fixture_media(fixture);
    let frames: Vec<Bytes> = media
        .into_iter()
        .filter(|t| t.type_id == 9 && !is_avc_config(&t.payload))
        .map(|t| t.payload)
        .collect();
    let count = frames.len();
    let index: HashMap<Bytes, usize> = frames
        .into_iter()
        .enumerate()
        .map(|(i, p)| (p, i))
        .collect();
    assert_eq!(
        index.len(),
        count,
        "the fixture's video frames are distinct"
    );
    (index, count)
}

/// The largest step between consecutive timestamps of one kind that still reads as one
/// continuous stream (the fixture's frames are 23–40 ms apart; a splice must not jump).
const MAX_TIMESTAMP_STEP: u32 = 1000;

/// Checks a viewer's recording: it never ended, each track's timestamps never go backwards
/// nor jump ahead, and its video is the fixture's frames in order, looping, except where it
/// jumps — and every jump lands on a keyframe (a splice: a switch of upstream, a new publisher). Returns
/// the number of jumps. `since` limits the check to messages received from then on;
/// `timestamps: false` skips the timestamp check.
pub fn check_continuity(
    who: &str,
    seen: &[Seen],
    (index, frames): (&HashMap<Bytes, usize>, usize),
    since: Instant,
    timestamps: bool,
) -> Result<usize, String> {
    let mut last_ts: HashMap<u8, u32> = HashMap::new();
    let mut previous: Option<usize> = None;
    let mut jumps = 0;
    for (n, s) in seen.iter().enumerate() {
        let (type_id, timestamp, payload) = match s {
            Seen::Media {
                type_id,
                timestamp,
                payload,
                at,
            } if *at >= since => (*type_id, *timestamp, payload),
            Seen::Media { .. } | Seen::Event(_) => continue,
            Seen::Ended(e) => return Err(format!("{who}: the connection ended: {e}")),
        };
        if let Some(&last) = last_ts.get(&type_id)
            && timestamp < last
            && timestamps
        {
            return Err(format!(
                "{who}: message {n}: type {type_id} timestamp went back from {last} to {timestamp}"
            ));
        }
        if let Some(&last) = last_ts.get(&type_id)
            && timestamp > last + MAX_TIMESTAMP_STEP
            && timestamps
        {
            return Err(format!(
                "{who}: message {n}: type {type_id} timestamp jumped from {last} to {timestamp}"
            ));
        }
        last_ts.insert(type_id, timestamp);
        if type_id != 9 || is_avc_config(payload) {
            continue;
        }
        let Some(&i) = index.get(payload) else {
            return Err(format!(
                "{who}: message {n}: a video frame not in the fixture"
            ));
        };
        let continues = previous.is_none_or(|p| (p + 1) % frames == i);
        if !continues {
            if !is_keyframe(payload) {
                return Err(format!(
                    "{who}: message {n} (ts {timestamp}): fixture frame {} followed by frame {i}, \
                     not a keyframe",
                    previous.unwrap_or_default()
                ));
            }
            jumps += 1;
        }
        previous = Some(i);
    }
    Ok(jumps)
}

/// The first coded video frame (not a sequence header) received at or after `since`.
pub fn first_video_since(seen: &[Seen], since: Instant) -> Option<Bytes> {
    seen.iter().find_map(|s| match s {
        Seen::Media {
            type_id: 9,
            payload,
            at,
            ..
        } if *at >= since && !is_avc_config(payload) => Some(payload.clone()),
        _ => None,
    })
}
