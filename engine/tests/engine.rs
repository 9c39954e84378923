//! The pipeline with the digest, filetype and entropy analyzers over generated inputs.

// Tests may panic on setup failures: that is how they fail.
#![allow(clippy::expect_used, clippy::panic)]

use streamscan_testdata::planted as common;

use std::io::{Cursor, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use streamscan_api::AnalyzerName;
use streamscan_engine::analyzers::{AnalyzerConfig, build};
use streamscan_engine::pipeline::{CancelToken, Checkpoint, EngineError, Hooks, Options, Scan, ScanResult};
use streamscan_engine::{Analyzer, Finding};

const MINE: [AnalyzerName; 3] = [AnalyzerName::Digest, AnalyzerName::Filetype, AnalyzerName::Entropy];

fn analyzers(names: &[AnalyzerName]) -> Vec<Box<dyn Analyzer>> {
    names
        .iter()
        .map(|&n| build(n, &AnalyzerConfig::default()).expect("analyzer builds"))
        .collect()
}

fn options(chunk_size: usize) -> Options {
    Options {
        chunk_size,
        ..Options::default()
    }
}

fn scan(data: &[u8], names: &[AnalyzerName], opts: Options) -> ScanResult {
    Scan::new(analyzers(names), opts)
        .and_then(|s| s.run(Cursor::new(data), Hooks::default()))
        .expect("scan succeeds")
}

fn by_rule<'a>(findings: &'a [Finding], rule: &str) -> Vec<&'a Finding> {
    findings.iter().filter(|f| f.rule == rule).collect()
}

#[test]
fn planted_items_are_found_once_at_their_offsets_whatever_the_chunk_size() {
    let (data, plants, regions) = common::planted_input();
    let mut reference: Option<Vec<Finding>> = None;
    for chunk in [997, 4096, 65_536, 1 << 20] {
        let result = scan(&data, &MINE, options(chunk));
        assert_eq!(result.bytes, data.len() as u64);
        let embedded: Vec<(u64, &str)> = result
            .findings
            .iter()
            .filter(|f| f.analyzer == AnalyzerName::Filetype)
            .map(|f| (f.offset, f.rule.as_str()))
            .collect();
        let expected: Vec<(u64, &str)> = plants.iter().map(|p| (p.offset as u64, p.rule)).collect();
        assert_eq!(embedded, expected, "chunk size {chunk}");

        let found_regions: Vec<(u64, u64)> = by_rule(&result.findings, "high-entropy-region")
            .iter()
            .map(|f| (f.offset, f.length.unwrap_or(0)))
            .collect();
        assert_eq!(found_regions, regions, "chunk size {chunk}");

        let sha = result.summaries[&AnalyzerName::Digest]["sha256"]
            .as_str()
            .map(str::to_owned);
        assert_eq!(sha, Some(streamscan_engine::hex::encode(&Sha256::digest(&data))));
        let b3 = result.summaries[&AnalyzerName::Digest]["blake3"]
            .as_str()
            .map(str::to_owned);
        assert_eq!(b3.as_deref(), Some(blake3::hash(&data).to_hex().as_str()));

        match &reference {
            None => reference = Some(result.findings),
            Some(r) => assert_eq!(&result.findings, r, "chunk size {chunk} changed the findings"),
        }
    }
}

/// Stated false-positive rate of `filetype` on random data: below 0.1 per GiB (zstd's 4-byte
/// magic with one reserved bit dominates; every other signature checks 40+ bits). So 8 MiB of
/// random data must give none.
#[test]
fn clean_random_data_gives_no_embedded_files() {
    let data = common::random(8 << 20, 42);
    let result = scan(&data, &[AnalyzerName::Filetype], options(1 << 20));
    assert!(result.findings.is_empty(), "false positives: {:#?}", result.findings);
}

#[test]
fn empty_stream_and_exact_multiple_of_the_chunk_size() {
    let result = scan(&[], &MINE, options(4096));
    assert_eq!(result.bytes, 0);
    assert_eq!(
        result.summaries[&AnalyzerName::Digest]["sha256"],
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    // 64 KiB exactly in 4 KiB chunks: the last window has no fresh bytes.
    let mut data = common::text(65_536, 3);
    let gz = common::gzip_header();
    data[65_536 - gz.len()..].copy_from_slice(&gz);
    let result = scan(&data, &MINE, options(4096));
    assert_eq!(result.bytes, 65_536);
    let gzips = by_rule(&result.findings, "embedded-gzip");
    assert_eq!(gzips.len(), 1);
    assert_eq!(gzips[0].offset, (65_536 - gz.len()) as u64);
}

#[test]
fn findings_are_capped_per_analyzer_and_drops_counted() {
    let mut data = common::text(200_000, 5);
    let gz = common::gzip_header();
    for i in 0..30 {
        let at = 1000 + i * 5000;
        data[at..at + gz.len()].copy_from_slice(&gz);
    }
    let opts = Options {
        finding_cap: 5,
        ..options(8192)
    };
    let result = scan(&data, &[AnalyzerName::Filetype], opts);
    assert_eq!(result.findings.len(), 5);
    assert_eq!(result.findings[4].offset, 21_000, "the first five are kept");
    assert_eq!(result.dropped.get(&AnalyzerName::Filetype), Some(&25));
}

#[test]
fn resuming_from_any_checkpoint_gives_the_same_result() {
    let (data, ..) = common::planted_input();
    let opts = || Options {
        checkpoint_every: Some(256 * 1024),
        ..options(65_536)
    };
    let checkpoints: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&checkpoints);
    let hooks = Hooks {
        checkpoint: Some(Box::new(move |c: &Checkpoint| {
            let json = serde_json::to_string(c).expect("checkpoint serializes");
            sink.lock().expect("lock").push(json);
        })),
        ..Hooks::default()
    };
    let whole = Scan::new(analyzers(&MINE), opts())
        .and_then(|s| s.run(Cursor::new(&data), hooks))
        .expect("scan succeeds");
    let checkpoints = checkpoints.lock().expect("lock").clone();
    assert!(checkpoints.len() >= 10, "only {} checkpoints", checkpoints.len());
    let mut offsets = Vec::new();
    for json in &checkpoints {
        assert!(
            json.len() < 64 * 1024,
            "checkpoint of {} bytes is not small",
            json.len()
        );
        let checkpoint: Checkpoint = serde_json::from_str(json).expect("checkpoint parses");
        offsets.push(checkpoint.offset);
        let resumed = Scan::resume(analyzers(&MINE), opts(), &checkpoint)
            .and_then(|s| s.run(Cursor::new(&data[checkpoint.offset as usize..]), Hooks::default()))
            .expect("resumed scan succeeds");
        assert_eq!(resumed.bytes, whole.bytes);
        assert_eq!(resumed.findings, whole.findings, "resumed at {}", checkpoint.offset);
        assert_eq!(resumed.summaries, whole.summaries, "resumed at {}", checkpoint.offset);
        assert_eq!(resumed.resumed_from, Some(checkpoint.offset));
    }
    // Checkpoints arrive in stream order, at least 256 KiB apart.
    assert!(offsets.windows(2).all(|w| w[1] >= w[0] + 256 * 1024), "{offsets:?}");
}

