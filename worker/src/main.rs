//! `streamscan-worker`: the analysis server of each worker pod, and `scan`, the same engine on
//! one machine with no cluster.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use streamscan_engine::report;
use streamscan_worker::scan::{self, EXIT_ERROR, ScanArgs};

#[derive(Parser)]
#[command(
    name = "streamscan-worker",
    version,
    about = "Streamscan analysis server and local scanner",
    after_help = "Exit codes of scan: 0 no finding at or above --fail-on, 1 findings at or above it, \
                  2 usage or input error (or the scan failed), 130 interrupted."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Analyse one file (a path, an http(s) URL, or - for standard input) on this machine.
    Scan(ScanArgs),
    /// Print the JSON Schema of the scan report (or write it to worker/report.schema.json).
    ReportSchema {
        /// Write the schema file instead of printing it.
        #[arg(long)]
        write: bool,
    },
    /// Run as the analysis server of one worker pod.
    Serve(Box<streamscan_worker::runtime::ServeArgs>),
}

fn report_schema(write: bool) -> Result<()> {
    let schema = report::schema_json().context("generating the report schema")?;
    if write {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("report.schema.json");
        std::fs::write(&path, schema).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    } else {
        print!("{schema}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::Scan(args) => scan::run(args),
        Command::ReportSchema { write } => report_schema(write).map(|()| ExitCode::SUCCESS),
        Command::Serve(args) => streamscan_worker::runtime::run::run(*args).map(|()| ExitCode::SUCCESS),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
