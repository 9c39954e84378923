//! `streamscan-gateway`: serves users live progress, history, cancel, job submission and result
//! downloads.

use anyhow::{Context, Result};
use clap::Parser;
use streamscan_gateway::GatewayArgs;
use streamscan_runtime::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "streamscan-gateway",
    version,
    about = "Streamscan gateway: live progress, history, cancel, job submission, result download"
)]
struct Cli {
    #[command(flatten)]
    args: Box<GatewayArgs>,
    #[arg(long, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Dropped after the runtime: it flushes the trace export.
    let _telemetry = telemetry::init(cli.log_format, "streamscan-gateway");
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(streamscan_gateway::run(*cli.args))
}
