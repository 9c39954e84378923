//! Test helpers: feed a byte stream through an [`Analyzer`] the way the pipeline's contract in
//! `engine/mod.rs` describes (carried tail of the largest overlap, then fresh bytes), so analyzer
//! tests do not depend on the pipeline itself.

use serde_json::Value;

use crate::{Analyzer, Finding, Window};

/// Deterministic pseudo-random bytes (xorshift64*), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// Writes `item` into `buf` at `at`, returning `at`.
pub fn plant(buf: &mut [u8], at: usize, item: &[u8]) -> usize {
    buf[at..at + item.len()].copy_from_slice(item);
    at
}

/// Start and end of each chunk for `len` bytes in `chunk`-byte pieces (one empty chunk when
/// `len == 0`).
fn chunks(len: usize, chunk: usize) -> Vec<(usize, usize)> {
    if len == 0 {
        return vec![(0, 0)];
    }
    (0..len).step_by(chunk).map(|s| (s, (s + chunk).min(len))).collect()
}

/// Feeds `data` in chunks of `chunk` bytes, carrying `carry` bytes (at least the analyzer's
/// overlap, as when another analyzer needs more), starting at chunk `from_chunk` and stopping
/// before chunk `to_chunk` (then `finish` is not called).
pub fn feed(
    analyzer: &mut dyn Analyzer,
    data: &[u8],
    chunk: usize,
    carry: usize,
    range: std::ops::Range<usize>,
    sink: &mut Vec<Finding>,
) -> Option<Value> {
    assert!(
        carry >= analyzer.overlap(),
        "carry {carry} < overlap {}",
        analyzer.overlap()
    );
    let all = chunks(data.len(), chunk);
    let n = all.len();
    for (i, &(start, end)) in all.iter().enumerate().take(range.end.min(n)).skip(range.start) {
        let kept = carry.min(start);
        let window = Window {
            data: &data[start - kept..end],
            offset: (start - kept) as u64,
            fresh: kept,
            is_last: i + 1 == n,
            total: Some(data.len() as u64),
        };
        analyzer.update(&window, sink).expect("update");
    }
    if range.end >= n {
        Some(analyzer.finish(sink).expect("finish"))
    } else {
        None
    }
}

/// Runs a whole stream through `analyzer`; returns findings sorted by (offset, rule) and the summary.
pub fn run(analyzer: &mut dyn Analyzer, data: &[u8], chunk: usize, carry: usize) -> (Vec<Finding>, Value) {
    let mut sink = Vec::new();
    let summary = feed(analyzer, data, chunk, carry, 0..usize::MAX, &mut sink).expect("ran to the end");
    sort(&mut sink);
    (sink, summary)
}

/// Runs `first` over `cut` chunks, checkpoints it through a JSON string, restores into `second`,
/// and continues to the end with `second`.
pub fn run_resumed(
    first: &mut dyn Analyzer,
    second: &mut dyn Analyzer,
    data: &[u8],
    chunk: usize,
    carry: usize,
    cut: usize,
) -> (Vec<Finding>, Value) {
    let mut sink = Vec::new();
    feed(first, data, chunk, carry, 0..cut, &mut sink);
    let state = serde_json::to_string(&first.checkpoint().expect("checkpoint")).expect("serialise");
    second
        .restore(serde_json::from_str(&state).expect("parse"))
        .expect("restore");
    let summary = feed(second, data, chunk, carry, cut..usize::MAX, &mut sink).expect("ran to the end");
    sort(&mut sink);
    (sink, summary)
}

pub fn sort(findings: &mut [Finding]) {
    findings.sort_by(|a, b| (a.offset, &a.rule, &a.value).cmp(&(b.offset, &b.rule, &b.value)));
}

/// Release-mode micro-throughput of each analyzer of this module set, fed 1 MiB chunks:
/// `cargo test --release -p streamscan-worker --lib throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    use crate::analyzers::{components, iocs, secrets};
    let binary = Rng::new(1).bytes(256 << 20);
    let line = b"2024-05-01T10:00:00Z GET https://cdn.example.com/a/b.js 10.1.2.3 user=alice@example.org password=hunter2hunter status=200 bytes=5123 ua=curl/7.58.0\n";
    let text: Vec<u8> = line.iter().copied().cycle().take(64 << 20).collect();
    for (name, data) in [("random 256 MiB", &binary), ("log text 64 MiB", &text)] {
        let analyzers: Vec<Box<dyn Analyzer>> = vec![
            Box::new(secrets::SecretsAnalyzer::new()),
            Box::new(iocs::IocsAnalyzer::new()),
            Box::new(components::ComponentsAnalyzer::new(&[]).expect("db")),
        ];
        for mut a in analyzers {
            let carry = a.overlap();
            let start = std::time::Instant::now();
            let (findings, _) = run(a.as_mut(), data, 1 << 20, carry);
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{name}: {:?}: {:.0} MB/s ({} findings)",
                a.name(),
                data.len() as f64 / secs / 1e6,
                findings.len()
            );
        }
    }
}

/// Where the `i`-th planted item near `base` goes: on the nearest chunk boundary when one is
/// close (so items straddle chunks), else at `base`.
pub fn straddle(base: usize, spacing: usize, chunk: usize) -> usize {
    let snapped = (base + chunk / 2) / chunk * chunk;
    if snapped.abs_diff(base) < spacing / 3 {
        snapped
    } else {
        base
    }
}

/// Asserts that `analyzer` finds nothing in 8 MiB of random bytes from `seed`.
pub fn assert_nothing_in_random_data(analyzer: &mut dyn Analyzer, seed: u64) {
    let data = Rng::new(seed).bytes(8 << 20);
    let carry = analyzer.overlap();
    let (findings, _) = run(analyzer, &data, 1 << 20, carry);
    assert!(findings.is_empty(), "{findings:?}");
}
