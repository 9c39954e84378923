//! Opening a job's source as a byte stream at a given offset (0, or a checkpoint's).
//!
//! - `url`: an async reqwest client without proxies; a dropped connection is continued with an
//!   HTTP Range request from the next byte, a few times with backoff. The body reaches the
//!   engine's blocking `Read` through a bounded channel, so a fast server cannot fill memory.
//! - `volume`: a path under the source root, opened in one resolution beneath the root's directory
//!   (openat2 `RESOLVE_BENEATH`), so neither `..` nor a symbolic link, even one swapped in while
//!   the job starts, leads out; opened non-blocking, so a FIFO cannot hang the worker, and read
//!   only if it is a regular file.
//! - `upload`: the file the gateway PUT on this worker's volume.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::Mode;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, LOCATION, RANGE};
use streamscan_api::names::reason;
use streamscan_api::redact;
use tokio::sync::mpsc;

use super::egress::{Denied, Egress, Resolver};
use streamscan_engine::pipeline::CancelToken;

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

/// Checks that `relative` is a non-empty relative path without `..`, before any file is touched.
fn check_relative(relative: &str) -> Result<&Path, SourceError> {
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
    Ok(rel)
}

/// Flags of the final open: read-only, and non-blocking so that opening a FIFO returns at once
/// (fstat then refuses it) instead of waiting for a writer forever.
const READ_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_NOCTTY)
    .union(OFlag::O_CLOEXEC);

/// Opens `relative` under `root` at `offset`: a regular file beneath the root, or an error that
/// says what is wrong with the path.
pub fn open_volume(root: &Path, relative: &str, offset: u64) -> Result<Opened, SourceError> {
    let rel = check_relative(relative)?;
    let dir = File::open(root).map_err(|e| {
        SourceError::retriable(
            reason::SOURCE_VOLUME_UNAVAILABLE,
            format!("the source volume {} cannot be read: {e}", root.display()),
        )
    })?;
    let how = OpenHow::new()
        .flags(READ_FLAGS)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match openat2(&dir, rel, how) {
        // No openat2 (Linux < 5.6, or a seccomp profile that denies it): walk without following
        // any symbolic link.
        Err(Errno::ENOSYS | Errno::EPERM) => open_by_walk(&dir, rel),
        other => other,
    }
    .map_err(|errno| open_error(relative, errno))?;
    finish(File::from(fd), offset, &format!("volume path {relative:?}"))
}

/// The fallback of [`open_volume`]: one `openat` per component, none following a symbolic link.
fn open_by_walk(root: &File, rel: &Path) -> Result<OwnedFd, Errno> {
    let parts: Vec<&std::ffi::OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(part) => Some(part),
            _ => None,
        })
        .collect();
    let Some((last, dirs)) = parts.split_last() else {
        return Err(Errno::ENOENT);
    };
    let mut at = openat(
        root,
        ".",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    for part in dirs {
        at = openat(
            &at,
            *part,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| if e == Errno::ENOTDIR { Errno::ELOOP } else { e })?;
    }
    openat(&at, *last, READ_FLAGS | OFlag::O_NOFOLLOW, Mode::empty())
}

/// What a failed open of a volume path tells the job's owner.
fn open_error(relative: &str, errno: Errno) -> SourceError {
    match errno {
        Errno::EXDEV => SourceError::fatal(
            reason::PATH_ESCAPES_ROOT,
            format!(
                "volume path {relative:?} resolves outside the source volume (through a symbolic link that leaves \
                 it or is absolute)"
            ),
        ),
        Errno::ELOOP => SourceError::fatal(
            reason::UNSUPPORTED_INPUT,
            format!(
                "volume path {relative:?} goes through too many symbolic links, or through one this kernel cannot \
                 follow safely (no openat2): name the file itself"
            ),
        ),
        Errno::ENXIO => SourceError::fatal(
            reason::UNSUPPORTED_INPUT,
            format!("volume path {relative:?} is not a regular file (a socket)"),
        ),
        Errno::EINTR | Errno::EAGAIN | Errno::ENOMEM | Errno::EMFILE | Errno::ENFILE => SourceError::retriable(
            reason::SOURCE_READ_FAILED,
            format!("volume path {relative:?} cannot be opened now: {errno}"),
        ),
        _ => SourceError::fatal(
            reason::SOURCE_NOT_FOUND,
            format!("volume path {relative:?} cannot be opened: {}", errno.desc()),
        ),
    }
}

