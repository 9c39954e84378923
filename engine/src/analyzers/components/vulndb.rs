//! A vulnerability database in OSV format (<https://ossf.github.io/osv-schema/>), reduced to the
//! packages `components` can recognise.
//!
//! Read from OSV JSON files (one record, or an array of records, per file) or directories of
//! them (searched recursively), or the small curated set in `engine/vulndb/` built in. Only
//! records affecting a known component are kept, so a full OSV export loads in bounded memory.
//! Matching: `affected[].package.name` (case-insensitive, any ecosystem) against the
//! component's names; `versions` lists, and `ranges` of type ECOSYSTEM or SEMVER evaluated per
//! the OSV spec (`introduced`, `fixed`, `last_affected`, `limit`); GIT ranges are ignored.
//! Severity: `database_specific.severity` (GHSA style: LOW, MODERATE, HIGH, CRITICAL), the same
//! under `affected[]`, then a CVSS v3 vector in `severity[]` (base score computed), else medium.
//!
//! NVD CVE JSON 2.0 files (the API's answer or a feed) load beside OSV ones ([`super::nvd`]). The
//! database remembers its sources and its newest record's modification time, which the report
//! states, so a reader sees how old the data behind "no known vulnerabilities" is.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::nvd::{self, Bounds};
use crate::{Severity, Vulnerability};

/// The curated demo set, built in.
const BUILT_IN: &[(&str, &str)] = &[
    ("busybox.json", include_str!("../../../vulndb/busybox.json")),
    ("curl.json", include_str!("../../../vulndb/curl.json")),
    ("dnsmasq.json", include_str!("../../../vulndb/dnsmasq.json")),
    ("dropbear.json", include_str!("../../../vulndb/dropbear.json")),
    ("glibc.json", include_str!("../../../vulndb/glibc.json")),
    ("libpng.json", include_str!("../../../vulndb/libpng.json")),
    ("linux.json", include_str!("../../../vulndb/linux.json")),
    ("nginx.json", include_str!("../../../vulndb/nginx.json")),
    ("openssh.json", include_str!("../../../vulndb/openssh.json")),
    ("openssl.json", include_str!("../../../vulndb/openssl.json")),
    ("sqlite.json", include_str!("../../../vulndb/sqlite.json")),
    ("u-boot.json", include_str!("../../../vulndb/u-boot.json")),
    ("zlib.json", include_str!("../../../vulndb/zlib.json")),
];

/// Directory depth searched under a `--vuln-db` directory.
const MAX_DEPTH: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum VulnDbError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not OSV JSON: {message}")]
    Json { path: PathBuf, message: String },
}

#[derive(Deserialize)]
struct Osv {
    id: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    severity: Vec<OsvSeverity>,
    #[serde(default)]
    affected: Vec<Affected>,
    #[serde(default)]
    database_specific: Option<serde_json::Value>,
    #[serde(default)]
    modified: Option<String>,
}

#[derive(Deserialize)]
struct OsvSeverity {
    #[serde(rename = "type")]
    kind: String,
    score: String,
}

#[derive(Deserialize)]
struct Affected {
    #[serde(default)]
    package: Option<Package>,
    #[serde(default)]
    ranges: Vec<Range>,
    #[serde(default)]
    versions: Vec<String>,
    #[serde(default)]
    database_specific: Option<serde_json::Value>,
    #[serde(default)]
    ecosystem_specific: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Package {
    name: String,
}

#[derive(Deserialize, Clone, Debug)]
struct Range {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    events: Vec<Event>,
}

#[derive(Deserialize, Clone, Debug, Default)]
struct Event {
    introduced: Option<String>,
    fixed: Option<String>,
    last_affected: Option<String>,
    limit: Option<String>,
}

/// What is kept of one affected package of one record.
#[derive(Clone, Debug)]
struct Entry {
    vuln: usize,
    ranges: Vec<Range>,
    versions: Vec<String>,
    /// NVD CPE matches.
    bounds: Vec<Bounds>,
}

#[derive(Default, Debug)]
pub struct VulnDb {
    vulns: Vec<Vulnerability>,
    /// Lowercase package name -> entries.
    by_package: HashMap<String, Vec<Entry>>,
    records: usize,
    /// What was loaded: `built-in`, `osv:<path>`, `nvd:<path>`.
    sources: Vec<String>,
    /// The newest record's modification time (`YYYY-MM-DDTHH:MM:SSZ`), when records carry one.
    newest: Option<String>,
}

impl VulnDb {
    /// The built-in curated set.
    pub fn built_in(keep: &dyn Fn(&str) -> bool) -> Result<Self, VulnDbError> {
        let mut db = VulnDb::default();
        for (name, text) in BUILT_IN {
            db.add_text(Path::new(name), text, keep)?;
        }
        db.sources = vec!["built-in (curated demo set)".into()];
        Ok(db)
    }

