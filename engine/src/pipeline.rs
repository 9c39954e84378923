//! The pipeline: reads a byte stream once, in chunks, and runs the analyzers over it on two
//! threads ("lanes") while the calling thread reads ahead.
//!
//! Memory is bounded by a fixed pool of `buffers` chunk buffers: the reader takes a free buffer
//! (blocking when all are in use, which is the backpressure), fills it with the carried overlap
//! and fresh bytes, and hands the same `Arc` to every lane through a channel of capacity one.
//! When the last lane drops its reference the buffer returns to the pool. Nothing grows with
//! the stream length except counters; findings are capped per analyzer.
//!
//! The engine is synchronous: the worker runtime runs [`Scan::run`] inside `spawn_blocking`
//! with its source reader, a progress callback, a [`CancelToken`] and a checkpoint callback.

use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use streamscan_api::AnalyzerName;

use super::sink::{CappedSink, DEFAULT_FINDING_CAP};
use super::{Analyzer, AnalyzerError, Finding, Window, hex};

/// Version of the checkpoint layout.
pub const CHECKPOINT_VERSION: u32 = 1;

/// How the pipeline reads and bounds its work.
#[derive(Clone, Debug)]
pub struct Options {
    /// Fresh bytes per chunk.
    pub chunk_size: usize,
    /// Chunk buffers in the pool (at least 3: one being filled, one carried, one in a lane).
    pub buffers: usize,
    /// Analyzer threads (1 or 2 make sense on the 2-core servers).
    pub lanes: usize,
    /// Findings kept per analyzer.
    pub finding_cap: usize,
    /// Emit a checkpoint at the first chunk boundary at least this many bytes after the last.
    pub checkpoint_every: Option<u64>,
    /// Stream length, when known in advance (for progress and `Window::total`).
    pub total: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            chunk_size: 1 << 20,
            buffers: 6,
            lanes: 2,
            finding_cap: DEFAULT_FINDING_CAP,
            checkpoint_every: None,
            total: None,
        }
    }
}

/// Shared cancellation flag: cheap to clone, checked by every thread once per chunk.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Where the scan stands: bytes every analyzer has seen, and the stream length when known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub processed: u64,
    pub total: Option<u64>,
}

/// Called with the bytes processed so far.
pub type ProgressHook<'a> = Option<Box<dyn FnMut(Progress) + 'a>>;
/// Called with each checkpoint.
pub type CheckpointHook<'a> = Option<Box<dyn FnMut(&Checkpoint) + 'a>>;

/// Callbacks the caller gets, all on the calling thread.
#[derive(Default)]
pub struct Hooks<'a> {
    /// Called after every chunk and once at the end.
    pub progress: ProgressHook<'a>,
    /// Called with each checkpoint (see [`Options::checkpoint_every`]).
    pub checkpoint: CheckpointHook<'a>,
    pub cancel: CancelToken,
}

/// The state needed to continue a scan from `offset` without re-reading what came before.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    pub version: u32,
    /// Stream offset the scan continues from.
    pub offset: u64,
    pub total: Option<u64>,
    /// Hex of the last `min(overlap, offset)` bytes before `offset`: the carried overlap, so
    /// matches straddling `offset` are still found once.
    pub tail: String,
    pub analyzers: Vec<AnalyzerCheckpoint>,
}

/// One analyzer's part of a [`Checkpoint`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalyzerCheckpoint {
    pub name: AnalyzerName,
    /// What [`Analyzer::checkpoint`] returned.
    pub state: serde_json::Value,
    /// Findings reported before `offset` (already capped).
    pub findings: Vec<Finding>,
    pub dropped: u64,
}

/// What a finished scan produced; [`crate::report::Report`] adds where it came from.
#[derive(Clone, Debug)]
pub struct ScanResult {
    /// Stream length.
    pub bytes: u64,
    /// All findings, ordered by offset (then analyzer, then emission order).
    pub findings: Vec<Finding>,
    pub summaries: BTreeMap<AnalyzerName, serde_json::Value>,
    /// Findings dropped by the per-analyzer cap.
    pub dropped: BTreeMap<AnalyzerName, u64>,
    /// Analyzers run, in report order.
    pub analyzers: Vec<AnalyzerName>,
    /// Time spent inside each analyzer.
    pub analyzer_time: BTreeMap<AnalyzerName, Duration>,
    pub elapsed: Duration,
    /// Offset of the checkpoint this run continued from.
    pub resumed_from: Option<u64>,
}

