use std::collections::BTreeMap;

use super::*;
use crate::analyzers::testutil::{Rng, plant, run, run_resumed, straddle};

/// Indicators a planted text yields: kind, offset within the text, value.
type Yields = Vec<(&'static str, usize, &'static str)>;
/// Expected findings: value -> (rule, first offset, count).
type Expected = BTreeMap<String, (String, u64, u64)>;

/// Texts to plant and what each yields.
fn catalogue() -> Vec<(&'static str, Yields)> {
    vec![
        (
            "https://evil.example.com/payload.exe",
            vec![
                ("url", 0, "https://evil.example.com/payload.exe"),
                ("domain", 8, "evil.example.com"),
            ],
        ),
        ("10.20.30.40", vec![("ipv4", 0, "10.20.30.40")]),
        (
            "alice.smith@corp.example.org",
            vec![
                ("email", 0, "alice.smith@corp.example.org"),
                ("domain", 12, "corp.example.org"),
            ],
        ),
        (
            "2001:db8:85a3::8a2e:370:7334",
            vec![("ipv6", 0, "2001:db8:85a3::8a2e:370:7334")],
        ),
        ("updates.badsite.net.", vec![("domain", 0, "updates.badsite.net")]),
        (
            "http://192.168.1.1:8080/cgi-bin/luci",
            vec![
                ("url", 0, "http://192.168.1.1:8080/cgi-bin/luci"),
                ("ipv4", 7, "192.168.1.1"),
            ],
        ),
    ]
}

/// Random bytes with every catalogue item planted twice, straddling chunk boundaries; returns
/// the data and the expected value -> (rule, first offset, count).
fn planted(seed: u64, len: usize, chunk: usize) -> (Vec<u8>, Expected) {
    let mut rng = Rng::new(seed);
    let mut data = rng.bytes(len);
    let cat = catalogue();
    let slots = cat.len() * 2;
    let spacing = len / (slots + 1);
    let mut expected = BTreeMap::new();
    for i in 0..slots {
        let (text, yields) = &cat[i % cat.len()];
        let base = (i + 1) * spacing;
        let boundary = straddle(base, spacing, chunk);
        let at = boundary.saturating_sub(text.len() / 2 + i % 5).max(1);
        // Spaces around the item separate it from the random neighbours.
        plant(&mut data, at - 1, format!(" {text} ").as_bytes());
        for (rule, within, value) in yields {
            let e = expected
                .entry(value.to_string())
                .or_insert((rule.to_string(), (at + within) as u64, 0));
            e.2 += 1;
        }
    }
    (data, expected)
}

fn got(findings: &[Finding]) -> Expected {
    let mut m = BTreeMap::new();
    for f in findings {
        let prev = m.insert(f.value.clone().unwrap(), (f.rule.clone(), f.offset, f.count.unwrap()));
        assert!(prev.is_none(), "duplicate {f:?}");
    }
    m
}

#[test]
fn planted_indicators_counted_once_at_first_offsets_across_chunk_sizes() {
    let cases: &[(usize, usize)] = &[
        (1, 8 * 1024),
        (5, 16 * 1024),
        (333, 128 * 1024),
        (4096, 1 << 20),
        (1 << 20, 3 << 20),
    ];
    for &(chunk, len) in cases {
        let (data, expected) = planted(chunk as u64 + 1, len, chunk);
        let mut a = IocsAnalyzer::new();
        let carry = a.overlap();
        let (findings, summary) = run(&mut a, &data, chunk, carry);
        // Random bytes may add a stray indicator now and then; the planted ones must be exact.
        let all = got(&findings);
        for (value, want) in &expected {
            assert_eq!(all.get(value), Some(want), "chunk {chunk}: {value}");
        }
        assert!(all.len() <= expected.len() + 2, "chunk {chunk}: {:?}", findings);
        assert_eq!(summary["dropped"], 0);
        let mut a = IocsAnalyzer::new();
        let (again, _) = run(&mut a, &data, chunk, carry + 777);
        assert_eq!(again, findings, "chunk {chunk}, larger carry");
    }
}

#[test]
fn severities_follow_the_documented_rule() {
    let (data, _) = planted(3, 64 * 1024, 4096);
    let mut a = IocsAnalyzer::new();
    let carry = a.overlap();
    let (findings, _) = run(&mut a, &data, 4096, carry);
    for f in &findings {
        let want = match f.value.as_deref().unwrap() {
            "https://evil.example.com/payload.exe" | "http://192.168.1.1:8080/cgi-bin/luci" => Severity::Low,
            _ => Severity::Info,
        };
        assert_eq!(f.severity, want, "{f:?}");
    }
}

