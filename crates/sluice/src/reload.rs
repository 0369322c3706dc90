//! Hot reload of the config file: SIGHUP, or a change to the file, re-reads it.
//!
//! A reload loads the file exactly as `serve` did at startup ([`crate::cli::load_config`]:
//! embedded defaults < file < `SLUICE__SECTION__KEY` environment). A file that does not load
//! (unreadable, not TOML, an unknown key, a bad value) is refused with an error naming the
//! file, and the running config stays. A good one is swapped whole into
//! [`Context::config`]; connections read that when they need a value, so nobody is
//! disconnected and a viewer's scheduling changes under it. Values read per request (CORS,
//! allowed applications) apply from the next one; values a connection takes when it starts
//! (chunk size, timeouts, socket options) and a stream when it is created (GOP cache) apply to
//! the connections and streams that come after.
//!
//! Some settings are fixed when the node starts: the listener addresses, the connection
//! limits (their semaphores are sized once) and the log subscriber. A reload that changes them
//! keeps their running values in the swapped config, so what the node reports is what it
//! does, and warns that they need a restart.
//!
//! The file's directory is watched rather than the file: editors and config managers that
//! write a new file and rename it over the old one (and Kubernetes' ConfigMap symlink swaps)
//! replace the inode a file watch would follow. Events that name the file (or its symlink
//! target, or a Kubernetes `..data` link) re-read it once they have stopped for [`DEBOUNCE`];
//! a re-read that finds the same text as the last one does nothing. SIGHUP always reloads and
//! always logs.
//!
//! The TLS certificate (`[tls]`) reloads here too: on every SIGHUP, and when `tls.watch` is
//! on, when its certificate or key file changes (watched the same way, by their directories,
//! so a renewal that swaps symlinks is seen; [`CERT_DEBOUNCE`] lets a renewal write both files
//! before they are read). A pair that does not load is refused with an error naming the file,
//! and the certificate in use stays; connections already open are never touched either way.
//! Counted in `sluice_tls_reloads_total{result}`; `sluice_tls_certificate_not_after_seconds`
//! follows the certificate in use. The files' paths are fixed at startup like the listeners.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use sluice_auth::Policy;
use sluice_core::Config;
use sluice_core::config::ConfigError;
use sluice_front::gate::Gate;
use sluice_front::tls::Store;
use sluice_runtime::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::cli;

/// How long the config file's directory must be quiet before a change is read, so a file
/// written in several steps is read once, whole.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// How long the certificate files' directories must be quiet before they are read: a renewal
/// writes the certificate and the key one after the other, and either alone does not load.
pub const CERT_DEBOUNCE: Duration = Duration::from_millis(500);

/// Where reloads come from.
#[derive(Debug, Clone)]
pub struct Source {
    /// The file `serve` was started with; `None` (the embedded default) has nothing to reload.
    pub file: Option<PathBuf>,
    /// Also reload when the file changes, not only on SIGHUP.
    pub watch: bool,
    /// Access control, whose policy is rebuilt on every reload (key files read again);
    /// [`crate::App::reload`] sets it.
    pub gate: Option<Arc<Gate>>,
    /// The TLS certificate in use, reloaded on SIGHUP (and its files watched when
    /// `tls.watch`); `None` without TLS. [`crate::App::reload`] sets it.
    pub certs: Option<Arc<Store>>,
}

/// What a reload does to the running config.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The config to swap in: the loaded one, with the settings fixed at startup kept at their
    /// running values.
    pub config: Config,
    /// Keys whose new values take effect, as `section.key` (a nested table is named down to
    /// its third level, e.g. `schedule.apps.live`).
    pub changed: Vec<String>,
    /// Keys whose change needs a restart; their running values are kept.
    pub needs_restart: Vec<&'static str>,
}

