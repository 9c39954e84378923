//! Opening a job's source as a byte stream at a given offset (0, or a checkpoint's).
//!
//! - `url`: an async reqwest client without proxies; a dropped connection is continued with an
//!   HTTP Range request from the next byte, a few times with backoff. The body reaches the
//!   engine's blocking `Read` through a bounded channel, so a fast server cannot fill memory.
//! - `volume`: a path under the source root; `..` and symlinks leading out are refused.
//! - `upload`: the file the gateway PUT on this worker's volume.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Component, Path};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};
use streamscan_api::names::reason;
use tokio::sync::mpsc;

use crate::engine::pipeline::CancelToken;

/// Why a source cannot be read; `retriable` says whether trying again later may work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    pub reason: &'static str,
    pub message: String,
    pub retriable: bool,
}

impl SourceError {
    pub fn fatal(reason: &'static str, message: impl Into<String>) -> Self {
        SourceError {
            reason,
            message: message.into(),
            retriable: false,
        }
    }
    pub fn retriable(reason: &'static str, message: impl Into<String>) -> Self {
        SourceError {
            reason,
            message: message.into(),
            retriable: true,
        }
    }
}

/// An opened source: a reader positioned at the requested offset, and the file's length.
pub struct Opened {
    pub reader: Box<dyn Read + Send>,
    pub total: Option<u64>,
}

/// Resolves `relative` under `root`, refusing anything that leads outside it.
pub fn resolve_volume_path(root: &Path, relative: &str) -> Result<std::path::PathBuf, SourceError> {
    let rel = Path::new(relative);
    if relative.is_empty() || rel.is_absolute() {
        return Err(SourceError::fatal(
            reason::PATH_ESCAPES_ROOT,
            format!("volume path {relative:?} must be a non-empty path relative to the source volume root"),
        ));
    }
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(SourceError::fatal(
            reason::PATH_ESCAPES_ROOT,
            format!("volume path {relative:?} contains '..': it must stay inside the source volume"),
        ));
    }
    let root = root.canonicalize().map_err(|e| {
        SourceError::retriable(
            reason::SOURCE_VOLUME_UNAVAILABLE,
            format!("the source volume {} cannot be read: {e}", root.display()),
        )
    })?;
    let full = root.join(rel).canonicalize().map_err(|e| {
        SourceError::fatal(
            reason::SOURCE_NOT_FOUND,
            format!("volume path {relative:?} cannot be opened: {e}"),
        )
    })?;
    if !full.starts_with(&root) {
        return Err(SourceError::fatal(
            reason::PATH_ESCAPES_ROOT,
            format!("volume path {relative:?} resolves outside the source volume (through a symbolic link)"),
        ));
    }
    Ok(full)
}

