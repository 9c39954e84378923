//! Child processes the devstack starts: each logs to a file under the devstack's directory and
//! is killed when its handle is dropped, so nothing outlives the devstack.

use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

use crate::DevstackError;

/// A running child process.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    /// Starts `program` with `args` and `env`, stdout and stderr appended to `<dir>/<name>.log`.
    pub fn spawn<I, S>(
        name: &str,
        program: &Path,
        args: I,
        env: &[(&str, String)],
        dir: &Path,
    ) -> Result<Self, DevstackError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let log = dir.join(format!("{name}.log"));
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|source| DevstackError::Io {
                    what: format!("opening {}", log.display()),
                    source,
                })
        };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(open()?)
            .stderr(open()?)
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().map_err(|source| DevstackError::Io {
            what: format!("starting {name} ({})", program.display()),
            source,
        })?;
        Ok(Proc {
            name: name.to_owned(),
            log,
            child,
        })
    }

    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Asks the process to stop (SIGTERM) and waits up to `grace` before killing it.
    pub async fn terminate(&mut self, grace: std::time::Duration) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
            if tokio::time::timeout(grace, self.child.wait()).await.is_ok() {
                return;
            }
        }
        self.kill().await;
    }

    /// Whether the process has exited, without waiting.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// The child, for callers that need to hand it to the kubelet helper.
    pub fn into_child(self) -> Child {
        self.child
    }
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16, DevstackError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|source| DevstackError::Io {
        what: "finding a free port".into(),
        source,
    })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| DevstackError::Io {
            what: "finding a free port".into(),
            source,
        })
}
