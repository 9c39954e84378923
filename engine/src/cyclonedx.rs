//! CycloneDX 1.5 JSON: the software bill of materials of what the `components` analyzer found.
//!
//! One `library` component per (component, version), with the evidence where it was seen (first
//! offset, occurrences) and a `pkg:generic` purl; the analysed file is the BOM's subject with its
//! SHA-256; known vulnerabilities of each version are listed in `vulnerabilities`, each
//! affecting its component by `bom-ref`. The serial number is derived from the file's digest, so
//! the same file gives the same BOM identity.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use streamscan_api::AnalyzerName;

use super::report::Report;
use super::sarif::percent_encode;
use super::{Finding, Severity};

pub const SPEC_VERSION: &str = "1.5";

/// The CycloneDX document of `report`.
pub fn to_cyclonedx(report: &Report) -> Value {
    let found: Vec<&Finding> = report
        .findings
        .iter()
        .filter(|f| f.analyzer == AnalyzerName::Components && f.component.is_some())
        .collect();
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": serial_number(&identity(report)),
        "version": 1,
        "metadata": metadata(report),
        "components": found.iter().map(|f| component(f)).collect::<Vec<_>>(),
        "vulnerabilities": vulnerabilities(&found),
    })
}

/// What the BOM's identity derives from: the file's SHA-256, else (the digest analyzer did not
/// run) a hash of the source and the scan's start.
fn identity(report: &Report) -> String {
    match &report.digests.sha256 {
        Some(sha) => sha.clone(),
        None => {
            use sha2::Digest;
            let seed = format!("{}\n{}", report.source, report.started_at);
            crate::hex::encode(&sha2::Sha256::digest(seed.as_bytes()))
        }
    }
}

fn metadata(report: &Report) -> Value {
    let name = report.source.rsplit('/').next().unwrap_or(&report.source);
    let hashes: Vec<Value> = report
        .digests
        .sha256
        .iter()
        .map(|sha| json!({"alg": "SHA-256", "content": sha}))
        .collect();
    json!({
        "timestamp": report.started_at.to_string(),
        "tools": {"components": [{
            "type": "application",
            "name": report.tool.name,
            "version": report.tool.version,
        }]},
        "component": {
            "type": "file",
            "bom-ref": "subject",
            "name": if name.is_empty() { "stdin" } else { name },
            "hashes": hashes,
        },
    })
}

fn bom_ref(f: &Finding) -> String {
    format!(
        "component:{}@{}",
        f.component.as_deref().unwrap_or_default(),
        f.version.as_deref().unwrap_or_default()
    )
}

fn component(f: &Finding) -> Value {
    let name = f.component.as_deref().unwrap_or_default();
    let version = f.version.as_deref().unwrap_or_default();
    let purl_name: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    // 1.5 occurrences hold a location only (offsets came in 1.6): the offset also goes in a property.
    let occurrence = json!({"location": format!("offset {:#x}", f.offset)});
    json!({
        "type": "library",
        "bom-ref": bom_ref(f),
        "name": name,
        "version": version,
        "purl": format!("pkg:generic/{purl_name}@{}", percent_encode(version, b"")),
        "evidence": {
            "identity": {
                "field": "version",
                "confidence": 1,
                "methods": [{"technique": "binary-analysis", "confidence": 1, "value": f.value.as_deref().unwrap_or(version)}],
            },
            "occurrences": [occurrence],
        },
        "properties": [
            {"name": "streamscan:offset", "value": f.offset.to_string()},
            {"name": "streamscan:occurrences", "value": f.count.unwrap_or(1).to_string()},
            {"name": "streamscan:rule", "value": f.rule},
        ],
    })
}

/// One known vulnerability and the components it was reported for.
struct Known<'a> {
    severity: Severity,
    summary: Option<&'a str>,
    refs: Vec<String>,
    aliases: Vec<&'a str>,
}

