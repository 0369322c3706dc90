//! Webhooks for access control, nginx-rtmp's `on_publish`/`on_play`/`on_publish_done`/
//! `on_play_done`: the node POSTs an event to an operator's URL and obeys the answer.
//!
//! This module owns the IO half: the HTTP/1.1 exchange with the hook server, its deadline,
//! the bound on requests in flight, the cache of answers, and the metrics and logs of each
//! decision. Which hook a session asks, and what it does with the answer, is the caller's.
//!
//! The request is one `POST` per connection (`connection: close`) with a JSON body, and only
//! JSON (no `application/x-www-form-urlencoded` twin of nginx-rtmp's):
//!
//! ```text
//! POST /path HTTP/1.1
//! content-type: application/json
//!
//! {"action":"publish","app":"live","stream":"key","client":"1.2.3.4",
//!  "protocol":"rtmp","tls":false,"query":"token=abc","node":"edge-1"}
//! ```
//!
//! The answer's status decides ([`HookAnswer`]): 2xx allows; 3xx with a `Location` that is a
//! plain stream name (letters, digits, `-._~`, at most 255 bytes, not `.` or `..`) renames
//! (the publisher's stream, or the stream a viewer plays, gets that name); any other 3xx and
//! every 4xx/5xx deny. A deadline passed, a refused connection or an answer that is not HTTP
//! is a failure, which [`WebhookSettings::on_failure`] turns into allow or deny. Only the
//! answer's head is read (at most [`MAX_ANSWER_HEAD`] bytes); its body is ignored and the
//! connection closed once the head is in.
//!
//! Only `http://host[:port]/path` URLs: hook servers are internal, and a TLS client here
//! would be a second TLS stack for no gain ([`check_url`], called at config load).
//!
//! The exchange is written by hand over a `TcpStream` (request bytes out, the head parsed
//! with `httparse`), as the HTTP listener's is: one request per connection, and only the
//! status line and `Location` matter, so hyper's client (connection tasks, body streams,
//! pooling) would add state and dependencies without adding anything used.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use moka::sync::Cache;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sluice_auth::HookUrl;
use sluice_core::metrics::{HistogramFamily1, Label2, Metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// The largest answer head read; a longer one is a failure (`bad_answer`).
pub const MAX_ANSWER_HEAD: usize = 16 * 1024;
/// Header lines an answer may have.
const MAX_HEADERS: usize = 64;
/// The longest stream name a `Location` may rename to.
const MAX_NAME: usize = 255;
/// Answers kept in the cache at most.
const CACHE_ENTRIES: u64 = 100_000;
/// A URL's failures are logged at most this often; the others are counted and the count
/// reported with the next line.
const WARN_EVERY: Duration = Duration::from_secs(1);
/// URLs whose last warning is remembered; beyond this the memory is cleared (URLs come from
/// the config, so this is only a backstop).
const WARNED_URLS: usize = 1024;

/// How webhooks are asked (`[auth.webhook]`), and what a failure means.
pub use sluice_auth::{OnFailure, WebhookConfig as WebhookSettings};

/// What a hook is told: one event of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookEvent {
    /// `publish`, `play`, `publish_done` or `play_done`; the `hook` label of the metrics.
    pub action: &'static str,
    /// The application.
    pub app: String,
    /// The stream name, without its query.
    pub stream: String,
    /// The publisher's or viewer's address.
    pub client: IpAddr,
    /// How the client came: `rtmp`, `http_flv`, `hls`.
    pub protocol: &'static str,
    /// Whether it came over TLS (RTMPS, HTTPS).
    pub tls: bool,
    /// The request's query string, raw (tokens usually travel here).
    pub query: String,
    /// This node's id.
    pub node: Arc<str>,
}

impl HookEvent {
    /// The request body.
    fn json(&self) -> Vec<u8> {
        let body = serde_json::json!({
            "action": self.action,
            "app": self.app,
            "stream": self.stream,
            "client": self.client.to_string(),
            "protocol": self.protocol,
            "tls": self.tls,
            "query": self.query,
            "node": &*self.node,
        });
        body.to_string().into_bytes()
    }
}

