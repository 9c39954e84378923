//! `kube-sim --kubeconfig PATH [--port N]`: a Kubernetes API simulator for Streamscan's tests.
//! Writes a kubeconfig for itself, prints `ready <url>`, serves until SIGTERM or SIGINT.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use streamscan_kube_sim::{Options, Simulator};

#[derive(Parser, Debug)]
#[command(about = "A Kubernetes API simulator for Streamscan's tests")]
struct Args {
    /// Where to write a kubeconfig that points at this simulator.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Port on 127.0.0.1 (default: a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let options = Options {
        addr: SocketAddr::from(([127, 0, 0, 1], args.port)),
        ..Options::default()
    };
    let sim = Simulator::start_with(options).await.context("starting the simulator")?;
    sim.write_kubeconfig(&args.kubeconfig)
        .with_context(|| format!("writing the kubeconfig to {}", args.kubeconfig.display()))?;
    let stop = streamscan_runtime::shutdown::on_signals();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {}", sim.url()).context("writing the ready line")?;
        out.flush().context("flushing stdout")?;
    }
    stop.cancelled().await;
    tracing::info!("stopping");
    sim.shutdown().await.context("stopping the simulator")?;
    Ok(())
}