/// Opens a file the worker itself wrote (an upload) at `offset`.
pub fn open_file(path: &Path, offset: u64, what: &str) -> Result<Opened, SourceError> {
    let file = File::open(path)
        .map_err(|e| SourceError::fatal(reason::SOURCE_NOT_FOUND, format!("{what} cannot be opened: {e}")))?;
    finish(file, offset, what)
}

/// Checks the opened file is a regular one at least `offset` long, and seeks there.
fn finish(mut file: File, offset: u64, what: &str) -> Result<Opened, SourceError> {
    let meta = file
        .metadata()
        .map_err(|e| SourceError::fatal(reason::SOURCE_NOT_FOUND, format!("{what}: {e}")))?;
    if !meta.is_file() {
        let kind = meta.file_type();
        let kind = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(SourceError::fatal(
            reason::UNSUPPORTED_INPUT,
            format!("{what} is {kind}: only regular files are analysed"),
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

/// How a URL download retries, and what it may reach.
#[derive(Clone, Debug)]
pub struct UrlOptions {
    /// Attempts to continue after a dropped connection.
    pub retries: u32,
    pub backoff: Duration,
    /// Request headers (from the job's `headersSecretRef`), sent with every request to the URL's
    /// own origin; dropped once a redirect leads to another one.
    pub headers: reqwest::header::HeaderMap,
    /// The egress policy, for IP-literal hosts (the client's resolver checks names).
    pub egress: Arc<Egress>,
    /// A download is stalled when, over this much time spent waiting for the server (not for
    /// the analysis), fewer than `stall_min_bytes` arrived: a server sending a byte a minute
    /// would otherwise hold a slot forever. Stalled counts as a dropped connection.
    pub stall_window: Duration,
    pub stall_min_bytes: u64,
}

impl Default for UrlOptions {
    fn default() -> Self {
        UrlOptions {
            retries: 5,
            backoff: Duration::from_millis(200),
            headers: reqwest::header::HeaderMap::new(),
            egress: Arc::new(Egress::default()),
            stall_window: Duration::from_secs(60),
            stall_min_bytes: 64 << 10,
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

/// The HTTP client for sources: no proxy (a cluster's proxy variables are not for this), no
/// overall timeout since a large download takes minutes, every resolved address checked against
/// `egress`, and no redirect followed on its own ([`request`] follows them, checking each hop).
pub fn http_client(egress: Arc<Egress>) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(Resolver { egress }))
        .build()
}

/// Redirects followed for one request, as browsers and reqwest do by default.
const MAX_REDIRECTS: usize = 10;

/// A reqwest error without its URL (which may carry credentials) and with its causes.
fn describe(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    redact::url(&text).into_owned()
}

/// The egress refusal behind a failed request, if that is why it failed.
fn denied_in(err: &reqwest::Error) -> Option<Denied> {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(denied) = cause.downcast_ref::<Denied>() {
            return Some(denied.clone());
        }
        source = cause.source();
    }
    None
}

/// Refuses a target the client cannot be trusted to check: a scheme other than http(s), and an
/// IP-literal host (the resolver never sees it).
fn check_target(egress: &Egress, url: &reqwest::Url) -> Result<(), SourceError> {
    let shown = redact::url(url.as_str()).into_owned();
    if !matches!(url.scheme(), "http" | "https") {
        return Err(SourceError::fatal(
            reason::REDIRECT_REFUSED,
            format!("{shown}: only http and https are fetched"),
        ));
    }
    let host = url.host_str().unwrap_or_default();
    let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() else {
        return Ok(());
    };
    egress
        .check(host, ip)
        .map_err(|denied| SourceError::fatal(reason::EGRESS_DENIED, format!("fetching {shown}: {denied}")))
}

/// Where a redirect leads, refusing a downgrade from https to http.
fn redirect_target(from: &reqwest::Url, response: &reqwest::Response) -> Result<reqwest::Url, SourceError> {
    let shown = redact::url(from.as_str()).into_owned();
    let next = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| from.join(v).ok())
        .ok_or_else(|| {
            SourceError::fatal(
                reason::REDIRECT_REFUSED,
                format!(
                    "fetching {shown}: the server answered {} without a usable Location",
                    response.status()
                ),
            )
        })?;
    if from.scheme() == "https" && next.scheme() == "http" {
        return Err(SourceError::fatal(
            reason::REDIRECT_REFUSED,
            format!(
                "fetching {shown}: redirected from https to http ({}), which would lose the connection's TLS: \
                 refused; give the https URL",
                redact::url(next.as_str())
            ),
        ));
    }
    Ok(next)
}

/// Sends a GET from `offset`, following redirects (each hop checked, the Secret's headers sent
/// only to the URL's own origin); returns the response, positioned at `offset`, and the length.
async fn request(
    client: &reqwest::Client,
    url: &str,
    options: &UrlOptions,
    offset: u64,
) -> Result<(reqwest::Response, u64, Option<u64>), SourceError> {
    let shown = redact::url(url).into_owned();
    let mut current = reqwest::Url::parse(url)
        .map_err(|e| SourceError::fatal(reason::UNSUPPORTED_INPUT, format!("{shown} is not a valid URL: {e}")))?;
    let origin = current.origin();
    let mut headers = options.headers.clone();
    for _ in 0..=MAX_REDIRECTS {
        check_target(&options.egress, &current)?;
        let mut req = client.get(current.clone()).headers(headers.clone());
        if offset > 0 {
            req = req.header(RANGE, format!("bytes={offset}-"));
        }
        let response = req.send().await.map_err(|e| {
            let at = redact::url(current.as_str()).into_owned();
            match denied_in(&e) {
                Some(denied) => SourceError::fatal(reason::EGRESS_DENIED, format!("fetching {at}: {denied}")),
                None => SourceError::retriable(reason::SOURCE_UNAVAILABLE, format!("fetching {at}: {}", describe(e))),
            }
        })?;
        let status = response.status();
        if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
            let next = redirect_target(&current, &response)?;
            if next.origin() != origin && !headers.is_empty() {
                tracing::info!(url = %shown, "a redirect leads to another origin: the Secret's headers are not sent there");
                headers.clear();
            }
            current = next;
            continue;
        }
        return answered(response, offset, &shown);
    }
    Err(SourceError::fatal(
        reason::REDIRECT_REFUSED,
        format!("fetching {shown}: more than {MAX_REDIRECTS} redirects"),
    ))
}

/// Classifies a final (non-redirect) answer.
fn answered(
    response: reqwest::Response,
    offset: u64,
    shown: &str,
) -> Result<(reqwest::Response, u64, Option<u64>), SourceError> {
    match response.status() {
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
                format!("fetching {shown}: the server answered {s}"),
            ))
        }
        s => Err(SourceError::fatal(
            reason::SOURCE_NOT_FOUND,
            format!("fetching {shown}: the server answered {s}"),
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
    let (response, at, total) = request(&client, &url, &options, offset).await?;
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

/// What the next read of a download gave.
enum Got {
    Chunk(Bytes),
    End,
    Broke(reqwest::Error),
    /// Too few bytes over a stall window: the message says how few.
    Stalled(String),
}

/// One connection's stall watch: time spent waiting for the server (not for the analysis, which
/// holds the channel) and the bytes it sent, in the current window.
struct StallWatch {
    window: Duration,
    min_bytes: u64,
    waited: Duration,
    received: u64,
}

impl StallWatch {
    fn new(options: &UrlOptions) -> Self {
        StallWatch {
            window: options.stall_window,
            min_bytes: options.stall_min_bytes,
            waited: Duration::ZERO,
            received: 0,
        }
    }

    /// The next chunk, or why there is none.
    async fn read(&mut self, response: &mut reqwest::Response, at: u64) -> Got {
        loop {
            let asked = Instant::now();
            let next = tokio::time::timeout(self.window.saturating_sub(self.waited), response.chunk()).await;
            self.waited += asked.elapsed();
            if let Ok(Ok(Some(chunk))) = &next {
                self.received += chunk.len() as u64;
            }
            if self.waited >= self.window {
                if self.received < self.min_bytes {
                    return Got::Stalled(format!(
                        "the download stalled at byte {at}: {} bytes in {} s of waiting for the server (at least {} \
                         expected)",
                        self.received,
                        self.window.as_secs(),
                        self.min_bytes
                    ));
                }
                (self.waited, self.received) = (Duration::ZERO, 0);
            }
            match next {
                Err(_) => continue,
                Ok(Ok(Some(chunk))) => return Got::Chunk(chunk),
                Ok(Ok(None)) => return Got::End,
                Ok(Err(e)) => return Got::Broke(e),
            }
        }
    }
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
    let shown = redact::url(&url).into_owned();
    // Consecutive failures, reset by any byte; stalls are not (a trickling server sends some).
    let (mut failures, mut stalls) = (0u32, 0u32);
    loop {
        let mut watch = StallWatch::new(&options);
        let dropped = loop {
            match watch.read(&mut response, want).await {
                Got::Chunk(mut chunk) => {
                    let end = at + chunk.len() as u64;
                    if end <= want {
                        at = end;
                        continue;
                    }
                    if at < want {
                        chunk = chunk.slice((want - at) as usize..);
                    }
                    (at, want, failures) = (end, end, 0);
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
                Got::End if total.is_some_and(|t| want < t) => {
                    break format!("the connection ended at byte {want} of {}", total.unwrap_or_default());
                }
                Got::End => return,
                Got::Broke(e) => break format!("the download broke at byte {want}: {}", describe(e)),
                Got::Stalled(message) => {
                    stalls += 1;
                    failures = failures.max(stalls - 1);
                    break message;
                }
            }
        };
        match resume(&client, &url, &shown, &options, want, &mut failures).await {
            Ok((r, from)) => (response, at) = (r, from),
            Err(reason) => {
                let _ = tx
                    .send(Err(io::Error::other(reason.unwrap_or_else(|| {
                        format!("{shown}: {dropped}; gave up after {} retries", options.retries)
                    }))))
                    .await;
                return;
            }
        }
    }
}

/// Continues a dropped download at `want` with Range, with backoff; `Err(None)` when the retries
/// are spent, `Err(Some(message))` on a fatal answer.
async fn resume(
    client: &reqwest::Client,
    url: &str,
    shown: &str,
    options: &UrlOptions,
    want: u64,
    failures: &mut u32,
) -> Result<(reqwest::Response, u64), Option<String>> {
    loop {
        *failures += 1;
        if *failures > options.retries {
            return Err(None);
        }
        tokio::time::sleep(options.backoff * 2u32.saturating_pow(*failures - 1)).await;
        tracing::info!(url = %shown, offset = want, "resuming the download with an HTTP Range request");
        match request(client, url, options, want).await {
            Ok((r, from, _)) => return Ok((r, from)),
            Err(e) if e.retriable => tracing::warn!(url = %shown, error = %e, "retrying the download"),
            Err(e) => return Err(Some(e.message)),
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

    /// A source volume with a file, a directory, a relative link inside, an absolute link to the
    /// same file, links out (to a file and to a directory), and a FIFO.
    fn volume() -> Result<(tempfile::TempDir, tempfile::TempDir), Box<dyn std::error::Error>> {
        let outside = tempfile::tempdir()?;
        std::fs::write(outside.path().join("secret"), b"x")?;
        let root = tempfile::tempdir()?;
        std::fs::create_dir(root.path().join("d"))?;
        std::fs::write(root.path().join("d/ok.bin"), b"ok")?;
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("d/link"))?;
        std::os::unix::fs::symlink(outside.path(), root.path().join("outdir"))?;
        std::os::unix::fs::symlink("d/ok.bin", root.path().join("inner"))?;
        std::os::unix::fs::symlink("../d/ok.bin", root.path().join("d/up-and-in"))?;
        std::os::unix::fs::symlink(root.path().join("d/ok.bin"), root.path().join("absolute"))?;
        nix::unistd::mkfifo(&root.path().join("fifo"), Mode::S_IRUSR | Mode::S_IWUSR)?;
        Ok((outside, root))
    }

    fn read(opened: Opened) -> Result<String, Box<dyn std::error::Error>> {
        let mut s = String::new();
        { opened.reader }.read_to_string(&mut s)?;
        Ok(s)
    }

    #[test]
    fn opens_regular_files_beneath_the_root_only() -> Result<(), Box<dyn std::error::Error>> {
        let (_outside, root) = volume()?;
        for good in ["d/ok.bin", "./d/ok.bin", "inner", "d/up-and-in"] {
            assert_eq!(read(open_volume(root.path(), good, 0)?)?, "ok", "{good}");
        }
        for (bad, want, says) in [
            ("../x", reason::PATH_ESCAPES_ROOT, "'..'"),
            ("d/../../x", reason::PATH_ESCAPES_ROOT, "'..'"),
            ("/etc/passwd", reason::PATH_ESCAPES_ROOT, "relative"),
            ("", reason::PATH_ESCAPES_ROOT, "non-empty"),
            ("d/link", reason::PATH_ESCAPES_ROOT, "symbolic link"),
            ("outdir/secret", reason::PATH_ESCAPES_ROOT, "symbolic link"),
            ("absolute", reason::PATH_ESCAPES_ROOT, "absolute"),
            ("fifo", reason::UNSUPPORTED_INPUT, "a FIFO"),
            ("d", reason::UNSUPPORTED_INPUT, "a directory"),
            ("missing", reason::SOURCE_NOT_FOUND, "No such file"),
            ("d/ok.bin/x", reason::SOURCE_NOT_FOUND, "Not a directory"),
        ] {
            let e = open_volume(root.path(), bad, 0)
                .err()
                .ok_or(format!("{bad} accepted"))?;
            assert_eq!((e.reason, e.retriable), (want, false), "{bad}: {e}");
            assert!(e.message.contains(says), "{bad}: {e}");
        }
        let e = open_volume(&root.path().join("gone"), "d/ok.bin", 0)
            .err()
            .ok_or("accepted")?;
        assert_eq!((e.reason, e.retriable), (reason::SOURCE_VOLUME_UNAVAILABLE, true));
        Ok(())
    }

    /// Without openat2 the walk follows no symbolic link at all, and still refuses FIFOs.
    #[test]
    fn the_walk_without_openat2_follows_no_link() -> Result<(), Box<dyn std::error::Error>> {
        let (_outside, root) = volume()?;
        let dir = File::open(root.path())?;
        let fd = open_by_walk(&dir, Path::new("d/ok.bin"))?;
        assert_eq!(read(finish(File::from(fd), 0, "f")?)?, "ok");
        for link in ["inner", "d/link", "outdir/secret", "absolute"] {
            assert_eq!(open_by_walk(&dir, Path::new(link)).err(), Some(Errno::ELOOP), "{link}");
        }
        let fd = open_by_walk(&dir, Path::new("fifo"))?;
        let e = finish(File::from(fd), 0, "f").err().ok_or("a FIFO accepted")?;
        assert_eq!(e.reason, reason::UNSUPPORTED_INPUT);
        Ok(())
    }

    fn redirect(location: &str) -> reqwest::Response {
        let response = axum::http::Response::builder()
            .status(302)
            .header("location", location)
            .body(Vec::<u8>::new())
            .unwrap_or_default();
        reqwest::Response::from(response)
    }

    #[test]
    fn redirects_never_downgrade_and_targets_are_checked() -> Result<(), Box<dyn std::error::Error>> {
        let https = reqwest::Url::parse("https://u:pw@files.example/fw.bin")?;
        let e = redirect_target(&https, &redirect("http://files.example/fw.bin"))
            .err()
            .ok_or("a downgrade was followed")?;
        assert_eq!((e.reason, e.retriable), (reason::REDIRECT_REFUSED, false));
        assert!(
            e.message.contains("from https to http") && !e.message.contains("pw"),
            "{e}"
        );
        assert_eq!(
            redirect_target(&https, &redirect("/mirror/fw.bin"))?.as_str(),
            "https://u:pw@files.example/mirror/fw.bin"
        );
        let http = reqwest::Url::parse("http://files.example/fw.bin")?;
        assert_eq!(
            redirect_target(&http, &redirect("https://cdn.example/fw.bin"))?.as_str(),
            "https://cdn.example/fw.bin",
            "an upgrade is fine"
        );
        let egress = Egress::default();
        for (target, want) in [
            ("file:///etc/passwd", reason::REDIRECT_REFUSED),
            ("http://10.0.0.1/x", reason::EGRESS_DENIED),
            ("http://[fe80::1]/x", reason::EGRESS_DENIED),
        ] {
            let e = check_target(&egress, &reqwest::Url::parse(target)?)
                .err()
                .ok_or(target)?;
            assert_eq!(e.reason, want, "{target}");
        }
        assert!(check_target(&egress, &reqwest::Url::parse("https://93.184.216.34/x")?).is_ok());
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