/// Why a scan stopped without a result.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("reading the input at byte {offset}: {source}")]
    Io {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Analyzer(#[from] AnalyzerError),
    #[error("cancelled after {processed} bytes")]
    Cancelled { processed: u64 },
    #[error("cannot resume from this checkpoint: {0}")]
    BadCheckpoint(String),
    #[error("invalid engine configuration: {0}")]
    Config(String),
    #[error("an analyzer thread panicked")]
    Panicked,
}

impl EngineError {
    /// Whether running the same scan again may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            EngineError::Io { .. } | EngineError::Analyzer(AnalyzerError::Retriable { .. })
        )
    }
}

/// One analyzer in its lane, with its capped sink and its clock.
struct Slot {
    analyzer: Box<dyn Analyzer>,
    sink: CappedSink,
    time: Duration,
}

/// A scan ready to run: analyzers built (and restored, when resuming).
pub struct Scan {
    slots: Vec<Slot>,
    options: Options,
    overlap: usize,
    start: u64,
    /// Carried overlap before `start` (resume).
    tail: Vec<u8>,
}

/// Relative cost per byte (hundredths of ns per byte, measured alone by `streamscan-bench`
/// on the project machine), to balance the lanes.
fn cost(name: AnalyzerName) -> u32 {
    match name {
        AnalyzerName::Digest => 76,
        AnalyzerName::Entropy => 40,
        AnalyzerName::Iocs => 38,
        AnalyzerName::Secrets => 24,
        AnalyzerName::Filetype => 13,
        AnalyzerName::Components => 11,
        // An HTTP round trip per window: mostly waiting, but keep it off the digest lane.
        AnalyzerName::Model => 30,
    }
}

impl Scan {
    pub fn new(analyzers: Vec<Box<dyn Analyzer>>, options: Options) -> Result<Self, EngineError> {
        if analyzers.is_empty() {
            return Err(EngineError::Config("no analyzers selected".into()));
        }
        if options.chunk_size == 0 || options.buffers < 3 || options.lanes == 0 {
            return Err(EngineError::Config(
                "chunk size and lanes must be positive and buffers at least 3".into(),
            ));
        }
        let mut seen = Vec::new();
        for a in &analyzers {
            if seen.contains(&a.name()) {
                return Err(EngineError::Config(format!("analyzer {} given twice", a.name())));
            }
            seen.push(a.name());
        }
        let overlap = analyzers.iter().map(|a| a.overlap()).max().unwrap_or(0);
        let slots = analyzers
            .into_iter()
            .map(|analyzer| Slot {
                analyzer,
                sink: CappedSink::new(options.finding_cap),
                time: Duration::ZERO,
            })
            .collect();
        Ok(Scan {
            slots,
            options,
            overlap,
            start: 0,
            tail: Vec::new(),
        })
    }

    /// A scan that continues from `checkpoint`; run it on a reader positioned at
    /// `checkpoint.offset`. The analyzers must be the ones the checkpoint was taken with.
    pub fn resume(
        analyzers: Vec<Box<dyn Analyzer>>,
        options: Options,
        checkpoint: &Checkpoint,
    ) -> Result<Self, EngineError> {
        if checkpoint.version != CHECKPOINT_VERSION {
            return Err(EngineError::BadCheckpoint(format!(
                "version {} (this engine writes {CHECKPOINT_VERSION})",
                checkpoint.version
            )));
        }
        let mut scan = Scan::new(analyzers, options)?;
        let mut wanted: Vec<AnalyzerName> = scan.slots.iter().map(|s| s.analyzer.name()).collect();
        let mut saved: Vec<AnalyzerName> = checkpoint.analyzers.iter().map(|a| a.name).collect();
        wanted.sort();
        saved.sort();
        if wanted != saved {
            return Err(EngineError::BadCheckpoint(format!(
                "it was taken with analyzers {saved:?}, this scan runs {wanted:?}"
            )));
        }
        let tail = hex::decode(&checkpoint.tail).map_err(|e| EngineError::BadCheckpoint(e.to_string()))?;
        let expected_tail = (scan.overlap as u64).min(checkpoint.offset) as usize;
        if tail.len() != expected_tail {
            return Err(EngineError::BadCheckpoint(format!(
                "carried {} bytes, the analyzers need {expected_tail}",
                tail.len()
            )));
        }
        for slot in &mut scan.slots {
            let name = slot.analyzer.name();
            if let Some(part) = checkpoint.analyzers.iter().find(|a| a.name == name) {
                slot.analyzer.restore(part.state.clone())?;
                slot.sink.findings = part.findings.clone();
                slot.sink.dropped = part.dropped;
            }
        }
        scan.start = checkpoint.offset;
        scan.tail = tail;
        if scan.options.total.is_none() {
            scan.options.total = checkpoint.total;
        }
        Ok(scan)
    }

