//! A Sluice node in-process on loopback port 0, and the scenarios a few test files share.
//!
//! The node stays here rather than in `sluice-testkit`: it needs the binary crate's `App`, and
//! the testkit must not depend on the binary crate (which dev-depends on the testkit).
//! Everything that does not need `App` is in `sluice-testkit`.
#![allow(dead_code)]

pub mod budget;
pub mod cluster;
pub mod rtmp;

use std::sync::Arc;
use std::time::Duration;

use sluice::App;
use sluice::app::Addrs;
use sluice_core::Config;
use sluice_runtime::Context;
use sluice_testkit::http::{self, metric_value};
use sluice_testkit::node::merge_sections;

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
        http::get(self.addrs.admin, "/metrics").await.1
    }

    /// The value of one metric line (exact name with labels as printed), 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    pub async fn streams_json(&self) -> serde_json::Value {
        let (_, body) = http::get(self.addrs.admin, "/api/streams").await;
        serde_json::from_str(&body).expect("json")
    }
}
