//! SARIF 2.1.0 output, in the subset GitHub code scanning reads.
//!
//! Findings sit in binary files, so each result's region carries `byteOffset`/`byteLength`;
//! GitHub additionally requires `region.startLine` on every result, so `startLine: 1` is set
//! as well (the whole artifact is one "line" for a binary). Rules carry GitHub's
//! `security-severity` so alerts get the right severity, and results a `partialFingerprints`
//! entry so re-uploads of the same scan do not duplicate alerts.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::report::Report;
use super::{Finding, Severity};

pub const SARIF_SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";
pub const SARIF_VERSION: &str = "2.1.0";

/// SARIF level of a severity.
pub fn level(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical | Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low | Severity::Info => "note",
    }
}

/// GitHub's `security-severity` (CVSS-like score) of a severity.
fn security_severity(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "9.5",
        Severity::High => "8.0",
        Severity::Medium => "5.5",
        Severity::Low => "3.0",
        Severity::Info => "0.0",
    }
}

fn rule_id(f: &Finding) -> String {
    format!("{}/{}", f.analyzer, f.rule)
}

/// The artifact URI for the report's source: URLs as they are, paths relative as given.
fn artifact_uri(source: &str) -> String {
    if source == "-" {
        return "stdin".into();
    }
    if source.starts_with("http://") || source.starts_with("https://") {
        return source.into();
    }
    percent_encode(source, b"/")
}

/// `text` with every byte but RFC 3986's unreserved ones and `also_literal` percent-encoded.
pub(crate) fn percent_encode(text: &str, also_literal: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || also_literal.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The SARIF log of a report.
pub fn to_sarif(report: &Report) -> Value {
    let rules = distinct_rules(&report.findings);
    // Results point at their rule by position in the driver's `rules` array.
    let index: BTreeMap<&str, usize> = rules.keys().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
    let rule_objects: Vec<Value> = rules
        .iter()
        .map(|(id, (f, severity))| rule_object(id, f, *severity))
        .collect();
    let uri = artifact_uri(&report.source);
    let results: Vec<Value> = report.findings.iter().map(|f| result_object(f, &uri, &index)).collect();
    json!({
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [{
            "tool": {
                "driver": {
                    "name": "streamscan",
                    "version": report.tool.version,
                    "informationUri": "https://example.invalid/streamscan",
                    "rules": rule_objects,
                }
            },
            "artifacts": [{
                "location": { "uri": uri },
                "length": report.bytes,
                "hashes": report.digests.sha256.as_ref().map(|h| json!({ "sha-256": h })).unwrap_or(json!({})),
            }],
            "results": results,
            "properties": {
                "dropped": report.dropped,
            },
        }]
    })
}

/// One entry per distinct rule id, keyed and ordered by that id: the first finding reported
/// under it (for its names) and the highest severity it was reported at.
fn distinct_rules(findings: &[Finding]) -> BTreeMap<String, (&Finding, Severity)> {
    let mut rules: BTreeMap<String, (&Finding, Severity)> = BTreeMap::new();
    for f in findings {
        rules
            .entry(rule_id(f))
            .and_modify(|(_, s)| *s = (*s).max(f.severity))
            .or_insert((f, f.severity));
    }
    rules
}

/// A `reportingDescriptor` for the driver's `rules` array.
fn rule_object(id: &str, f: &Finding, severity: Severity) -> Value {
    json!({
        "id": id,
        "name": f.rule,
        "shortDescription": { "text": format!("{}: {}", f.analyzer, f.rule) },
        "defaultConfiguration": { "level": level(severity) },
        "properties": {
            "tags": ["security", f.analyzer.as_str()],
            "security-severity": security_severity(severity),
        },
    })
}

/// The SARIF `result` of one finding in the artifact at `uri`.
fn result_object(f: &Finding, uri: &str, rule_index: &BTreeMap<&str, usize>) -> Value {
    let id = rule_id(f);
    let mut region = json!({ "startLine": 1, "byteOffset": f.offset });
    if let Some(len) = f.length {
        region["byteLength"] = json!(len);
    }
    json!({
        "ruleId": id,
        "ruleIndex": rule_index.get(id.as_str()).copied().unwrap_or(0),
        "level": level(f.severity),
        "message": { "text": f.message },
        "locations": [{
            "physicalLocation": {
                "artifactLocation": { "uri": uri },
                "region": region,
            }
        }],
        "partialFingerprints": {
            "streamscanFinding/v1": format!("{id}:{}", f.offset),
        },
        "properties": result_properties(f),
    })
}

/// The finding's severity and whichever optional details it carries.
fn result_properties(f: &Finding) -> Value {
    let mut properties = serde_json::Map::new();
    properties.insert("severity".into(), json!(f.severity));
    for (key, value) in [
        ("value", &f.value),
        ("component", &f.component),
        ("version", &f.version),
    ] {
        if let Some(v) = value {
            properties.insert(key.into(), json!(v));
        }
    }
    if let Some(count) = f.count {
        properties.insert("count".into(), json!(count));
    }
    if !f.vulnerabilities.is_empty() {
        properties.insert("vulnerabilities".into(), json!(f.vulnerabilities));
    }
    Value::Object(properties)
}
