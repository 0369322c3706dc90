//! A running node: listeners bound, subsystems supervised, shutdown drained with a deadline.

use std::any::Any;
use std::collections::HashMap;
use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use sluice_cluster::PullManager;
use sluice_cluster::quic::QuicRelay;
use sluice_core::Config;
use sluice_core::topology::Transport;
use sluice_front::limit::Limit;
use sluice_front::tls::Store;
use sluice_runtime::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{self, JoinSet};
use tracing::{error, info, warn};

use sluice_front::Front;
use sluice_front::gate::Gate;

use crate::reload;

/// A node with its listeners bound, ready to [`App::run`].
#[derive(Debug)]
pub struct App {
    ctx: Arc<Context>,
    rtmp: TcpListener,
    http: TcpListener,
    admin: TcpListener,
    /// The RTMPS and HTTPS listeners and their certificate, when `[tls]` names one.
    tls: Option<Tls>,
    /// The QUIC relay endpoint, when this node listens on one or pulls over one.
    quic: Option<Arc<QuicRelay>>,
    pulls: PullManager,
    /// Access control, shared by the front ends.
    gate: Arc<Gate>,
    /// Where config reloads come from; `None` never reloads.
    reload: Option<reload::Source>,
}

/// The TLS listeners, bound, and the certificate they present.
#[derive(Debug)]
struct Tls {
    store: Arc<Store>,
    rtmps: TcpListener,
    https: TcpListener,
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
    /// RTMPS listener, with TLS.
    pub rtmps: Option<SocketAddr>,
    /// HTTPS listener, with TLS.
    pub https: Option<SocketAddr>,
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
        let tls = if config.tls.enabled() {
            let store = Store::load(&config.tls.cert_file, &config.tls.key_file)
                .context("loading the TLS certificate ([tls] cert_file, key_file)")?;
            Some(Tls {
                store,
                rtmps: bind(config.tls.rtmps_listen, "RTMPS")?,
                https: bind(config.tls.https_listen, "HTTPS")?,
            })
        } else {
            None
        };
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
        let gate = Gate::new(ctx.clone()).context("loading the [auth] keys")?;
        // Installed whatever the role, so a reload that adds upstreams takes effect.
        let pulls = PullManager::install(&ctx, quic.clone());
        if let Some(tls) = &tls {
            reload::certificate_loaded(&ctx, &tls.store);
        }
        Ok(App {
            ctx,
            rtmp,
            http,
            admin,
            tls,
            quic,
            pulls,
            gate,
            reload: None,
        })
    }

    /// Reloads the config from `source` while running (SIGHUP, and changes to the file when
    /// it is watched), and the TLS certificate with it (its `certs` are this node's). See
    /// [`crate::reload`].
    pub fn reload(self, source: reload::Source) -> Self {
        let gate = Some(self.gate.clone());
        let certs = self.tls.as_ref().map(|tls| tls.store.clone());
        App {
            reload: Some(reload::Source {
                gate,
                certs,
                ..source
            }),
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
            rtmps: self.tls.as_ref().map(|t| addr(&t.rtmps)),
            https: self.tls.as_ref().map(|t| addr(&t.https)),
        }
    }

    /// The shared context (registry, metrics, config, shutdown token).
    pub fn context(&self) -> Arc<Context> {
        self.ctx.clone()
    }

    /// Serves until the context's shutdown token is cancelled (directly, or at the end of a
    /// drain: see [`drain`]) or a subsystem fails, then drains connections for at most
    /// `server.shutdown_timeout_ms`.
    ///
    /// Every subsystem (the RTMP, HTTP-FLV and admin listeners, the QUIC relay, the config
    /// reloader, the drain) runs in a task of its own, watched here. One that ends before shutdown, or
    /// panics, is logged with its name and counted in `subsystem_failures`; the reloader is
    /// then started again (see [`supervise`]), any other stops the node in order and
    /// `run` returns an error naming it, so the process exits non-zero and its supervisor
    /// (systemd, Kubernetes) starts it afresh.
    pub async fn run(self) -> anyhow::Result<()> {
        let App {
            ctx,
            rtmp,
            http,
            admin,
            tls,
            quic,
            pulls,
            gate,
            reload,
        } = self;
        let mut subsystems = Subsystems::default();
        // Before the listening line: once it is logged, SIGHUP must already be handled (its
        // default action ends the process) and file changes already watched.
        if let Some(source) = &reload {
            subsystems.spawn(
                Subsystem::Reload,
                reload::start(ctx.clone(), source.clone()),
            );
        }
        let quic_addr = match &quic {
            Some(relay) if relay.listening() => Some(relay.local_addr()?),
            _ => None,
        };
        let (rtmp_addr, http_addr, admin_addr) =
            (rtmp.local_addr()?, http.local_addr()?, admin.local_addr()?);
        let (rtmps_addr, https_addr) = match &tls {
            Some(tls) => (Some(tls.rtmps.local_addr()?), Some(tls.https.local_addr()?)),
            None => (None, None),
        };
        info!(rtmp = %rtmp_addr, http = %http_addr, admin = %admin_addr, quic = ?quic_addr, rtmps = ?rtmps_addr, https = ?https_addr, role = ?ctx.config.load().cluster.role, node = %ctx.config.load().cluster.node_id(), "sluice listening");
        let registry = crate::registry::start(
            &ctx,
            &pulls,
            &Addrs {
                rtmp: rtmp_addr,
                http: http_addr,
                admin: admin_addr,
                quic: quic_addr,
                rtmps: rtmps_addr,
                https: https_addr,
            },
        );
        if let Some(relay) = quic.as_ref().filter(|relay| relay.listening()) {
            let serve = relay.clone().serve(ctx.clone());
            subsystems.spawn(Subsystem::Relay, async move { Ok(serve.await?) });
        }
        // Each limit is shared by a protocol's clear-text and TLS listeners.
        let (rtmp_limit, http_limit) = {
            let cfg = ctx.config.load();
            (
                Limit::new(cfg.rtmp.max_connections),
                Limit::new(cfg.http.max_connections),
            )
        };
        let hls = sluice_front::hls::Hls::new(ctx.clone());
        let front = Front {
            ctx: ctx.clone(),
            gate,
            hls: hls.clone(),
        };
        let (rtmp_front, limit) = (front.clone(), rtmp_limit.clone());
        subsystems.spawn(Subsystem::Rtmp, async move {
            sluice_front::rtmp_conn::serve(rtmp, rtmp_front, limit)
                .await
                .with_context(|| format!("accepting on the RTMP listener {rtmp_addr}"))
        });
        let (http_front, limit) = (front.clone(), http_limit.clone());
        subsystems.spawn(Subsystem::HttpFlv, async move {
            sluice_front::http::serve(http, http_front, limit)
                .await
                .with_context(|| format!("accepting on the HTTP listener {http_addr}"))
        });
        if let Some(Tls {
            store,
            rtmps,
            https,
        }) = tls
        {
            let (rtmps_front, rtmps_store) = (front.clone(), store.clone());
            subsystems.spawn(Subsystem::Rtmps, async move {
                sluice_front::tls::serve_rtmps(rtmps, rtmps_front, rtmp_limit, rtmps_store)
                    .await
                    .with_context(|| format!("accepting on the RTMPS listener {rtmps_addr:?}"))
            });
            let https_front = front.clone();
            subsystems.spawn(Subsystem::Https, async move {
                sluice_front::tls::serve_https(https, https_front, http_limit, store)
                    .await
                    .with_context(|| format!("accepting on the HTTPS listener {https_addr:?}"))
            });
        }
        subsystems.spawn(
            Subsystem::Admin,
            serve_admin(
                admin,
                crate::admin::router(
                    ctx.clone(),
                    pulls,
                    registry,
                    hls,
                    crate::admin::Listeners {
                        http: http_addr,
                        https: https_addr,
                    },
                ),
                ctx.clone(),
            ),
        );

        subsystems.spawn(Subsystem::Drain, drain(ctx.clone()));

        let failure = supervise(&ctx, &mut subsystems, reload.as_ref()).await;

        info!("shutting down");
        let deadline = Duration::from_millis(ctx.config.load().server.shutdown_timeout_ms);
        ctx.shutdown.cancel();
        ctx.tracker.close();
        let drain = async {
            while let Some((subsystem, result)) = subsystems.next().await {
                if let Err(error) = result {
                    failed_while_stopping(&ctx, subsystem, &error);
                }
            }
            // The subsystems spawn connections onto the tracker; once they have ended
            // nothing more is spawned, so the tracker's count only goes down.
            ctx.tracker.wait().await;
        };
        // The relay tells its peers it is going away ("going away" on every connection,
        // pulls both ways) while the connections drain, and waits for them to be told.
        let close_relay = async {
            if let Some(relay) = &quic {
                relay.close(deadline).await;
            }
        };
        let drained = tokio::time::timeout(deadline, async {
            tokio::join!(drain, close_relay);
        })
        .await;
        if drained.is_err() {
            warn!(
                ?deadline,
                "shutdown deadline passed with connections still open"
            );
        }
        // Only subsystems that outlived the deadline are left to abort.
        subsystems.tasks.abort_all();
        info!("stopped");
        failure.map_or(Ok(()), Err)
    }
}