/// Opens a local file (volume or upload) at `offset`.
pub fn open_file(path: &Path, offset: u64, what: &str) -> Result<Opened, SourceError> {
    let mut file = File::open(path)
        .map_err(|e| SourceError::fatal(reason::SOURCE_NOT_FOUND, format!("{what} cannot be opened: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| SourceError::fatal(reason::SOURCE_NOT_FOUND, format!("{what}: {e}")))?;
    if !meta.is_file() {
        return Err(SourceError::fatal(
            reason::UNSUPPORTED_INPUT,
            format!("{what} is not a regular file"),
        ));
    }
    if offset > meta.len() {
        return Err(SourceError::fatal(
            reason::SOURCE_CHANGED,
            format!(
                "{what} is shorter ({} bytes) than the checkpoint ({offset})",
                meta.len()
            ),
        ));
    }
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| SourceError::retriable(reason::SOURCE_READ_FAILED, format!("{what}: {e}")))?;
    Ok(Opened {
        reader: Box::new(file),
        total: Some(meta.len()),
    })
}

/// How a URL download retries.
#[derive(Clone, Debug)]
pub struct UrlOptions {
    /// Attempts to continue after a dropped connection.
    pub retries: u32,
    pub backoff: Duration,
    /// Request headers (from the job's `headersSecretRef`), sent with every request.
    pub headers: reqwest::header::HeaderMap,
}

impl Default for UrlOptions {
    fn default() -> Self {
        UrlOptions {
            retries: 5,
            backoff: Duration::from_millis(200),
            headers: reqwest::header::HeaderMap::new(),
        }
    }
}

/// Request headers from a Secret's keys and values (`headersSecretRef`). A key that is not a valid
/// header name, or a value that is not a valid header value, fails the job: it cannot work.
pub fn headers_from_secret(
    name: &str,
    data: &std::collections::BTreeMap<String, Vec<u8>>,
) -> Result<reqwest::header::HeaderMap, SourceError> {
    use reqwest::header::{HeaderName, HeaderValue};
    let mut headers = reqwest::header::HeaderMap::new();
    for (key, value) in data {
        let header = HeaderName::from_bytes(key.as_bytes()).map_err(|_| {
            SourceError::fatal(
                reason::INVALID_HEADERS_SECRET,
                format!("Secret {name}: key {key:?} is not a valid HTTP header name"),
            )
        })?;
        let mut value = HeaderValue::from_bytes(value.trim_ascii()).map_err(|_| {
            SourceError::fatal(
                reason::INVALID_HEADERS_SECRET,
                format!("Secret {name}: the value of {key:?} is not a valid HTTP header value"),
            )
        })?;
        value.set_sensitive(true);
        headers.insert(header, value);
    }
    Ok(headers)
}

/// The HTTP client for sources: no proxy (a cluster's proxy variables are not for this), and
/// no overall timeout since a large download takes minutes.
pub fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .build()
}

/// Sends a GET from `offset`; returns the response, positioned at `offset`, and the total length.
async fn request(
    client: &reqwest::Client,
    url: &str,
    headers: &reqwest::header::HeaderMap,
    offset: u64,
) -> Result<(reqwest::Response, u64, Option<u64>), SourceError> {
    let mut req = client.get(url).headers(headers.clone());
    if offset > 0 {
        req = req.header(RANGE, format!("bytes={offset}-"));
    }
    let response = req
        .send()
        .await
        .map_err(|e| SourceError::retriable(reason::SOURCE_UNAVAILABLE, format!("fetching {url}: {e}")))?;
    let status = response.status();
    match status {
        StatusCode::PARTIAL_CONTENT if offset > 0 => {
            // Content-Range: bytes start-end/total
            let total = response
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit('/').next())
                .and_then(|t| t.parse().ok());
            Ok((response, offset, total))
        }
        s if s.is_success() => {
            let total = response.content_length();
            // The server ignored the Range: the caller skips to `offset`.
            Ok((response, 0, total))
        }
        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT => {
            Err(SourceError::retriable(
                reason::SOURCE_UNAVAILABLE,
                format!("fetching {url}: the server answered {s}"),
            ))
        }
        s => Err(SourceError::fatal(
            reason::SOURCE_NOT_FOUND,
            format!("fetching {url}: the server answered {s}"),
        )),
    }
}

/// Opens `url` at `offset`. The first request happens here, so an unreachable or missing
/// file fails the job with a clear reason before any analysis starts.
pub async fn open_url(
    client: reqwest::Client,
    url: String,
    offset: u64,
    options: UrlOptions,
    cancel: CancelToken,
) -> Result<Opened, SourceError> {
    let (response, at, total) = request(&client, &url, &options.headers, offset).await?;
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    let task = tokio::spawn(pump(client, url, response, at, offset, total, options, tx));
    Ok(Opened {
        reader: Box::new(ChannelReader {
            rx,
            current: Bytes::new(),
            task: task.abort_handle(),
            cancel,
        }),
        total,
    })
}

