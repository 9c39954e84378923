//! `entropy`: Shannon entropy per fixed, stream-aligned window, a bounded profile of it, and the
//! regions that look compressed or encrypted.
//!
//! Windows start at multiples of [`WINDOW`] in the stream, so results do not depend on how the
//! stream was chunked. A final partial window counts only when it holds at least a quarter of a
//! window: entropy estimated from fewer bytes is biased low.

use serde::{Deserialize, Serialize};
use serde_json::json;
use streamscan_api::AnalyzerName;

use crate::{Analyzer, AnalyzerError, Finding, FindingSink, Severity, Window};

/// Bytes per entropy window.
pub const WINDOW: usize = 64 * 1024;
/// Bits per byte at or above which a window looks compressed or encrypted. Text sits near 4.5,
/// machine code near 6, compressed and encrypted data above 7.9.
pub const HIGH: f64 = 7.2;
/// Points kept in the profile; adjacent points are averaged when it fills, so it covers any length.
const PROFILE_POINTS: usize = 512;
/// Buckets of the entropy histogram, half a bit each.
const BUCKETS: usize = 16;

pub struct EntropyAnalyzer {
    /// Byte counts of the current window (four interleaved tables, summed on completion, so the
    /// counting loop avoids store-to-load stalls on repeated bytes).
    counts: Box<[[u32; 256]; 4]>,
    /// Bytes in the current window so far.
    filled: usize,
    /// Stream offset of the current window.
    window_start: u64,
    stats: Stats,
}

/// Everything but the current window's counts; serialized in checkpoints (floats as bits, so a
/// resumed run reproduces them exactly).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Stats {
    windows: u64,
    sum_bits: u64,
    min_bits: Option<u64>,
    max_bits: Option<u64>,
    histogram: [u64; BUCKETS],
    high_bytes: u64,
    /// Profile points (mean entropy as bits), each covering `per_point` windows.
    profile_bits: Vec<u64>,
    per_point: u64,
    /// Windows folded into the pending (last, incomplete) profile point, and their sum.
    pending_windows: u64,
    pending_sum_bits: u64,
    /// The open high-entropy region: start, length, sum of its windows' entropy.
    region: Option<(u64, u64, u64)>,
    region_windows: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct State {
    stats: Stats,
    window_start: u64,
    /// Sparse counts of the current window: (byte, count).
    counts: Vec<(u8, u32)>,
    filled: usize,
}

impl Default for EntropyAnalyzer {
    fn default() -> Self {
        Self::new()
    }
}

impl EntropyAnalyzer {
    pub fn new() -> Self {
        EntropyAnalyzer {
            counts: Box::new([[0; 256]; 4]),
            filled: 0,
            window_start: 0,
            stats: Stats {
                per_point: 1,
                ..Stats::default()
            },
        }
    }

    fn count(&mut self, bytes: &[u8]) {
        let [c0, c1, c2, c3] = &mut *self.counts;
        let mut quads = bytes.chunks_exact(4);
        for q in &mut quads {
            c0[usize::from(q[0])] += 1;
            c1[usize::from(q[1])] += 1;
            c2[usize::from(q[2])] += 1;
            c3[usize::from(q[3])] += 1;
        }
        for &b in quads.remainder() {
            c0[usize::from(b)] += 1;
        }
        self.filled += bytes.len();
    }

    fn merged_counts(&self) -> [u32; 256] {
        let mut total = [0u32; 256];
        for table in self.counts.iter() {
            for (t, c) in total.iter_mut().zip(table) {
                *t += c;
            }
        }
        total
    }

    fn close_window(&mut self, sink: &mut dyn FindingSink) {
        let counts = self.merged_counts();
        let entropy = shannon(&counts, self.filled);
        self.stats.record(self.window_start, self.filled as u64, entropy, sink);
        self.window_start += self.filled as u64;
        self.filled = 0;
        *self.counts = [[0; 256]; 4];
    }
}