/// A part of the node that runs, in a task of its own, from [`App::run`] until shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subsystem {
    /// The RTMP accept loop.
    Rtmp,
    /// The HTTP-FLV accept loop.
    HttpFlv,
    /// The RTMPS accept loop (with TLS).
    Rtmps,
    /// The HTTPS accept loop (with TLS).
    Https,
    /// The admin API server.
    Admin,
    /// The QUIC relay's accept loop, on nodes that listen for other nodes' pulls.
    Relay,
    /// The config reloader (SIGHUP and the file watch).
    Reload,
    /// Waits for a drain, lets it run its course, then starts shutdown (see [`drain`]).
    Drain,
}

impl Subsystem {
    /// Its `subsystem` label and log field.
    fn name(self) -> &'static str {
        match self {
            Subsystem::Rtmp => "rtmp",
            Subsystem::HttpFlv => "http_flv",
            Subsystem::Rtmps => "rtmps",
            Subsystem::Https => "https",
            Subsystem::Admin => "admin",
            Subsystem::Relay => "quic_relay",
            Subsystem::Reload => "reload",
            Subsystem::Drain => "drain",
        }
    }
}

/// Pause before the first restart of a subsystem restarted in place (see [`supervise`]); it
/// doubles with each further failure up to [`RESTART_BACKOFF_MAX`], so a subsystem that
/// fails at once each time costs a log line a minute, not a busy loop.
const RESTART_BACKOFF: Duration = Duration::from_secs(1);
/// The longest pause before a restart.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The subsystems' tasks, each known by its [`Subsystem`]. Every task is joined, or aborted
/// after the shutdown deadline, before [`App::run`] returns.
#[derive(Debug, Default)]
struct Subsystems {
    tasks: JoinSet<anyhow::Result<()>>,
    /// Which subsystem each task runs: a panicked task is known only by its id.
    names: HashMap<task::Id, Subsystem>,
}

