//! The webhook client against a real HTTP server on loopback: a small one written here that
//! records each request (path, content type, JSON body) and answers by the event's stream
//! name, so every test asserts on what went over the wire and on the counters.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use sluice_core::metrics::Metrics;
use sluice_front::webhook::{
    HookAnswer, HookEvent, OnFailure, WebhookSettings, Webhooks, check_url,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::task::TaskTracker;

/// What the hook server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    content_type: String,
    body: Value,
}

/// A hook server on 127.0.0.1:0. It answers by the event's `stream`:
/// `ok` 200, `no` 403, `moved` 302 to `newname`, `elsewhere` 302 to an RTMP URL, `slow` 200
/// after 10 s, `wait300` 200 after 300 ms, `garbage` no HTTP, `continue` a 100 then a 200.
struct HookServer {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    arrived: mpsc::Receiver<Seen>,
}

impl HookServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, arrived) = mpsc::channel(64);
        let (r, i, m, s) = (
            requests.clone(),
            in_flight.clone(),
            max_in_flight.clone(),
            seen.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let (r, i, m, s, tx) = (r.clone(), i.clone(), m.clone(), s.clone(), tx.clone());
                tokio::spawn(async move {
                    serve_one(socket, &r, &i, &m, &s, &tx).await;
                });
            }
        });
        HookServer {
            addr,
            requests,
            max_in_flight,
            seen,
            arrived,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

/// Reads one request, records it, answers it.
async fn serve_one(
    mut socket: TcpStream,
    requests: &AtomicUsize,
    in_flight: &AtomicUsize,
    max_in_flight: &AtomicUsize,
    seen: &Mutex<Vec<Seen>>,
    arrived: &mpsc::Sender<Seen>,
) {
    // In flight from accept until the answer is written: the client cannot have its answer
    // (and free its slot) before, so this never counts more than the client's bound.
    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    max_in_flight.fetch_max(now, Ordering::SeqCst);
    let answered = Answered(in_flight);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_len, method, path, content_type, length) = loop {
        let Ok(n) = socket.read(&mut chunk).await else {
            return;
        };
        if n == 0 || buf.len() > 64 * 1024 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = request.parse(&buf) {
            let header = |name: &str| {
                request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
                    .unwrap_or_default()
            };
            let length: usize = header("content-length").parse().unwrap_or(0);
            break (
                len,
                request.method.unwrap_or_default().to_owned(),
                request.path.unwrap_or_default().to_owned(),
                header("content-type"),
                length,
            );
        }
    };
    while buf.len() < head_len + length {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body: Value = serde_json::from_slice(&buf[head_len..head_len + length]).unwrap_or_default();
    let stream = body["stream"].as_str().unwrap_or_default().to_owned();
    let request = Seen {
        method,
        path,
        content_type,
        body,
    };
    requests.fetch_add(1, Ordering::SeqCst);
    seen.lock().unwrap().push(request.clone());
    let _ = arrived.try_send(request);

    let answer: &[u8] = match stream.as_str() {
        "ok" => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        "no" => b"HTTP/1.1 403 Forbidden\r\ncontent-length: 6\r\n\r\nnope!\n",
        "moved" => b"HTTP/1.1 302 Found\r\nLocation: newname\r\ncontent-length: 0\r\n\r\n",
        "elsewhere" => b"HTTP/1.1 302 Found\r\nLocation: rtmp://other/live/x\r\n\r\n",
        "garbage" => b"hello, this is not HTTP\r\n\r\n",
        "continue" => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        "slow" => {
            sleep(Duration::from_secs(10)).await;
            b"HTTP/1.1 200 OK\r\n\r\n"
        }
        "wait300" => {
            sleep(Duration::from_millis(300)).await;
            b"HTTP/1.1 200 OK\r\n\r\n"
        }
        _ => b"HTTP/1.1 500 Internal Server Error\r\n\r\n",
    };
    drop(answered);
    let _ = socket.write_all(answer).await;
    let _ = socket.shutdown().await;
}

/// Takes a request out of the in-flight count when dropped (answered, or given up).
struct Answered<'a>(&'a AtomicUsize);

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn settings(timeout_ms: u64, max_concurrent: usize, cache_ms: u64) -> WebhookSettings {
    WebhookSettings {
        timeout_ms,
        max_concurrent,
        cache_ms,
        on_failure: OnFailure::Deny,
    }
}