    /// Longest overlap the selected analyzers need.
    pub fn overlap(&self) -> usize {
        self.overlap
    }

    /// Reads `reader` to its end and runs every analyzer over it.
    pub fn run(self, reader: impl Read, hooks: Hooks<'_>) -> Result<ScanResult, EngineError> {
        let started = Instant::now();
        let Scan {
            slots,
            options,
            overlap,
            start,
            tail,
        } = self;
        let order: Vec<AnalyzerName> = {
            let mut names: Vec<AnalyzerName> = slots.iter().map(|s| s.analyzer.name()).collect();
            names.sort();
            names
        };
        let lanes = assign_lanes(slots, options.lanes);
        let lane_count = lanes.len();
        let processed: Vec<AtomicU64> = (0..lane_count).map(|_| AtomicU64::new(start)).collect();
        let failed = AtomicBool::new(false);
        // Room for a part of every buffer in flight from every lane: lanes never block on it.
        let (cp_tx, cp_rx) = bounded::<LaneCheckpoint>(lane_count * (options.buffers + 2));
        let Hooks {
            mut progress,
            mut checkpoint,
            cancel,
        } = hooks;

        let outcome = std::thread::scope(|scope| {
            let mut senders = Vec::with_capacity(lane_count);
            let mut handles = Vec::with_capacity(lane_count);
            for (i, lane) in lanes.into_iter().enumerate() {
                let (tx, rx) = bounded::<Arc<Chunk>>(1);
                senders.push(tx);
                let ctx = LaneContext {
                    rx,
                    cp_tx: cp_tx.clone(),
                    processed: &processed[i],
                    failed: &failed,
                    cancel: &cancel,
                    total: options.total,
                    want_checkpoints: checkpoint.is_some(),
                };
                handles.push(scope.spawn(move || run_lane(lane, ctx)));
            }
            drop(cp_tx);

            let mut reader_state = ReaderState {
                pending: VecDeque::new(),
                lane_count,
                total: options.total,
            };
            let read_result = read_loop(
                reader,
                &options,
                overlap,
                start,
                tail,
                &senders,
                &failed,
                &cancel,
                &processed,
                &cp_rx,
                &mut reader_state,
                &mut progress,
                &mut checkpoint,
            );
            drop(senders);
            let mut lane_results = Vec::with_capacity(lane_count);
            for handle in handles {
                lane_results.push(handle.join().map_err(|_| EngineError::Panicked)?);
            }
            // Checkpoints completed while the lanes drained.
            while let Ok(part) = cp_rx.try_recv() {
                reader_state.accept(part, &mut checkpoint);
            }
            Ok::<_, EngineError>((read_result, lane_results))
        });
        let (read_result, lane_results) = outcome?;

        let min_processed = processed
            .iter()
            .map(|p| p.load(Ordering::SeqCst))
            .min()
            .unwrap_or(start);
        // An analyzer error explains a failed read loop better than "lane gone".
        let mut finished = Vec::new();
        for result in lane_results {
            match result {
                LaneEnd::Finished(slots) => finished.extend(slots),
                LaneEnd::Failed(e) => return Err(e.into()),
                LaneEnd::Stopped => {}
            }
        }
        let bytes = read_result?;
        if finished.len() != order.len() {
            return Err(EngineError::Cancelled {
                processed: min_processed,
            });
        }
        if let Some(progress) = progress.as_mut() {
            progress(Progress {
                processed: bytes,
                total: options.total.or(Some(bytes)),
            });
        }

        let mut result = ScanResult {
            bytes,
            findings: Vec::new(),
            summaries: BTreeMap::new(),
            dropped: BTreeMap::new(),
            analyzers: order,
            analyzer_time: BTreeMap::new(),
            elapsed: Duration::ZERO,
            resumed_from: (start > 0).then_some(start),
        };
        finished.sort_by_key(|(name, ..)| *name);
        for (name, summary, sink, time) in finished {
            result.summaries.insert(name, summary);
            if sink.dropped > 0 {
                result.dropped.insert(name, sink.dropped);
            }
            result.analyzer_time.insert(name, time);
            result.findings.extend(sink.findings);
        }
        // Stable: equal offsets keep analyzer order, then emission order.
        result.findings.sort_by_key(|f| f.offset);
        result.elapsed = started.elapsed();
        Ok(result)
    }
}

