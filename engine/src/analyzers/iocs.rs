//! `iocs`: indicators — URLs, IPv4 and IPv6 addresses, domains and e-mail addresses —
//! deduplicated with a count and the first offset, emitted at `finish`.
//!
//! Hand-written scanners behind `memchr` prefilters (much faster than a regex over binary data):
//! - domains and IPv4: every maximal run of `[A-Za-z0-9.-]` holding a dot, up to 253 bytes,
//!   trimmed of leading/trailing `.`/`-`; an IPv4 is four decimal parts 0–255 without leading
//!   zeros; a domain has valid labels, is not of mixed case, and ends in a TLD of a compact
//!   embedded list of common TLDs. TLDs that collide with common file extensions (`.so`, `.sh`,
//!   `.py`, `.pl`, `.rs`, `.md`, `.cc`, `.in`, ...) are left out on purpose, so `libc.so` or
//!   `Makefile.in` are not domains;
//! - e-mail: `local@domain` around each `@`, the domain checked as above;
//! - URL: `scheme://...` around each `://` for http, https, ftp, ftps, sftp, tftp, ws, wss, with a
//!   valid host (domain, IPv4, `localhost` or `[IPv6]`), at most 2048 bytes;
//! - IPv6: runs of `[0-9A-Fa-f:]` with `::` or eight groups, parsed by the standard library.
//!
//! Indicators nest: a URL's host and an e-mail's domain are also reported as a domain (or IPv4).
//! Severity is `info`, except `low` for URLs whose host is an IP literal or whose path ends in an
//! executable or script extension (`.exe`, `.sh`, `.ps1`, `.apk`, ...).
//!
//! Every indicator is decided in the first window where its start lies more than
//! `2048 + 2` bytes before the window end, so one straddling a chunk boundary counts once.
//! Memory is bounded: at most [`MAX_DISTINCT`] distinct values of at most [`MAX_VALUE_BYTES`]
//! bytes in all are tracked; occurrences of further values are counted as `dropped` in the
//! summary. The checkpoint is that table (bounded the same way).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv6Addr;

use memchr::{memchr_iter, memmem};
use serde::{Deserialize, Serialize};
use streamscan_api::AnalyzerName;

use super::anchored::Resolver;
use crate::{Analyzer, AnalyzerError, Finding, FindingSink, Severity, Window};

/// Distinct indicators tracked; more are counted as dropped.
pub const MAX_DISTINCT: usize = 4096;
/// Total bytes of the distinct values tracked, so the table and checkpoint stay small.
pub const MAX_VALUE_BYTES: usize = 256 * 1024;

const DOMAIN_MAX: usize = 253;
const LOCAL_MAX: usize = 64;
const URL_MAX: usize = 2048;
const V6_MAX: usize = 39;
/// Bytes that must follow an indicator's start for it to be decided: the longest one plus its
/// terminating byte.
const SETTLE: usize = URL_MAX + 2;
/// One more byte before the undecided part, to see whether a run starts exactly there.
const OVERLAP: usize = SETTLE + 2;

/// Common TLDs, lowercase. Deliberately incomplete: see the module docs.
const TLDS: &[&str] = &[
    "com", "net", "org", "edu", "gov", "mil", "int", "info", "biz", "name", "mobi", "pro", "aero", "coop", "asia",
    "tel", "xyz", "top", "site", "online", "store", "tech", "club", "cloud", "icu", "vip", "shop", "live", "news",
    "blog", "onion", "io", "co", "me", "tv", "ai", "us", "uk", "eu", "de", "fr", "es", "nl", "ch", "at", "se", "no",
    "dk", "fi", "cz", "sk", "hu", "ro", "bg", "gr", "pt", "ie", "ru", "ua", "by", "kz", "cn", "jp", "kr", "tw", "hk",
    "sg", "th", "vn", "my", "ph", "id", "au", "nz", "ca", "mx", "br", "ar", "cl", "pe", "za", "ng", "ke", "eg", "tr",
    "ir", "il", "sa", "ae", "pk", "su", "ws", "to", "ly", "gg", "la", "fm", "lt", "lv", "ee", "si", "hr",
];