/// Decides what a reload from `running` to `loaded` applies and what it leaves for a restart.
/// Refused when the kept values and the new ones do not work together (an upstream that is
/// the kept listener, say).
pub fn plan(running: &Config, mut loaded: Config) -> Result<Plan, ConfigError> {
    let mut needs_restart = Vec::new();
    // Each key read once at startup: app.rs binds the listeners and the QUIC relay (with its
    // TLS files) and starts the stream registry session, loads the TLS certificate (whose files the reloader watches), the front ends (sluice-front) size their connection semaphores, cli.rs
    // installs the log subscriber.
    macro_rules! fixed {
        ($($section:ident . $key:ident),* $(,)?) => {$(
            if loaded.$section.$key != running.$section.$key {
                needs_restart.push(concat!(stringify!($section), ".", stringify!($key)));
                loaded.$section.$key = Clone::clone(&running.$section.$key);
            }
        )*};
    }
    fixed!(
        rtmp.listen,
        rtmp.max_connections,
        http.listen,
        http.max_connections,
        admin.listen,
        log.level,
        log.format,
        cluster.quic_listen,
        cluster.tls_cert,
        cluster.tls_key,
        cluster.tls_ca,
        cluster.tls_server_name,
        cluster.registry,
        tls.cert_file,
        tls.key_file,
        tls.rtmps_listen,
        tls.https_listen,
        tls.watch,
    );
    // Derived settings follow the kept values (the default node id names the RTMP port).
    loaded.validate()?;
    let changed = changed_keys(running, &loaded);
    Ok(Plan {
        config: loaded,
        changed,
        needs_restart,
    })
}

/// Keys that differ between two configs, compared as TOML tables down to three levels.
fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    match (toml::Table::try_from(old), toml::Table::try_from(new)) {
        (Ok(old), Ok(new)) => diff("", &old, &new, 3, &mut keys),
        // Every config serialises (print-config relies on it); stay truthful if one did not.
        _ if old != new => keys.push("(config)".to_owned()),
        _ => {}
    }
    keys
}

fn diff(prefix: &str, old: &toml::Table, new: &toml::Table, depth: u32, out: &mut Vec<String>) {
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for name in names {
        let (a, b) = (old.get(name), new.get(name));
        if a == b {
            continue;
        }
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match (a, b) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) if depth > 1 => {
                diff(&path, a, b, depth - 1, out)
            }
            _ => out.push(path),
        }
    }
}

/// What set a reload off (the `trigger` field of its log lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Signal,
    Watch,
}

impl Trigger {
    fn label(self) -> &'static str {
        match self {
            Trigger::Signal => "sighup",
            Trigger::Watch => "file_watch",
        }
    }
}

/// Starts reloading from `source`: sets up the SIGHUP handler and, if the file is watched,
/// the watch, now, and returns the task that reloads on them until `ctx.shutdown`. Call it
/// inside the runtime, before announcing the node: from then on SIGHUP no longer ends the
/// process.
///
/// Neither half is essential to serving, so a failure to set one up is logged, not returned.
/// The task fails if the file watch stops (its notify thread ended) before shutdown: the
/// supervisor ([`crate::app`]) then starts reloading afresh, watch included.
pub fn start(
    ctx: Arc<Context>,
    source: Source,
) -> impl Future<Output = anyhow::Result<()>> + Send + 'static {
    let hup = signal(SignalKind::hangup())
        .inspect_err(|error| warn!(%error, "cannot handle SIGHUP; no config reload by signal"))
        .ok();
    let config_watch = match &source.file {
        Some(file) if source.watch => watch(&[file])
            .inspect_err(|error| {
                warn!(
                    file = %file.display(),
                    %error,
                    "cannot watch the config file; reload it with SIGHUP"
                );
            })
            .ok(),
        _ => None,
    };
    if let (Some(file), Some(_)) = (&source.file, &config_watch) {
        info!(file = %file.display(), "watching the config file for changes");
    }
    let cert_watch = match &source.certs {
        Some(certs) if ctx.config.load().tls.watch => {
            let files = [certs.cert_file(), certs.key_file()];
            watch(&files)
                .inspect_err(|error| {
                    warn!(
                        cert_file = %certs.cert_file().display(),
                        key_file = %certs.key_file().display(),
                        %error,
                        "cannot watch the TLS certificate files; reload them with SIGHUP"
                    );
                })
                .ok()
                .inspect(|_| {
                    info!(
                        cert_file = %certs.cert_file().display(),
                        key_file = %certs.key_file().display(),
                        "watching the TLS certificate files for changes"
                    );
                })
        }
        _ => None,
    };
    let last_certs = source.certs.as_deref().map(read_certs);
    let reloader = Reloader {
        ctx,
        gate: source.gate,
        file: source.file,
        last_read: None,
        certs: source.certs,
        last_certs,
    };
    reloader.run(hup, config_watch, cert_watch)
}

/// A watch on the files' directories and the receiver of its (coalesced) change signals.
type Watch = (RecommendedWatcher, mpsc::Receiver<()>);