/// A hook's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookAnswer {
    /// 2xx: let the client in.
    Allow,
    /// 3xx with a plain stream name in `Location`: let the client in under that name.
    Rename(String),
    /// 4xx or 5xx, or a 3xx without a usable `Location`: refuse the client.
    Deny {
        /// The hook's status code.
        status: u16,
    },
    /// No answer: `timeout` (the deadline passed), `connect` (no connection, or it closed
    /// before the request was sent), `bad_answer` (not an HTTP answer we take), `busy` (no
    /// slot among `max_concurrent` within the deadline).
    Failed(&'static str),
}

impl HookAnswer {
    /// Whether the client may go on, a failure counting as `on_failure` says.
    pub fn allowed(&self, on_failure: OnFailure) -> bool {
        match self {
            HookAnswer::Allow | HookAnswer::Rename(_) => true,
            HookAnswer::Deny { .. } => false,
            HookAnswer::Failed(_) => on_failure == OnFailure::Allow,
        }
    }

    /// The `result` label of the metrics.
    fn result(&self) -> &'static str {
        match self {
            HookAnswer::Allow => "allow",
            HookAnswer::Rename(_) => "rename",
            HookAnswer::Deny { .. } => "deny",
            HookAnswer::Failed(_) => "failed",
        }
    }

    /// The status logged: the hook's, or 0 for a failure.
    fn status(&self) -> u16 {
        match self {
            HookAnswer::Allow => 200,
            HookAnswer::Rename(_) => 302,
            HookAnswer::Deny { status } => *status,
            HookAnswer::Failed(_) => 0,
        }
    }
}

/// Checks that `url` is a hook URL this module can call: `http://host[:port][/path][?query]`
/// (the config's validation does the same). The message says what is wrong.
pub fn check_url(url: &str) -> Result<(), String> {
    HookUrl::parse(url).map(drop)
}

/// The request head and body for `target`.
fn request(target: &HookUrl<'_>, body: &[u8]) -> Vec<u8> {
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\nuser-agent: sluice/{}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        target.path,
        target.authority,
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

/// What an answer is cached under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    url: Box<str>,
    action: &'static str,
    app: Box<str>,
    stream: Box<str>,
    client: IpAddr,
    query: Box<str>,
}

impl Key {
    fn new(url: &str, event: &HookEvent) -> Self {
        Key {
            url: url.into(),
            action: event.action,
            app: event.app.as_str().into(),
            stream: event.stream.as_str().into(),
            client: event.client,
            query: event.query.as_str().into(),
        }
    }
}

/// The settings in force and what is built from them; swapped whole on reconfigure.
#[derive(Debug)]
struct State {
    settings: WebhookSettings,
    /// Slots for requests in flight. Kept across a reconfigure that leaves `max_concurrent`
    /// as it was, so requests in flight keep counting.
    slots: Arc<Semaphore>,
    /// Answers by request; `None` when `cache_ms` is 0.
    cache: Option<Cache<Key, HookAnswer>>,
}

impl State {
    fn new(settings: WebhookSettings) -> Self {
        State {
            slots: slots(&settings),
            cache: cache(&settings),
            settings,
        }
    }

    fn deadline(&self) -> Duration {
        Duration::from_millis(self.settings.timeout_ms)
    }
}

fn slots(settings: &WebhookSettings) -> Arc<Semaphore> {
    // Zero slots would fail every ask after its deadline; one is the least that works.
    let n = settings.max_concurrent.clamp(1, Semaphore::MAX_PERMITS);
    Arc::new(Semaphore::new(n))
}

fn cache(settings: &WebhookSettings) -> Option<Cache<Key, HookAnswer>> {
    (settings.cache_ms > 0).then(|| {
        Cache::builder()
            .max_capacity(CACHE_ENTRIES)
            .time_to_live(Duration::from_millis(settings.cache_ms))
            .build()
    })
}

/// When a URL's failures were last logged, and how many were not since.
#[derive(Debug)]
struct Warned {
    at: Instant,
    suppressed: u64,
}

/// The node's webhook client: asks hooks for decisions, tells them of sessions that ended.
#[derive(Debug)]
pub struct Webhooks {
    state: ArcSwap<State>,
    requests: Family<Label2, Counter>,
    durations: HistogramFamily1,
    tracker: TaskTracker,
    warned: Mutex<HashMap<Box<str>, Warned>>,
}

