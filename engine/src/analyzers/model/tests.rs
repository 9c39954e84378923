use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

use super::*;
use crate::analyzers::testutil::{Rng, run, run_resumed};

type Handler = dyn Fn(&Value) -> (u16, String) + Send + Sync;

/// A tiny HTTP/1.1 server on 127.0.0.1 answering each POST with `handler(body)`; returns its URL
/// and a request counter. The thread ends with the test process.
fn serve(handler: Arc<Handler>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/score", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = answer(stream, &*handler);
        }
    });
    (url, count)
}

fn answer(stream: TcpStream, handler: &Handler) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let (status, reply) = handler(&serde_json::from_slice(&body).unwrap_or(Value::Null));
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    )
}

/// Scores each window by its entropy, explaining with two features.
fn entropy_model(req: &Value) -> (u16, String) {
    let scores: Vec<Value> = req["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let e = w["entropy"].as_f64().unwrap();
            json!({"index": w["index"], "score": e / 8.0, "label": "encrypted-or-compressed",
                   "explanation": [{"feature": "entropy", "weight": e / 10.0},
                                   {"feature": "printableRatio", "weight": -w["printableRatio"].as_f64().unwrap()}]})
        })
        .collect();
    (200, json!({ "scores": scores }).to_string())
}

fn options() -> ModelOptions {
    ModelOptions {
        window_size: 16 * 1024,
        batch_windows: 4,
        threshold: 0.9,
        timeout: Duration::from_secs(10),
    }
}

/// 160 KiB of text with random bytes in windows 3 and 4 and half of window 7.
fn data() -> Vec<u8> {
    let mut data: Vec<u8> = b"the quick brown fox jumps over the lazy dog\n"
        .iter()
        .copied()
        .cycle()
        .take(160 * 1024)
        .collect();
    let mut rng = Rng::new(4);
    data[48 * 1024..80 * 1024].copy_from_slice(&rng.bytes(32 * 1024));
    data[112 * 1024..120 * 1024].copy_from_slice(&rng.bytes(8 * 1024));
    data
}

#[test]
fn high_scoring_windows_are_reported_with_explanations_whatever_the_chunking() {
    let (url, requests) = serve(Arc::new(entropy_model));
    let data = data();
    let mut reference = None;
    for chunk in [1000, 16 * 1024, 1 << 20] {
        let mut a = ModelAnalyzer::with_options(ModelConfig { endpoint: url.clone() }, options());
        let (findings, summary) = run(&mut a, &data, chunk, 0);
        let offsets: Vec<u64> = findings.iter().map(|f| f.offset).collect();
        assert_eq!(offsets, [48 * 1024, 64 * 1024], "chunk {chunk}: {findings:?}");
        assert!(
            findings[0].message.contains("because of entropy (+0.8"),
            "{}",
            findings[0].message
        );
        assert!(findings[0].message.contains("encrypted-or-compressed"));
        assert_eq!(summary["windows"], 10);
        assert_eq!(summary["requests"], 3, "10 windows in batches of 4");
        match &reference {
            None => reference = Some(findings),
            Some(r) => assert_eq!(&findings, r),
        }
    }
    assert_eq!(requests.load(Ordering::SeqCst), 9);
}

#[test]
fn checkpoint_and_restore_give_the_same_findings() {
    let (url, _) = serve(Arc::new(entropy_model));
    let data = data();
    let config = ModelConfig { endpoint: url };
    let mut a = ModelAnalyzer::with_options(config.clone(), options());
    let (whole, whole_summary) = run(&mut a, &data, 5000, 0);
    for cut in [1, 7, 13, 20, 31] {
        let mut first = ModelAnalyzer::with_options(config.clone(), options());
        let mut second = ModelAnalyzer::with_options(config.clone(), options());
        let (resumed, summary) = run_resumed(&mut first, &mut second, &data, 5000, 0, cut);
        assert_eq!(resumed, whole, "cut after {cut}");
        assert_eq!(summary, whole_summary);
        assert!(first.checkpoint().unwrap().to_string().len() < 16 * 1024);
    }
}

fn one_window_error(endpoint: String, timeout: Duration) -> AnalyzerError {
    let mut a = ModelAnalyzer::with_options(ModelConfig { endpoint }, ModelOptions { timeout, ..options() });
    let data = vec![7u8; 100];
    let w = Window {
        data: &data,
        offset: 0,
        fresh: 0,
        is_last: true,
        total: Some(100),
    };
    let mut sink = Vec::new();
    a.update(&w, &mut sink).unwrap();
    a.finish(&mut sink).expect_err("an error")
}

#[test]
fn outage_is_retriable() {
    // A port nobody listens on: bind, note the port, close.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = one_window_error(format!("http://127.0.0.1:{port}/score"), Duration::from_secs(5));
    assert!(matches!(err, AnalyzerError::Retriable { .. }), "{err:?}");

    let (url, _) = serve(Arc::new(|_: &Value| (503, "{\"error\":\"overloaded\"}".to_string())));
    let err = one_window_error(url, Duration::from_secs(5));
    assert!(matches!(err, AnalyzerError::Retriable { .. }), "{err:?}");
    assert!(err.to_string().contains("503"), "{err}");
}

#[test]
fn a_model_that_never_answers_times_out_as_retriable() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/score", listener.local_addr().unwrap());
    // Accepts (the kernel backlog does) but never replies; the listener lives until the test ends.
    let err = one_window_error(url, Duration::from_millis(300));
    assert!(matches!(err, AnalyzerError::Retriable { .. }), "{err:?}");
    drop(listener);
}

#[test]
fn malformed_replies_are_fatal() {
    let replies: [(u16, &str); 4] = [
        (200, "not json"),
        (200, "{\"scores\": []}"),
        (200, "{\"scores\": [{\"index\": 0, \"score\": 3.5}]}"),
        (400, "{\"error\":\"bad request\"}"),
    ];
    for (status, body) in replies {
        let (url, _) = serve(Arc::new(move |_: &Value| (status, body.to_string())));
        let err = one_window_error(url, Duration::from_secs(5));
        assert!(matches!(err, AnalyzerError::Fatal { .. }), "{body}: {err:?}");
    }
}

#[test]
fn features_describe_the_window() {
    let mut hist = [0u64; 256];
    hist[b'a' as usize] = 50;
    hist[0] = 50;
    let f = WindowFeatures::from_histogram(2, 128, &hist);
    assert_eq!((f.index, f.offset, f.length, f.distinct_bytes), (2, 128, 100, 2));
    assert!((f.entropy - 1.0).abs() < 1e-9);
    assert!((f.printable_ratio - 0.5).abs() < 1e-9 && (f.zero_ratio - 0.5).abs() < 1e-9);
    assert_eq!(f.histogram16.len(), 16);
}