    /// Loads files, or directories of `*.json` files, keeping packages `keep` accepts.
    pub fn load(paths: &[PathBuf], keep: &dyn Fn(&str) -> bool) -> Result<Self, VulnDbError> {
        let mut db = VulnDb::default();
        for path in paths {
            let mut kinds = BTreeSet::new();
            db.add_path(path, keep, 0, &mut kinds)?;
            let kinds: Vec<&str> = kinds.into_iter().collect();
            db.sources.push(format!("{}:{}", kinds.join("+"), path.display()));
        }
        Ok(db)
    }

    /// Records read (including ones about other packages).
    pub fn records(&self) -> usize {
        self.records
    }

    /// Where the records came from, one entry per file or directory loaded.
    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    /// The newest record's modification time (UTC, RFC 3339 to the second).
    pub fn newest_modified(&self) -> Option<&str> {
        self.newest.as_deref()
    }

    /// Vulnerabilities kept.
    pub fn len(&self) -> usize {
        self.vulns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vulns.is_empty()
    }

    fn add_path(
        &mut self,
        path: &Path,
        keep: &dyn Fn(&str) -> bool,
        depth: usize,
        kinds: &mut BTreeSet<&'static str>,
    ) -> Result<(), VulnDbError> {
        let io = |source| VulnDbError::Io {
            path: path.to_path_buf(),
            source,
        };
        if path.is_dir() {
            if depth > MAX_DEPTH {
                return Ok(());
            }
            let mut children: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(io)?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()
                .map_err(io)?;
            children.sort();
            for child in children {
                if child.is_dir() || child.extension().is_some_and(|e| e == "json") {
                    self.add_path(&child, keep, depth + 1, kinds)?;
                }
            }
            return Ok(());
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        kinds.insert(self.add_text(path, &text, keep)?);
        Ok(())
    }

    /// Adds one file's records; says which format it was (`osv` or `nvd`).
    fn add_text(&mut self, path: &Path, text: &str, keep: &dyn Fn(&str) -> bool) -> Result<&'static str, VulnDbError> {
        let bad = |message: String| VulnDbError::Json {
            path: path.to_path_buf(),
            message,
        };
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if value.get("vulnerabilities").is_some_and(serde_json::Value::is_array) {
            let feed: nvd::Feed = serde_json::from_value(value).map_err(|e| bad(format!("NVD CVE JSON 2.0: {e}")))?;
            for item in feed.vulnerabilities {
                self.add_cve(item.cve, keep);
            }
            return Ok("nvd");
        }
        let records = match value {
            serde_json::Value::Array(items) => items,
            object @ serde_json::Value::Object(_) => vec![object],
            _ => return Err(bad("expected an OSV record (object) or an array of them".into())),
        };
        for (i, record) in records.into_iter().enumerate() {
            let osv: Osv = serde_json::from_value(record).map_err(|e| bad(format!("record {i}: {e}")))?;
            self.add_record(osv, keep);
        }
        Ok("osv")
    }

    fn saw_modified(&mut self, modified: Option<&str>) {
        // Both formats write `YYYY-MM-DDTHH:MM:SS…`; the first 19 characters order as time does.
        let Some(stamp) = modified.and_then(|m| m.get(..19)) else {
            return;
        };
        if self
            .newest
            .as_deref()
            .is_none_or(|n| n.get(..19).is_some_and(|n| n < stamp))
        {
            self.newest = Some(format!("{stamp}Z"));
        }
    }

    fn add_cve(&mut self, cve: nvd::Cve, keep: &dyn Fn(&str) -> bool) {
        self.records += 1;
        self.saw_modified(cve.last_modified.as_deref());
        let mut by_name: HashMap<String, Vec<Bounds>> = HashMap::new();
        for (name, bounds) in cve.affected() {
            if keep(&name) {
                by_name.entry(name).or_default().push(bounds);
            }
        }
        if by_name.is_empty() {
            return;
        }
        let vuln = self.vulns.len();
        self.vulns.push(Vulnerability {
            severity: cve.severity(),
            summary: cve.summary(),
            id: cve.id,
            aliases: Vec::new(),
        });
        for (name, bounds) in by_name {
            self.by_package.entry(name).or_default().push(Entry {
                vuln,
                ranges: Vec::new(),
                versions: Vec::new(),
                bounds,
            });
        }
    }

