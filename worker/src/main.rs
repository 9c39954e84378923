//! `streamscan-worker`: the analysis server of each worker pod, and `scan`, the same engine on
//! one machine with no cluster.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "streamscan-worker",
    version,
    about = "Streamscan analysis server and local scanner"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Analyse one file (a path, an http(s) URL, or - for standard input) on this machine.
    Scan {
        /// What to analyse.
        input: PathBuf,
    },
    /// Run as the analysis server of one worker pod.
    Serve,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Scan { input } => bail!("scan {}: the engine is not implemented yet", input.display()),
        Command::Serve => bail!("serve: the worker runtime is not implemented yet"),
    }
}