/// Each known vulnerability once, affecting every component version it was reported for.
fn vulnerabilities(found: &[&Finding]) -> Vec<Value> {
    let mut by_id: BTreeMap<&str, Known> = BTreeMap::new();
    for f in found {
        for v in &f.vulnerabilities {
            let entry = by_id.entry(v.id.as_str()).or_insert_with(|| Known {
                severity: v.severity,
                summary: v.summary.as_deref(),
                refs: Vec::new(),
                aliases: Vec::new(),
            });
            entry.refs.push(bom_ref(f));
            entry.aliases.extend(v.aliases.iter().map(String::as_str));
        }
    }
    by_id
        .into_iter()
        .map(
            |(
                id,
                Known {
                    severity,
                    summary,
                    refs,
                    aliases,
                },
            )| {
                let mut v = json!({
                    "bom-ref": format!("vulnerability:{id}"),
                    "id": id,
                    "source": {"name": "OSV", "url": format!("https://osv.dev/vulnerability/{id}")},
                    "ratings": [{"severity": rating(severity), "method": "other"}],
                    "affects": refs.iter().map(|r| json!({"ref": r})).collect::<Vec<_>>(),
                });
                if let Some(summary) = summary {
                    v["description"] = json!(summary);
                }
                let mut aliases: Vec<&str> = aliases;
                aliases.sort_unstable();
                aliases.dedup();
                if !aliases.is_empty() {
                    v["references"] = json!(
                        aliases
                            .iter()
                            .map(|a| json!({"id": a, "source": {"name": "OSV"}}))
                            .collect::<Vec<_>>()
                    );
                }
                v
            },
        )
        .collect()
}

fn rating(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "critical",
        Severity::High => "high",
        Severity::Medium => "medium",
        Severity::Low => "low",
        Severity::Info => "info",
    }
}

/// `urn:uuid:` of a version-4-shaped UUID made from a SHA-256 (hex), so a BOM of the same file
/// has the same identity.
fn serial_number(sha256_hex: &str) -> String {
    let mut hex: Vec<u8> = sha256_hex
        .bytes()
        .filter(u8::is_ascii_hexdigit)
        .map(|b| b.to_ascii_lowercase())
        .take(32)
        .collect();
    hex.resize(32, b'0');
    hex[12] = b'4';
    // The variant nibble is 8, 9, a or b: keep the digest's two low bits.
    let nibble = char::from(hex[16]).to_digit(16).unwrap_or(0);
    hex[16] = b"89ab"[(nibble & 3) as usize];
    let h = String::from_utf8_lossy(&hex).into_owned();
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Vulnerability;

    fn found(name: &str, version: &str, vulns: &[(&str, Severity)]) -> Finding {
        let mut f = Finding::new(
            AnalyzerName::Components,
            "version-string",
            Severity::High,
            0x1ac2d8,
            "found",
        );
        f.component = Some(name.into());
        f.version = Some(version.into());
        f.value = Some(format!("{name} {version}"));
        f.count = Some(3);
        f.vulnerabilities = vulns
            .iter()
            .map(|(id, severity)| Vulnerability {
                id: (*id).into(),
                aliases: vec!["CVE-2099-0001".into()],
                severity: *severity,
                summary: Some("a flaw".into()),
            })
            .collect();
        f
    }

    #[test]
    fn serial_numbers_are_uuids_derived_from_the_digest() {
        let a = serial_number("9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08");
        assert_eq!(a, "urn:uuid:9f86d081-884c-4d65-9a2f-eaa0c55ad015");
        assert_eq!(serial_number(""), "urn:uuid:00000000-0000-4000-8000-000000000000");
    }

    #[test]
    fn components_vulnerabilities_and_evidence() {
        let busybox = found("BusyBox", "1.35.0", &[("OSV-1", Severity::High)]);
        let openssl = found(
            "OpenSSL",
            "3.0.2 beta",
            &[("OSV-1", Severity::High), ("OSV-2", Severity::Critical)],
        );
        let comps = [&busybox, &openssl];
        let c = component(&openssl);
        assert_eq!(c["purl"], "pkg:generic/openssl@3.0.2%20beta");
        assert_eq!(c["evidence"]["occurrences"][0]["location"], "offset 0x1ac2d8");
        let vulns = vulnerabilities(&comps);
        assert_eq!(vulns.len(), 2, "each vulnerability once");
        assert_eq!(
            vulns[0]["affects"].as_array().map(Vec::len),
            Some(2),
            "OSV-1 affects both"
        );
        assert_eq!(vulns[1]["ratings"][0]["severity"], "critical");
        assert_eq!(vulns[0]["references"][0]["id"], "CVE-2099-0001");
    }
}
