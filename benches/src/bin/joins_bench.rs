//! Joins per second: how fast a node admits HTTP-FLV viewers under its access control.
//!
//! Each of `--concurrency` workers joins again and again until `--duration` ends: connect,
//! `GET` the URL (with `&n=COUNTER` appended, so no two joins ask the same thing and no
//! webhook answer is reused from the node's cache), read the response head and the first FLV
//! bytes, close. With `--hook-listen` it also serves as the node's webhook receiver (every
//! event answered 200 at once), so a run measures the node's webhook round trip, not a slow
//! hook. With `--server-pid` it reports the node's CPU per join from /proc.
//!
//! Prints one JSON object: joins, joins_per_s, failures (non-200 or cut), join latency
//! p50/p99 (ms), server CPU ms per join.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{Context as _, bail};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes of body read before a join counts: the FLV file header and a first tag's start.
const FIRST_BYTES: usize = 32;
/// Deadline of one join.
const JOIN_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(about = "HTTP-FLV joins per second against a node")]
struct Args {
    /// http://HOST:PORT/APP/STREAM.flv[?QUERY] (credentials in the query).
    #[arg(long)]
    url: String,
    /// Workers joining at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds to run (bounded: at most 120).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Also answer the node's webhooks here (200 to every event).
    #[arg(long)]
    hook_listen: Option<SocketAddr>,
    /// The node's PID, for its CPU per join.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rest = args
        .url
        .strip_prefix("http://")
        .context("--url must be http://")?;
    let (authority, target) = rest.split_once('/').context("--url needs a path")?;
    let addr: SocketAddr = authority.parse().context("--url host must be IP:PORT")?;
    let target = format!("/{target}");
    let separator = if target.contains('?') { '&' } else { '?' };
    if !(0.5..=120.0).contains(&args.duration) {
        bail!("--duration must be within 0.5..=120 seconds");
    }
    if let Some(listen) = args.hook_listen {
        let listener = TcpListener::bind(listen)
            .await
            .context("binding the hook receiver")?;
        tokio::spawn(hook_receiver(listener));
    }
    let cpu_before = args.server_pid.map(cpu_ticks).transpose()?;
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(args.duration);
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (counter, target) = (counter.clone(), target.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0u64;
            while Instant::now() < end {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let path = format!("{target}{separator}n={n}");
                let begun = Instant::now();
                match tokio::time::timeout(JOIN_DEADLINE, join(addr, &path)).await {
                    Ok(Ok(())) => latencies.push(begun.elapsed()),
                    _ => failures += 1,
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for worker in workers {
        let (l, f) = worker.await?;
        latencies.extend(l);
        failures += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_ms = match (args.server_pid, cpu_before) {
        (Some(pid), Some(before)) => {
            Some((cpu_ticks(pid)? - before) as f64 * 1000.0 / ticks_per_second())
        }
        _ => None,
    };
    latencies.sort();
    let quantile = |q: f64| -> f64 {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let joins = latencies.len() as u64;
    let report = serde_json::json!({
        "joins": joins,
        "joins_per_s": joins as f64 / elapsed,
        "failures": failures,
        "join_p50_ms": quantile(0.5),
        "join_p99_ms": quantile(0.99),
        "server_cpu_ms_per_join": cpu_ms.map(|ms| ms / joins.max(1) as f64),
    });
    #[allow(clippy::print_stdout)] // The report is the program's output.
    {
        println!("{report}");
    }
    Ok(())
}

/// One join: a 200 head and the first body bytes.
async fn join(addr: SocketAddr, path: &str) -> anyhow::Result<()> {
    let mut socket = TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    socket
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut data = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            bail!("closed after {} bytes", data.len());
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            if !data.starts_with(b"HTTP/1.1 200") {
                bail!("refused: {}", String::from_utf8_lossy(&data[..end]));
            }
            if data.len() >= end + 4 + FIRST_BYTES {
                return Ok(());
            }
        }
    }
}

/// Answers every webhook event 200 at once.
async fn hook_receiver(listener: TcpListener) {
    while let Ok((mut socket, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut data = Vec::new();
            let mut buf = [0u8; 4096];
            // The head, then the body's content-length bytes.
            loop {
                let Ok(n) = socket.read(&mut buf).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                data.extend_from_slice(&buf[..n]);
                if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if data.len() >= end + 4 + length {
                        break;
                    }
                }
                if data.len() > 64 * 1024 {
                    return;
                }
            }
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        });
    }
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) end with ')'.
    let after = stat.rsplit_once(')').context("/proc stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

fn ticks_per_second() -> f64 {
    // Linux reports /proc times in USER_HZ, 100 on every architecture Sluice builds for.
    100.0
}