    fn add_record(&mut self, osv: Osv, keep: &dyn Fn(&str) -> bool) {
        self.records += 1;
        self.saw_modified(osv.modified.as_deref());
        let mut entries = Vec::new();
        let mut affected_severity = None;
        for a in osv.affected {
            let Some(package) = a.package else { continue };
            let name = package.name.to_ascii_lowercase();
            if !keep(&name) {
                continue;
            }
            affected_severity = affected_severity
                .or_else(|| label_severity(a.database_specific.as_ref()))
                .or_else(|| label_severity(a.ecosystem_specific.as_ref()));
            let ranges = a
                .ranges
                .into_iter()
                .filter(|r| r.kind == "ECOSYSTEM" || r.kind == "SEMVER")
                .collect();
            entries.push((name, ranges, a.versions));
        }
        if entries.is_empty() {
            return;
        }
        let severity = label_severity(osv.database_specific.as_ref())
            .or(affected_severity)
            .or_else(|| {
                osv.severity
                    .iter()
                    .filter(|s| s.kind.starts_with("CVSS_V3"))
                    .find_map(|s| cvss3_base_score(&s.score))
                    .map(score_severity)
            })
            .unwrap_or(Severity::Medium);
        let vuln = self.vulns.len();
        self.vulns.push(Vulnerability {
            id: osv.id,
            aliases: osv.aliases,
            severity,
            summary: osv.summary,
        });
        for (name, ranges, versions) in entries {
            self.by_package.entry(name).or_default().push(Entry {
                vuln,
                ranges,
                versions,
                bounds: Vec::new(),
            });
        }
    }

    /// Vulnerabilities of `version` of any of `packages` (lowercase names), most severe first.
    pub fn lookup(&self, packages: &[&str], version: &str) -> Vec<Vulnerability> {
        let mut hits: Vec<usize> = Vec::new();
        for package in packages {
            for entry in self.by_package.get(*package).into_iter().flatten() {
                let affected = entry.versions.iter().any(|v| v == version)
                    || entry.ranges.iter().any(|r| range_affects(&r.events, version))
                    || entry.bounds.iter().any(|b| b.affects(version));
                if affected && !hits.contains(&entry.vuln) {
                    hits.push(entry.vuln);
                }
            }
        }
        let mut out: Vec<Vulnerability> = hits.into_iter().map(|i| self.vulns[i].clone()).collect();
        out.sort_by(|a, b| b.severity.cmp(&a.severity).then_with(|| a.id.cmp(&b.id)));
        out
    }
}

fn label_severity(v: Option<&serde_json::Value>) -> Option<Severity> {
    let label = v?.get("severity")?.as_str()?;
    match label.to_ascii_uppercase().as_str() {
        "CRITICAL" => Some(Severity::Critical),
        "HIGH" | "IMPORTANT" => Some(Severity::High),
        "MODERATE" | "MEDIUM" => Some(Severity::Medium),
        "LOW" => Some(Severity::Low),
        "NONE" | "NEGLIGIBLE" | "UNIMPORTANT" => Some(Severity::Info),
        _ => None,
    }
}

fn score_severity(score: f64) -> Severity {
    match score {
        s if s >= 9.0 => Severity::Critical,
        s if s >= 7.0 => Severity::High,
        s if s >= 4.0 => Severity::Medium,
        s if s > 0.0 => Severity::Low,
        _ => Severity::Info,
    }
}

/// CVSS v3.x base score of a vector such as `CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H`.
pub fn cvss3_base_score(vector: &str) -> Option<f64> {
    let mut m: HashMap<&str, &str> = HashMap::new();
    for part in vector.split('/').skip(1) {
        let (k, v) = part.split_once(':')?;
        m.insert(k, v);
    }
    let changed = match *m.get("S")? {
        "U" => false,
        "C" => true,
        _ => return None,
    };
    let av = match *m.get("AV")? {
        "N" => 0.85,
        "A" => 0.62,
        "L" => 0.55,
        "P" => 0.2,
        _ => return None,
    };
    let ac = match *m.get("AC")? {
        "L" => 0.77,
        "H" => 0.44,
        _ => return None,
    };
    let pr = match (*m.get("PR")?, changed) {
        ("N", _) => 0.85,
        ("L", false) => 0.62,
        ("L", true) => 0.68,
        ("H", false) => 0.27,
        ("H", true) => 0.5,
        _ => return None,
    };
    let ui = match *m.get("UI")? {
        "N" => 0.85,
        "R" => 0.62,
        _ => return None,
    };
    let cia = |k: &str| -> Option<f64> {
        match *m.get(k)? {
            "H" => Some(0.56),
            "L" => Some(0.22),
            "N" => Some(0.0),
            _ => None,
        }
    };
    let iss = 1.0 - (1.0 - cia("C")?) * (1.0 - cia("I")?) * (1.0 - cia("A")?);
    let impact = if changed {
        7.52 * (iss - 0.029) - 3.25 * (iss - 0.02f64).powi(15)
    } else {
        6.42 * iss
    };
    if impact <= 0.0 {
        return Some(0.0);
    }
    let exploitability = 8.22 * av * ac * pr * ui;
    let raw = if changed {
        1.08 * (impact + exploitability)
    } else {
        impact + exploitability
    };
    // CVSS "round up" to one decimal, done on integers to avoid float artefacts.
    let int = (raw.min(10.0) * 100_000.0).round() as i64;
    Some(if int % 10_000 == 0 {
        int as f64 / 100_000.0
    } else {
        ((int / 10_000) + 1) as f64 / 10.0
    })
}

#[derive(PartialEq, Eq, Debug)]
enum Token<'a> {
    Num(u64),
    Alpha(&'a str),
}

fn tokens(v: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let bytes = v.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        if bytes[i].is_ascii_digit() {
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            out.push(Token::Num(v[start..i].parse().unwrap_or(u64::MAX)));
        } else if bytes[i].is_ascii_alphabetic() {
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            out.push(Token::Alpha(&v[start..i]));
        } else {
            i += 1;
        }
    }
    out
}