impl Webhooks {
    /// A client with `settings`, counting into `metrics` (`ctx.metrics`) and running
    /// notifications on `tracker` (`ctx.tracker`), so shutdown drains them with the
    /// connections: a session closed by shutdown still has its done hook sent, within the
    /// hook deadline and the drain's.
    pub fn new(settings: WebhookSettings, metrics: &Metrics, tracker: TaskTracker) -> Arc<Self> {
        Arc::new(Webhooks {
            state: ArcSwap::from_pointee(State::new(settings)),
            requests: metrics.webhook_requests.clone(),
            durations: metrics.webhook_duration.clone(),
            tracker,
            warned: Mutex::new(HashMap::new()),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> WebhookSettings {
        self.state.load().settings.clone()
    }

    /// Puts new settings in force (config reload). Requests in flight finish under the old
    /// ones. The slots are kept when `max_concurrent` is unchanged (else new asks count
    /// against the new bound only), and cached answers when `cache_ms` is (else they are
    /// forgotten).
    pub fn reconfigure(&self, settings: WebhookSettings) {
        let old = self.state.load();
        let slots = if settings.max_concurrent == old.settings.max_concurrent {
            old.slots.clone()
        } else {
            slots(&settings)
        };
        let cache = if settings.cache_ms == old.settings.cache_ms {
            old.cache.clone()
        } else {
            cache(&settings)
        };
        self.state.store(Arc::new(State {
            settings,
            slots,
            cache,
        }));
    }

    /// Asks the hook at `url` about `event` (publish, play): from the cache if it answered the
    /// same question within `cache_ms`, else by a request. Failures are never cached. Takes at
    /// most twice the timeout: a wait for a slot, then the request.
    pub async fn ask(&self, url: &str, event: &HookEvent) -> HookAnswer {
        let state = self.state.load_full();
        let key = state.cache.as_ref().map(|_| Key::new(url, event));
        if let (Some(cache), Some(key)) = (&state.cache, &key)
            && let Some(answer) = cache.get(key)
        {
            self.count(event.action, "cached");
            debug!(
                hook = event.action,
                app = %event.app,
                stream = %event.stream,
                status = answer.status(),
                "webhook answer from the cache"
            );
            return answer;
        }
        let deadline = state.deadline();
        let Ok(Ok(slot)) = timeout(deadline, state.slots.clone().acquire_owned()).await else {
            let answer = HookAnswer::Failed("busy");
            self.decided(url, event, &answer, Duration::ZERO);
            return answer;
        };
        let started = Instant::now();
        let answer = exchange(url, event, deadline).await;
        drop(slot);
        let took = started.elapsed();
        self.observe(event.action, took);
        self.decided(url, event, &answer, took);
        if let (Some(cache), Some(key)) = (&state.cache, key)
            && !matches!(answer, HookAnswer::Failed(_))
        {
            cache.insert(key, answer.clone());
        }
        answer
    }

    /// Tells the hook at `url` of `event` (publish_done, play_done) from a task of its own:
    /// never waits. When `max_concurrent` requests are in flight the event is dropped and
    /// counted (`dropped`). The answer is counted and logged, and obeyed by nobody.
    pub fn notify(self: &Arc<Self>, url: &str, event: HookEvent) {
        let state = self.state.load_full();
        let Ok(slot) = state.slots.clone().try_acquire_owned() else {
            self.count(event.action, "dropped");
            self.warn_limited(url, &event, "dropped: too many webhook requests in flight");
            return;
        };
        let hooks = self.clone();
        let url = url.to_owned();
        self.tracker.spawn(async move {
            let started = Instant::now();
            let answer = exchange(&url, &event, state.deadline()).await;
            drop(slot);
            let took = started.elapsed();
            hooks.observe(event.action, took);
            hooks.decided(&url, &event, &answer, took);
        });
    }

    fn count(&self, hook: &'static str, result: &'static str) {
        self.requests
            .get_or_create(&[("hook", hook), ("result", result)])
            .inc();
    }

    fn observe(&self, hook: &'static str, took: Duration) {
        self.durations
            .get_or_create(&[("hook", hook)])
            .observe(took.as_secs_f64());
    }

    /// Counts and logs an answer that did not come from the cache.
    fn decided(&self, url: &str, event: &HookEvent, answer: &HookAnswer, took: Duration) {
        self.count(event.action, answer.result());
        match answer {
            HookAnswer::Failed(reason) => self.warn_limited(url, event, reason),
            _ => info!(
                hook = event.action,
                app = %event.app,
                stream = %event.stream,
                client = %event.client,
                status = answer.status(),
                result = answer.result(),
                renamed = match answer {
                    HookAnswer::Rename(name) => name.as_str(),
                    _ => "",
                },
                ms = took.as_millis() as u64,
                "webhook answered"
            ),
        }
    }

    /// Logs a failure of `url`, at most once per [`WARN_EVERY`]; the others at debug level,
    /// counted into the next warning.
    fn warn_limited(&self, url: &str, event: &HookEvent, reason: &str) {
        let now = Instant::now();
        let suppressed = {
            let mut warned = self.warned.lock();
            if warned.len() >= WARNED_URLS && !warned.contains_key(url) {
                warned.clear();
            }
            match warned.get_mut(url) {
                Some(w) if now.duration_since(w.at) < WARN_EVERY => {
                    w.suppressed += 1;
                    None
                }
                Some(w) => {
                    w.at = now;
                    Some(std::mem::take(&mut w.suppressed))
                }
                None => {
                    warned.insert(
                        url.into(),
                        Warned {
                            at: now,
                            suppressed: 0,
                        },
                    );
                    Some(0)
                }
            }
        };
        match suppressed {
            Some(suppressed) => warn!(
                hook = event.action,
                url,
                app = %event.app,
                stream = %event.stream,
                client = %event.client,
                reason,
                suppressed,
                "webhook failed"
            ),
            None => debug!(
                hook = event.action,
                url,
                app = %event.app,
                stream = %event.stream,
                reason,
                "webhook failed"
            ),
        }
    }
}

/// One request to `url` within `deadline`.
async fn exchange(url: &str, event: &HookEvent, deadline: Duration) -> HookAnswer {
    let target = match HookUrl::parse(url) {
        Ok(target) => target,
        // The config refuses such a URL at load; a caller that skipped it gets this.
        Err(_) => return HookAnswer::Failed("connect"),
    };
    let request = request(&target, &event.json());
    let exchange = async {
        let mut socket = TcpStream::connect(&target.connect)
            .await
            .map_err(|_| "connect")?;
        // The request goes out in one write; no reason to hold its tail back.
        let _ = socket.set_nodelay(true);
        socket.write_all(&request).await.map_err(|_| "connect")?;
        read_answer(&mut socket).await
    };
    match timeout(deadline, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(reason)) => HookAnswer::Failed(reason),
        Err(_) => HookAnswer::Failed("timeout"),
    }
}

/// Reads an answer head (skipping interim 1xx ones) and decides from it.
async fn read_answer(socket: &mut TcpStream) -> Result<HookAnswer, &'static str> {
    // One buffer of the bound: hooks are asked once per session, not per frame.
    let mut buf = vec![0; MAX_ANSWER_HEAD];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            return Err("bad_answer");
        }
        match socket.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return Err("bad_answer"),
            Ok(n) => filled += n,
        }
        // Interim answers (100 Continue and the like) come before the real one.
        while let Some(head) = parse_head(&buf[..filled])? {
            match head {
                Head::Interim(len) => {
                    buf.copy_within(len..filled, 0);
                    filled -= len;
                }
                Head::Final(answer) => return Ok(answer),
            }
        }
    }
}