impl Subsystems {
    fn spawn(
        &mut self,
        subsystem: Subsystem,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), subsystem);
    }

    /// The next subsystem to end, and how: its error, or its panic as one. `None` once none
    /// is left.
    async fn next(&mut self) -> Option<(Subsystem, anyhow::Result<()>)> {
        loop {
            let (id, result) = match self.tasks.join_next_with_id().await? {
                Ok((id, result)) => (id, result),
                Err(error) if error.is_panic() => {
                    let id = error.id();
                    let message = panic_message(error.into_panic());
                    (id, Err(anyhow!("panicked: {message}")))
                }
                Err(error) => (error.id(), Err(anyhow!("cancelled"))),
            };
            // Every task's id is recorded as it is spawned, before anything is joined.
            if let Some(subsystem) = self.names.remove(&id) {
                return Some((subsystem, result));
            }
        }
    }
}

/// The text of a panic's payload (`panic!` gives a `&str` or a `String`).
fn panic_message(payload: Box<dyn Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a payload that is not text)".to_owned())
}

/// Watches the subsystems until shutdown (`None`) or until one fails that is not restarted
/// in place (its error, with context naming it). The reloader is the one restarted, from
/// `reload`.
async fn supervise(
    ctx: &Arc<Context>,
    subsystems: &mut Subsystems,
    reload: Option<&reload::Source>,
) -> Option<anyhow::Error> {
    let mut backoff = RESTART_BACKOFF;
    loop {
        let (subsystem, result) = tokio::select! {
            _ = ctx.shutdown.cancelled() => return None,
            Some(ended) = subsystems.next() => ended,
        };
        if ctx.shutdown.is_cancelled() {
            // It ended because the node is stopping (both were ready at once).
            if let Err(error) = result {
                failed_while_stopping(ctx, subsystem, &error);
            }
            return None;
        }
        let error = result
            .err()
            .unwrap_or_else(|| anyhow!("ended before shutdown"));
        let name = subsystem.name();
        ctx.metrics.subsystem_failed(name);
        // What mends a failure: starting the subsystem again in place (the reload source to
        // start it from), or stopping the node (`None`).
        let restart = match subsystem {
            // Stopping, and exiting non-zero, is what a supervisor expects: it starts a
            // fresh process that binds its sockets again. A node left running without a
            // listener would look alive to its load balancer and its peers (and, without
            // the admin server, to nobody at all) while refusing the players, publishers or
            // pulls that come to it.
            Subsystem::Rtmp
            | Subsystem::HttpFlv
            | Subsystem::Rtmps
            | Subsystem::Https
            | Subsystem::Admin
            | Subsystem::Relay
            // It ends only by starting shutdown; ending otherwise is a bug, and a node that
            // could no longer drain would drop everyone at its next SIGTERM.
            | Subsystem::Drain => None,
            // The reloader is not on the serving path: no connection depends on it and it
            // holds nothing a new one lacks (the running config is in the context).
            // Restarting the node for it would drop every viewer to mend something none of
            // them use, while a new reloader sets up SIGHUP and the file watch afresh, which
            // is also the remedy when the watch itself stopped. SIGHUP stays caught while it
            // is down (tokio's handler stays installed), so the signal cannot end the node.
            Subsystem::Reload => reload,
        };
        match restart {
            Some(source) => {
                error!(
                    subsystem = name,
                    error = format!("{error:#}"),
                    ?backoff,
                    "subsystem failed; restarting it"
                );
                subsystems.spawn(
                    subsystem,
                    restart_reload(ctx.clone(), source.clone(), backoff),
                );
                backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
            }
            None => {
                error!(
                    subsystem = name,
                    error = format!("{error:#}"),
                    "subsystem failed; stopping the node"
                );
                return Some(error.context(format!("subsystem {name} failed")));
            }
        }
    }
}