/// Longest-processing-time-first: heaviest analyzer to the lightest lane.
fn assign_lanes(mut slots: Vec<Slot>, lanes: usize) -> Vec<Vec<Slot>> {
    slots.sort_by_key(|s| std::cmp::Reverse(cost(s.analyzer.name())));
    let lanes = lanes.min(slots.len()).max(1);
    let mut out: Vec<(u32, Vec<Slot>)> = (0..lanes).map(|_| (0, Vec::new())).collect();
    for slot in slots {
        let c = cost(slot.analyzer.name());
        if let Some(lightest) = out.iter_mut().min_by_key(|(load, _)| *load) {
            lightest.0 += c;
            lightest.1.push(slot);
        }
    }
    out.into_iter().map(|(_, s)| s).filter(|s| !s.is_empty()).collect()
}

/// A filled buffer: the carried overlap then fresh bytes. Returns its memory to the pool when
/// the last lane lets go of it.
struct Chunk {
    buf: Vec<u8>,
    offset: u64,
    fresh: usize,
    is_last: bool,
    checkpoint: bool,
    pool: Sender<Vec<u8>>,
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // The pool has room for every buffer by construction; after the scan it may be gone.
        let _ = self.pool.try_send(std::mem::take(&mut self.buf));
    }
}

impl Chunk {
    fn end(&self) -> u64 {
        self.offset + self.buf.len() as u64
    }
}

struct LaneContext<'a> {
    rx: Receiver<Arc<Chunk>>,
    cp_tx: Sender<LaneCheckpoint>,
    processed: &'a AtomicU64,
    failed: &'a AtomicBool,
    cancel: &'a CancelToken,
    total: Option<u64>,
    want_checkpoints: bool,
}

type FinishedSlot = (AnalyzerName, serde_json::Value, CappedSink, Duration);

enum LaneEnd {
    Finished(Vec<FinishedSlot>),
    Failed(AnalyzerError),
    /// Cancelled, or the reader stopped (I/O error, another lane failed).
    Stopped,
}

struct LaneCheckpoint {
    offset: u64,
    parts: Vec<AnalyzerCheckpoint>,
}

fn run_lane(mut slots: Vec<Slot>, ctx: LaneContext<'_>) -> LaneEnd {
    let fail = |e: AnalyzerError| {
        ctx.failed.store(true, Ordering::SeqCst);
        LaneEnd::Failed(e)
    };
    for chunk in ctx.rx.iter() {
        if ctx.cancel.is_cancelled() || ctx.failed.load(Ordering::Relaxed) {
            return LaneEnd::Stopped;
        }
        let window = Window {
            data: &chunk.buf,
            offset: chunk.offset,
            fresh: chunk.fresh,
            is_last: chunk.is_last,
            total: ctx.total,
        };
        for slot in &mut slots {
            let t = Instant::now();
            if let Err(e) = slot.analyzer.update(&window, &mut slot.sink) {
                return fail(e);
            }
            slot.time += t.elapsed();
        }
        ctx.processed.store(chunk.end(), Ordering::SeqCst);
        if chunk.checkpoint && ctx.want_checkpoints {
            let mut parts = Vec::with_capacity(slots.len());
            for slot in &slots {
                match slot.analyzer.checkpoint() {
                    Ok(state) => parts.push(AnalyzerCheckpoint {
                        name: slot.analyzer.name(),
                        state,
                        findings: slot.sink.findings.clone(),
                        dropped: slot.sink.dropped,
                    }),
                    Err(e) => return fail(e),
                }
            }
            // The reader drains this channel after every chunk; if it is gone the scan is over.
            let _ = ctx.cp_tx.send(LaneCheckpoint {
                offset: chunk.end(),
                parts,
            });
        }
        if chunk.is_last {
            let mut finished = Vec::with_capacity(slots.len());
            for mut slot in slots {
                let t = Instant::now();
                match slot.analyzer.finish(&mut slot.sink) {
                    Ok(summary) => {
                        slot.time += t.elapsed();
                        finished.push((slot.analyzer.name(), summary, slot.sink, slot.time));
                    }
                    Err(e) => return fail(e),
                }
            }
            return LaneEnd::Finished(finished);
        }
    }
    LaneEnd::Stopped
}