/// Watches the directory of each of `files` (and, if one is a symlink elsewhere, its
/// target's).
fn watch(files: &[&Path]) -> notify::Result<Watch> {
    // Capacity 1: a pending signal already means "re-read after the quiet period", so events
    // that find it full are dropped, and the notify thread never waits on us.
    let (tx, rx) = mpsc::channel(1);
    let targets: Vec<Option<PathBuf>> = files
        .iter()
        .map(|f| std::fs::canonicalize(f).ok())
        .collect();
    let names: BTreeSet<OsString> = files
        .iter()
        .copied()
        .chain(targets.iter().flatten().map(PathBuf::as_path))
        .filter_map(|p| p.file_name().map(OsStr::to_owned))
        .collect();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if may_change_contents(&event.kind) && concerns(&event.paths, &names) => {
                let _ = tx.try_send(());
            }
            Ok(_) => {}
            Err(error) => warn!(%error, "file watch error"),
        })?;
    let mut watched = BTreeSet::new();
    for (file, target) in files.iter().zip(targets) {
        let dir = parent(file);
        let canonical = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
        if watched.insert(canonical) {
            watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        }
        // Best effort: the target's directory may go away (a ConfigMap swap), the link's
        // stays.
        if let Some(target_dir) = target.map(|t| parent(&t))
            && watched.insert(target_dir.clone())
        {
            let _ = watcher.watch(&target_dir, RecursiveMode::NonRecursive);
        }
    }
    Ok((watcher, rx))
}

/// Whether an event on `paths` may concern the config file, known by its `names` (the link's
/// and its target's). Other files in the directory are ignored: a log file written there
/// would otherwise keep the directory from ever being quiet. Kubernetes swaps a mounted
/// ConfigMap by renaming a `..data` symlink, so `..` names count too; an event without paths
/// (the kernel's queue overflowed) may concern anything.
fn concerns(paths: &[PathBuf], names: &BTreeSet<OsString>) -> bool {
    paths.is_empty()
        || paths
            .iter()
            .filter_map(|p| p.file_name())
            .any(|name| names.contains(name) || name.as_encoded_bytes().starts_with(b".."))
}

