//! The generators' guard against pointing load at someone else's server (compiled into
//! `sluice-bench` and `sluice-cluster-bench`).

use std::net::SocketAddr;

use anyhow::{Context, bail};

/// Refuses targets that are not on this machine unless `allow_remote`: the generators are
/// meant for loopback benchmarks, and 1,000 viewers at someone else's server is an attack.
pub async fn check_local(addr: &str, allow_remote: bool) -> anyhow::Result<()> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("resolving {addr}"))?
        .collect();
    if !allow_remote && addrs.iter().any(|a| !a.ip().is_loopback()) {
        bail!("{addr} is not a loopback address (pass --allow-remote to target it anyway)");
    }
    Ok(())
}
