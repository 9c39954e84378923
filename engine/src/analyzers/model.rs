//! `model`: an optional external model endpoint (the XAI model the analysis servers host), fed
//! window by window with features of the stream, returning scores and explanations. Off unless
//! an endpoint is configured.
//!
//! The stream is cut into fixed windows (64 KiB by default, aligned to stream offsets whatever
//! the pipeline's chunking). For each window we compute a few features; windows are sent in
//! batches (16 by default) with one blocking HTTP `POST` per batch, so the model's round trip
//! is paid once per MiB rather than per window. Windows scoring at or above the threshold (0.8
//! by default) become findings whose message carries the model's explanation.
//!
//! Request body (`Content-Type: application/json`):
//! ```json
//! {"model": "streamscan-window-features", "version": 1, "windows": [
//!   {"index": 4, "offset": 262144, "length": 65536, "entropy": 7.998, "printableRatio": 0.37,
//!    "zeroRatio": 0.004, "highRatio": 0.5, "distinctBytes": 256, "meanByte": 127.4,
//!    "histogram16": [0.062, ...]}]}
//! ```
//! `entropy` is Shannon entropy in bits per byte (0–8); the ratios are shares of printable ASCII,
//! zero bytes and bytes >= 0x80; `histogram16` is the share of bytes in each 16-value bucket.
//!
//! Reply (`200`, JSON), one score per window sent, each in [0, 1]:
//! ```json
//! {"scores": [{"index": 4, "score": 0.97, "label": "encrypted",
//!              "explanation": [{"feature": "entropy", "weight": 0.81},
//!                              {"feature": "printableRatio", "weight": -0.12}]}]}
//! ```
//! `label` and `explanation` are optional. Errors: connection refused, timeouts, `408`, `429`
//! and `5xx` are [`AnalyzerError::Retriable`] (the model is down: retry the job later); any other
//! status, a body that is not this JSON, or scores missing or out of range are
//! [`AnalyzerError::Fatal`].
//!
//! The client is `reqwest`'s blocking one, without proxies: call the analyzer from a plain
//! thread (as the pipeline does), not from inside an async runtime.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use streamscan_api::AnalyzerName;

use crate::{Analyzer, AnalyzerError, Finding, FindingSink, Severity, Window};

/// Where the external model is.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// HTTP(S) endpoint that scores batches of window features (see the module docs).
    pub endpoint: String,
}

/// How the model is fed; [`Default`] gives the documented defaults.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    /// Bytes per window.
    pub window_size: usize,
    /// Windows per request.
    pub batch_windows: usize,
    /// Windows scoring at least this are reported.
    pub threshold: f64,
    /// Whole-request timeout.
    pub timeout: Duration,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            window_size: 64 * 1024,
            batch_windows: 16,
            threshold: 0.8,
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WindowFeatures {
    pub index: u64,
    pub offset: u64,
    pub length: u64,
    pub entropy: f64,
    pub printable_ratio: f64,
    pub zero_ratio: f64,
    pub high_ratio: f64,
    pub distinct_bytes: u32,
    pub mean_byte: f64,
    pub histogram16: Vec<f64>,
}

impl WindowFeatures {
    fn from_histogram(index: u64, offset: u64, hist: &[u64; 256]) -> Self {
        let total: u64 = hist.iter().sum();
        let n = total.max(1) as f64;
        let share = |range: std::ops::RangeInclusive<usize>| hist[range].iter().sum::<u64>() as f64 / n;
        let entropy = hist
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / n;
                -p * p.log2()
            })
            .sum::<f64>();
        let printable =
            hist[0x20..0x7f].iter().sum::<u64>() + hist[b'\t' as usize] + hist[b'\n' as usize] + hist[b'\r' as usize];
        let mean = hist.iter().enumerate().map(|(b, &c)| b as f64 * c as f64).sum::<f64>() / n;
        WindowFeatures {
            index,
            offset,
            length: total,
            entropy,
            printable_ratio: printable as f64 / n,
            zero_ratio: hist[0] as f64 / n,
            high_ratio: share(0x80..=0xff),
            distinct_bytes: hist.iter().filter(|&&c| c > 0).count() as u32,
            mean_byte: mean,
            histogram16: (0..16).map(|i| share(i * 16..=i * 16 + 15)).collect(),
        }
    }
}

