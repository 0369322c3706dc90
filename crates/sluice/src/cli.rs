//! The command line: `sluice [serve] [--config FILE] [--no-watch]`, `sluice check-config FILE`,
//! `sluice print-config [--config FILE]`, `sluice sign --config FILE --url URL --expires-in
//! SECONDS [--publish] [--key-id ID] [--client-ip IP]`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sluice_auth::{Action, AuthConfig, Check};
use sluice_core::Config;
use sluice_core::config::LogFormat;
use sluice_runtime::Context;
use tracing_subscriber::EnvFilter;

use crate::App;

/// Sluice: an edge live-stream server.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Config file for `serve` when no subcommand is given.
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// Do not watch the config file for changes; `serve` reloads it on SIGHUP only.
    #[arg(long, global = true)]
    pub no_watch: bool,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Check a config file (defaults, file and environment merged) and exit.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Print the effective config (defaults, optional file, environment) as TOML.
    PrintConfig,
    /// Print a URL signed for `check = "signed"` with a key of the config's [auth] (the
    /// alphabetically first unless --key-id is given).
    Sign {
        /// The stream URL: rtmp://, rtmps://, http:// or https://HOST/APP/NAME (HTTP-FLV
        /// `NAME.flv`, HLS `NAME.m3u8` or `NAME/media.m3u8` as well).
        #[arg(long)]
        url: String,
        /// How long the URL stays valid, in seconds from now.
        #[arg(long)]
        expires_in: u64,
        /// Sign for publishing (default: playing).
        #[arg(long)]
        publish: bool,
        /// The signing key to use.
        #[arg(long)]
        key_id: Option<String>,
        /// Bind the URL to this client address (needed where the rule has bind_address).
        #[arg(long)]
        client_ip: Option<IpAddr>,
    },
}

/// The `[auth]` section of a config.
pub fn auth_config(config: &Config) -> &AuthConfig {
    &config.auth
}

