//! The JSON report: what a scan found, in one document whose schema is committed as
//! `worker/report.schema.json`.

use std::collections::BTreeMap;

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use streamscan_api::{AnalyzerName, SeverityCounts};

use super::pipeline::ScanResult;
use super::{Finding, Severity};

/// Version of the report layout.
pub const REPORT_VERSION: u32 = 1;

/// Where the committed schema lives, relative to the workspace root.
pub const SCHEMA_PATH: &str = "worker/report.schema.json";

/// The command that regenerates the committed schema.
pub const REGENERATE_COMMAND: &str = "cargo run -p streamscan-worker -- report-schema --write";

/// The result of one scan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(
    title = "Streamscan report",
    description = "What one streaming analysis of one file found."
)]
pub struct Report {
    /// Version of this layout.
    pub version: u32,
    pub tool: Tool,
    /// What was analysed: a path, a URL, or `-` for standard input.
    pub source: String,
    /// Length of the analysed stream in bytes.
    pub bytes: u64,
    /// The stream's type by its magic bytes (`filetype`), `unknown` when not recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_type: Option<String>,
    pub digests: Digests,
    /// Analyzers that ran, in report order.
    pub analyzers: Vec<AnalyzerName>,
    /// Kept findings by severity (findings over the cap are counted in `dropped` only).
    pub counts: Counts,
    /// Every analyzer's findings, ordered by offset.
    pub findings: Vec<Finding>,
    /// Per analyzer: findings dropped because the analyzer reached the cap.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dropped: BTreeMap<String, u64>,
    /// Findings kept per analyzer at most.
    pub finding_cap: usize,
    /// Per analyzer: its summary (entropy profile, indicator totals, ...).
    pub summaries: BTreeMap<String, serde_json::Value>,
    pub timings: Timings,
    pub started_at: Timestamp,
    /// Offset of the checkpoint the scan continued from, when it was resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tool {
    pub name: String,
    pub version: String,
}

/// Digests of the whole stream (`digest` analyzer), lowercase hex.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Digests {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub blake3: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub critical: u64,
    pub high: u64,
    pub medium: u64,
    pub low: u64,
    pub info: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timings {
    /// Wall time of the scan (this run only, when resumed).
    pub total_ms: u64,
    /// Time spent inside each analyzer; lanes run in parallel, so these add up to more than the total.
    pub analyzers_ms: BTreeMap<String, u64>,
    /// Stream bytes per second over the wall time.
    pub bytes_per_second: u64,
}

impl Report {
    pub fn new(result: ScanResult, source: impl Into<String>, started_at: Timestamp, finding_cap: usize) -> Self {
        let mut counts = Counts::default();
        for f in &result.findings {
            match f.severity {
                Severity::Critical => counts.critical += 1,
                Severity::High => counts.high += 1,
                Severity::Medium => counts.medium += 1,
                Severity::Low => counts.low += 1,
                Severity::Info => counts.info += 1,
            }
        }
        let summary = |name: AnalyzerName, key: &str| {
            result
                .summaries
                .get(&name)
                .and_then(|s| s.get(key))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let digests = Digests {
            sha256: summary(AnalyzerName::Digest, "sha256"),
            blake3: summary(AnalyzerName::Digest, "blake3"),
        };
        let file_type = summary(AnalyzerName::Filetype, "type");
        let secs = result.elapsed.as_secs_f64();
        Report {
            version: REPORT_VERSION,
            tool: Tool {
                name: "streamscan".into(),
                version: env!("CARGO_PKG_VERSION").into(),
            },
            source: source.into(),
            bytes: result.bytes,
            file_type,
            digests,
            analyzers: result.analyzers,
            counts,
            findings: result.findings,
            dropped: result.dropped.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            finding_cap,
            summaries: result.summaries.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            timings: Timings {
                total_ms: result.elapsed.as_millis() as u64,
                analyzers_ms: result
                    .analyzer_time
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.as_millis() as u64))
                    .collect(),
                bytes_per_second: if secs > 0.0 {
                    (result.bytes as f64 / secs) as u64
                } else {
                    0
                },
            },
            started_at,
            resumed_from: result.resumed_from,
        }
    }

    /// Findings at or above `severity`.
    pub fn count_at_least(&self, severity: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity >= severity).count()
    }

    /// Counts in the shape the AnalysisJob status and the COMPLETED event carry.
    pub fn severity_counts(&self) -> SeverityCounts {
        let c = self.counts;
        let i = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        SeverityCounts {
            critical: i(c.critical),
            high: i(c.high),
            medium: i(c.medium),
            low: i(c.low),
            info: i(c.info),
        }
    }
}

/// The report's JSON Schema, as committed in [`SCHEMA_PATH`].
pub fn schema_json() -> Result<String, serde_json::Error> {
    let schema = schemars::schema_for!(Report);
    let mut text = serde_json::to_string_pretty(&schema)?;
    text.push('\n');
    Ok(text)
}