#[derive(Serialize)]
struct Request<'a> {
    model: &'static str,
    version: u32,
    windows: &'a [WindowFeatures],
}

#[derive(Deserialize)]
struct Reply {
    scores: Vec<Score>,
}

#[derive(Deserialize)]
struct Score {
    index: u64,
    score: f64,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    explanation: Vec<Explanation>,
}

#[derive(Deserialize)]
struct Explanation {
    feature: String,
    weight: f64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct State {
    /// Byte counts of the partial window (256 numbers).
    hist: Vec<u64>,
    filled: usize,
    next_index: u64,
    batch: Vec<WindowFeatures>,
    windows_scored: u64,
    flagged: u64,
    requests: u64,
}

pub struct ModelAnalyzer {
    config: ModelConfig,
    options: ModelOptions,
    client: Option<reqwest::blocking::Client>,
    hist: [u64; 256],
    filled: usize,
    next_index: u64,
    batch: Vec<WindowFeatures>,
    windows_scored: u64,
    flagged: u64,
    requests: u64,
}

impl ModelAnalyzer {
    pub fn new(config: ModelConfig) -> Self {
        Self::with_options(config, ModelOptions::default())
    }

    pub fn with_options(config: ModelConfig, mut options: ModelOptions) -> Self {
        options.window_size = options.window_size.max(1);
        options.batch_windows = options.batch_windows.max(1);
        ModelAnalyzer {
            config,
            options,
            client: None,
            hist: [0; 256],
            filled: 0,
            next_index: 0,
            batch: Vec::new(),
            windows_scored: 0,
            flagged: 0,
            requests: 0,
        }
    }

    fn retriable(&self, message: String) -> AnalyzerError {
        AnalyzerError::Retriable {
            analyzer: AnalyzerName::Model,
            message: format!("model endpoint {}: {message}", self.config.endpoint),
        }
    }

    fn fatal(&self, message: String) -> AnalyzerError {
        AnalyzerError::Fatal {
            analyzer: AnalyzerName::Model,
            message: format!("model endpoint {}: {message}", self.config.endpoint),
        }
    }

    fn close_window(&mut self) {
        let index = self.next_index;
        let offset = index * self.options.window_size as u64;
        self.batch
            .push(WindowFeatures::from_histogram(index, offset, &self.hist));
        self.hist = [0; 256];
        self.filled = 0;
        self.next_index += 1;
    }