/// How often a drain looks whether any viewer or publisher is left.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// Waits until the node drains ([`Context::drain`]: SIGTERM, `POST /api/drain`), then for
/// `server.drain_grace_ms` or until no viewer or publisher is left
/// ([`Context::sessions`]), whichever comes first, and starts shutdown. Connected viewers
/// and publishers go on meanwhile; the front ends refuse new ones. Shutdown started any
/// other way (SIGINT, a second SIGTERM, a failed subsystem) ends it at once.
async fn drain(ctx: Arc<Context>) -> anyhow::Result<()> {
    // `draining` is a child of `shutdown`: both fire on shutdown.
    ctx.draining.cancelled().await;
    if ctx.shutdown.is_cancelled() {
        return Ok(());
    }
    let grace = ctx.config.load().server.drain_grace();
    info!(
        ?grace,
        sessions = ctx.sessions(),
        "draining: refusing new viewers and publishers"
    );
    let emptied = async {
        let mut poll = tokio::time::interval(DRAIN_POLL);
        while ctx.sessions() > 0 {
            poll.tick().await;
        }
    };
    tokio::select! {
        _ = ctx.shutdown.cancelled() => return Ok(()),
        _ = tokio::time::sleep(grace) => {
            info!(sessions = ctx.sessions(), "drain grace period over");
        }
        () = emptied => info!("drained: no viewer or publisher left"),
    }
    ctx.shutdown.cancel();
    Ok(())
}

