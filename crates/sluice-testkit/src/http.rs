//! Plain HTTP/1.0 requests to a node (admin API, HTTP-FLV heads) and reading its Prometheus
//! text. HTTP/1.0 so the server ends every response by closing: no chunked bodies to undo.
//! [`KeepAlive`] is an HTTP/1.1 connection that asks many times (an HLS player's), for bodies
//! with a `content-length`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Deadline for one request, connect to close.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A response as read off the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code, 0 if the status line did not parse.
    pub status: u16,
    /// The status line and headers, without the blank line.
    pub head: String,
    /// Everything after the blank line, lossily decoded.
    pub body: String,
}

/// Sends `METHOD path` (no body) to `addr` and reads the response until the server closes.
/// Panics on a connection error or after [`DEADLINE`]. Loopback only.
pub async fn request(addr: SocketAddr, method: &str, path: &str) -> Response {
    request_with(addr, method, path, &[]).await
}

/// Sends `METHOD path` with extra header lines (each `Name: value`), like [`request`].
pub async fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
) -> Response {
    let exchange = async {
        let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut head = format!("{method} {path} HTTP/1.0\r\nHost: x\r\n");
        for line in headers {
            head.push_str(line);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        socket.write_all(head.as_bytes()).await.expect("request");
        let mut bytes = Vec::new();
        socket.read_to_end(&mut bytes).await.expect("response");
        parse(&String::from_utf8_lossy(&bytes))
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path} to {addr} timed out"))
}

/// `GET path`: (status, body).
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = request(addr, "GET", path).await;
    (response.status, response.body)
}

fn parse(text: &str) -> Response {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    Response {
        status: head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// One HTTP/1.1 connection kept open across requests, as an HLS player holds it.
#[derive(Debug)]
pub struct KeepAlive {
    socket: tokio::net::TcpStream,
    /// Bytes read past the last response.
    pending: Vec<u8>,
}

/// A response on a [`KeepAlive`] connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// Header lines, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body (`content-length` bytes).
    pub body: Vec<u8>,
    /// The server said it closes the connection after this response.
    pub closes: bool,
}

impl Reply {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl KeepAlive {
    /// Connects to `addr` (loopback).
    pub async fn connect(addr: SocketAddr) -> KeepAlive {
        let socket = tokio::time::timeout(DEADLINE, tokio::net::TcpStream::connect(addr))
            .await
            .expect("connect deadline")
            .expect("connect");
        KeepAlive {
            socket,
            pending: Vec::new(),
        }
    }

    /// `GET path` on this connection; panics on a connection error, a response without a
    /// `content-length`, or after `deadline`.
    pub async fn get(&mut self, path: &str, deadline: Duration) -> Reply {
        self.try_get(path, deadline)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// `GET path`, or why no response came.
    pub async fn try_get(&mut self, path: &str, deadline: Duration) -> Result<Reply, String> {
        let exchange = async {
            self.socket
                .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .map_err(|e| format!("request: {e}"))?;
            let head_end = loop {
                if let Some(at) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
                self.read_more().await?;
            };
            let head = String::from_utf8_lossy(&self.pending[..head_end]).into_owned();
            let mut lines = head.split("\r\n");
            let status = lines
                .next()
                .and_then(|l| l.split(' ').nth(1))
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("bad status line in {head:?}"))?;
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            let length: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .ok_or_else(|| format!("no content-length in {head:?}"))?;
            while self.pending.len() < head_end + length {
                self.read_more().await?;
            }
            let body = self.pending[head_end..head_end + length].to_vec();
            self.pending.drain(..head_end + length);
            let closes = headers
                .iter()
                .any(|(n, v)| n == "connection" && v.eq_ignore_ascii_case("close"));
            Ok(Reply {
                status,
                headers,
                body,
                closes,
            })
        };
        tokio::time::timeout(deadline, exchange)
            .await
            .map_err(|_| format!("no response within {deadline:?}"))?
    }

    async fn read_more(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 16 * 1024];
        match self.socket.read(&mut chunk).await {
            Ok(0) => Err("connection closed".to_owned()),
            Ok(n) => {
                self.pending.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err(format!("read: {e}")),
        }
    }
}

/// The value of one series in Prometheus text: `series` is the exact name with its labels
/// as printed (`name{a="b"}`); 0 if absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The sum of every series of the metric `name` (all label sets) in Prometheus text.
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

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# TYPE sluice_pulls_total counter\n\
        sluice_pulls_total{transport=\"rtmp\"} 2\n\
        sluice_pulls_total{transport=\"quic\"} 3\n\
        sluice_pulls_total_other 100\n\
        sluice_viewers 7\n";

    #[test]
    fn reads_one_series_exactly_and_sums_a_metric_over_its_labels() {
        assert_eq!(
            metric_value(METRICS, "sluice_pulls_total{transport=\"quic\"}"),
            3.0
        );
        assert_eq!(metric_value(METRICS, "sluice_viewers"), 7.0);
        assert_eq!(
            metric_value(METRICS, "sluice_pulls_total"),
            0.0,
            "no bare series"
        );
        assert_eq!(metric_value(METRICS, "sluice_absent"), 0.0);
        assert_eq!(metric_sum(METRICS, "sluice_pulls_total"), 5.0);
        assert_eq!(metric_sum(METRICS, "sluice_viewers"), 7.0);
    }

    #[test]
    fn splits_status_head_and_body() {
        let r = parse("HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope");
        assert_eq!(r.status, 404);
        assert_eq!(r.head, "HTTP/1.1 404 Not Found\r\nContent-Length: 4");
        assert_eq!(r.body, "nope");
        assert_eq!(parse("garbage").status, 0);
    }
}