const SCHEMES: &[&str] = &["http", "https", "ftp", "ftps", "sftp", "tftp", "ws", "wss"];
const EXECUTABLE_SUFFIXES: &[&str] = &[
    ".exe", ".dll", ".scr", ".msi", ".bat", ".cmd", ".ps1", ".sh", ".elf", ".bin", ".apk", ".jar", ".vbs",
];

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Url,
    Ipv4,
    Ipv6,
    Domain,
    Email,
}

impl Kind {
    fn rule(self) -> &'static str {
        match self {
            Kind::Url => "url",
            Kind::Ipv4 => "ipv4",
            Kind::Ipv6 => "ipv6",
            Kind::Domain => "domain",
            Kind::Email => "email",
        }
    }
}

fn is_label(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

fn is_host_run(b: u8) -> bool {
    is_label(b) || b == b'.'
}

fn is_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_url_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=%".contains(&b)
}

fn is_v6_char(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b':'
}

/// A dotted-quad IPv4 address without leading zeros.
pub fn is_ipv4(s: &[u8]) -> bool {
    let mut parts = 0;
    for part in s.split(|&b| b == b'.') {
        parts += 1;
        if parts > 4 || part.is_empty() || part.len() > 3 || !part.iter().all(u8::is_ascii_digit) {
            return false;
        }
        if part.len() > 1 && part[0] == b'0' {
            return false;
        }
        let v = part.iter().fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'));
        if v > 255 {
            return false;
        }
    }
    parts == 4
}

/// A domain name with a known TLD, at least two labels, not of mixed case.
pub fn is_domain(s: &[u8]) -> bool {
    if s.len() > DOMAIN_MAX || s.len() < 4 {
        return false;
    }
    let upper = s.iter().any(u8::is_ascii_uppercase);
    let lower = s.iter().any(u8::is_ascii_lowercase);
    if upper && lower {
        return false;
    }
    let mut labels = 0;
    let (mut second, mut last): (&[u8], &[u8]) = (&[], &[]);
    for label in s.split(|&b| b == b'.') {
        labels += 1;
        if label.is_empty() || label.len() > 63 || label[0] == b'-' || label[label.len() - 1] == b'-' {
            return false;
        }
        second = last;
        last = label;
    }
    // A one-character name under the TLD (`x.com`) is rare in practice but common in random
    // bytes, so it is not taken as a domain.
    if labels < 2 || second.len() < 2 || !last.iter().all(u8::is_ascii_alphabetic) {
        return false;
    }
    let tld = last.to_ascii_lowercase();
    TLDS.iter().any(|t| t.as_bytes() == tld.as_slice())
}

/// Start of the maximal run of `class` bytes ending just before `end`, if it is at most `max`
/// long and does not reach `floor` (where the run's true start is not visible).
fn run_start(hay: &[u8], end: usize, max: usize, class: fn(u8) -> bool) -> Option<usize> {
    let mut a = end;
    while a > 0 && class(hay[a - 1]) {
        if end - a >= max {
            return None;
        }
        a -= 1;
    }
    Some(a)
}

/// End of the run of `class` bytes from `start`, or `None` when longer than `max`.
fn run_end(hay: &[u8], start: usize, max: usize, class: fn(u8) -> bool) -> Option<usize> {
    let mut b = start;
    while b < hay.len() && class(hay[b]) {
        if b - start >= max {
            return None;
        }
        b += 1;
    }
    Some(b)
}

fn trim(hay: &[u8], mut a: usize, mut b: usize, junk: &[u8]) -> (usize, usize) {
    while a < b && junk.contains(&hay[a]) {
        a += 1;
    }
    while b > a && junk.contains(&hay[b - 1]) {
        b -= 1;
    }
    (a, b)
}

/// The host part of a URL's remainder (after `://`): userinfo and port removed.
fn url_host(rest: &[u8]) -> &[u8] {
    let end = rest.iter().position(|b| b"/?#".contains(b)).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = match authority.iter().rposition(|&b| b == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    };
    if host.first() == Some(&b'[') {
        return match host.iter().position(|&b| b == b']') {
            Some(close) => &host[..=close],
            None => &[],
        };
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(colon) if host[colon + 1..].iter().all(u8::is_ascii_digit) => &host[..colon],
        _ => host,
    }
}

