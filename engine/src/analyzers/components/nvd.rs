//! NVD CVE JSON 2.0 (<https://nvd.nist.gov/developers/vulnerabilities>): the API's answer or a
//! feed file, both `{"vulnerabilities": [{"cve": {...}}, ...]}`. Each CVE's vulnerable
//! `configurations[].nodes[].cpeMatch[]` names a product (`cpe:2.3:a:<vendor>:<product>:<version>:…`)
//! and either one version or a range (`versionStart/EndIncluding/Excluding`).
//!
//! A CPE product maps to a package name by lowercasing it and writing `_` as `-`
//! (`linux_kernel` → `linux-kernel`, `dropbear_ssh` → `dropbear-ssh`), the names the components
//! table lists. Severity: CVSS v3.1, then v3.0, then v2 `baseSeverity`, else medium.

use std::cmp::Ordering;

use serde::Deserialize;

use super::vulndb::compare_versions;
use crate::Severity;

#[derive(Deserialize)]
pub(super) struct Feed {
    pub vulnerabilities: Vec<Item>,
}

#[derive(Deserialize)]
pub(super) struct Item {
    pub cve: Cve,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Cve {
    pub id: String,
    #[serde(default)]
    pub last_modified: Option<String>,
    #[serde(default)]
    descriptions: Vec<Description>,
    #[serde(default)]
    metrics: Metrics,
    #[serde(default)]
    configurations: Vec<Configuration>,
}

#[derive(Deserialize)]
struct Description {
    lang: String,
    value: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Metrics {
    #[serde(default)]
    cvss_metric_v31: Vec<Metric>,
    #[serde(default)]
    cvss_metric_v30: Vec<Metric>,
    #[serde(default)]
    cvss_metric_v2: Vec<Metric>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metric {
    #[serde(default)]
    cvss_data: CvssData,
    /// v2 keeps the label beside `cvssData`.
    #[serde(default)]
    base_severity: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct CvssData {
    #[serde(default)]
    base_severity: Option<String>,
}

#[derive(Deserialize)]
struct Configuration {
    #[serde(default)]
    nodes: Vec<Node>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Node {
    #[serde(default)]
    cpe_match: Vec<CpeMatch>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CpeMatch {
    vulnerable: bool,
    criteria: String,
    version_start_including: Option<String>,
    version_start_excluding: Option<String>,
    version_end_including: Option<String>,
    version_end_excluding: Option<String>,
}

/// Which versions of a package a CVE affects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Bounds {
    Exactly(String),
    /// Each end: the version and whether it is included; `None` is unbounded.
    Range {
        start: Option<(String, bool)>,
        end: Option<(String, bool)>,
    },
}

impl Bounds {
    pub fn affects(&self, version: &str) -> bool {
        match self {
            Bounds::Exactly(v) => compare_versions(version, v) == Ordering::Equal,
            Bounds::Range { start, end } => {
                let after_start = start.as_ref().is_none_or(|(v, inclusive)| {
                    let o = compare_versions(version, v);
                    o == Ordering::Greater || (*inclusive && o == Ordering::Equal)
                });
                let before_end = end.as_ref().is_none_or(|(v, inclusive)| {
                    let o = compare_versions(version, v);
                    o == Ordering::Less || (*inclusive && o == Ordering::Equal)
                });
                after_start && before_end
            }
        }
    }
}

impl Cve {
    /// The English description.
    pub fn summary(&self) -> Option<String> {
        self.descriptions
            .iter()
            .find(|d| d.lang == "en")
            .map(|d| d.value.clone())
    }

    pub fn severity(&self) -> Severity {
        let m = &self.metrics;
        m.cvss_metric_v31
            .iter()
            .chain(&m.cvss_metric_v30)
            .chain(&m.cvss_metric_v2)
            .find_map(|metric| {
                let label = metric
                    .cvss_data
                    .base_severity
                    .as_deref()
                    .or(metric.base_severity.as_deref())?;
                match label.to_ascii_uppercase().as_str() {
                    "CRITICAL" => Some(Severity::Critical),
                    "HIGH" => Some(Severity::High),
                    "MEDIUM" => Some(Severity::Medium),
                    "LOW" => Some(Severity::Low),
                    "NONE" => Some(Severity::Info),
                    _ => None,
                }
            })
            .unwrap_or(Severity::Medium)
    }

    /// (package, bounds) of every vulnerable CPE match.
    pub fn affected(&self) -> Vec<(String, Bounds)> {
        self.configurations
            .iter()
            .flat_map(|c| &c.nodes)
            .flat_map(|n| &n.cpe_match)
            .filter(|m| m.vulnerable)
            .filter_map(|m| {
                let parts: Vec<&str> = m.criteria.split(':').collect();
                let (product, version) = (*parts.get(4)?, *parts.get(5)?);
                Some((product.to_ascii_lowercase().replace('_', "-"), m.bounds(version)?))
            })
            .collect()
    }
}

impl CpeMatch {
    fn bounds(&self, version: &str) -> Option<Bounds> {
        let start = self
            .version_start_including
            .clone()
            .map(|v| (v, true))
            .or_else(|| self.version_start_excluding.clone().map(|v| (v, false)));
        let end = self
            .version_end_including
            .clone()
            .map(|v| (v, true))
            .or_else(|| self.version_end_excluding.clone().map(|v| (v, false)));
        match (version, &start, &end) {
            // "-": not applicable; "*" with no range: every version, too broad to report.
            ("-", ..) | ("*", None, None) | ("", ..) => None,
            ("*", ..) => Some(Bounds::Range { start, end }),
            (exact, ..) => Some(Bounds::Exactly(exact.replace('\\', ""))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_honour_inclusive_and_exclusive_ends() {
        let r = Bounds::Range {
            start: Some(("1.0.1".into(), false)),
            end: Some(("1.0.2".into(), true)),
        };
        assert!(!r.affects("1.0.1"), "start excluded");
        assert!(r.affects("1.0.1f"));
        assert!(r.affects("1.0.2"), "end included");
        assert!(!r.affects("1.0.2a"));
        let open = Bounds::Range {
            start: None,
            end: Some(("3.40.1".into(), false)),
        };
        assert!(open.affects("3.39.4") && !open.affects("3.40.1"));
        assert!(Bounds::Exactly("7.4".into()).affects("7.4"));
    }
}