fn event(action: &'static str, stream: &str) -> HookEvent {
    HookEvent {
        action,
        app: "live".into(),
        stream: stream.into(),
        client: "192.0.2.7".parse().unwrap(),
        protocol: "rtmp",
        tls: false,
        query: "token=s3cr%20t&x=1".into(),
        node: "edge-1".into(),
    }
}

/// `sluice_webhook_requests_total{hook,result}` as exposed.
fn counted(metrics: &Metrics, hook: &str, result: &str) -> u64 {
    let prefix = format!("sluice_webhook_requests_total{{hook=\"{hook}\",result=\"{result}\"}} ");
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(|v| v.parse().unwrap()))
        .unwrap_or(0)
}

/// `sluice_webhook_duration_seconds_count{hook}` as exposed.
fn timed(metrics: &Metrics, hook: &str) -> u64 {
    let prefix = format!("sluice_webhook_duration_seconds_count{{hook=\"{hook}\"}} ");
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(|v| v.parse().unwrap()))
        .unwrap_or(0)
}

#[tokio::test]
async fn answers_by_status_and_the_request_carries_the_event() {
    let server = HookServer::start().await;
    let metrics = Metrics::new();
    let hooks = Webhooks::new(settings(2000, 8, 0), &metrics, TaskTracker::new());
    let url = server.url("/hooks/on_publish?secret=1");
    check_url(&url).unwrap();

    assert_eq!(
        hooks.ask(&url, &event("publish", "ok")).await,
        HookAnswer::Allow
    );
    let seen = server.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/hooks/on_publish?secret=1");
    assert_eq!(seen.content_type, "application/json");
    let body = seen.body.as_object().expect("a JSON object");
    assert_eq!(body.len(), 8, "{body:?}");
    assert_eq!(body["action"], "publish");
    assert_eq!(body["app"], "live");
    assert_eq!(body["stream"], "ok");
    assert_eq!(body["client"], "192.0.2.7");
    assert_eq!(body["protocol"], "rtmp");
    assert_eq!(body["tls"], false);
    assert_eq!(body["query"], "token=s3cr%20t&x=1");
    assert_eq!(body["node"], "edge-1");

    assert_eq!(
        hooks.ask(&url, &event("play", "no")).await,
        HookAnswer::Deny { status: 403 }
    );
    assert_eq!(server.last().body["action"], "play");
    assert_eq!(
        hooks.ask(&url, &event("publish", "moved")).await,
        HookAnswer::Rename("newname".into())
    );
    assert_eq!(
        hooks.ask(&url, &event("play", "elsewhere")).await,
        HookAnswer::Deny { status: 302 }
    );
    assert_eq!(
        hooks.ask(&url, &event("play", "other")).await,
        HookAnswer::Deny { status: 500 }
    );
    assert_eq!(
        hooks.ask(&url, &event("publish", "continue")).await,
        HookAnswer::Allow
    );
    let garbage = hooks.ask(&url, &event("publish", "garbage")).await;
    assert_eq!(garbage, HookAnswer::Failed("bad_answer"));
    assert!(!garbage.allowed(OnFailure::Deny));
    assert!(garbage.allowed(OnFailure::Allow));
    assert_eq!(server.requests(), 7);

    assert_eq!(counted(&metrics, "publish", "allow"), 2);
    assert_eq!(counted(&metrics, "publish", "rename"), 1);
    assert_eq!(counted(&metrics, "publish", "failed"), 1);
    assert_eq!(counted(&metrics, "play", "deny"), 3);
    assert_eq!(counted(&metrics, "publish", "cached"), 0);
    assert_eq!(timed(&metrics, "publish"), 4);
    assert_eq!(timed(&metrics, "play"), 3);
}

#[tokio::test]
async fn a_slow_hook_times_out_and_on_failure_decides() {
    let server = HookServer::start().await;
    let metrics = Metrics::new();
    let hooks = Webhooks::new(settings(300, 8, 5000), &metrics, TaskTracker::new());
    let url = server.url("/on_play");

    let started = Instant::now();
    let answer = hooks.ask(&url, &event("play", "slow")).await;
    let took = started.elapsed();
    assert_eq!(answer, HookAnswer::Failed("timeout"));
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    assert!(!answer.allowed(OnFailure::Deny));
    assert!(answer.allowed(OnFailure::Allow));
    assert_eq!(server.requests(), 1, "the request reached the server");
    assert_eq!(counted(&metrics, "play", "failed"), 1);

    // A failure is not cached: the next ask goes out again.
    assert_eq!(
        hooks.ask(&url, &event("play", "slow")).await,
        HookAnswer::Failed("timeout")
    );
    assert_eq!(server.requests(), 2);
    assert_eq!(counted(&metrics, "play", "cached"), 0);
}

