//! The command line: `sluice [serve] [--config FILE] [--no-watch]`, `sluice check-config FILE`,
//! `sluice print-config [--config FILE]`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sluice_core::Config;
use sluice_core::config::LogFormat;
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
        certs: None,
    });
    let shutdown = app.context().shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        shutdown.cancel();
    });
    app.run().await
}

/// Resolves on SIGTERM or SIGINT.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
