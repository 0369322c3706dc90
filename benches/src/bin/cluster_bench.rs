//! `sluice-cluster-bench`: the cluster benches of issue 4, against Sluice nodes on this
//! machine (and, for reference, any RTMP edge such as nginx-rtmp's `pull`).
//!
//! - `cold`: publishes N streams to an origin, then measures time to first frame at an edge
//!   that does not have them yet (its first viewer makes it pull) against the origin
//!   directly, and counts the edge's pulls.
//! - `failover`: viewers at an edge; the origin it pulls from is SIGKILLed; time to the next
//!   keyframe, largest gap, whether viewers stayed connected.
//!
//! Latency per tier is `sluice-bench --publish ORIGIN --play EDGE` (see `benches/cluster.sh`).
//! One thread (a current-thread runtime), to be pinned to its own core; see
//! `benches/README.md`.

// The fixture reader and the media classifier are `sluice-bench`'s own modules, compiled
// into this binary too so that the two stay one implementation.
#[path = "../fixture.rs"]
mod fixture;
#[path = "../local.rs"]
mod local;
#[allow(dead_code)] // the HTTP-FLV tag scanner is sluice-bench's alone
#[path = "../media.rs"]
mod media;
#[path = "../paced.rs"]
mod paced;

#[path = "../cluster"]
mod cluster {
    pub mod admin;
    pub mod cold;
    pub mod failover;
    pub mod play;
    pub mod publish;
    pub mod stats;
}

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

pub use local::check_local;

/// Cluster benches: edge cold start and origin failover.
#[derive(Debug, Parser)]
#[command(name = "sluice-cluster-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Time to first frame at a cold edge against the origin directly.
    Cold(ColdArgs),
    /// Viewers at an edge while the origin it pulls from is killed.
    Failover(FailoverArgs),
}

/// `cold`.
#[derive(Debug, Args)]
pub struct ColdArgs {
    /// The origin's application URL: rtmp://host:port/app. Streams `PREFIX-<i>` are
    /// published here.
    #[arg(long)]
    pub origin: String,
    /// The edge's application URL: rtmp://host:port/app.
    #[arg(long)]
    pub edge: String,
    /// The edge's admin listener (http://host:port): its pull count is checked.
    #[arg(long)]
    pub edge_admin: Option<String>,
    /// Streams (and publishers).
    #[arg(long, default_value_t = 50)]
    pub streams: usize,
    /// Viewers per stream at the edge, connecting together (all cold).
    #[arg(long, default_value_t = 1)]
    pub viewers: usize,
    /// Stream names are PREFIX-<i>; use a fresh prefix to rerun against the same edge
    /// within its pulls' idle timeout.
    #[arg(long, default_value = "cold")]
    pub prefix: String,
    /// FLV file to publish, looped.
    #[arg(long, default_value = "fixtures/h264_aac.flv")]
    pub fixture: PathBuf,
    /// Publish this long after every publisher sent its first keyframe, before the first
    /// viewer, ms.
    #[arg(long, default_value_t = 1500)]
    pub warmup_ms: u64,
    /// Deadline per viewer for its first keyframe (and per publisher to connect), ms.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// A label copied into the report.
    #[arg(long)]
    pub label: Option<String>,
    /// Print the report as one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Allow non-loopback targets.
    #[arg(long)]
    pub allow_remote: bool,
}

/// `failover`.
#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// What viewers play at the edge: rtmp://host:port/app/key.
    #[arg(long)]
    pub edge: String,
    /// Publish the fixture here (repeat: once per origin), rtmp://host:port/app/key.
    #[arg(long)]
    pub publish: Vec<String>,
    /// Right after the kill, publish the fixture here too: the broadcaster moving to
    /// another origin (an edge on a stream registry learns the new origin from it),
    /// rtmp://host:port/app/key.
    #[arg(long)]
    pub republish: Option<String>,
    /// The process to SIGKILL.
    #[arg(long)]
    pub kill_pid: Option<i32>,
    /// Instead of --kill-pid: ADDR=PID per origin (ADDR as in the edge's upstream URLs,
    /// host:port); the one the edge's pull uses at kill time (--edge-admin) is killed.
    #[arg(long)]
    pub kill_upstream: Vec<String>,
    /// The edge's admin listener (http://host:port).
    #[arg(long)]
    pub edge_admin: Option<String>,
    /// Viewers.
    #[arg(long, default_value_t = 5)]
    pub viewers: usize,
    /// Kill this long after the viewers connected, ms.
    #[arg(long, default_value_t = 3000)]
    pub after_ms: u64,
    /// Keep watching this long after the kill, ms.
    #[arg(long, default_value_t = 3000)]
    pub observe_ms: u64,
    /// Publish this long after every publisher sent its first keyframe, before the viewers.
    #[arg(long, default_value_t = 1500)]
    pub warmup_ms: u64,
    /// Deadline to connect (publishers and viewers), ms.
    #[arg(long, default_value_t = 5000)]
    pub connect_timeout_ms: u64,
    /// FLV file to publish, looped.
    #[arg(long, default_value = "fixtures/h264_aac.flv")]
    pub fixture: PathBuf,
    /// A label copied into the report.
    #[arg(long)]
    pub label: Option<String>,
    /// Print the report as one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Allow non-loopback targets.
    #[arg(long)]
    pub allow_remote: bool,
}

/// Progress and errors go to stderr; the report alone to stdout.
// A CLI's own output: stderr carries progress so stdout stays one JSON line.
#[allow(clippy::print_stderr)]
pub fn note(msg: &str) {
    eprintln!("sluice-cluster-bench: {msg}");
}

/// Prints a report: one JSON line, or indented.
// A CLI's own output: stdout is the interface.
#[allow(clippy::print_stdout)]
pub fn print<T: Serialize>(report: &T, json: bool) -> anyhow::Result<()> {
    let text = if json {
        serde_json::to_string(report)?
    } else {
        serde_json::to_string_pretty(report)?
    };
    println!("{text}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ok = match cli.command {
        Command::Cold(args) => rt.block_on(cluster::cold::run(args))?,
        Command::Failover(args) => rt.block_on(cluster::failover::run(args))?,
    };
    // Exit 1 when a check failed (a viewer without a keyframe, a pull count off, a viewer
    // dropped, a keyframe later than 1 s), after the report.
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
