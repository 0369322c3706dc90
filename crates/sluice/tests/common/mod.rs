//! A Sluice node in-process on loopback port 0, and small clients for the tests.
#![allow(dead_code)]

pub mod budget;
pub mod cluster;
pub mod rtmp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice::App;
use sluice::app::Addrs;
use sluice_core::Config;
use sluice_runtime::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running node; shut down (and awaited) on drop of the runtime or by `stop`.
pub struct Node {
    pub addrs: Addrs,
    pub ctx: Arc<Context>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// The test config: loopback, port 0, short timeouts so tests end quickly.
pub fn test_config(extra: &str) -> Config {
    let base = r#"
[server]
shutdown_timeout_ms = 2000
[rtmp]
listen = "127.0.0.1:0"
handshake_timeout_ms = 2000
[http]
listen = "127.0.0.1:0"
request_timeout_ms = 2000
[admin]
listen = "127.0.0.1:0"
[streams]
wait_for_publisher_ms = 8000
republish_grace_ms = 500
"#;
    let mut merged = String::from(base);
    merged.push_str(extra);
    Config::load(Some(&merge_sections(&merged)), std::iter::empty()).expect("test config")
}

/// TOML forbids repeating a table header; fold repeated sections of `text` together so tests
/// can append overrides.
fn merge_sections(text: &str) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut sections: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            current = t.to_owned();
            if !sections.contains_key(&current) {
                order.push(current.clone());
                sections.insert(current.clone(), Vec::new());
            }
        } else if !t.is_empty() {
            let lines = sections.entry(current.clone()).or_default();
            let key = t.split('=').next().unwrap_or("").trim().to_owned();
            lines.retain(|l| l.split('=').next().unwrap_or("").trim() != key);
            lines.push(t.to_owned());
        }
    }
    let mut out = String::new();
    for s in order {
        out.push_str(&s);
        out.push('\n');
        for l in &sections[&s] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

impl Node {
    pub async fn start(config: Config) -> Node {
        let app = App::bind(config).await.expect("bind");
        let addrs = app.addrs();
        let ctx = app.context();
        let task = tokio::spawn(app.run());
        Node { addrs, ctx, task }
    }

    pub async fn start_default() -> Node {
        Self::start(test_config("")).await
    }

    pub fn rtmp_url(&self, path: &str) -> String {
        format!("rtmp://{}/{}", self.addrs.rtmp, path)
    }

    pub fn flv_url(&self, path: &str) -> String {
        format!("http://{}/{}.flv", self.addrs.http, path)
    }

    /// Stops the node and waits for it (bounded).
    pub async fn stop(self) {
        self.ctx.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }

    pub async fn metrics(&self) -> String {
        http_get(self.addrs.admin, "/metrics").await.1
    }

    /// The value of one metric line (exact name with labels as printed), 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    pub async fn streams_json(&self) -> serde_json::Value {
        let (_, body) = http_get(self.addrs.admin, "/api/streams").await;
        serde_json::from_str(&body).expect("json")
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A minimal HTTP/1.0 GET: (status, body). Loopback only.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("http get timed out")
}

/// Polls `check` every 20 ms until it holds, for at most `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
