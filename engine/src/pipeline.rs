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
        let order = sorted_names(&slots);
        let lanes = assign_lanes(slots, options.lanes);
        let Hooks {
            mut progress,
            checkpoint,
            cancel,
        } = hooks;
        let shared = Shared::new(lanes.len(), start, cancel);
        // Room for a part of every buffer in flight from every lane: lanes never block on it.
        let (cp_tx, cp_rx) = bounded::<LaneCheckpoint>(lanes.len() * (options.buffers + 2));
        let mut checkpoints = Checkpoints::new(cp_rx, lanes.len(), options.total, checkpoint);
        let input = ChunkReader::new(reader, &options, overlap, start, tail, checkpoints.wanted());
        let (read_result, lane_results) = run_lanes(lanes, input, &shared, cp_tx, &mut checkpoints, &mut progress)?;

        let min_processed = shared.min_processed().unwrap_or(start);
        // An analyzer error explains a failed read loop better than "lane gone".
        let finished = finished_slots(lane_results)?;
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
        let mut result = merge_results(bytes, order, finished);
        result.resumed_from = (start > 0).then_some(start);
        result.elapsed = started.elapsed();
        Ok(result)
    }
}

/// The analyzers' names in report order.
fn sorted_names(slots: &[Slot]) -> Vec<AnalyzerName> {
    let mut names: Vec<AnalyzerName> = slots.iter().map(|s| s.analyzer.name()).collect();
    names.sort();
    names
}

/// Runs each lane on its own scoped thread while this thread reads the input into them.
/// Returns the read loop's outcome and how each lane ended.
fn run_lanes(
    lanes: Vec<Vec<Slot>>,
    input: ChunkReader<impl Read>,
    shared: &Shared,
    cp_tx: Sender<LaneCheckpoint>,
    checkpoints: &mut Checkpoints<'_>,
    progress: &mut ProgressHook<'_>,
) -> Result<(Result<u64, EngineError>, Vec<LaneEnd>), EngineError> {
    std::thread::scope(|scope| {
        let mut senders = Vec::with_capacity(lanes.len());
        let mut handles = Vec::with_capacity(lanes.len());
        for (lane, processed) in lanes.into_iter().zip(&shared.processed) {
            let (tx, rx) = bounded::<Arc<Chunk>>(1);
            senders.push(tx);
            let ctx = LaneContext {
                rx,
                cp_tx: cp_tx.clone(),
                processed,
                failed: &shared.failed,
                cancel: &shared.cancel,
                total: input.total,
                want_checkpoints: checkpoints.wanted(),
            };
            handles.push(scope.spawn(move || run_lane(lane, ctx)));
        }
        // Only the lanes hold senders now, so the channel closes when they end.
        drop(cp_tx);

        let read_result = read_loop(input, &senders, shared, checkpoints, progress);
        // Closing the chunk channels tells lanes still waiting for a chunk that none will come.
        drop(senders);
        let mut lane_results = Vec::with_capacity(handles.len());
        for handle in handles {
            lane_results.push(handle.join().map_err(|_| EngineError::Panicked)?);
        }
        // Checkpoints completed while the lanes drained.
        checkpoints.drain();
        Ok((read_result, lane_results))
    })
}

/// The analyzers of every lane that finished, or the first analyzer error a lane ended with.
fn finished_slots(lane_results: Vec<LaneEnd>) -> Result<Vec<FinishedSlot>, AnalyzerError> {
    let mut finished = Vec::new();
    for result in lane_results {
        match result {
            LaneEnd::Finished(slots) => finished.extend(slots),
            LaneEnd::Failed(e) => return Err(e),
            LaneEnd::Stopped => {}
        }
    }
    Ok(finished)
}