/// The directory holding `file` (`.` for a bare file name).
fn parent(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Whether an event may have changed what the file reads as. Opening and reading are not
/// changes: counting them would make our own reads trigger more reads.
fn may_change_contents(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// The reload task's state. It alone stores into `ctx.config`, so a load-compare-store
/// cannot lose another writer's update.
struct Reloader {
    ctx: Arc<Context>,
    /// Its policy is rebuilt on every reload (key files are read again).
    gate: Option<Arc<Gate>>,
    file: Option<PathBuf>,
    /// What the last reload read (its text, or why it could not), so watch events that leave
    /// the file as it was do nothing.
    last_read: Option<Result<String, String>>,
    /// The TLS certificate in use, if any.
    certs: Option<Arc<Store>>,
    /// What its files held when last read, for the same purpose.
    last_certs: Option<CertFiles>,
}

/// The contents of a certificate and a key file (or why one could not be read).
type CertFiles = (Result<Vec<u8>, String>, Result<Vec<u8>, String>);

fn read_certs(store: &Store) -> CertFiles {
    let read = |p: &Path| std::fs::read(p).map_err(|e| e.to_string());
    (read(store.cert_file()), read(store.key_file()))
}

impl Reloader {
    /// Reloads on each SIGHUP and watched change until shutdown (Ok), or until the watch
    /// stops delivering changes (an error, so that the supervisor sets it up again).
    async fn run(
        mut self,
        mut hup: Option<Signal>,
        watch: Option<Watch>,
        cert_watch: Option<Watch>,
    ) -> anyhow::Result<()> {
        // The watchers stop when dropped, at the end of this task.
        let (_watcher, mut changes) = match watch {
            Some((watcher, rx)) => (Some(watcher), Some(rx)),
            None => (None, None),
        };
        let (_cert_watcher, mut cert_changes) = match cert_watch {
            Some((watcher, rx)) => (Some(watcher), Some(rx)),
            None => (None, None),
        };
        let shutdown = self.ctx.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                () = next_signal(&mut hup) => {
                    info!("SIGHUP received");
                    self.reload(Trigger::Signal);
                    self.reload_certs(Trigger::Signal);
                }
                change = next_change(&mut changes) => {
                    let Some(rx) = changes.as_mut() else { continue };
                    if change.is_none() {
                        anyhow::bail!("the config file watch stopped");
                    }
                    if !settle(rx, &shutdown, DEBOUNCE).await {
                        return Ok(());
                    }
                    self.reload(Trigger::Watch);
                }
                change = next_change(&mut cert_changes) => {
                    let Some(rx) = cert_changes.as_mut() else { continue };
                    if change.is_none() {
                        anyhow::bail!("the TLS certificate file watch stopped");
                    }
                    if !settle(rx, &shutdown, CERT_DEBOUNCE).await {
                        return Ok(());
                    }
                    self.reload_certs(Trigger::Watch);
                }
            }
        }
    }

    /// Re-reads the TLS certificate and key, and presents them from the next handshake on if
    /// they load; otherwise logs why (naming the file) and keeps the certificate in use.
    fn reload_certs(&mut self, trigger: Trigger) {
        let Some(store) = self.certs.clone() else {
            return;
        };
        let files = read_certs(&store);
        if trigger == Trigger::Watch && self.last_certs.as_ref() == Some(&files) {
            debug!("TLS certificate files unchanged");
            return;
        }
        self.last_certs = Some(files);
        let result = match store.reload() {
            Ok(()) => {
                certificate_loaded(&self.ctx, &store);
                info!(
                    cert_file = %store.cert_file().display(),
                    key_file = %store.key_file().display(),
                    not_after = store.not_after(),
                    trigger = trigger.label(),
                    "TLS certificate reloaded"
                );
                "ok"
            }
            Err(error) => {
                error!(
                    trigger = trigger.label(),
                    error = %error,
                    "TLS certificate reload refused; the certificate in use stays"
                );
                "invalid"
            }
        };
        self.ctx
            .metrics
            .tls_reloads
            .get_or_create(&[("result", result)])
            .inc();
    }

    /// Re-reads the file and swaps the config if it loads.
    fn reload(&mut self, trigger: Trigger) {
        let Some(path) = &self.file else {
            warn!("serve was started without --config: no config file to reload");
            return;
        };
        let file = path.display().to_string();
        let read = cli::read_config_file(path).map_err(|e| format!("{e:#}"));
        if trigger == Trigger::Watch && self.last_read.as_ref() == Some(&read) {
            debug!(file, "config file unchanged");
            return;
        }
        self.last_read = Some(read.clone());
        let loaded = read.and_then(|text| {
            cli::parse_config(Some(path), Some(&text)).map_err(|e| format!("{e:#}"))
        });
        let loaded = match loaded {
            Ok(config) => config,
            Err(error) => {
                self.count("invalid");
                error!(
                    file,
                    trigger = trigger.label(),
                    error,
                    "config reload refused; the running config stays"
                );
                return;
            }
        };
        let plan = match plan(&self.ctx.config.load(), loaded) {
            Ok(plan) => plan,
            Err(error) => {
                self.count("invalid");
                error!(
                    file,
                    trigger = trigger.label(),
                    %error,
                    "config reload refused; the running config stays"
                );
                return;
            }
        };
        // Key files are read again on every reload, changed config or not; one that cannot
        // be read refuses the reload (the keys in force stay).
        let policy = match Policy::load(&plan.config.auth) {
            Ok(policy) => policy,
            Err(error) => {
                self.count("invalid");
                error!(
                    file,
                    trigger = trigger.label(),
                    %error,
                    "config reload refused; the running config stays"
                );
                return;
            }
        };
        if !plan.needs_restart.is_empty() {
            warn!(
                file,
                trigger = trigger.label(),
                keys = plan.needs_restart.join(", "),
                "config keys changed that apply only after a restart; their running values are kept"
            );
        }
        self.count("ok");
        if plan.changed.is_empty() {
            self.install(policy);
            info!(
                file,
                trigger = trigger.label(),
                "config reloaded: no change (key files read again)"
            );
            return;
        }
        let changed = plan.changed.join(", ");
        self.ctx.config.store(Arc::new(plan.config));
        self.install(policy);
        info!(file, trigger = trigger.label(), changed, "config reloaded");
    }

    fn install(&self, policy: Policy) {
        if let Some(gate) = &self.gate {
            gate.install(policy);
        }
    }

    fn count(&self, result: &'static str) {
        self.ctx
            .metrics
            .config_reloads
            .get_or_create(&[("result", result)])
            .inc();
    }
}

/// The next SIGHUP; never, without a handler.
async fn next_signal(hup: &mut Option<Signal>) {
    if let Some(signal) = hup
        && signal.recv().await.is_some()
    {
        return;
    }
    std::future::pending().await
}