/// `url` with a signature appended (`?` or `&` + [`sluice_auth::sign`]) that lets it
/// `action` until `expires_unix_s`, signed with `key_id` or the alphabetically first key of
/// `auth` (its `signing_key_file` is read).
pub fn signed_url(
    auth: &AuthConfig,
    url: &str,
    action: Action,
    expires_unix_s: u64,
    key_id: Option<&str>,
    client: Option<IpAddr>,
) -> anyhow::Result<String> {
    let keys = sluice_auth::load_signing_keys(auth)?;
    let (id, secret) = match key_id {
        Some(id) => keys.get_key_value(id).with_context(|| {
            format!(
                "no signing key {id:?} in auth.signing_keys or auth.signing_key_file (ids: {})",
                keys.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?,
        None => keys
            .iter()
            .next()
            .context("no signing key: set auth.signing_keys or auth.signing_key_file")?,
    };
    let (app, stream) = url_stream(url)?;
    let query = sluice_auth::sign(
        id,
        secret.as_bytes(),
        action,
        &app,
        &stream,
        expires_unix_s,
        client,
    );
    let separator = match url.find('?') {
        None => "?",
        Some(_) if url.ends_with('?') || url.ends_with('&') => "",
        Some(_) => "&",
    };
    Ok(format!("{url}{separator}{query}"))
}

/// The application and stream an rtmp(s):// or http(s):// URL names.
fn url_stream(url: &str) -> anyhow::Result<(String, String)> {
    let (scheme, rest) = url
        .split_once("://")
        .with_context(|| format!("{url:?} is not a URL (SCHEME://HOST/APP/NAME)"))?;
    if !["rtmp", "rtmps", "http", "https"].contains(&scheme.to_ascii_lowercase().as_str()) {
        anyhow::bail!("{url:?}: the scheme must be rtmp, rtmps, http or https");
    }
    if rest.contains('#') {
        anyhow::bail!("{url:?}: a URL with a fragment cannot be signed");
    }
    let rest = rest.split_once('?').map_or(rest, |(before, _)| before);
    let path = rest.find('/').map_or("", |at| &rest[at..]);
    sluice_auth::stream_of_url_path(path).with_context(|| {
        format!(
            "{url:?}: the path must be /APP/NAME, /APP/NAME.flv, /APP/NAME.m3u8 or \
             /APP/NAME/FILE"
        )
    })
}

/// Loads the effective config: embedded defaults, the file if given, environment overrides.
///
/// `serve` at startup, `check-config`, `print-config` and every reload go through here (or
/// through its two halves, [`read_config_file`] and [`parse_config`]), so they cannot disagree.
pub fn load_config(file: Option<&Path>) -> anyhow::Result<Config> {
    let text = file.map(read_config_file).transpose()?;
    parse_config(file, text.as_deref())
}

/// The text of a config file.
pub fn read_config_file(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))
}

/// The effective config from `text`, the contents of `file` (`None`: the embedded default
/// only), merged over the defaults, with environment overrides on top.
pub fn parse_config(file: Option<&Path>, text: Option<&str>) -> anyhow::Result<Config> {
    let what = file.map_or_else(
        || "embedded default config".to_owned(),
        |p| p.display().to_string(),
    );
    Config::load(text, std::env::vars()).with_context(|| format!("in {what}"))
}

impl Cli {
    /// Runs the chosen command.
    pub fn run(self) -> anyhow::Result<()> {
        match self.command.unwrap_or(Command::Serve) {
            Command::CheckConfig { file } => {
                load_config(Some(&file))?;
                #[allow(clippy::print_stdout)]
                {
                    println!("{}: ok", file.display());
                }
                Ok(())
            }
            Command::PrintConfig => {
                let config = load_config(self.config.as_deref())?;
                #[allow(clippy::print_stdout)]
                {
                    print!("{}", config.to_toml());
                }
                Ok(())
            }
            Command::Sign {
                url,
                expires_in,
                publish,
                key_id,
                client_ip,
            } => {
                let config = load_config(self.config.as_deref())?;
                let auth = auth_config(&config);
                let action = if publish {
                    Action::Publish
                } else {
                    Action::Play
                };
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .context("the system clock is before 1970")?
                    .as_secs();
                let signed = signed_url(
                    auth,
                    &url,
                    action,
                    now.saturating_add(expires_in),
                    key_id.as_deref(),
                    client_ip,
                )?;
                let (app, _) = url_stream(&url)?;
                let rules = auth.rules(&app);
                let rule = if publish { &rules.publish } else { &rules.play };
                #[allow(clippy::print_stdout, clippy::print_stderr)]
                {
                    if rule.check != Check::Signed {
                        eprintln!(
                            "note: {action} on {app:?} is check = \"{}\" in this config, \
                             so the signature is not what admits it",
                            rule.check.as_str()
                        );
                    }
                    if rule.bind_address && client_ip.is_none() {
                        eprintln!(
                            "note: {action} on {app:?} has bind_address: this URL without \
                             --client-ip will be refused"
                        );
                    }
                    println!("{signed}");
                }
                Ok(())
            }
            Command::Serve => {
                let config = load_config(self.config.as_deref())?;
                init_tracing(&config);
                tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .context("starting the runtime")?
                    .block_on(serve(config, self.config, !self.no_watch))
            }
        }
    }
}

fn init_tracing(config: &Config) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn serve(config: Config, file: Option<PathBuf>, watch: bool) -> anyhow::Result<()> {
    let app = App::bind(config).await?.reload(crate::reload::Source {
        file,
        watch,
        gate: None,
        certs: None,
    });
    // Installed before the node says it listens: from then on SIGTERM drains it.
    let signals = Signals::install();
    let ctx = app.context();
    tokio::spawn(async move { signals.handle(&ctx).await });
    app.run().await
}

/// SIGTERM and SIGINT, caught.
struct Signals {
    /// `None` where they cannot be caught; Ctrl-C then stops the node at once.
    caught: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        let caught = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Some((term, int)),
            _ => None,
        };
        Signals { caught }
    }

    /// The first SIGTERM drains the node (see [`Context::drain`]; when `POST /api/drain`
    /// already started one, that drain goes on); a second one, or SIGINT, shuts it down at
    /// once.
    async fn handle(self, ctx: &Context) {
        let Some((mut term, mut int)) = self.caught else {
            let _ = tokio::signal::ctrl_c().await;
            ctx.shutdown.cancel();
            return;
        };
        let mut terms = 0u32;
        loop {
            tokio::select! {
                _ = term.recv() => {
                    terms += 1;
                    if terms == 1 {
                        let started = ctx.drain();
                        tracing::info!(then = "drain", started, "SIGTERM received");
                        continue;
                    }
                    tracing::info!(then = "shutdown", "SIGTERM received (again)");
                }
                _ = int.recv() => tracing::info!(then = "shutdown", "SIGINT received"),
            }
            ctx.shutdown.cancel();
            return;
        }
    }
}
