//! The `kube-sim` binary: prints `ready <url>`, writes a working kubeconfig, serves until SIGTERM
//! and then exits 0.

use streamscan_kube_sim::kubectl as common;

use std::process::Stdio;

use common::{TestResult, WAIT};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn kube_sim_prints_ready_serves_and_exits_cleanly_on_sigterm() -> TestResult {
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    // A port that was free a moment ago, to exercise --port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kube-sim"))
        .args([
            "--kubeconfig",
            kubeconfig.to_str().unwrap_or_default(),
            "--port",
            &port.to_string(),
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let ready = tokio::time::timeout(WAIT, lines.next_line())
        .await??
        .ok_or("kube-sim exited")?;
    assert_eq!(ready, format!("ready http://127.0.0.1:{port}"));

    let config =
        kube::Config::from_custom_kubeconfig(Kubeconfig::read_from(&kubeconfig)?, &KubeConfigOptions::default())
            .await?;
    let client = kube::Client::try_from(config)?;
    let namespaces: Api<Namespace> = Api::all(client);
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.contains(&"default".to_owned()), "{names:?}");

    let pid = child.id().ok_or("no pid")?;
    let kill = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await?;
    assert!(kill.success());
    let status = tokio::time::timeout(WAIT, child.wait()).await??;
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_eq!(
        tokio::time::timeout(WAIT, lines.next_line()).await??,
        None,
        "exactly one line on stdout"
    );
    Ok(())
}