/// Checkpoints being assembled from the lanes' parts.
struct ReaderState {
    /// (offset, carried tail, parts received so far, lanes reported).
    pending: VecDeque<(u64, Vec<u8>, Vec<AnalyzerCheckpoint>, usize)>,
    lane_count: usize,
    total: Option<u64>,
}

impl ReaderState {
    fn accept(&mut self, part: LaneCheckpoint, hook: &mut CheckpointHook<'_>) {
        let Some(entry) = self.pending.iter_mut().find(|(o, ..)| *o == part.offset) else {
            return;
        };
        entry.2.extend(part.parts);
        entry.3 += 1;
        if entry.3 < self.lane_count {
            return;
        }
        // Lanes report in stream order, so a complete checkpoint is the oldest pending one.
        while let Some((offset, tail, mut parts, reported)) = self.pending.pop_front() {
            if reported < self.lane_count {
                self.pending.push_front((offset, tail, parts, reported));
                break;
            }
            parts.sort_by_key(|p| p.name);
            let checkpoint = Checkpoint {
                version: CHECKPOINT_VERSION,
                offset,
                total: self.total,
                tail: hex::encode(&tail),
                analyzers: parts,
            };
            if let Some(hook) = hook.as_mut() {
                hook(&checkpoint);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn read_loop(
    mut reader: impl Read,
    options: &Options,
    overlap: usize,
    start: u64,
    initial_tail: Vec<u8>,
    senders: &[Sender<Arc<Chunk>>],
    failed: &AtomicBool,
    cancel: &CancelToken,
    processed: &[AtomicU64],
    cp_rx: &Receiver<LaneCheckpoint>,
    state: &mut ReaderState,
    progress: &mut ProgressHook<'_>,
    checkpoint: &mut CheckpointHook<'_>,
) -> Result<u64, EngineError> {
    let (pool_tx, pool_rx) = bounded::<Vec<u8>>(options.buffers);
    for _ in 0..options.buffers {
        // Capacity reserved up front so buffers never reallocate while in use.
        let _ = pool_tx.try_send(Vec::with_capacity(overlap + options.chunk_size));
    }
    let mut next = start;
    let mut last_checkpoint = start;
    let mut prev: Option<Arc<Chunk>> = None;
    let mut tail = initial_tail;
    let min_processed = || processed.iter().map(|p| p.load(Ordering::SeqCst)).min().unwrap_or(0);
    loop {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled {
                processed: min_processed(),
            });
        }
        if failed.load(Ordering::Relaxed) {
            // The failing lane's error is reported by the caller.
            return Ok(next);
        }
        let Ok(mut buf) = pool_rx.recv() else {
            return Err(EngineError::Panicked);
        };
        buf.clear();
        if let Some(p) = prev.take() {
            let carry = (overlap as u64).min(next) as usize;
            buf.extend_from_slice(&p.buf[p.buf.len() - carry..]);
        } else {
            buf.extend_from_slice(&tail);
            tail = Vec::new();
        }
        let fresh = buf.len();
        buf.resize(fresh + options.chunk_size, 0);
        let mut filled = fresh;
        let mut eof = false;
        while filled < buf.len() {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(EngineError::Io {
                        offset: next + (filled - fresh) as u64,
                        source,
                    });
                }
            }
        }
        buf.truncate(filled);
        let offset = next - fresh as u64;
        next += (filled - fresh) as u64;
        let take_checkpoint = !eof
            && checkpoint.is_some()
            && options
                .checkpoint_every
                .is_some_and(|every| next - last_checkpoint >= every);
        let chunk = Arc::new(Chunk {
            buf,
            offset,
            fresh,
            is_last: eof,
            checkpoint: take_checkpoint,
            pool: pool_tx.clone(),
        });
        if take_checkpoint {
            last_checkpoint = next;
            let carry = (overlap as u64).min(next) as usize;
            let tail = chunk.buf[chunk.buf.len() - carry..].to_vec();
            state.pending.push_back((next, tail, Vec::new(), 0));
        }
        for tx in senders {
            if tx.send(Arc::clone(&chunk)).is_err() {
                // A lane ended early (failure or cancel); the caller collects why.
                return Ok(next);
            }
        }
        while let Ok(part) = cp_rx.try_recv() {
            state.accept(part, checkpoint);
        }
        if let Some(progress) = progress.as_mut() {
            progress(Progress {
                processed: min_processed(),
                total: options.total,
            });
        }
        if eof {
            return Ok(next);
        }
        prev = Some(chunk);
    }
}
