//! A webhook receiver for tests and benches: a real HTTP/1.1 server on loopback that records
//! each JSON event it is sent and answers as its `decide` function says (allow, refuse,
//! redirect to another stream name, or answer late).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Largest request the receiver reads.
const MAX_REQUEST: usize = 64 * 1024;

/// How the receiver answers one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// This status, empty body.
    Status(u16),
    /// 302 with this `Location`.
    Redirect(String),
    /// This status after this long.
    Late(Duration, u16),
}

/// The receiver; stops when dropped.
#[derive(Debug)]
pub struct HookServer {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Value>>>,
    busiest: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for HookServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HookServer {
    /// Starts a receiver on 127.0.0.1:0 answering each event (its JSON body) with `decide`.
    pub async fn start(decide: impl Fn(&Value) -> Reply + Send + Sync + 'static) -> HookServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind hooks");
        let addr = listener.local_addr().expect("hooks addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let busiest = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let decide = Arc::new(decide);
        let (rec, busy) = (received.clone(), busiest.clone());
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (rec, busy, in_flight, decide) =
                    (rec.clone(), busy.clone(), in_flight.clone(), decide.clone());
                tokio::spawn(async move {
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    busy.fetch_max(now, Ordering::SeqCst);
                    let _ = answer(socket, &rec, &*decide).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        HookServer {
            addr,
            received,
            busiest,
            task,
        }
    }

    /// `http://ADDR/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// The events received so far, in order.
    pub fn received(&self) -> Vec<Value> {
        self.received.lock().clone()
    }

    /// The events received with `action`.
    pub fn received_with(&self, action: &str) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|e| e["action"] == action)
            .collect()
    }

    /// Most requests it handled at once.
    pub fn busiest(&self) -> usize {
        self.busiest.load(Ordering::SeqCst)
    }
}

async fn answer(
    mut socket: TcpStream,
    received: &Mutex<Vec<Value>>,
    decide: &(dyn Fn(&Value) -> Reply + Send + Sync),
) -> std::io::Result<()> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let (head_end, length) = loop {
        let n = socket.read(&mut buf).await?;
        if n == 0 || data.len() > MAX_REQUEST {
            return Ok(());
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, length.min(MAX_REQUEST));
        }
    };
    while data.len() < head_end + length {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        data.extend_from_slice(&buf[..n]);
    }
    let event: Value =
        serde_json::from_slice(&data[head_end..head_end + length]).unwrap_or(Value::Null);
    received.lock().push(event.clone());
    let (status, location) = match decide(&event) {
        Reply::Status(status) => (status, None),
        Reply::Redirect(to) => (302, Some(to)),
        Reply::Late(after, status) => {
            tokio::time::sleep(after).await;
            (status, None)
        }
    };
    let mut response = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n");
    if let Some(to) = location {
        response.push_str(&format!("location: {to}\r\n"));
    }
    response.push_str("\r\n");
    socket.write_all(response.as_bytes()).await?;
    socket.shutdown().await
}
