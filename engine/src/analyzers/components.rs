//! `components`: version strings of widely used components as they appear in binaries
//! (`OpenSSL 1.0.1f 6 Jan 2014`, `BusyBox v1.21.1`, `deflate 1.2.8 Copyright`,
//! `SSH-2.0-OpenSSH_7.4`, `U-Boot 2016.01`, `Linux version 4.4.0`, ...), matched against a
//! vulnerability database in OSV format ([`vulndb`]) to report CVE/GHSA ids with severity.
//!
//! Each pattern is keyword-gated and bounded like the secret rules (see [`super::anchored`]), so
//! a version string straddling a chunk boundary is seen once. Occurrences are deduplicated per
//! (component, version) with a count and the first offset, in a bounded table, and reported at
//! `finish`; a finding's severity is that of its most severe vulnerability (`info` when none).

mod nvd;
pub mod vulndb;

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use streamscan_api::AnalyzerName;

use self::vulndb::VulnDb;
use super::anchored::{Candidate, Resolver, RuleSet, RuleSpec};
use crate::{Analyzer, AnalyzerError, Finding, FindingSink, Severity, Window};

/// Distinct (component, version) pairs tracked; more are counted as dropped.
pub const MAX_DISTINCT: usize = 1024;

/// A component: display name, and the OSV package names (lowercase) it goes by.
struct Component {
    name: &'static str,
    packages: &'static [&'static str],
}