/// The next change signal, or `None` once the watch has stopped; never, without a watch.
async fn next_change(changes: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    match changes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Sets the certificate's expiry gauge from the certificate in use (0 when unknown).
pub fn certificate_loaded(ctx: &Context, store: &Store) {
    ctx.metrics
        .tls_certificate_not_after
        .set(store.not_after().unwrap_or(0));
}

/// Waits until no change has arrived for `quiet`. False if shutdown came first.
async fn settle(
    rx: &mut mpsc::Receiver<()>,
    shutdown: &tokio_util::sync::CancellationToken,
    quiet: Duration,
) -> bool {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(quiet) => return true,
            more = rx.recv() => {
                if more.is_none() {
                    return true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Config {
        Config::load(Some(text), std::iter::empty()).expect("valid test config")
    }

    #[test]
    fn plan_lists_changed_keys_and_swaps_them() {
        let running = load("");
        let loaded = load(
            "[http]\ncors_allow_origin = \"https://a.example\"\n\
             [streams]\napps = [\"live\"]\n\
             [schedule.default]\nmax_latency_ms = 900\n\
             [schedule.apps.live]\nmerge_write_ms = 100\n",
        );
        let plan = plan(&running, loaded.clone()).unwrap();
        assert_eq!(
            plan.changed,
            [
                "http.cors_allow_origin",
                "schedule.apps.live",
                "schedule.default.max_latency_ms",
                "streams.apps"
            ]
        );
        assert!(plan.needs_restart.is_empty());
        assert_eq!(plan.config, loaded);
        assert_eq!(
            plan.config.schedule.for_app("live").merge_write,
            Duration::from_millis(100)
        );
    }

    #[test]
    fn settings_fixed_at_startup_keep_their_running_values() {
        let running = load("");
        let loaded = load(
            "[rtmp]\nlisten = \"127.0.0.1:1999\"\nmax_connections = 5\nchunk_size = 8192\n\
             [http]\nmax_connections = 7\n\
             [admin]\nlisten = \"127.0.0.1:1\"\n\
             [log]\nlevel = \"debug\"\nformat = \"json\"\n",
        );
        let plan = plan(&running, loaded).unwrap();
        assert_eq!(
            plan.needs_restart,
            [
                "rtmp.listen",
                "rtmp.max_connections",
                "http.max_connections",
                "admin.listen",
                "log.level",
                "log.format"
            ]
        );
        // The rest of the file still applies.
        assert_eq!(plan.changed, ["rtmp.chunk_size"]);
        let mut expected = running.clone();
        expected.rtmp.chunk_size = 8192;
        assert_eq!(plan.config, expected);
    }

    #[test]
    fn a_reload_that_only_works_with_the_new_listener_is_refused() {
        // The kept listener (1935) is what the new upstream names: a pull loop, once the
        // restart-only key keeps its running value.
        let running = load("");
        let loaded = load(
            "[rtmp]\nlisten = \"127.0.0.1:1999\"\n\
             [cluster.apps.live]\nupstreams = [\"rtmp://127.0.0.1:1935/live\"]\n",
        );
        let error = plan(&running, loaded).unwrap_err();
        assert!(error.to_string().contains("pull loop"), "{error}");
    }

    #[test]
    fn an_identical_file_changes_nothing() {
        let running = load("[streams]\napps = [\"live\"]\n");
        let plan = plan(&running, running.clone()).unwrap();
        assert!(plan.changed.is_empty() && plan.needs_restart.is_empty());
    }

    #[test]
    fn reads_and_opens_are_not_changes() {
        use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};
        assert!(!may_change_contents(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!may_change_contents(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        for kind in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Remove(RemoveKind::File),
        ] {
            assert!(may_change_contents(&kind), "{kind:?}");
        }
    }

    #[test]
    fn only_events_naming_the_file_count() {
        let names: BTreeSet<OsString> = [OsString::from("sluice.toml")].into();
        let p = |s: &str| vec![PathBuf::from(s)];
        assert!(concerns(&p("/etc/sluice/sluice.toml"), &names));
        assert!(concerns(&p("/etc/sluice/..data"), &names));
        assert!(concerns(&[], &names));
        assert!(!concerns(&p("/etc/sluice/sluice.log"), &names));
        assert!(!concerns(&p("/etc/sluice/.sluice.toml.swp"), &names));
    }

    #[test]
    fn the_directory_of_a_bare_file_name_is_the_current_one() {
        assert_eq!(parent(Path::new("sluice.toml")), PathBuf::from("."));
        assert_eq!(parent(Path::new("/etc/sluice.toml")), PathBuf::from("/etc"));
    }
}
