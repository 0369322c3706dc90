//! A throwaway etcd server for registry tests: Debian's `etcd-server` (installed with apt when
//! missing, as root), one member on loopback ports found free, its data in a temporary
//! directory, stopped by PID when dropped (or by [`Etcd::stop`], to test an outage).

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

use crate::process::Child;
use crate::tools;

/// How long etcd may take to answer its health check.
const READY: Duration = Duration::from_secs(30);

/// A running etcd.
#[derive(Debug)]
pub struct Etcd {
    /// The client address (`http://` + this is the endpoint).
    pub client: SocketAddr,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

/// A loopback port free now (bound to port 0, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

impl Etcd {
    /// Starts etcd and waits until it reports itself healthy.
    pub async fn start() -> Etcd {
        let bin = tools::etcd();
        let dir = tempfile::Builder::new()
            .prefix("sluice-etcd-")
            .tempdir()
            .expect("tempdir");
        let (client_port, peer_port) = (free_port(), free_port());
        let client: SocketAddr = format!("127.0.0.1:{client_port}").parse().expect("addr");
        let client_url = format!("http://{client}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new(bin);
        cmd.arg("--name")
            .arg("test")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(format!("test={peer_url}"))
            .arg("--log-level")
            .arg("error")
            .env_clear();
        let child = Child::spawn(&mut cmd).expect("spawn etcd");
        let etcd = Etcd {
            client,
            child: Some(child),
            _dir: dir,
        };
        let deadline = Instant::now() + READY;
        while !etcd.healthy().await {
            assert!(
                Instant::now() < deadline,
                "etcd on {client} not healthy within {READY:?}: {}",
                etcd.child
                    .as_ref()
                    .map(Child::stderr_tail)
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        etcd
    }

    /// The endpoint for `[cluster.registry] endpoints`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.client)
    }

    /// Its PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether `/health` answers healthy.
    pub async fn healthy(&self) -> bool {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(self.client).await.ok()?;
            s.write_all(b"GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n")
                .await
                .ok()?;
            let mut body = Vec::new();
            s.read_to_end(&mut body).await.ok()?;
            let text = String::from_utf8_lossy(&body).replace(' ', "");
            Some(text.contains("\"health\":\"true\""))
        };
        tokio::time::timeout(Duration::from_secs(2), attempt)
            .await
            .ok()
            .flatten()
            .unwrap_or(false)
    }

    /// Kills etcd (SIGKILL, by PID): an outage.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }
}