    /// Sends the pending batch and reports the windows above the threshold.
    fn flush(&mut self, sink: &mut dyn FindingSink) -> Result<(), AnalyzerError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        if self.client.is_none() {
            let client = reqwest::blocking::Client::builder()
                .no_proxy()
                .timeout(self.options.timeout)
                .connect_timeout(self.options.timeout.min(Duration::from_secs(10)))
                .build()
                .map_err(|e| self.fatal(format!("HTTP client: {e}")))?;
            self.client = Some(client);
        }
        let Some(client) = &self.client else {
            return Err(self.fatal("HTTP client missing".into()));
        };
        let request = Request {
            model: "streamscan-window-features",
            version: 1,
            windows: &self.batch,
        };
        let response = client
            .post(&self.config.endpoint)
            .json(&request)
            .send()
            .map_err(|e| self.retriable(format!("request failed: {e}")))?;
        self.requests += 1;
        let status = response.status();
        if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            return Err(self.retriable(format!("unavailable: HTTP {status}")));
        }
        if !status.is_success() {
            return Err(self.fatal(format!("refused the request: HTTP {status}")));
        }
        let body = response
            .bytes()
            .map_err(|e| self.retriable(format!("reading the reply: {e}")))?;
        let reply: Reply = serde_json::from_slice(&body).map_err(|e| self.fatal(format!("malformed reply: {e}")))?;
        let batch = std::mem::take(&mut self.batch);
        for w in &batch {
            let mut scores = reply.scores.iter().filter(|s| s.index == w.index);
            let (Some(score), None) = (scores.next(), scores.next()) else {
                return Err(self.fatal(format!("malformed reply: not exactly one score for window {}", w.index)));
            };
            if !(0.0..=1.0).contains(&score.score) {
                return Err(self.fatal(format!("malformed reply: score {} out of [0, 1]", score.score)));
            }
            self.windows_scored += 1;
            if score.score >= self.options.threshold {
                self.flagged += 1;
                sink.push(self.finding(w, score));
            }
        }
        Ok(())
    }

    fn finding(&self, w: &WindowFeatures, score: &Score) -> Finding {
        let mut explanation: Vec<&Explanation> = score.explanation.iter().collect();
        explanation.sort_by(|a, b| b.weight.abs().total_cmp(&a.weight.abs()));
        let because: Vec<String> = explanation
            .iter()
            .take(5)
            .map(|e| format!("{} ({:+.2})", e.feature, e.weight))
            .collect();
        let label = score.label.as_deref().unwrap_or("anomalous");
        let mut message = format!(
            "model scored window {} (offset {}, {} bytes) {:.2}: {label}",
            w.index, w.offset, w.length, score.score
        );
        if !because.is_empty() {
            message.push_str(&format!("; because of {}", because.join(", ")));
        }
        message.push_str(&format!(
            "; entropy {:.2} bits/byte, printable {:.0}%",
            w.entropy,
            w.printable_ratio * 100.0
        ));
        let severity = if score.score >= 0.95 {
            Severity::High
        } else {
            Severity::Medium
        };
        let mut f = Finding::new(AnalyzerName::Model, "model-score", severity, w.offset, message);
        f.length = Some(w.length);
        f.value = Some(format!("{:.3}", score.score));
        f
    }
}

impl Analyzer for ModelAnalyzer {
    fn name(&self) -> AnalyzerName {
        AnalyzerName::Model
    }

    fn update(&mut self, window: &Window<'_>, sink: &mut dyn FindingSink) -> Result<(), AnalyzerError> {
        let mut fresh = window.fresh_bytes();
        while !fresh.is_empty() {
            let take = (self.options.window_size - self.filled).min(fresh.len());
            for &b in &fresh[..take] {
                self.hist[b as usize] += 1;
            }
            self.filled += take;
            fresh = &fresh[take..];
            if self.filled == self.options.window_size {
                self.close_window();
                if self.batch.len() >= self.options.batch_windows {
                    self.flush(sink)?;
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, sink: &mut dyn FindingSink) -> Result<serde_json::Value, AnalyzerError> {
        if self.filled > 0 {
            self.close_window();
        }
        self.flush(sink)?;
        Ok(serde_json::json!({
            "endpoint": self.config.endpoint,
            "windowSize": self.options.window_size,
            "windows": self.windows_scored,
            "flagged": self.flagged,
            "requests": self.requests,
        }))
    }

    fn checkpoint(&self) -> Result<serde_json::Value, AnalyzerError> {
        serde_json::to_value(State {
            hist: self.hist.to_vec(),
            filled: self.filled,
            next_index: self.next_index,
            batch: self.batch.clone(),
            windows_scored: self.windows_scored,
            flagged: self.flagged,
            requests: self.requests,
        })
        .map_err(|e| AnalyzerError::Checkpoint {
            analyzer: AnalyzerName::Model,
            message: e.to_string(),
        })
    }

    fn restore(&mut self, state: serde_json::Value) -> Result<(), AnalyzerError> {
        let bad = |message: String| AnalyzerError::Checkpoint {
            analyzer: AnalyzerName::Model,
            message,
        };
        let state: State = serde_json::from_value(state).map_err(|e| bad(e.to_string()))?;
        self.hist = state
            .hist
            .try_into()
            .map_err(|h: Vec<u64>| bad(format!("histogram of {} entries, not 256", h.len())))?;
        if state.filled >= self.options.window_size {
            return Err(bad(format!(
                "{} bytes in a window of {}",
                state.filled, self.options.window_size
            )));
        }
        self.filled = state.filled;
        self.next_index = state.next_index;
        self.batch = state.batch;
        self.windows_scored = state.windows_scored;
        self.flagged = state.flagged;
        self.requests = state.requests;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
