//! `sluice-bench`: the load generator. One process drives S RTMP publishers (one stream
//! each, default 1), paced in real time from an FLV fixture and looping with increasing
//! timestamps, and N RTMP, HTTP-FLV or HLS viewers spread over their streams, against any server
//! (Sluice, nginx-rtmp, SRS...); it matches every video frame's send and receive instants by
//! timestamp and prints one JSON report. See `benches/README.md`. With `--tls`, RTMP and
//! HTTP-FLV viewers play over TLS (RTMPS, HTTPS).
//!
//! It runs on one thread (a current-thread tokio runtime and a `LocalSet`) so that it can be
//! pinned to one core next to a server pinned to the other; shared state is an
//! `Rc<RefCell<_>>` that no task borrows across an `.await`.

mod cli;
mod fixture;
mod hist;
mod hls;
mod hls_viewer;
mod http;
mod local;
mod media;
mod paced;
mod procfs;
mod publisher;
mod report;
mod ring;
mod run;
mod state;
mod tls;
mod viewer;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = cli::Args::parse();
    let json = args.json;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = tokio::task::LocalSet::new().block_on(&rt, run::run(args))?;
    report::print(&report, json)?;
    let no_viewer = report.viewers_requested > 0 && report.viewers_connected == 0;
    if report.publisher_error.is_some() || no_viewer {
        std::process::exit(2);
    }
    Ok(())
}
