//! `sluice`: parse the command line and run it.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    sluice::cli::Cli::parse().run()
}
