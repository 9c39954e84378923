//! Serving an axum router over HTTP/1 and HTTP/2 with the timeouts `axum::serve` leaves out: it
//! sets no timer, so hyper's header-read timeout never fires and a client sending a header byte a
//! minute (slowloris) holds a connection and a task forever. Here a connection that has not sent
//! a request's headers within [`HEADER_READ_TIMEOUT`] is closed, idle keep-alive connections too.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Time a client has to send a request's headers (hyper's own default, once a timer exists).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Time open connections get to finish their requests after `shutdown`.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown`, then lets open requests finish (upgraded
/// connections such as WebSockets end with the application's own shutdown).
pub async fn serve(listener: TcpListener, app: Router, shutdown: CancellationToken) {
    serve_with(listener, app, shutdown, HEADER_READ_TIMEOUT).await;
}

/// [`serve`] with another header-read timeout (tests).
pub async fn serve_with(listener: TcpListener, app: Router, shutdown: CancellationToken, header_read: Duration) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read);
    // CONNECT for WebSockets over HTTP/2, as axum::serve does; pings drop dead peers.
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .keep_alive_interval(Duration::from_secs(30));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(%peer, %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            "connections still open {} s after shutdown; closing them",
            DRAIN.as_secs()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A client that never finishes its headers is disconnected; a normal one is served.
    #[tokio::test]
    async fn a_slow_header_sender_is_cut_off() -> Result<(), Box<dyn std::error::Error>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let app = Router::new().route("/", get(|| async { "ok" }));
        let server = tokio::spawn(serve_with(listener, app, shutdown.clone(), Duration::from_millis(300)));

        let mut slow = tokio::net::TcpStream::connect(addr).await?;
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await?;
        let started = Instant::now();
        let mut buf = Vec::new();
        // The server closes the connection (EOF, maybe after a 408) instead of waiting forever.
        tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await??;
        assert!(started.elapsed() >= Duration::from_millis(250), "cut off too early");

        let mut fast = tokio::net::TcpStream::connect(addr).await?;
        fast.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), fast.read_to_string(&mut answer)).await??;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), server).await??;
        Ok(())
    }
}