#[tokio::test]
async fn a_refused_connection_fails_with_connect() {
    // A port that was just ours and is closed now.
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let metrics = Metrics::new();
    let hooks = Webhooks::new(settings(2000, 8, 5000), &metrics, TaskTracker::new());
    let url = format!("http://127.0.0.1:{port}/on_publish");
    let answer = hooks.ask(&url, &event("publish", "ok")).await;
    assert_eq!(answer, HookAnswer::Failed("connect"));
    assert!(!answer.allowed(OnFailure::Deny));
    assert_eq!(counted(&metrics, "publish", "failed"), 1);
}

#[tokio::test]
async fn answers_are_cached_for_the_same_question() {
    let server = HookServer::start().await;
    let metrics = Metrics::new();
    let hooks = Webhooks::new(settings(2000, 8, 5000), &metrics, TaskTracker::new());
    let url = server.url("/on_publish");

    assert_eq!(
        hooks.ask(&url, &event("publish", "ok")).await,
        HookAnswer::Allow
    );
    assert_eq!(
        hooks.ask(&url, &event("publish", "ok")).await,
        HookAnswer::Allow
    );
    assert_eq!(
        server.requests(),
        1,
        "the second ask did not reach the server"
    );
    assert_eq!(counted(&metrics, "publish", "cached"), 1);
    assert_eq!(counted(&metrics, "publish", "allow"), 1);

    // Denials and renames are cached too.
    for _ in 0..2 {
        assert_eq!(
            hooks.ask(&url, &event("publish", "no")).await,
            HookAnswer::Deny { status: 403 }
        );
        assert_eq!(
            hooks.ask(&url, &event("publish", "moved")).await,
            HookAnswer::Rename("newname".into())
        );
    }
    assert_eq!(server.requests(), 3);
    assert_eq!(counted(&metrics, "publish", "cached"), 3);

    // Any part of the question differing is another question.
    let mut other_client = event("publish", "ok");
    other_client.client = IpAddr::from([192, 0, 2, 8]);
    let mut other_query = event("publish", "ok");
    other_query.query = "token=other".into();
    hooks.ask(&url, &other_client).await;
    hooks.ask(&url, &other_query).await;
    hooks.ask(&url, &event("play", "ok")).await;
    hooks
        .ask(&server.url("/on_publish2"), &event("publish", "ok"))
        .await;
    assert_eq!(server.requests(), 7);

    // Failures are not cached.
    hooks.ask(&url, &event("publish", "garbage")).await;
    hooks.ask(&url, &event("publish", "garbage")).await;
    assert_eq!(server.requests(), 9);

    // A new cache_ms forgets what was cached; the same one keeps it.
    hooks.reconfigure(settings(2000, 8, 5000));
    hooks.ask(&url, &event("publish", "ok")).await;
    assert_eq!(server.requests(), 9);
    hooks.reconfigure(settings(2000, 8, 4000));
    hooks.ask(&url, &event("publish", "ok")).await;
    assert_eq!(server.requests(), 10);

    // cache_ms = 0: every ask goes out.
    hooks.reconfigure(settings(2000, 8, 0));
    hooks.ask(&url, &event("publish", "ok")).await;
    hooks.ask(&url, &event("publish", "ok")).await;
    assert_eq!(server.requests(), 12);
}