#[test]
fn resume_refuses_a_checkpoint_of_other_analyzers() {
    let data = common::text(300_000, 9);
    let mut saved = None;
    let hooks = Hooks {
        checkpoint: Some(Box::new(|c: &Checkpoint| {
            saved.get_or_insert_with(|| c.clone());
        })),
        ..Hooks::default()
    };
    let opts = Options {
        checkpoint_every: Some(65_536),
        ..options(65_536)
    };
    Scan::new(analyzers(&[AnalyzerName::Digest]), opts.clone())
        .and_then(|s| s.run(Cursor::new(&data), hooks))
        .expect("scan succeeds");
    let checkpoint = saved.expect("a checkpoint was taken");
    let err = Scan::resume(analyzers(&MINE), opts, &checkpoint).err();
    assert!(matches!(err, Some(EngineError::BadCheckpoint(_))), "{err:?}");
}

/// Counts what the engine pulled from the source.
struct CountingReader<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
}

#[test]
fn cancel_stops_within_the_chunks_in_flight() {
    let data = common::text(8 << 20, 11);
    let chunk = 65_536u64;
    let opts = options(chunk as usize);
    let buffers = opts.buffers as u64;
    let read = Arc::new(AtomicU64::new(0));
    let cancel = CancelToken::new();
    let cancelled_at = Arc::new(AtomicU64::new(0));
    let (token, at) = (cancel.clone(), Arc::clone(&cancelled_at));
    let hooks = Hooks {
        progress: Some(Box::new(move |p| {
            if p.processed >= 1 << 20 && !token.is_cancelled() {
                at.store(p.processed, Ordering::SeqCst);
                token.cancel();
            }
        })),
        cancel,
        ..Hooks::default()
    };
    let reader = CountingReader {
        inner: Cursor::new(&data),
        read: Arc::clone(&read),
    };
    let outcome = Scan::new(analyzers(&MINE), opts).and_then(|s| s.run(reader, hooks));
    let at = cancelled_at.load(Ordering::SeqCst);
    match outcome {
        Err(EngineError::Cancelled { processed }) => {
            // Lanes stop before their next window: nothing beyond what was already handed out.
            assert!(
                processed <= at + (buffers + 1) * chunk,
                "processed {processed} after cancel at {at}"
            );
        }
        other => panic!("expected Cancelled, got {other:?}"),
    }
    let pulled = read.load(Ordering::SeqCst);
    assert!(
        pulled <= at + (buffers + 1) * chunk,
        "read {pulled} bytes after cancel at {at}"
    );
    assert!(pulled < data.len() as u64 / 2);
}

/// A source that fails after `ok` bytes.
struct FailingReader {
    ok: usize,
    pos: usize,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.ok {
            return Err(std::io::Error::other("disk on fire"));
        }
        let n = buf.len().min(self.ok - self.pos).min(1000);
        buf[..n].fill(b'a');
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn a_failing_source_is_a_typed_retriable_io_error_with_its_offset() {
    let outcome = Scan::new(analyzers(&MINE), options(4096))
        .and_then(|s| s.run(FailingReader { ok: 50_000, pos: 0 }, Hooks::default()));
    match outcome {
        Err(e @ EngineError::Io { offset: 50_000, .. }) => {
            assert!(e.is_retriable());
            assert!(e.to_string().contains("disk on fire") || format!("{e:?}").contains("disk on fire"));
        }
        other => panic!("expected an I/O error at 50000, got {other:?}"),
    }
}

#[test]
fn progress_reaches_the_total_and_never_goes_back() {
    let data = common::text(1 << 20, 13);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let hooks = Hooks {
        progress: Some(Box::new(move |p| sink.lock().expect("lock").push(p.processed))),
        ..Hooks::default()
    };
    let opts = Options {
        total: Some(data.len() as u64),
        ..options(65_536)
    };
    Scan::new(analyzers(&MINE), opts)
        .and_then(|s| s.run(Cursor::new(&data), hooks))
        .expect("scan succeeds");
    let seen = seen.lock().expect("lock");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert_eq!(seen.last(), Some(&(data.len() as u64)));
}