impl Component {
    const fn new(name: &'static str, packages: &'static [&'static str]) -> Self {
        Component { name, packages }
    }
}

const COMPONENTS: &[Component] = &[
    Component::new("OpenSSL", &["openssl"]),
    Component::new("BusyBox", &["busybox"]),
    Component::new("zlib", &["zlib", "zlib1g"]),
    Component::new("curl", &["curl", "libcurl"]),
    Component::new("libpng", &["libpng", "libpng1.6", "libpng12"]),
    Component::new("SQLite", &["sqlite", "sqlite3"]),
    Component::new("Linux kernel", &["linux", "kernel", "linux-kernel"]),
    Component::new("OpenSSH", &["openssh", "openssh-portable"]),
    Component::new("Dropbear", &["dropbear", "dropbear-ssh"]),
    Component::new("U-Boot", &["u-boot", "uboot"]),
    Component::new("dnsmasq", &["dnsmasq"]),
    Component::new("nginx", &["nginx"]),
    Component::new("glibc", &["glibc", "eglibc"]),
    Component::new("lighttpd", &["lighttpd"]),
];

/// Rules: (component index, spec). The named group `k` is the version.
fn rules() -> Vec<(usize, RuleSpec)> {
    vec![
        (
            0,
            RuleSpec {
                id: "openssl",
                keywords: &["OpenSSL "],
                pattern: r"OpenSSL (?P<k>[0-9]\.[0-9]{1,2}\.[0-9]{1,2}[a-z]{0,2})\b",
            },
        ),
        (
            1,
            RuleSpec {
                id: "busybox",
                keywords: &["BusyBox v"],
                pattern: r"BusyBox v(?P<k>[0-9]\.[0-9]{1,2}(?:\.[0-9]{1,2})?)\b",
            },
        ),
        (
            2,
            RuleSpec {
                id: "zlib",
                keywords: &["deflate 1.", "inflate 1."],
                pattern: r"(?:de|in)flate (?P<k>1\.[0-9]{1,2}(?:\.[0-9]{1,2}){1,2}) Copyright",
            },
        ),
        (
            3,
            RuleSpec {
                id: "curl",
                keywords: &["curl/"],
                pattern: r"curl/(?P<k>[0-9]{1,2}\.[0-9]{1,2}(?:\.[0-9]{1,2})?)\b",
            },
        ),
        (
            4,
            RuleSpec {
                id: "libpng",
                keywords: &["libpng version "],
                pattern: r"libpng version (?P<k>1\.[0-9]{1,2}\.[0-9]{1,2})\b",
            },
        ),
        (
            5,
            RuleSpec {
                id: "sqlite",
                keywords: &["SQLite version "],
                pattern: r"SQLite version (?P<k>3\.[0-9]{1,2}\.[0-9]{1,2}(?:\.[0-9]{1,2})?)\b",
            },
        ),
        (
            6,
            RuleSpec {
                id: "linux",
                keywords: &["Linux version "],
                pattern: r"Linux version (?P<k>[2-6]\.[0-9]{1,2}(?:\.[0-9]{1,3})?)(?:[^0-9.]|$)",
            },
        ),
        (
            7,
            RuleSpec {
                id: "openssh",
                keywords: &["OpenSSH_"],
                pattern: r"OpenSSH_(?P<k>[0-9]{1,2}\.[0-9]{1,2}(?:p[0-9]{1,2})?)\b",
            },
        ),
        (
            8,
            RuleSpec {
                id: "dropbear",
                keywords: &["dropbear_"],
                pattern: r"dropbear_(?P<k>(?:20[0-9]{2}|0)\.[0-9]{1,3})\b",
            },
        ),
        (
            9,
            RuleSpec {
                id: "u-boot",
                keywords: &["U-Boot "],
                pattern: r"U-Boot (?:SPL )?(?P<k>20[0-9]{2}\.[0-9]{2}(?:\.[0-9]{1,2})?(?:-rc[0-9]{1,2})?)\b",
            },
        ),
        (
            10,
            RuleSpec {
                id: "dnsmasq",
                keywords: &["dnsmasq-", "Dnsmasq version "],
                pattern: r"(?:dnsmasq-|Dnsmasq version )(?P<k>2\.[0-9]{1,3})\b",
            },
        ),
        (
            11,
            RuleSpec {
                id: "nginx",
                keywords: &["nginx/"],
                pattern: r"nginx/(?P<k>[0-9]\.[0-9]{1,2}\.[0-9]{1,2})\b",
            },
        ),
        (
            12,
            RuleSpec {
                id: "glibc",
                keywords: &["GNU C Library"],
                pattern: r"GNU C Library [^\n\x00]{0,80}?version (?P<k>2\.[0-9]{1,2})\b",
            },
        ),
        (
            13,
            RuleSpec {
                id: "lighttpd",
                keywords: &["lighttpd/"],
                pattern: r"lighttpd/(?P<k>1\.[0-9]{1,2}\.[0-9]{1,2})\b",
            },
        ),
    ]
}

fn known_package(name: &str) -> bool {
    COMPONENTS.iter().any(|c| c.packages.contains(&name))
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Seen {
    component: usize,
    version: String,
    first: u64,
    length: u64,
    count: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct State {
    resolved: u64,
    seen: Vec<Seen>,
    dropped: u64,
}

pub struct ComponentsAnalyzer {
    rules: RuleSet,
    rule_component: Vec<usize>,
    db: VulnDb,
    resolver: Resolver,
    seen: HashMap<(usize, String), Seen>,
    dropped: u64,
    candidates: Vec<Candidate>,
    accepted: Vec<Candidate>,
}

impl ComponentsAnalyzer {
    /// With the OSV or NVD CVE JSON 2.0 files or directories in `vuln_db`, or the built-in curated
    /// set when empty.
    pub fn new(vuln_db: &[PathBuf]) -> Result<Self, AnalyzerError> {
        let fatal = |message: String| AnalyzerError::Fatal {
            analyzer: AnalyzerName::Components,
            message,
        };
        let db = if vuln_db.is_empty() {
            VulnDb::built_in(&known_package)
        } else {
            VulnDb::load(vuln_db, &known_package)
        }
        .map_err(|e| fatal(format!("vulnerability database: {e}")))?;
        let (rule_component, specs): (Vec<usize>, Vec<RuleSpec>) = rules().into_iter().unzip();
        let rules = RuleSet::new(&specs).map_err(|e| fatal(format!("component rules: {e}")))?;
        Ok(ComponentsAnalyzer {
            rules,
            rule_component,
            db,
            resolver: Resolver::default(),
            seen: HashMap::new(),
            dropped: 0,
            candidates: Vec::new(),
            accepted: Vec::new(),
        })
    }

    fn finding(&self, s: &Seen) -> Finding {
        let c = &COMPONENTS[s.component];
        let vulns = self.db.lookup(c.packages, &s.version);
        let severity = vulns.iter().map(|v| v.severity).max().unwrap_or(Severity::Info);
        let mut message = format!(
            "{} {} (first at offset {}, seen {} time(s))",
            c.name, s.version, s.first, s.count
        );
        if vulns.is_empty() {
            message.push_str(": no known vulnerabilities in the database");
        } else {
            let ids: Vec<String> = vulns
                .iter()
                .map(|v| format!("{} ({})", v.id, severity_word(v.severity)))
                .collect();
            message.push_str(&format!(
                ": {} known vulnerabilit{}: {}",
                vulns.len(),
                if vulns.len() == 1 { "y" } else { "ies" },
                ids.join(", ")
            ));
        }
        let rule = if vulns.is_empty() {
            "component"
        } else {
            "vulnerable-component"
        };
        let mut f = Finding::new(AnalyzerName::Components, rule, severity, s.first, message);
        f.length = Some(s.length);
        f.value = Some(format!("{} {}", c.name, s.version));
        f.count = Some(s.count);
        f.component = Some(c.name.to_string());
        f.version = Some(s.version.clone());
        f.vulnerabilities = vulns;
        f
    }
}

/// Severity as spelled in reports.
fn severity_word(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

impl Analyzer for ComponentsAnalyzer {
    fn name(&self) -> AnalyzerName {
        AnalyzerName::Components
    }

    fn overlap(&self) -> usize {
        self.rules.overlap()
    }

    fn update(&mut self, window: &Window<'_>, _sink: &mut dyn FindingSink) -> Result<(), AnalyzerError> {
        let len = self.rules.max_len();
        let view = self.resolver.view(window, self.rules.overlap(), len, len + 1);
        self.candidates.clear();
        self.accepted.clear();
        self.rules.candidates(view.hay, view.from, &mut self.candidates);
        self.resolver.accept(&view, &mut self.candidates, &mut self.accepted);
        for c in &self.accepted {
            let component = self.rule_component[c.rule];
            let version = String::from_utf8_lossy(&view.hay[c.key_start..c.key_end]).into_owned();
            let offset = view.offset + c.start as u64;
            if let Some(s) = self.seen.get_mut(&(component, version.clone())) {
                s.count += 1;
            } else if self.seen.len() >= MAX_DISTINCT {
                self.dropped += 1;
            } else {
                self.seen.insert(
                    (component, version.clone()),
                    Seen {
                        component,
                        version,
                        first: offset,
                        length: (c.end - c.start) as u64,
                        count: 1,
                    },
                );
            }
        }
        Ok(())
    }

    fn finish(&mut self, sink: &mut dyn FindingSink) -> Result<serde_json::Value, AnalyzerError> {
        let mut seen: Vec<&Seen> = self.seen.values().collect();
        seen.sort_by_key(|s| (s.first, s.component));
        let mut vulnerable = 0;
        for s in seen {
            let f = self.finding(s);
            if !f.vulnerabilities.is_empty() {
                vulnerable += 1;
            }
            sink.push(f);
        }
        Ok(serde_json::json!({
            "components": self.seen.len(),
            "vulnerable": vulnerable,
            "dropped": self.dropped,
            "database": {
                "records": self.db.records(),
                "kept": self.db.len(),
                "sources": self.db.sources(),
                "newestModified": self.db.newest_modified(),
            },
        }))
    }

    fn checkpoint(&self) -> Result<serde_json::Value, AnalyzerError> {
        let mut seen: Vec<Seen> = self.seen.values().cloned().collect();
        seen.sort_by_key(|s| (s.first, s.component));
        serde_json::to_value(State {
            resolved: self.resolver.resolved,
            seen,
            dropped: self.dropped,
        })
        .map_err(|e| AnalyzerError::Checkpoint {
            analyzer: AnalyzerName::Components,
            message: e.to_string(),
        })
    }

    fn restore(&mut self, state: serde_json::Value) -> Result<(), AnalyzerError> {
        let state: State = serde_json::from_value(state).map_err(|e| AnalyzerError::Checkpoint {
            analyzer: AnalyzerName::Components,
            message: e.to_string(),
        })?;
        if let Some(bad) = state.seen.iter().find(|s| s.component >= COMPONENTS.len()) {
            return Err(AnalyzerError::Checkpoint {
                analyzer: AnalyzerName::Components,
                message: format!("unknown component index {}", bad.component),
            });
        }
        self.resolver.resolved = state.resolved;
        self.seen = state
            .seen
            .into_iter()
            .take(MAX_DISTINCT)
            .map(|s| ((s.component, s.version.clone()), s))
            .collect();
        self.dropped = state.dropped;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