/// Starts reloading again after `backoff`, unless the node stops first.
async fn restart_reload(
    ctx: Arc<Context>,
    source: reload::Source,
    backoff: Duration,
) -> anyhow::Result<()> {
    tokio::select! {
        _ = ctx.shutdown.cancelled() => return Ok(()),
        _ = tokio::time::sleep(backoff) => {}
    }
    info!(
        subsystem = Subsystem::Reload.name(),
        "restarting the subsystem"
    );
    reload::start(ctx, source).await
}

/// Logs and counts a subsystem that failed while the node was already stopping: the node
/// stops as it was asked to, so this does not change what [`App::run`] returns.
fn failed_while_stopping(ctx: &Context, subsystem: Subsystem, error: &anyhow::Error) {
    ctx.metrics.subsystem_failed(subsystem.name());
    error!(
        subsystem = subsystem.name(),
        error = format!("{error:#}"),
        "subsystem failed while the node was stopping"
    );
}

/// Serves the admin API until shutdown. Fails when its listener fails for good (see
/// [`sluice_runtime::accept::listener_failed`]), which axum alone would retry forever.
async fn serve_admin(
    listener: TcpListener,
    router: axum::Router,
    ctx: Arc<Context>,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let (failed_tx, failed_rx) = oneshot::channel();
    let listener = AdminListener {
        inner: listener,
        failed: Some(failed_tx),
    };
    let server = axum::serve(listener, router)
        .with_graceful_shutdown(ctx.shutdown.clone().cancelled_owned())
        .into_future();
    tokio::select! {
        result = server => result.context("the admin server failed"),
        // Dropping the server closes its connections; the node is stopping anyway.
        Ok(error) = failed_rx => {
            Err(error).with_context(|| format!("accepting on the admin listener {addr}"))
        }
    }
}

/// Pause after a failed accept on the admin listener.
const ADMIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The admin listener as axum sees it. axum's `Listener::accept` cannot return an error, so
/// an error meaning the socket no longer listens is sent to `failed` instead, and that
/// accept never returns; [`serve_admin`] ends on it. Other errors (a connection reset
/// before it was accepted, out of descriptors) are retried after a pause.
#[derive(Debug)]
struct AdminListener {
    inner: TcpListener,
    /// Taken by the first permanent failure.
    failed: Option<oneshot::Sender<std::io::Error>>,
}