/// A complete answer head.
#[derive(Debug)]
enum Head {
    /// A 1xx answer of this many bytes, to skip.
    Interim(usize),
    /// The answer.
    Final(HookAnswer),
}

/// Parses the answer head at the start of `buf`: `None` while incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("bad_answer"),
    };
    let status = response.code.ok_or("bad_answer")?;
    let answer = match status {
        // 101 switches protocols: not an answer to a POST we take.
        100 | 102..=199 => return Ok(Some(Head::Interim(len))),
        200..=299 => HookAnswer::Allow,
        300..=399 => {
            let location = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("location"))
                .map(|h| h.value);
            match location.and_then(stream_name) {
                Some(name) => HookAnswer::Rename(name),
                None => HookAnswer::Deny { status },
            }
        }
        400..=599 => HookAnswer::Deny { status },
        _ => return Err("bad_answer"),
    };
    Ok(Some(Head::Final(answer)))
}

/// A `Location` value that is a plain stream name.
fn stream_name(value: &[u8]) -> Option<String> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME
        && value != b"."
        && value != b".."
        && value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    // Only ASCII passed, so this cannot fail.
    ok.then(|| String::from_utf8_lossy(value).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bytes() {
        let t = HookUrl::parse("http://h:1/p?q").unwrap();
        let r = String::from_utf8(request(&t, b"{}")).unwrap();
        assert!(r.starts_with("POST /p?q HTTP/1.1\r\nhost: h:1\r\n"), "{r}");
        assert!(r.contains("\r\ncontent-type: application/json\r\n"), "{r}");
        assert!(
            r.contains("\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"),
            "{r}"
        );
    }

    #[test]
    fn heads() {
        let final_answer = |bytes: &[u8]| match parse_head(bytes) {
            Ok(Some(Head::Final(a))) => Ok(a),
            Ok(other) => panic!("not final: {other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(
            final_answer(b"HTTP/1.1 204 No\r\n\r\n"),
            Ok(HookAnswer::Allow)
        );
        assert_eq!(
            final_answer(b"HTTP/1.1 302 Found\r\nLocation: other_1\r\n\r\n"),
            Ok(HookAnswer::Rename("other_1".into()))
        );
        assert_eq!(
            final_answer(b"HTTP/1.0 301 x\r\nlocation: rtmp://h/live/x\r\n\r\n"),
            Ok(HookAnswer::Deny { status: 301 })
        );
        assert_eq!(
            final_answer(b"HTTP/1.1 302 Found\r\nLocation: ..\r\n\r\n"),
            Ok(HookAnswer::Deny { status: 302 })
        );
        let long = format!("HTTP/1.1 302 F\r\nLocation: {}\r\n\r\n", "a".repeat(256));
        assert_eq!(
            final_answer(long.as_bytes()),
            Ok(HookAnswer::Deny { status: 302 })
        );
        assert_eq!(
            final_answer(b"HTTP/1.1 307 x\r\n\r\n"),
            Ok(HookAnswer::Deny { status: 307 })
        );
        assert_eq!(
            final_answer(b"HTTP/1.1 503 x\r\n\r\n"),
            Ok(HookAnswer::Deny { status: 503 })
        );
        assert_eq!(final_answer(b"HTTP/1.1 600 x\r\n\r\n"), Err("bad_answer"));
        assert_eq!(final_answer(b"HTTP/1.1 101 x\r\n\r\n"), Err("bad_answer"));
        assert_eq!(final_answer(b"SSH-2.0-OpenSSH\r\n\r\n"), Err("bad_answer"));
        assert!(matches!(
            parse_head(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"),
            Ok(Some(Head::Interim(25)))
        ));
        assert!(matches!(parse_head(b"HTTP/1.1 200 OK\r\nx: y"), Ok(None)));
    }

    #[test]
    fn allowed() {
        assert!(HookAnswer::Allow.allowed(OnFailure::Deny));
        assert!(HookAnswer::Rename("x".into()).allowed(OnFailure::Deny));
        assert!(!HookAnswer::Deny { status: 403 }.allowed(OnFailure::Allow));
        assert!(!HookAnswer::Failed("timeout").allowed(OnFailure::Deny));
        assert!(HookAnswer::Failed("timeout").allowed(OnFailure::Allow));
    }

    #[test]
    fn json_body() {
        let event = HookEvent {
            action: "play",
            app: "live".into(),
            stream: "a\"b".into(),
            client: "::1".parse().unwrap(),
            protocol: "hls",
            tls: true,
            query: "t=1&u=2".into(),
            node: "n1".into(),
        };
        let v: serde_json::Value = serde_json::from_slice(&event.json()).unwrap();
        assert_eq!(v["stream"], "a\"b");
        assert_eq!(v["client"], "::1");
        assert_eq!(v["query"], "t=1&u=2");
        assert_eq!(v["node"], "n1");
        assert_eq!(v["tls"], true);
    }
}
