//! `devstack`: the whole Streamscan system on one machine. Prints how to reach it, then `ready`,
//! and stops everything it started on Ctrl-C or SIGTERM.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use streamscan_devstack::{Backend, Devstack, Options, build_binaries, default_bin_dir};

#[derive(Parser)]
#[command(
    name = "devstack",
    about = "Run Streamscan on one machine: Kubernetes API server, Kafka, Redis, controllers, gateway, workers"
)]
struct Args {
    /// Worker processes (serverIds 0..N-1).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    /// Where logs, the kubeconfig, tokens and worker data go.
    #[arg(long, default_value = ".devstack")]
    dir: PathBuf,
    /// Jobs per worker.
    #[arg(long, default_value_t = 4)]
    capacity: u16,
    /// The Kubernetes API server and Kafka broker: real ones (`scripts/real/` builds and caches
    /// them) or the simulator and librdkafka's mock cluster.
    #[arg(long, value_enum, default_value_t = Backend::Real)]
    backend: Backend,
    /// Do not build the operator and worker binaries first.
    #[arg(long)]
    no_build: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let bin_dir = default_bin_dir();
    if !args.no_build {
        eprintln!("devstack: building streamscan-operator, streamscan-gateway and streamscan-worker ...");
        build_binaries(&bin_dir).context("building the binaries")?;
    }
    let dir = std::path::absolute(&args.dir).with_context(|| format!("resolving {}", args.dir.display()))?;
    let mut opts = Options::new(dir.clone(), bin_dir);
    opts.backend = args.backend;
    opts.workers = usize::from(args.workers);
    opts.capacity = args.capacity;
    eprintln!("devstack: starting in {} (process logs go there) ...", dir.display());
    let stack = Devstack::start(opts).await.context("starting the devstack")?;
    let stop = streamscan_runtime::shutdown::on_signals();
    for line in stack.env_lines() {
        println!("{line}");
    }
    println!("ready");
    stop.cancelled().await;
    eprintln!("devstack: stopping ...");
    stack.shutdown().await;
    Ok(())
}