/// Stated false-positive bound: at most 4 indicators in 8 MiB of uniformly random bytes
/// (measured: see the assertion message when it fails).
#[test]
fn clean_random_data_stays_under_the_false_positive_bound() {
    let data = Rng::new(11).bytes(8 << 20);
    let mut a = IocsAnalyzer::new();
    let carry = a.overlap();
    let (findings, _) = run(&mut a, &data, 1 << 20, carry);
    let values: Vec<_> = findings.iter().map(|f| f.value.clone().unwrap()).collect();
    assert!(findings.len() <= 4, "{} false positives: {values:?}", findings.len());
}

#[test]
fn checkpoint_and_restore_give_the_same_findings() {
    let chunk = 4096;
    let (data, _) = planted(21, 512 * 1024, chunk);
    let mut a = IocsAnalyzer::new();
    let carry = a.overlap();
    let (whole, whole_summary) = run(&mut a, &data, chunk, carry);
    for cut in [1, 40, 64, 101, 127] {
        let (mut first, mut second) = (IocsAnalyzer::new(), IocsAnalyzer::new());
        let (resumed, summary) = run_resumed(&mut first, &mut second, &data, chunk, carry, cut);
        assert_eq!(resumed, whole, "cut after {cut} windows");
        assert_eq!(summary, whole_summary);
    }
}

#[test]
fn table_is_bounded_and_counts_what_it_dropped() {
    let mut text = String::new();
    for i in 0..50 {
        text.push_str(&format!("host{i}.example.com 10.0.0.{i} "));
    }
    let mut a = IocsAnalyzer::with_limit(20);
    let carry = a.overlap();
    let (findings, summary) = run(&mut a, text.as_bytes(), 100, carry);
    assert_eq!(findings.len(), 20);
    assert_eq!(summary["distinct"], 20);
    assert_eq!(summary["dropped"], 80);
    let state = a.checkpoint().unwrap();
    assert!(state.to_string().len() < 4096);
}

fn values(text: &str) -> Vec<(String, String)> {
    let mut a = IocsAnalyzer::new();
    let carry = a.overlap();
    let (f, _) = run(&mut a, text.as_bytes(), 1 << 16, carry);
    f.into_iter().map(|f| (f.rule, f.value.unwrap())).collect()
}

#[test]
fn junk_that_looks_like_indicators_is_ignored() {
    for text in [
        "libc.so.6 Makefile.in main.py lib.rs README.md x.cc",
        "version 1.2.3 and 01.02.03.04 and 1.2.3.4.5 and 256.1.1.1",
        "Example.Com mixed case, a..b.com, -.com",
        "std::vector::push_back a::b de:ad:be:ef ::1",
        "mailto: @localhost and x@y and foo@bar.notatld",
        "javascript://x gopher://examplecom xhttp://examplecom http:///nohost",
    ] {
        assert!(values(text).is_empty(), "{text}: {:?}", values(text));
    }
}

#[test]
fn indicator_edges() {
    assert_eq!(
        values("see <http://example.com/a?b=c>, then"),
        [
            ("url".into(), "http://example.com/a?b=c".into()),
            ("domain".into(), "example.com".into())
        ]
    );
    assert_eq!(values("WWW.EXAMPLE.ORG"), [("domain".into(), "WWW.EXAMPLE.ORG".into())]);
    assert_eq!(
        values("fe80::1ff:fe23:4567:890a"),
        [("ipv6".into(), "fe80::1ff:fe23:4567:890a".into())]
    );
    assert!(is_ipv4(b"0.0.0.0") && !is_ipv4(b"1.2.3") && !is_ipv4(b"1.2.3.04"));
}

#[test]
fn a_urls_password_is_not_copied_into_the_report() {
    let found = values("cfg: http://admin:hunter2@example.com/fw.bin end");
    let urls: Vec<_> = found.iter().filter(|(rule, _)| rule == "url").collect();
    assert_eq!(
        urls,
        [&("url".to_string(), "http://***@example.com/fw.bin".to_string())],
        "{found:?}"
    );
    assert!(found.iter().all(|(_, v)| !v.contains("hunter2")), "{found:?}");
}
