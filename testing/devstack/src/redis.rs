//! A real `redis-server` on a free port, without persistence, killed with the devstack.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::DevstackError;
use crate::procs::{Proc, free_port};

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl RedisServer {
    /// Starts `redis-server` and waits until it accepts connections.
    pub async fn start(dir: &Path) -> Result<Self, DevstackError> {
        let port = free_port()?;
        let mut server = RedisServer {
            port,
            dir: dir.to_owned(),
            proc: None,
        };
        server.restart().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL): clients see the connection drop.
    pub async fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill().await;
        }
    }

    /// Whether the server was started and has exited since (not after [`RedisServer::kill`]).
    pub fn exited(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::exited)
    }

    /// Starts the server again on the same port, empty.
    pub async fn restart(&mut self) -> Result<(), DevstackError> {
        self.kill().await;
        let program = which("redis-server").ok_or_else(|| {
            DevstackError::Missing(
                "redis-server (Debian package redis-server; scripts/test.sh installs it as root)".into(),
            )
        })?;
        let port = self.port.to_string();
        let args = [
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ];
        self.proc = Some(Proc::spawn("redis", &program, args, &[], &self.dir)?);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(DevstackError::NotReady(format!("redis-server on port {port}")));
            }
            // Nothing to await but the port opening: poll with a short bounded interval.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The path of `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