/// The scan's result from what every analyzer finished with; the caller sets the timing fields.
fn merge_results(bytes: u64, order: Vec<AnalyzerName>, mut finished: Vec<FinishedSlot>) -> ScanResult {
    let mut result = ScanResult {
        bytes,
        findings: Vec::new(),
        summaries: BTreeMap::new(),
        dropped: BTreeMap::new(),
        analyzers: order,
        analyzer_time: BTreeMap::new(),
        elapsed: Duration::ZERO,
        resumed_from: None,
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
    result
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

    /// The last `overlap` bytes (fewer at the stream's start): what the next window carries.
    fn carried(&self, overlap: usize) -> &[u8] {
        let carry = (overlap as u64).min(self.end()) as usize;
        &self.buf[self.buf.len() - carry..]
    }
}

/// What the reader and the lanes share.
struct Shared {
    /// Per lane: stream offset up to which its analyzers have seen every byte.
    processed: Vec<AtomicU64>,
    /// Set by a lane whose analyzer failed, so the others and the reader stop.
    failed: AtomicBool,
    cancel: CancelToken,
}

impl Shared {
    fn new(lane_count: usize, start: u64, cancel: CancelToken) -> Self {
        Shared {
            processed: (0..lane_count).map(|_| AtomicU64::new(start)).collect(),
            failed: AtomicBool::new(false),
            cancel,
        }
    }

    /// Bytes every lane has processed (`None` without lanes).
    fn min_processed(&self) -> Option<u64> {
        self.processed.iter().map(|p| p.load(Ordering::SeqCst)).min()
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

/// Checkpoints being assembled from the lanes' parts, and the hook complete ones go to.
struct Checkpoints<'h> {
    rx: Receiver<LaneCheckpoint>,
    /// (offset, carried tail, parts received so far, lanes reported).
    pending: VecDeque<(u64, Vec<u8>, Vec<AnalyzerCheckpoint>, usize)>,
    lane_count: usize,
    total: Option<u64>,
    hook: CheckpointHook<'h>,
}

impl<'h> Checkpoints<'h> {
    fn new(rx: Receiver<LaneCheckpoint>, lane_count: usize, total: Option<u64>, hook: CheckpointHook<'h>) -> Self {
        Checkpoints {
            rx,
            pending: VecDeque::new(),
            lane_count,
            total,
            hook,
        }
    }

    /// Whether anyone takes checkpoints: without a hook none are assembled.
    fn wanted(&self) -> bool {
        self.hook.is_some()
    }

    /// Registers a checkpoint at `offset`, with the overlap carried there, to collect every lane's part.
    fn register(&mut self, offset: u64, tail: Vec<u8>) {
        self.pending.push_back((offset, tail, Vec::new(), 0));
    }

    /// Takes the parts the lanes have sent so far, without waiting.
    fn drain(&mut self) {
        while let Ok(part) = self.rx.try_recv() {
            self.accept(part);
        }
    }

    fn accept(&mut self, part: LaneCheckpoint) {
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
            if let Some(hook) = self.hook.as_mut() {
                hook(&checkpoint);
            }
        }
    }
}

/// The reading side of the pipeline: fills pool buffers with the carried overlap and fresh
/// input bytes.
struct ChunkReader<R> {
    reader: R,
    chunk_size: usize,
    overlap: usize,
    total: Option<u64>,
    /// Checkpoint spacing, `None` when no checkpoints are wanted.
    checkpoint_every: Option<u64>,
    /// Stream offset of the next byte to read.
    next: u64,
    /// Offset of the last checkpoint (or of the start).
    last_checkpoint: u64,
    /// The previous chunk, whose end the next one carries.
    prev: Option<Arc<Chunk>>,
    /// On resume, the overlap carried before the first chunk.
    tail: Vec<u8>,
    pool_tx: Sender<Vec<u8>>,
    pool_rx: Receiver<Vec<u8>>,
}

impl<R: Read> ChunkReader<R> {
    fn new(reader: R, options: &Options, overlap: usize, start: u64, tail: Vec<u8>, want_checkpoints: bool) -> Self {
        let (pool_tx, pool_rx) = bounded::<Vec<u8>>(options.buffers);
        for _ in 0..options.buffers {
            // Capacity reserved up front so buffers never reallocate while in use.
            let _ = pool_tx.try_send(Vec::with_capacity(overlap + options.chunk_size));
        }
        ChunkReader {
            reader,
            chunk_size: options.chunk_size,
            overlap,
            total: options.total,
            checkpoint_every: options.checkpoint_every.filter(|_| want_checkpoints),
            next: start,
            last_checkpoint: start,
            prev: None,
            tail,
            pool_tx,
            pool_rx,
        }
    }

    /// The next chunk: waits for a free buffer (the backpressure), then fills it.
    fn read_chunk(&mut self) -> Result<Arc<Chunk>, EngineError> {
        let Ok(mut buf) = self.pool_rx.recv() else {
            return Err(EngineError::Panicked);
        };
        buf.clear();
        match self.prev.take() {
            Some(prev) => buf.extend_from_slice(prev.carried(self.overlap)),
            None => buf.extend_from_slice(&std::mem::take(&mut self.tail)),
        }
        let fresh = buf.len();
        let eof = self.fill(&mut buf)?;
        let offset = self.next - fresh as u64;
        self.next += (buf.len() - fresh) as u64;
        let checkpoint = !eof
            && self
                .checkpoint_every
                .is_some_and(|every| self.next - self.last_checkpoint >= every);
        if checkpoint {
            self.last_checkpoint = self.next;
        }
        Ok(Arc::new(Chunk {
            buf,
            offset,
            fresh,
            is_last: eof,
            checkpoint,
            pool: self.pool_tx.clone(),
        }))
    }

    /// Appends up to a chunk of fresh bytes to `buf`; returns whether the input ended.
    fn fill(&mut self, buf: &mut Vec<u8>) -> Result<bool, EngineError> {
        let fresh = buf.len();
        buf.resize(fresh + self.chunk_size, 0);
        let mut filled = fresh;
        let mut eof = false;
        while filled < buf.len() {
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(EngineError::Io {
                        offset: self.next + (filled - fresh) as u64,
                        source,
                    });
                }
            }
        }
        buf.truncate(filled);
        Ok(eof)
    }
}

