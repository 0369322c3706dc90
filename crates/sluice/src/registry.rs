//! This node in the stream registry (`[cluster.registry]`): what it advertises, which of its
//! streams its own publishers publish, and its load — the [`Local`] side of
//! `sluice-registry`'s session.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use sluice_cluster::PullManager;
use sluice_core::StreamKey;
use sluice_core::topology::Role;
use sluice_registry::{Local, NodeEntry, Registry};
use sluice_runtime::Context;

use crate::app::Addrs;

/// Starts the registry session when `[cluster.registry]` names endpoints, and makes the pull
/// manager consult it; `None` when the registry is off.
pub fn start(ctx: &Arc<Context>, pulls: &PullManager, addrs: &Addrs) -> Option<Registry> {
    let cfg = ctx.config.load();
    let reg = &cfg.cluster.registry;
    if !reg.enabled() {
        return None;
    }
    let advertise = if reg.advertise.is_empty() {
        let mut list = Vec::new();
        if let Some(quic) = addrs.quic {
            list.push(format!("quic://{}", reachable(quic)));
        }
        list.push(format!("rtmp://{}", reachable(addrs.rtmp)));
        list
    } else {
        reg.advertise.clone()
    };
    let mut listeners = BTreeMap::new();
    listeners.insert("rtmp".to_owned(), addrs.rtmp.to_string());
    listeners.insert("http".to_owned(), addrs.http.to_string());
    listeners.insert("admin".to_owned(), addrs.admin.to_string());
    if let Some(quic) = addrs.quic {
        listeners.insert("quic".to_owned(), quic.to_string());
    }
    // A QUIC endpoint exists on this node when it listens or pulls over the relay; without
    // one, quic:// entries are skipped for rtmp:// ones.
    let quic = addrs.quic.is_some()
        || cfg.cluster.apps.keys().any(|app| {
            cfg.cluster.upstreams(app).is_some_and(|list| {
                list.iter()
                    .any(|u| u.transport == sluice_core::topology::Transport::Quic)
            })
        });
    let registry = Registry::new(
        reg.clone(),
        cfg.cluster.node_id(),
        advertise.clone(),
        quic,
        &ctx.metrics,
    );
    pulls.set_directory(Arc::new(registry.clone()));
    let local = Arc::new(LocalNode {
        ctx: ctx.clone(),
        pulls: pulls.clone(),
        advertise,
        listeners,
    });
    // The lease goes when the node starts draining (or shuts down, of which a drain is a
    // part): its streams and its entry leave the registry at once, so edges resolve them
    // elsewhere while this node's connected viewers play out the grace period.
    ctx.tracker
        .spawn(registry.clone().run(local, ctx.draining.clone()));
    Some(registry)
}

/// `addr` as other nodes dial it: an unspecified IP becomes this host's name.
fn reachable(addr: SocketAddr) -> String {
    if !addr.ip().is_unspecified() {
        return addr.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", addr.port())
}

#[derive(Debug)]
struct LocalNode {
    ctx: Arc<Context>,
    pulls: PullManager,
    advertise: Vec<String>,
    listeners: BTreeMap<String, String>,
}

impl Local for LocalNode {
    fn publishing(&self) -> Vec<StreamKey> {
        if !self.ctx.config.load().cluster.role.accepts_publishers() {
            return Vec::new();
        }
        self.ctx
            .registry
            .streams()
            .into_iter()
            .filter(|s| s.is_publishing() && !self.pulls.is_pulling(s.key()))
            .map(|s| s.key().clone())
            .collect()
    }

    fn describe(&self) -> NodeEntry {
        let cfg = self.ctx.config.load();
        let streams = self.ctx.registry.streams();
        let role = match cfg.cluster.role {
            Role::Origin => "origin",
            Role::Edge => "edge",
            Role::Both => "both",
        };
        NodeEntry {
            id: cfg.cluster.node_id().to_string(),
            role: role.to_owned(),
            advertise: self.advertise.clone(),
            listeners: self.listeners.clone(),
            streams: streams.len(),
            publishing: self.publishing().len(),
            viewers: streams
                .iter()
                .map(|s| s.stats.viewers.load(Ordering::Relaxed))
                .sum(),
            pulls: self.pulls.pulls().len(),
            updated_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}