impl axum::serve::Listener for AdminListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok(accepted) => return accepted,
                Err(error) if sluice_runtime::accept::listener_failed(&error) => {
                    if let Some(failed) = self.failed.take() {
                        let _ = failed.send(error);
                    }
                    std::future::pending::<()>().await;
                }
                Err(error) => {
                    warn!(%error, protocol = "admin", "accept failed");
                    tokio::time::sleep(ADMIN_ACCEPT_BACKOFF).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failures(ctx: &Context, subsystem: &'static str) -> u64 {
        ctx.metrics
            .subsystem_failures
            .get_or_create(&[("subsystem", subsystem)])
            .get()
    }

    /// A drain waits out its grace while anyone is connected, and starts shutdown then; with
    /// nobody connected it starts shutdown at once.
    #[tokio::test]
    async fn a_drain_ends_at_its_grace_or_when_nobody_is_left() {
        let config = |grace_ms: u64| {
            let text = format!("[server]\ndrain_grace_ms = {grace_ms}\n");
            sluice_core::Config::load(Some(&text), []).expect("config")
        };
        let ctx = Context::new(config(300));
        ctx.metrics.publishers.set(1);
        let draining = tokio::spawn(drain(ctx.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!ctx.shutdown.is_cancelled(), "no drain was asked for");
        let started = tokio::time::Instant::now();
        assert!(ctx.drain());
        assert!(!ctx.drain(), "already draining");
        assert_eq!(ctx.metrics.draining.get(), 1);
        tokio::time::timeout(Duration::from_secs(30), draining)
            .await
            .expect("the drain ended")
            .expect("no panic")
            .expect("no error");
        assert!(ctx.shutdown.is_cancelled());
        assert!(started.elapsed() >= Duration::from_millis(300));

        let ctx = Context::new(config(60_000));
        let draining = tokio::spawn(drain(ctx.clone()));
        ctx.drain();
        tokio::time::timeout(Duration::from_secs(30), draining)
            .await
            .expect("nobody connected: the drain ended at once")
            .expect("no panic")
            .expect("no error");
        assert!(ctx.shutdown.is_cancelled());
    }

    #[tokio::test]
    async fn a_panicking_subsystem_is_reported_by_name_with_its_message() {
        let mut subsystems = Subsystems::default();
        subsystems.spawn(Subsystem::Admin, std::future::pending());
        subsystems.spawn(Subsystem::Rtmp, async { panic!("accept state broken") });
        let (subsystem, result) = subsystems.next().await.expect("a subsystem ended");
        assert_eq!(subsystem, Subsystem::Rtmp);
        let error = result.expect_err("a panic is a failure");
        assert_eq!(error.to_string(), "panicked: accept state broken");
    }

    /// The policy, with stand-in subsystems whose failures the test decides: the reloader
    /// failing is counted and it is started again while the node runs on; a listener
    /// failing is counted and stops the node with an error naming it.
    #[tokio::test]
    async fn a_failed_reloader_is_restarted_and_a_failed_listener_stops_the_node() {
        let ctx = Context::new(sluice_core::Config::default());
        let mut subsystems = Subsystems::default();
        subsystems.spawn(Subsystem::Reload, async {
            anyhow::bail!("the config file watch stopped")
        });
        let (fail_admin, admin_fails) = oneshot::channel::<()>();
        subsystems.spawn(Subsystem::Admin, async move {
            let _ = admin_fails.await;
            anyhow::bail!("the listener is gone")
        });
        let source = reload::Source {
            file: None,
            watch: false,
            gate: None,
            certs: None,
        };
        let reloader_counted = async {
            while failures(&ctx, "reload") == 0 {
                tokio::task::yield_now().await;
            }
            let _ = fail_admin.send(());
        };
        let (stopped, ()) = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::join!(
                supervise(&ctx, &mut subsystems, Some(&source)),
                reloader_counted
            )
        })
        .await
        .expect("the supervisor noticed both failures");

        let error = stopped.expect("a failed listener stops the node");
        assert_eq!(
            format!("{error:#}"),
            "subsystem admin failed: the listener is gone"
        );
        assert_eq!(failures(&ctx, "reload"), 1);
        assert_eq!(failures(&ctx, "admin"), 1);
        // The reloader was started again (its restart waits out the backoff): the only task
        // left, and it ends cleanly at shutdown.
        assert_eq!(
            subsystems.names.values().copied().collect::<Vec<_>>(),
            [Subsystem::Reload]
        );
        ctx.shutdown.cancel();
        let (subsystem, result) = subsystems.next().await.expect("the restarted reloader");
        assert_eq!(subsystem, Subsystem::Reload);
        result.expect("ends cleanly at shutdown");
        assert!(subsystems.next().await.is_none());
    }
}