/// Copies the body into the channel from `want` on, continuing with Range after a drop.
#[allow(clippy::too_many_arguments)]
async fn pump(
    client: reqwest::Client,
    url: String,
    mut response: reqwest::Response,
    mut at: u64,
    mut want: u64,
    total: Option<u64>,
    options: UrlOptions,
    tx: mpsc::Sender<io::Result<Bytes>>,
) {
    let mut failures = 0u32;
    loop {
        let dropped = loop {
            match response.chunk().await {
                Ok(Some(mut chunk)) => {
                    let end = at + chunk.len() as u64;
                    if end <= want {
                        at = end;
                        continue;
                    }
                    if at < want {
                        chunk = chunk.slice((want - at) as usize..);
                    }
                    at = end;
                    want = end;
                    failures = 0;
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
                Ok(None) if total.is_some_and(|t| want < t) => {
                    break format!("the connection ended at byte {want} of {}", total.unwrap_or_default());
                }
                Ok(None) => return,
                Err(e) => break format!("the download broke at byte {want}: {e}"),
            }
        };
        // Continue from the next byte we need.
        loop {
            failures += 1;
            if failures > options.retries {
                let _ = tx
                    .send(Err(io::Error::other(format!(
                        "{url}: {dropped}; gave up after {} retries",
                        options.retries
                    ))))
                    .await;
                return;
            }
            tokio::time::sleep(options.backoff * 2u32.saturating_pow(failures - 1)).await;
            tracing::info!(%url, offset = want, "resuming the download with an HTTP Range request");
            match request(&client, &url, &options.headers, want).await {
                Ok((r, from, _)) => {
                    response = r;
                    at = from;
                    break;
                }
                Err(e) if e.retriable => tracing::warn!(%url, error = %e, "retrying the download"),
                Err(e) => {
                    let _ = tx.send(Err(io::Error::other(e.message))).await;
                    return;
                }
            }
        }
    }
}

/// The engine's blocking `Read` over the async download.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    task: tokio::task::AbortHandle,
    cancel: CancelToken,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.cancel.is_cancelled() {
                return Err(io::Error::other("cancelled"));
            }
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

impl Drop for ChannelReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads no faster than a given rate (tests use it to make "mid-run" last).
pub struct Throttled<R> {
    inner: R,
    rate: u64,
    started: Instant,
    read: u64,
    cancel: CancelToken,
}

impl<R> Throttled<R> {
    pub fn new(inner: R, bytes_per_sec: u64, cancel: CancelToken) -> Self {
        Throttled {
            inner,
            rate: bytes_per_sec.max(1),
            started: Instant::now(),
            read: 0,
            cancel,
        }
    }
}

impl<R: Read> Read for Throttled<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // Small reads keep the pace smooth and a cancel prompt.
        let max = (self.rate / 20).clamp(1, buf.len() as u64) as usize;
        let n = self.inner.read(&mut buf[..max])?;
        self.read += n as u64;
        let due = Duration::from_secs_f64(self.read as f64 / self.rate as f64);
        while self.started.elapsed() < due && !self.cancel.is_cancelled() {
            std::thread::sleep((due - self.started.elapsed()).min(Duration::from_millis(20)));
        }
        Ok(n)
    }
}

/// Shared wait for uploads: the HTTP handler notifies, jobs waiting for their file wake up.
pub type UploadNotify = Arc<tokio::sync::Notify>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_paths_leaving_the_root() -> Result<(), Box<dyn std::error::Error>> {
        let outside = tempfile::tempdir()?;
        std::fs::write(outside.path().join("secret"), b"x")?;
        let root = tempfile::tempdir()?;
        std::fs::create_dir(root.path().join("d"))?;
        std::fs::write(root.path().join("d/ok.bin"), b"ok")?;
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("d/link"))?;
        std::os::unix::fs::symlink(root.path().join("d/ok.bin"), root.path().join("inner"))?;

        assert!(resolve_volume_path(root.path(), "d/ok.bin").is_ok());
        assert!(resolve_volume_path(root.path(), "./d/ok.bin").is_ok());
        // A symlink that stays inside is fine.
        assert!(resolve_volume_path(root.path(), "inner").is_ok());
        for bad in ["../x", "d/../../x", "/etc/passwd", ""] {
            let e = resolve_volume_path(root.path(), bad).err().ok_or("accepted")?;
            assert_eq!(
                (e.reason, e.retriable),
                (reason::PATH_ESCAPES_ROOT, false),
                "{bad}: {e}"
            );
        }
        let e = resolve_volume_path(root.path(), "d/link").err().ok_or("accepted")?;
        assert_eq!(e.reason, reason::PATH_ESCAPES_ROOT);
        assert!(e.message.contains("symbolic link"), "{e}");
        let e = resolve_volume_path(root.path(), "missing").err().ok_or("accepted")?;
        assert_eq!((e.reason, e.retriable), (reason::SOURCE_NOT_FOUND, false));
        Ok(())
    }

    #[test]
    fn opens_files_at_an_offset() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789")?;
        let mut opened = open_file(&path, 4, "f")?;
        let mut s = String::new();
        opened.reader.read_to_string(&mut s)?;
        assert_eq!((s.as_str(), opened.total), ("456789", Some(10)));
        assert_eq!(
            open_file(&path, 11, "f").err().map(|e| e.reason),
            Some(reason::SOURCE_CHANGED)
        );
        Ok(())
    }
}