/// Reads the input to its end, handing every chunk to every lane, assembling checkpoints and
/// reporting progress in between. Returns the bytes read, or `Ok` early when a lane stopped
/// (the caller collects why).
fn read_loop(
    mut input: ChunkReader<impl Read>,
    senders: &[Sender<Arc<Chunk>>],
    shared: &Shared,
    checkpoints: &mut Checkpoints<'_>,
    progress: &mut ProgressHook<'_>,
) -> Result<u64, EngineError> {
    let min_processed = || shared.min_processed().unwrap_or(0);
    loop {
        if shared.cancel.is_cancelled() {
            return Err(EngineError::Cancelled {
                processed: min_processed(),
            });
        }
        if shared.failed.load(Ordering::Relaxed) {
            // The failing lane's error is reported by the caller.
            return Ok(input.next);
        }
        let chunk = input.read_chunk()?;
        if chunk.checkpoint {
            // Registered before the lanes can send their parts for it.
            checkpoints.register(chunk.end(), chunk.carried(input.overlap).to_vec());
        }
        if !send_to_all(senders, &chunk) {
            // A lane ended early (failure or cancel); the caller collects why.
            return Ok(input.next);
        }
        checkpoints.drain();
        if let Some(progress) = progress.as_mut() {
            progress(Progress {
                processed: min_processed(),
                total: input.total,
            });
        }
        if chunk.is_last {
            return Ok(input.next);
        }
        input.prev = Some(chunk);
    }
}

/// Hands `chunk` to every lane; false when a lane has gone.
fn send_to_all(senders: &[Sender<Arc<Chunk>>], chunk: &Arc<Chunk>) -> bool {
    senders.iter().all(|tx| tx.send(Arc::clone(chunk)).is_ok())
}