#[tokio::test]
async fn cached_answers_expire_after_cache_ms() {
    let server = HookServer::start().await;
    let metrics = Metrics::new();
    let hooks = Webhooks::new(settings(2000, 8, 1000), &metrics, TaskTracker::new());
    let url = server.url("/on_play");
    hooks.ask(&url, &event("play", "ok")).await;
    hooks.ask(&url, &event("play", "ok")).await;
    assert_eq!(server.requests(), 1);
    sleep(Duration::from_millis(1300)).await;
    hooks.ask(&url, &event("play", "ok")).await;
    assert_eq!(server.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_than_max_concurrent_requests_in_flight() {
    let server = HookServer::start().await;
    let metrics = Metrics::new();
    let hooks = Webhooks::new(settings(5000, 2, 0), &metrics, TaskTracker::new());
    let url = server.url("/on_play");

    let started = Instant::now();
    let mut asks = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let (hooks, url) = (hooks.clone(), url.clone());
        asks.spawn(async move { hooks.ask(&url, &event("play", "wait300")).await });
    }
    while let Some(answer) = asks.join_next().await {
        assert_eq!(answer.unwrap(), HookAnswer::Allow);
    }
    assert_eq!(server.requests(), 5);
    assert_eq!(server.max_in_flight.load(Ordering::SeqCst), 2);
    // Three rounds of 300 ms, two at a time.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(counted(&metrics, "play", "allow"), 5);
}

#[tokio::test]
async fn an_ask_that_waits_past_the_timeout_for_a_slot_is_busy() {
    let server = HookServer::start().await;
    let metrics = Metrics::new();
    let hooks = Webhooks::new(settings(5000, 1, 0), &metrics, TaskTracker::new());
    let url = server.url("/on_play");

    // The one slot, held by a request the server sits on.
    let holder = {
        let (hooks, url) = (hooks.clone(), url.clone());
        tokio::spawn(async move { hooks.ask(&url, &event("play", "slow")).await })
    };
    timeout(Duration::from_secs(5), async {
        while server.requests() == 0 {
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the slow request arrived");

    // A shorter deadline for new asks; the slot (same max_concurrent) stays taken.
    hooks.reconfigure(settings(200, 1, 0));
    let started = Instant::now();
    let answer = hooks.ask(&url, &event("play", "ok")).await;
    let took = started.elapsed();
    assert_eq!(answer, HookAnswer::Failed("busy"));
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    assert_eq!(server.requests(), 1, "the busy ask sent nothing");
    assert_eq!(counted(&metrics, "play", "failed"), 1);

    // Dropping the holder frees the slot.
    holder.abort();
    let _ = holder.await;
    assert_eq!(
        hooks.ask(&url, &event("play", "ok")).await,
        HookAnswer::Allow
    );
}

#[tokio::test]
async fn notify_never_waits_and_the_done_event_arrives() {
    let mut server = HookServer::start().await;
    let metrics = Metrics::new();
    let tracker = TaskTracker::new();
    let hooks = Webhooks::new(settings(2000, 8, 5000), &metrics, tracker.clone());
    let url = server.url("/on_publish_done");

    let started = Instant::now();
    let mut done = event("publish_done", "wait300");
    done.tls = true;
    hooks.notify(&url, done);
    // The server sits on the request for 300 ms: notify came back without its answer.
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "notify waited"
    );
    assert_eq!(counted(&metrics, "publish_done", "allow"), 0);

    let seen = timeout(Duration::from_secs(5), server.arrived.recv())
        .await
        .expect("the done event arrived in time")
        .expect("the server runs");
    assert_eq!(seen.path, "/on_publish_done");
    assert_eq!(seen.content_type, "application/json");
    assert_eq!(seen.body["action"], "publish_done");
    assert_eq!(seen.body["app"], "live");
    assert_eq!(seen.body["stream"], "wait300");
    assert_eq!(seen.body["client"], "192.0.2.7");
    assert_eq!(seen.body["tls"], true);
    assert_eq!(seen.body["query"], "token=s3cr%20t&x=1");
    assert_eq!(seen.body["node"], "edge-1");

    // The task ends with the answer, counted, on the node's tracker.
    tracker.close();
    timeout(Duration::from_secs(5), tracker.wait())
        .await
        .expect("the notification finished");
    assert_eq!(counted(&metrics, "publish_done", "allow"), 1);
    assert_eq!(timed(&metrics, "publish_done"), 1);
}

#[tokio::test]
async fn notify_drops_and_counts_when_every_slot_is_taken() {
    let mut server = HookServer::start().await;
    let metrics = Metrics::new();
    let hooks = Webhooks::new(settings(5000, 1, 0), &metrics, TaskTracker::new());
    let url = server.url("/on_play_done");

    let started = Instant::now();
    hooks.notify(&url, event("play_done", "slow"));
    hooks.notify(&url, event("play_done", "slow"));
    hooks.notify(&url, event("play_done", "slow"));
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "notify waited"
    );
    assert_eq!(counted(&metrics, "play_done", "dropped"), 2);

    let seen = timeout(Duration::from_secs(5), server.arrived.recv())
        .await
        .expect("the first event arrived")
        .unwrap();
    assert_eq!(seen.body["action"], "play_done");
    sleep(Duration::from_millis(200)).await;
    assert_eq!(server.requests(), 1, "the dropped events were not sent");
}
