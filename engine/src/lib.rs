//! The streaming analysis engine: reads a byte stream once, in chunks, and runs every selected
//! analyzer over it with bounded memory.
//!
//! This module fixes the contract between the pipeline and the analyzers. Each analyzer is a
//! module under [`analyzers`] implementing [`Analyzer`].

pub mod analyzers;
pub mod blake3_tree;
pub mod cyclonedx;
pub mod hex;
pub mod pipeline;
pub mod report;
pub mod sarif;
pub mod sink;
pub mod text;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use streamscan_api::AnalyzerName;

/// How serious a finding is. Ordered: `Info < Low < Medium < High < Critical`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

/// A known vulnerability of a component version.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Vulnerability {
    /// OSV id (CVE-..., GHSA-..., OSV-...).
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

/// One thing an analyzer found, at a byte offset of the original stream.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub analyzer: AnalyzerName,
    /// Stable rule id, e.g. `aws-access-key-id`, `embedded-gzip`, `url`.
    pub rule: String,
    pub severity: Severity,
    /// Byte offset of the first byte of the match in the original stream.
    pub offset: u64,
    /// Length of the match in bytes, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// A sentence for a person.
    pub message: String,
    /// The matched value: an indicator, a *redacted* secret, an embedded file's type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// For deduplicated findings (indicators): how many times the value occurred; `offset` is the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Component findings: the component's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// Component findings: the version found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Component findings: known vulnerabilities of that version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vulnerabilities: Vec<Vulnerability>,
}

impl Finding {
    /// A finding with only the required fields set.
    pub fn new(
        analyzer: AnalyzerName,
        rule: impl Into<String>,
        severity: Severity,
        offset: u64,
        message: impl Into<String>,
    ) -> Self {
        Finding {
            analyzer,
            rule: rule.into(),
            severity,
            offset,
            length: None,
            message: message.into(),
            value: None,
            count: None,
            component: None,
            version: None,
            vulnerabilities: Vec::new(),
        }
    }
}

/// A view of the stream handed to analyzers: the tail of the previous chunk (the overlap)
/// followed by the fresh bytes of this chunk, contiguous in memory.
///
/// Matches that may straddle chunks are found exactly once this way: search `data` (or the part
/// of it starting `self.overlap_for(my_overlap)` bytes before `fresh`), accept a match only when
/// it starts before `data.len() - my_overlap` (or anywhere when `is_last`), and never report a
/// match starting before the end of the last accepted one. The pipeline guarantees
/// `fresh >= min(max overlap of all analyzers, bytes seen so far)`.
///
/// The last window may hold no fresh bytes at all (when the stream length is a multiple of the
/// chunk size, end of stream is only known after a read returns nothing); its carried bytes are
/// then the ones not yet accepted by the rule above.
#[derive(Clone, Copy, Debug)]
pub struct Window<'a> {
    /// Carried tail, then fresh bytes.
    pub data: &'a [u8],
    /// Stream offset of `data[0]`.
    pub offset: u64,
    /// Index in `data` where the fresh bytes begin (`data[..fresh]` was in the previous window).
    pub fresh: usize,
    /// Whether this is the last window of the stream.
    pub is_last: bool,
    /// Total stream length, when known in advance.
    pub total: Option<u64>,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Severity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Severity::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown severity `{s}` (expected info, low, medium, high or critical)"))
    }
}

impl<'a> Window<'a> {
    /// The fresh bytes of this window.
    pub fn fresh_bytes(&self) -> &'a [u8] {
        &self.data[self.fresh..]
    }

    /// The window restricted to at most `overlap` carried bytes, and the stream offset of its start.
    pub fn with_overlap(&self, overlap: usize) -> (&'a [u8], u64) {
        let start = self.fresh.saturating_sub(overlap);
        (&self.data[start..], self.offset + start as u64)
    }
}

/// Where analyzers put what they find. The pipeline caps findings so reports stay bounded and
/// counts what it dropped.
pub trait FindingSink {
    fn push(&mut self, finding: Finding);
}

impl FindingSink for Vec<Finding> {
    fn push(&mut self, finding: Finding) {
        Vec::push(self, finding);
    }
}

/// Why an analyzer failed.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzerError {
    /// A dependency outside the process failed; retrying later may succeed (model endpoint down).
    #[error("{analyzer}: {message}")]
    Retriable { analyzer: AnalyzerName, message: String },
    /// The input or the configuration is wrong; retrying will not help.
    #[error("{analyzer}: {message}")]
    Fatal { analyzer: AnalyzerName, message: String },
    /// A checkpoint could not be written or read back.
    #[error("{analyzer}: checkpoint state: {message}")]
    Checkpoint { analyzer: AnalyzerName, message: String },
}

/// One analyzer. The pipeline calls `update` for every window in stream order, then `finish`
/// once. An analyzer holds bounded state whatever the stream length.
pub trait Analyzer: Send {
    fn name(&self) -> AnalyzerName;

    /// Longest match this analyzer must see whole across a chunk boundary, in bytes
    /// (0 when it needs no overlap). The pipeline carries the largest of these.
    fn overlap(&self) -> usize {
        0
    }

    /// Looks at the next window of the stream.
    fn update(&mut self, window: &Window<'_>, sink: &mut dyn FindingSink) -> Result<(), AnalyzerError>;

    /// Called once after the last window: emit what was held back (deduplicated counts, regions)
    /// and return the analyzer's summary for the report (e.g. `{"sha256": "..."}`), or `Null`.
    fn finish(&mut self, sink: &mut dyn FindingSink) -> Result<serde_json::Value, AnalyzerError>;

    /// The state needed to continue from the current offset without re-reading the stream.
    /// Kept small (kilobytes), since it is written every few MiB.
    fn checkpoint(&self) -> Result<serde_json::Value, AnalyzerError>;

    /// Restores state written by [`Analyzer::checkpoint`] of the same analyzer.
    fn restore(&mut self, state: serde_json::Value) -> Result<(), AnalyzerError>;
}
