//! A running node: listeners bound, subsystems supervised, shutdown drained with a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::serve::ListenerExt;
use sluice_core::Config;
use sluice_proto::Context;
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
        Ok(App {
            ctx: Context::new(config),
            rtmp,
            http,
            admin,
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
            reload,
        } = self;
        // Before the listening line: once it is logged, SIGHUP must already be handled (its
        // default action ends the process) and file changes already watched.
        if let Some(source) = reload {
            reload::spawn(&ctx, source);
        }
        info!(rtmp = %rtmp.local_addr()?, http = %http.local_addr()?, admin = %admin.local_addr()?, "sluice listening");
        let rtmp_task = tokio::spawn(sluice_proto::rtmp::serve(rtmp, ctx.clone()));
        // HTTP viewers' sockets get the default schedule's options at accept: the
        // application is not known before the request is read.
        let tune_ctx = ctx.clone();
        let http = http.tap_io(move |tcp| sluice_proto::flv::tune_viewer_socket(&tune_ctx, tcp));
        let http_task = tokio::spawn(serve_http(
            http,
            sluice_proto::flv::router(ctx.clone()),
            ctx.clone(),
        ));
        let admin_task = tokio::spawn(serve_http(
            admin,
            crate::admin::router(ctx.clone()),
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
        info!("stopped");
        Ok(())
    }
}

/// Serves an axum router until shutdown; open responses (HTTP-FLV bodies) end on the same
/// token, so the graceful shutdown completes.
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