/// Shannon entropy in bits per byte.
pub fn shannon(counts: &[u32; 256], len: usize) -> f64 {
    if len == 0 {
        return 0.0;
    }
    let n = len as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

impl Stats {
    fn record(&mut self, start: u64, len: u64, entropy: f64, sink: &mut dyn FindingSink) {
        self.windows += 1;
        self.sum_bits = (f64::from_bits(self.sum_bits) + entropy).to_bits();
        let min = self.min_bits.map_or(entropy, |m| f64::from_bits(m).min(entropy));
        let max = self.max_bits.map_or(entropy, |m| f64::from_bits(m).max(entropy));
        self.min_bits = Some(min.to_bits());
        self.max_bits = Some(max.to_bits());
        let bucket = ((entropy * 2.0) as usize).min(BUCKETS - 1);
        self.histogram[bucket] += 1;

        self.pending_windows += 1;
        self.pending_sum_bits = (f64::from_bits(self.pending_sum_bits) + entropy).to_bits();
        if self.pending_windows == self.per_point {
            let mean = f64::from_bits(self.pending_sum_bits) / self.pending_windows as f64;
            self.profile_bits.push(mean.to_bits());
            self.pending_windows = 0;
            self.pending_sum_bits = 0f64.to_bits();
            if self.profile_bits.len() == PROFILE_POINTS {
                // Halve the resolution so the profile stays bounded whatever the length.
                self.profile_bits = self
                    .profile_bits
                    .chunks_exact(2)
                    .map(|p| ((f64::from_bits(p[0]) + f64::from_bits(p[1])) / 2.0).to_bits())
                    .collect();
                self.per_point *= 2;
            }
        }

        if entropy >= HIGH {
            self.high_bytes += len;
            self.region_windows += 1;
            self.region = Some(match self.region {
                Some((s, l, sum)) => (s, l + len, (f64::from_bits(sum) + entropy).to_bits()),
                None => (start, len, entropy.to_bits()),
            });
        } else {
            self.close_region(sink);
        }
    }

    fn close_region(&mut self, sink: &mut dyn FindingSink) {
        if let Some((start, len, sum)) = self.region.take() {
            let mean = f64::from_bits(sum) / self.region_windows.max(1) as f64;
            let mut f = Finding::new(
                AnalyzerName::Entropy,
                "high-entropy-region",
                Severity::Info,
                start,
                format!("{len} bytes with {mean:.3} bits/byte of entropy: compressed or encrypted data"),
            );
            f.length = Some(len);
            f.value = Some(format!("{mean:.3}"));
            sink.push(f);
        }
        self.region_windows = 0;
    }
}

impl Analyzer for EntropyAnalyzer {
    fn name(&self) -> AnalyzerName {
        AnalyzerName::Entropy
    }

    fn update(&mut self, window: &Window<'_>, sink: &mut dyn FindingSink) -> Result<(), AnalyzerError> {
        let mut fresh = window.fresh_bytes();
        while !fresh.is_empty() {
            let take = (WINDOW - self.filled).min(fresh.len());
            self.count(&fresh[..take]);
            fresh = &fresh[take..];
            if self.filled == WINDOW {
                self.close_window(sink);
            }
        }
        Ok(())
    }

    fn finish(&mut self, sink: &mut dyn FindingSink) -> Result<serde_json::Value, AnalyzerError> {
        if self.filled >= WINDOW / 4 {
            self.close_window(sink);
        }
        self.stats.close_region(sink);
        let s = &self.stats;
        let mut profile: Vec<f64> = s.profile_bits.iter().map(|&b| round3(f64::from_bits(b))).collect();
        if s.pending_windows > 0 {
            profile.push(round3(f64::from_bits(s.pending_sum_bits) / s.pending_windows as f64));
        }
        let mean = if s.windows > 0 {
            Some(round3(f64::from_bits(s.sum_bits) / s.windows as f64))
        } else {
            None
        };
        Ok(json!({
            "windowSize": WINDOW,
            "windows": s.windows,
            "mean": mean,
            "min": s.min_bits.map(|b| round3(f64::from_bits(b))),
            "max": s.max_bits.map(|b| round3(f64::from_bits(b))),
            "highThreshold": HIGH,
            "highEntropyBytes": s.high_bytes,
            "histogram": s.histogram,
            "profile": { "windowsPerPoint": s.per_point, "points": profile },
        }))
    }

    fn checkpoint(&self) -> Result<serde_json::Value, AnalyzerError> {
        let counts = self.merged_counts();
        let state = State {
            stats: self.stats.clone(),
            window_start: self.window_start,
            counts: (0..=255u8).zip(counts).filter(|&(_, c)| c > 0).collect(),
            filled: self.filled,
        };
        serde_json::to_value(state).map_err(|e| AnalyzerError::Checkpoint {
            analyzer: AnalyzerName::Entropy,
            message: e.to_string(),
        })
    }

    fn restore(&mut self, state: serde_json::Value) -> Result<(), AnalyzerError> {
        let state: State = serde_json::from_value(state).map_err(|e| AnalyzerError::Checkpoint {
            analyzer: AnalyzerName::Entropy,
            message: e.to_string(),
        })?;
        let total: u64 = state.counts.iter().map(|&(_, c)| u64::from(c)).sum();
        if total != state.filled as u64 || state.filled >= WINDOW || state.stats.per_point == 0 {
            return Err(AnalyzerError::Checkpoint {
                analyzer: AnalyzerName::Entropy,
                message: "window counts do not add up".into(),
            });
        }
        *self.counts = [[0; 256]; 4];
        for (b, c) in state.counts {
            self.counts[0][usize::from(b)] = c;
        }
        self.filled = state.filled;
        self.window_start = state.window_start;
        self.stats = state.stats;
        Ok(())
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_of_known_distributions() {
        let mut counts = [0u32; 256];
        counts[7] = 100;
        assert_eq!(shannon(&counts, 100), 0.0);
        let counts = [4u32; 256];
        assert!((shannon(&counts, 1024) - 8.0).abs() < 1e-9);
    }
}