fn is_prerelease(t: Option<&Token<'_>>) -> bool {
    matches!(t, Some(Token::Alpha(a)) if ["rc", "alpha", "beta", "pre", "dev"]
        .iter()
        .any(|p| a.eq_ignore_ascii_case(p)))
}

/// Compares versions as found in binaries and in OSV ranges: numbers numerically, letter runs
/// alphabetically (`1.0.1f < 1.0.1g`, `1.0.2k < 1.0.2zd`), a trailing suffix sorts after the
/// bare version (`7.4 < 7.4p1`, `1.0.1 < 1.0.1a`) except a pre-release (`2016.01-rc1 < 2016.01`).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (ta, tb) = (tokens(a), tokens(b));
    for (x, y) in ta.iter().zip(&tb) {
        let o = match (x, y) {
            (Token::Num(x), Token::Num(y)) => x.cmp(y),
            (Token::Alpha(x), Token::Alpha(y)) => x.to_ascii_lowercase().cmp(&y.to_ascii_lowercase()),
            (Token::Num(_), Token::Alpha(_)) => Ordering::Greater,
            (Token::Alpha(_), Token::Num(_)) => Ordering::Less,
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    match ta.len().cmp(&tb.len()) {
        Ordering::Greater if is_prerelease(ta.get(tb.len())) => Ordering::Less,
        Ordering::Less if is_prerelease(tb.get(ta.len())) => Ordering::Greater,
        o => o,
    }
}

/// The OSV range evaluation: walk the events sorted by version and keep the last state whose
/// threshold the version passes.
fn range_affects(events: &[Event], version: &str) -> bool {
    let mut sorted: Vec<(&str, u8)> = Vec::new();
    for e in events {
        if let Some(v) = &e.introduced {
            sorted.push((v, 0));
        }
        if let Some(v) = &e.fixed {
            sorted.push((v, 1));
        }
        if let Some(v) = &e.last_affected {
            sorted.push((v, 2));
        }
        if let Some(v) = &e.limit {
            sorted.push((v, 3));
        }
    }
    let key = |v: &str| if v == "0" { None } else { Some(v.to_string()) };
    sorted.sort_by(|a, b| match (key(a.0), key(b.0)) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) => compare_versions(&x, &y),
    });
    let mut affected = false;
    for (v, kind) in sorted {
        let o = if v == "0" {
            Ordering::Greater
        } else {
            compare_versions(version, v)
        };
        match kind {
            0 if o != Ordering::Less => affected = true,
            1 | 3 if o != Ordering::Less => affected = false,
            2 if o == Ordering::Greater => affected = false,
            _ => {}
        }
    }
    affected
}
