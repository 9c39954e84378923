//! `streamscan-operator`: the AnalysisJob controller, and the generated API artefacts. The
//! gateway is its own binary, `streamscan-gateway`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use streamscan_api::generate;
use streamscan_operator::controller::{self, ControllerArgs};
use streamscan_operator::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(name = "streamscan-operator", version, about = "Streamscan control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the AnalysisJob CRD (YAML), or the progress-event JSON Schema.
    Crd {
        /// Print the progress-event JSON Schema instead of the CRD.
        #[arg(long)]
        progress_event_schema: bool,
        /// Rewrite the committed files (crds/analysisjob.yaml, crds/progress-event.schema.json)
        /// under the workspace root instead of printing.
        #[arg(long, conflicts_with = "progress_event_schema")]
        write: bool,
        /// Workspace root for --write.
        #[arg(long, default_value = ".", requires = "write")]
        root: PathBuf,
    },
    /// Reconcile AnalysisJobs: placement, deadlines, retries, cancel, TTL, cleanup.
    Controller {
        #[command(flatten)]
        args: Box<ControllerArgs>,
        #[arg(long, value_enum, default_value_t = LogFormat::Auto)]
        log_format: LogFormat,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd {
            progress_event_schema,
            write,
            root,
        } => {
            if write {
                write_generated(&root)
            } else if progress_event_schema {
                print!("{}", generate::progress_event_schema_json()?);
                Ok(())
            } else {
                print!("{}", generate::crd_yaml()?);
                Ok(())
            }
        }
        Command::Controller { args, log_format } => {
            // Dropped after the runtime: it flushes the trace export.
            let _telemetry = telemetry::init(log_format, "streamscan-controller");
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(controller::run(*args))
        }
    }
}

fn write_generated(root: &Path) -> Result<()> {
    for (path, contents) in [
        (generate::CRD_PATH, generate::crd_yaml()?),
        (generate::EVENT_SCHEMA_PATH, generate::progress_event_schema_json()?),
    ] {
        let path = root.join(path);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
