//! Reads a Sluice node's admin API: `/metrics` counters and `/api/pulls`. A plain HTTP/1.0
//! GET (so the body is close-delimited, never chunked), with a deadline.

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Deadline for one admin request.
const DEADLINE: Duration = Duration::from_secs(3);
/// Largest admin response read.
const MAX_BODY: u64 = 8 << 20;

/// GETs `path` from the admin listener at `base` (`http://host:port`); returns the body of a
/// 200 response.
pub async fn get(base: &str, path: &str) -> anyhow::Result<String> {
    let addr = base
        .strip_prefix("http://")
        .with_context(|| format!("admin URL must be http://host:port, not {base}"))?
        .trim_end_matches('/');
    let fetch = async {
        let mut socket = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        socket.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        socket.take(MAX_BODY).read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = timeout(DEADLINE, fetch)
        .await
        .with_context(|| format!("GET {base}{path}: timed out"))?
        .with_context(|| format!("GET {base}{path}"))?;
    let text = String::from_utf8(response).context("admin response is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {base}{path}: no response head"))?;
    let status = head.split(' ').nth(1).unwrap_or_default();
    if status != "200" {
        bail!("GET {base}{path}: HTTP {status}");
    }
    Ok(body.to_owned())
}

/// The sum of a counter's samples over all its label sets in a Prometheus text exposition
/// (`name` without the `_total` suffix); 0 when absent.
pub fn counter(metrics: &str, name: &str) -> f64 {
    let full = format!("{name}_total");
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(&full)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A counter read from `base`'s `/metrics`.
pub async fn read_counter(base: &str, name: &str) -> anyhow::Result<f64> {
    Ok(counter(&get(base, "/metrics").await?, name))
}

/// The pulls `base` runs (`/api/pulls`): (stream, upstream URL, switches) per pull.
pub async fn pulls(base: &str) -> anyhow::Result<Vec<(String, Option<String>, u64)>> {
    let body = get(base, "/api/pulls").await?;
    let json: serde_json::Value = serde_json::from_str(&body).context("/api/pulls JSON")?;
    let list = json["pulls"]
        .as_array()
        .context("/api/pulls: no pulls array")?;
    Ok(list
        .iter()
        .map(|p| {
            (
                p["stream"].as_str().unwrap_or_default().to_owned(),
                p["upstream"].as_str().map(str::to_owned),
                p["switches"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_a_counter_over_labels() {
        let text = "# HELP sluice_pull_starts Pull attempts\n\
                    # TYPE sluice_pull_starts counter\n\
                    sluice_pull_starts_total{transport=\"rtmp\"} 3\n\
                    sluice_pull_starts_total{transport=\"quic\"} 2\n\
                    sluice_pull_starts_totalx 100\n\
                    sluice_pulls 4\n";
        assert_eq!(counter(text, "sluice_pull_starts"), 5.0);
        assert_eq!(counter(text, "sluice_pulls"), 0.0);
    }
}
