//! One shutdown signal for the whole process: SIGTERM or SIGINT cancels the token, and every
//! long-running task stops on it.

use tokio_util::sync::CancellationToken;

/// A token cancelled on SIGTERM or SIGINT (Ctrl-C). The SIGTERM handler is in place when this
/// returns, so a signal sent right after (say, once a "ready" line is printed) is not missed.
/// Must be called within a Tokio runtime.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    let signal = Signal::install();
    tokio::spawn(async move {
        signal.wait().await;
        tracing::info!("shutdown signal received");
        trigger.cancel();
    });
    token
}

#[cfg(unix)]
struct Signal(std::io::Result<tokio::signal::unix::Signal>);

#[cfg(unix)]
impl Signal {
    fn install() -> Self {
        Signal(tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()))
    }

    async fn wait(self) {
        match self.0 {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGTERM; only Ctrl-C stops the process");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

#[cfg(not(unix))]
struct Signal;

#[cfg(not(unix))]
impl Signal {
    fn install() -> Self {
        Signal
    }

    async fn wait(self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