fn valid_url_host(host: &[u8]) -> bool {
    if host.first() == Some(&b'[') && host.last() == Some(&b']') {
        return std::str::from_utf8(&host[1..host.len() - 1])
            .ok()
            .and_then(|s| s.parse::<Ipv6Addr>().ok())
            .is_some();
    }
    host.eq_ignore_ascii_case(b"localhost") || is_ipv4(host) || is_domain(host)
}

/// Whether the e-mail-like run starting at `s` is a URL's user-info (`scheme://user:PASS@host`):
/// the URL finding covers it, redacted, and it must not come back as an address.
fn in_url_userinfo(hay: &[u8], s: usize) -> bool {
    let before = &hay[s.saturating_sub(LOCAL_MAX + 3)..s];
    memmem::rfind(before, b"://").is_some_and(|i| before[i + 3..].iter().all(|&b| is_local(b) || b == b':'))
}

fn url_severity(url: &str) -> Severity {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let host = url_host(rest.as_bytes());
    if is_ipv4(host) || host.first() == Some(&b'[') {
        return Severity::Low;
    }
    let path = rest.split(['?', '#']).next().unwrap_or(rest).to_ascii_lowercase();
    if path.contains('/') && EXECUTABLE_SUFFIXES.iter().any(|s| path.ends_with(s)) {
        return Severity::Low;
    }
    Severity::Info
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Entry {
    kind: Kind,
    value: String,
    first: u64,
    count: u64,
    len: u64,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct State {
    resolved: u64,
    entries: Vec<Entry>,
    dropped: u64,
}

pub struct IocsAnalyzer {
    resolver: Resolver,
    table: HashMap<(Kind, String), (u64, u64, u64)>,
    value_bytes: usize,
    max_distinct: usize,
    /// Occurrences of values not tracked because the table was full.
    dropped: u64,
    /// This window's candidates (kind, start, end); reused to avoid allocating per window.
    found: Vec<(Kind, usize, usize)>,
}

impl Default for IocsAnalyzer {
    fn default() -> Self {
        Self::new()
    }
}

impl IocsAnalyzer {
    pub fn new() -> Self {
        Self::with_limit(MAX_DISTINCT)
    }

    /// An analyzer tracking at most `max_distinct` distinct indicators.
    pub fn with_limit(max_distinct: usize) -> Self {
        IocsAnalyzer {
            resolver: Resolver::default(),
            table: HashMap::new(),
            value_bytes: 0,
            max_distinct,
            dropped: 0,
            found: Vec::new(),
        }
    }

    fn record(&mut self, kind: Kind, value: &[u8], offset: u64) {
        let value = String::from_utf8_lossy(value);
        // A URL's user-info (a password) is not copied into the report.
        let value = match kind {
            Kind::Url => streamscan_api::redact::url(&value).into_owned(),
            _ => value.into_owned(),
        };
        let len = value.len() as u64;
        if let Some(e) = self.table.get_mut(&(kind, value.clone())) {
            e.1 += 1;
            return;
        }
        if self.table.len() >= self.max_distinct || self.value_bytes + value.len() > MAX_VALUE_BYTES {
            // Telling new from repeated untracked values would need unbounded memory, so only
            // occurrences are counted.
            self.dropped += 1;
            return;
        }
        self.value_bytes += value.len();
        self.table.insert((kind, value), (offset, 1, len));
    }

    /// Candidates in `hay[resolved..limit]` (by start), each pushed as (kind, start, end).
    fn scan(hay: &[u8], resolved: usize, limit: usize, out: &mut Vec<(Kind, usize, usize)>) {
        scan_dotted_runs(hay, resolved, limit, out);
        scan_emails(hay, resolved, limit, out);
        scan_urls(hay, resolved, limit, out);
        scan_ipv6(hay, resolved, limit, out);
    }
}

/// Domains and IPv4 addresses: runs of host bytes holding a dot.
fn scan_dotted_runs(hay: &[u8], resolved: usize, limit: usize, out: &mut Vec<(Kind, usize, usize)>) {
    // Every dot of a run finds the same run, so the rest of it is skipped.
    let mut skip_to = 0;
    for dot in memchr_iter(b'.', &hay[resolved..]).map(|i| i + resolved) {
        if dot < skip_to {
            continue;
        }
        let (Some(a), Some(b)) = (
            run_start(hay, dot, DOMAIN_MAX, is_host_run),
            run_end(hay, dot, DOMAIN_MAX, is_host_run),
        ) else {
            // Too long to be a host: skip the rest of the run.
            skip_to = hay[dot..]
                .iter()
                .position(|&b| !is_host_run(b))
                .map_or(hay.len(), |p| dot + p);
            continue;
        };
        skip_to = b;
        if a < resolved || a >= limit || b - a > DOMAIN_MAX {
            continue;
        }
        let (s, e) = trim(hay, a, b, b".-");
        if is_ipv4(&hay[s..e]) {
            out.push((Kind::Ipv4, s, e));
        } else if is_domain(&hay[s..e]) {
            out.push((Kind::Domain, s, e));
        }
    }
}

/// E-mail addresses: a local part and a domain around each `@`.
fn scan_emails(hay: &[u8], resolved: usize, limit: usize, out: &mut Vec<(Kind, usize, usize)>) {
    for at in memchr_iter(b'@', &hay[resolved..]).map(|i| i + resolved) {
        let Some(a) = run_start(hay, at, LOCAL_MAX, is_local) else {
            continue;
        };
        let Some(b) = run_end(hay, at + 1, DOMAIN_MAX, is_host_run) else {
            continue;
        };
        // Decided by the untrimmed run start, which every window sees the same.
        if a < resolved || a >= limit {
            continue;
        }
        let (s, _) = trim(hay, a, at, b".");
        let (ds, de) = trim(hay, at + 1, b, b".-");
        if s >= at || ds != at + 1 || !is_domain(&hay[ds..de]) || in_url_userinfo(hay, s) {
            continue;
        }
        out.push((Kind::Email, s, de));
    }
}

/// URLs: a known scheme before each `://` and a valid host after it.
fn scan_urls(hay: &[u8], resolved: usize, limit: usize, out: &mut Vec<(Kind, usize, usize)>) {
    for sep in memmem::find_iter(&hay[resolved..], b"://").map(|i| i + resolved) {
        let Some(a) = run_start(hay, sep, 6, |b| b.is_ascii_alphabetic()) else {
            continue;
        };
        if !is_known_scheme(hay, a, sep) || a < resolved || a >= limit {
            continue;
        }
        let Some(b) = run_end(hay, sep + 3, URL_MAX - (sep + 3 - a), is_url_char) else {
            continue;
        };
        let (_, e) = trim(hay, sep + 3, b, b".,;:!?)'\"]}>*");
        if e > sep + 3 && valid_url_host(url_host(&hay[sep + 3..e])) {
            out.push((Kind::Url, a, e));
        }
    }
}

/// Whether `hay[a..sep]` is one of [`SCHEMES`] standing on its own, not the tail of a longer
/// token such as `git+https://`.
fn is_known_scheme(hay: &[u8], a: usize, sep: usize) -> bool {
    let scheme = hay[a..sep].to_ascii_lowercase();
    SCHEMES.iter().any(|s| s.as_bytes() == scheme.as_slice())
        && !(a > 0 && (hay[a - 1].is_ascii_alphanumeric() || b"+.-".contains(&hay[a - 1])))
}

/// IPv6 addresses: runs of hex digits and colons that parse as one.
fn scan_ipv6(hay: &[u8], resolved: usize, limit: usize, out: &mut Vec<(Kind, usize, usize)>) {
    // Every colon of a run finds the same run, so the rest of it is skipped.
    let mut skip_to = 0;
    for colon in memchr_iter(b':', &hay[resolved..]).map(|i| i + resolved) {
        if colon < skip_to {
            continue;
        }
        let (Some(a), Some(b)) = (
            run_start(hay, colon, V6_MAX, is_v6_char),
            run_end(hay, colon, V6_MAX, is_v6_char),
        ) else {
            continue;
        };
        skip_to = b;
        if a < resolved || a >= limit {
            continue;
        }
        if is_ipv6_at(hay, a, b) {
            out.push((Kind::Ipv6, a, b));
        }
    }
}

/// Whether the run `hay[a..b]` is a delimited IPv6 address. Besides parsing, it must hold `::`
/// or eight groups and at least five hex digits, so short colon runs like `::1` are not reported.
fn is_ipv6_at(hay: &[u8], a: usize, b: usize) -> bool {
    let before_ok = a == 0 || !(hay[a - 1].is_ascii_alphanumeric() || b".:".contains(&hay[a - 1]));
    let after_ok = b == hay.len() || !(hay[b].is_ascii_alphanumeric() || hay[b] == b'.');
    let text = &hay[a..b];
    let colons = text.iter().filter(|&&c| c == b':').count();
    let digits = text.len() - colons;
    let shaped = memmem::find(text, b"::").is_some() || colons == 7;
    before_ok
        && after_ok
        && shaped
        && colons >= 2
        && digits >= 5
        && std::str::from_utf8(text).is_ok_and(|t| t.parse::<Ipv6Addr>().is_ok())
}

impl Analyzer for IocsAnalyzer {
    fn name(&self) -> AnalyzerName {
        AnalyzerName::Iocs
    }

    fn overlap(&self) -> usize {
        OVERLAP
    }

    fn update(&mut self, window: &Window<'_>, _sink: &mut dyn FindingSink) -> Result<(), AnalyzerError> {
        let view = self.resolver.view(window, OVERLAP, 0, SETTLE);
        let mut found = std::mem::take(&mut self.found);
        found.clear();
        if view.resolved < view.limit {
            Self::scan(view.hay, view.resolved, view.limit, &mut found);
        }
        found.sort_by_key(|&(kind, start, _)| (start, kind));
        for &(kind, start, end) in &found {
            self.record(kind, &view.hay[start..end], view.offset + start as u64);
        }
        self.found = found;
        self.resolver.resolved = self.resolver.resolved.max(view.offset + view.limit as u64);
        Ok(())
    }

    fn finish(&mut self, sink: &mut dyn FindingSink) -> Result<serde_json::Value, AnalyzerError> {
        let mut entries: Vec<_> = self.table.iter().collect();
        entries.sort_by_key(|((kind, _), (first, _, _))| (*first, *kind));
        let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
        let mut occurrences = 0;
        for ((kind, value), &(first, count, len)) in entries {
            let severity = if *kind == Kind::Url {
                url_severity(value)
            } else {
                Severity::Info
            };
            let mut f = Finding::new(
                AnalyzerName::Iocs,
                kind.rule(),
                severity,
                first,
                format!("{} {value}: seen {count} time(s), first at offset {first}", kind.rule()),
            );
            f.length = Some(len);
            f.value = Some(value.clone());
            f.count = Some(count);
            sink.push(f);
            *by_kind.entry(kind.rule()).or_default() += 1;
            occurrences += count;
        }
        Ok(serde_json::json!({
            "distinct": self.table.len(),
            "occurrences": occurrences,
            "byKind": by_kind,
            "dropped": self.dropped,
        }))
    }

    fn checkpoint(&self) -> Result<serde_json::Value, AnalyzerError> {
        let mut entries: Vec<Entry> = self
            .table
            .iter()
            .map(|((kind, value), &(first, count, len))| Entry {
                kind: *kind,
                value: value.clone(),
                first,
                count,
                len,
            })
            .collect();
        entries.sort_by_key(|e| (e.first, e.kind));
        serde_json::to_value(State {
            resolved: self.resolver.resolved,
            entries,
            dropped: self.dropped,
        })
        .map_err(|e| AnalyzerError::Checkpoint {
            analyzer: AnalyzerName::Iocs,
            message: e.to_string(),
        })
    }

    fn restore(&mut self, state: serde_json::Value) -> Result<(), AnalyzerError> {
        let state: State = serde_json::from_value(state).map_err(|e| AnalyzerError::Checkpoint {
            analyzer: AnalyzerName::Iocs,
            message: e.to_string(),
        })?;
        self.resolver.resolved = state.resolved;
        self.table.clear();
        self.value_bytes = 0;
        for e in state.entries.into_iter().take(self.max_distinct) {
            self.value_bytes += e.value.len();
            self.table.insert((e.kind, e.value), (e.first, e.count, e.len));
        }
        self.dropped = state.dropped;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
