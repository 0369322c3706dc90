//! A running node: listeners bound, subsystems supervised, shutdown drained with a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sluice_cluster::PullManager;
use sluice_cluster::quic::QuicRelay;
use sluice_core::Config;
use sluice_core::topology::Transport;
use sluice_runtime::Context;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::reload;

/// A node with its listeners bound, ready to [`App::run`].
#[derive(Debug)]
pub struct App {
    ctx: Arc<Context>,
    rtmp: TcpListener,
    http: TcpListener,
    admin: TcpListener,
    /// The QUIC relay endpoint, when this node listens on one or pulls over one.
    quic: Option<Arc<QuicRelay>>,
    pulls: PullManager,
    /// Where config reloads come from; `None` never reloads.
    reload: Option<reload::Source>,
}

/// The addresses actually bound (port 0 in the config becomes a real port).
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    /// RTMP listener.
    pub rtmp: SocketAddr,
    /// HTTP-FLV listener.
    pub http: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// QUIC relay (UDP), if any.
    pub quic: Option<SocketAddr>,
}

/// Accept queue length asked of the kernel (it caps it at `net.core.somaxconn`): a crowd of
/// viewers arriving at once (a stream going live) must not overflow tokio's default of 1024
/// or the 128 some kernels default to.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl App {
    /// Binds every listener of `config`.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let bind = |addr: SocketAddr, what: &'static str| {
            listen(addr).with_context(|| format!("binding the {what} listener on {addr}"))
        };
        let rtmp = bind(config.rtmp.listen, "RTMP")?;
        let http = bind(config.http.listen, "HTTP")?;
        let admin = bind(config.admin.listen, "admin")?;
        let pulls_over_quic = config.cluster.apps.keys().any(|app| {
            config
                .cluster
                .upstreams(app)
                .is_some_and(|list| list.iter().any(|u| u.transport == Transport::Quic))
        });
        let quic = if config.cluster.quic_listen().is_some() || pulls_over_quic {
            Some(QuicRelay::new(&config.cluster).context("starting the QUIC relay")?)
        } else {
            None
        };
        let ctx = Context::new(config);
        // Installed whatever the role, so a reload that adds upstreams takes effect.
        let pulls = PullManager::install(&ctx, quic.clone());
        Ok(App {
            ctx,
            rtmp,
            http,
            admin,
            quic,
            pulls,
            reload: None,
        })
    }

    /// Reloads the config from `source` while running (SIGHUP, and changes to the file when
    /// it is watched). See [`crate::reload`].
    pub fn reload(self, source: reload::Source) -> Self {
        App {
            reload: Some(source),
            ..self
        }
    }

    /// Where the listeners are.
    pub fn addrs(&self) -> Addrs {
        let addr = |l: &TcpListener| l.local_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
        Addrs {
            rtmp: addr(&self.rtmp),
            http: addr(&self.http),
            admin: addr(&self.admin),
            quic: self
                .quic
                .as_ref()
                .filter(|_| self.ctx.config.load().cluster.quic_listen().is_some())
                .and_then(|q| q.local_addr().ok()),
        }
    }

    /// The shared context (registry, metrics, config, shutdown token).
    pub fn context(&self) -> Arc<Context> {
        self.ctx.clone()
    }

    /// Serves until the context's shutdown token is cancelled, then drains connections for at
    /// most `server.shutdown_timeout_ms`.
    pub async fn run(self) -> anyhow::Result<()> {
        let App {
            ctx,
            rtmp,
            http,
            admin,
            quic,
            pulls,
            reload,
        } = self;
        // Before the listening line: once it is logged, SIGHUP must already be handled (its
        // default action ends the process) and file changes already watched.
        if let Some(source) = reload {
            reload::spawn(&ctx, source);
        }
        let quic_addr = match &quic {
            Some(relay) if ctx.config.load().cluster.quic_listen().is_some() => {
                Some(relay.local_addr()?)
            }
            _ => None,
        };
        info!(rtmp = %rtmp.local_addr()?, http = %http.local_addr()?, admin = %admin.local_addr()?, quic = ?quic_addr, role = ?ctx.config.load().cluster.role, node = %ctx.config.load().cluster.node_id(), "sluice listening");
        let quic_task = quic.map(|relay| tokio::spawn(relay.serve(ctx.clone())));
        let rtmp_task = tokio::spawn(sluice_front::rtmp_conn::serve(rtmp, ctx.clone()));
        let http_task = tokio::spawn(sluice_front::http::serve(http, ctx.clone()));
        let admin_task = tokio::spawn(serve_http(
            admin,
            crate::admin::router(ctx.clone(), pulls),
            ctx.clone(),
        ));

        ctx.shutdown.cancelled().await;
        info!("shutting down");
        let deadline = Duration::from_millis(ctx.config.load().server.shutdown_timeout_ms);
        ctx.tracker.close();
        let drained = tokio::time::timeout(deadline, async {
            let _ = rtmp_task.await;
            ctx.tracker.wait().await;
            let _ = http_task.await;
        })
        .await;
        if drained.is_err() {
            warn!(
                ?deadline,
                "shutdown deadline passed with connections still open"
            );
        }
        admin_task.abort();
        if let Some(task) = quic_task {
            task.abort();
        }
        info!("stopped");
        Ok(())
    }
}

/// Serves an axum router (the admin API) until shutdown.
async fn serve_http<L>(listener: L, router: axum::Router, ctx: Arc<Context>)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let token = ctx.shutdown.clone();
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(token.cancelled_owned())
        .await
    {
        warn!(%error, "http server failed");
    }
}
