use std::cmp::Ordering;

use super::vulndb::{compare_versions, cvss3_base_score};
use super::*;
use crate::analyzers::testutil::{Rng, assert_nothing_in_random_data, plant, run, run_resumed, straddle};

/// (text planted, offset of the finding within it, component, version, expected vulnerability ids)
const PLANTED: &[(&str, usize, &str, &str, &[&str])] = &[
    (
        "\0OpenSSL 1.0.1f 6 Jan 2014\0",
        1,
        "OpenSSL",
        "1.0.1f",
        &["CVE-2014-0160"],
    ),
    (
        "\0BusyBox v1.21.1 (2013-07-08 11:34:59 CEST)\0",
        1,
        "BusyBox",
        "1.21.1",
        &["CVE-2016-2148", "CVE-2017-16544"],
    ),
    (
        " deflate 1.2.8 Copyright 1995-2013 Jean-loup Gailly and Mark Adler ",
        1,
        "zlib",
        "1.2.8",
        &["CVE-2022-37434", "CVE-2018-25032"],
    ),
    (
        "\0SSH-2.0-OpenSSH_7.4\r\n",
        9,
        "OpenSSH",
        "7.4",
        &["CVE-2023-38408", "CVE-2018-15473"],
    ),
    (
        "\0U-Boot 2016.01 (Jan 12 2016 - 10:00:00)\0",
        1,
        "U-Boot",
        "2016.01",
        &["CVE-2019-14192"],
    ),
    (
        "\0Linux version 4.4.0-21-generic (buildd@lgw01-21) (gcc version 5.3.1)\0",
        1,
        "Linux kernel",
        "4.4.0",
        &["CVE-2016-5195"],
    ),
    ("\0libcurl/7.58.0 OpenSSL/1.1.1\0", 4, "curl", "7.58.0", &[]),
    ("\0SQLite version 3.31.1\0", 1, "SQLite", "3.31.1", &["CVE-2022-35737"]),
    ("\0dropbear_2015.67\0", 1, "Dropbear", "2015.67", &["CVE-2016-7406"]),
    ("\0libpng version 1.6.37 - April 14, 2019\0", 1, "libpng", "1.6.37", &[]),
    (
        "\0OpenSSL 3.0.2 15 Mar 2022\0",
        1,
        "OpenSSL",
        "3.0.2",
        &["CVE-2022-3602", "CVE-2023-0286"],
    ),
];

fn planted(seed: u64, len: usize, chunk: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut data = rng.bytes(len);
    let spacing = len / (PLANTED.len() + 1);
    for (i, (text, ..)) in PLANTED.iter().enumerate() {
        let base = (i + 1) * spacing;
        let boundary = straddle(base, spacing, chunk);
        plant(&mut data, boundary.saturating_sub(text.len() / 2 + i), text.as_bytes());
    }
    data
}

fn expected(data: &[u8]) -> Vec<(u64, String, String, Vec<String>)> {
    let mut v: Vec<_> = PLANTED
        .iter()
        .map(|(text, within, c, ver, ids)| {
            let at = memchr::memmem::find(data, text.as_bytes()).unwrap() + within;
            let mut ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
            ids.sort();
            (at as u64, c.to_string(), ver.to_string(), ids)
        })
        .collect();
    v.sort();
    v
}

fn got(findings: &[Finding]) -> Vec<(u64, String, String, Vec<String>)> {
    let mut v: Vec<_> = findings
        .iter()
        .map(|f| {
            let mut ids: Vec<String> = f.vulnerabilities.iter().map(|v| v.id.clone()).collect();
            ids.sort();
            (f.offset, f.component.clone().unwrap(), f.version.clone().unwrap(), ids)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn planted_versions_found_once_with_their_vulnerabilities_across_chunk_sizes() {
    for &(chunk, len) in &[
        (1usize, 8 * 1024),
        (3, 16 * 1024),
        (97, 96 * 1024),
        (4096, 1 << 20),
        (1 << 20, 3 << 20),
    ] {
        let data = planted(chunk as u64, len, chunk);
        let mut a = ComponentsAnalyzer::new(&[]).unwrap();
        let carry = a.overlap();
        let (findings, summary) = run(&mut a, &data, chunk, carry);
        assert_eq!(got(&findings), expected(&data), "chunk {chunk}");
        assert_eq!(summary["components"], PLANTED.len());
        for f in &findings {
            assert_eq!(f.count, Some(1));
            let most = f
                .vulnerabilities
                .iter()
                .map(|v| v.severity)
                .max()
                .unwrap_or(Severity::Info);
            assert_eq!(f.severity, most);
        }
    }
}

#[test]
fn heartbleed_is_reported_with_severity_and_message() {
    let mut a = ComponentsAnalyzer::new(&[]).unwrap();
    let carry = a.overlap();
    let text = b"xx OpenSSL 1.0.1f 6 Jan 2014 yy OpenSSL 1.0.1f 6 Jan 2014 OpenSSL 1.0.1g 7 Apr 2014";
    let (f, _) = run(&mut a, text, 10, carry);
    assert_eq!(f.len(), 2, "{f:?}");
    assert_eq!(f[0].offset, 3);
    assert_eq!(f[0].count, Some(2));
    assert_eq!(f[0].rule, "vulnerable-component");
    assert_eq!(f[0].severity, Severity::High);
    assert!(f[0].message.contains("CVE-2014-0160 (high)"), "{}", f[0].message);
    assert_eq!(f[1].version.as_deref(), Some("1.0.1g"));
    assert!(f[1].vulnerabilities.is_empty(), "{:?}", f[1].vulnerabilities);
    assert_eq!(f[1].severity, Severity::Info);
}

#[test]
fn clean_random_data_has_no_components() {
    assert_nothing_in_random_data(&mut ComponentsAnalyzer::new(&[]).unwrap(), 3);
}

#[test]
fn checkpoint_and_restore_give_the_same_findings() {
    let chunk = 4096;
    let data = planted(8, 512 * 1024, chunk);
    let mut a = ComponentsAnalyzer::new(&[]).unwrap();
    let carry = a.overlap();
    let (whole, whole_summary) = run(&mut a, &data, chunk, carry);
    for cut in [1, 33, 64, 120] {
        let mut first = ComponentsAnalyzer::new(&[]).unwrap();
        let mut second = ComponentsAnalyzer::new(&[]).unwrap();
        let (resumed, summary) = run_resumed(&mut first, &mut second, &data, chunk, carry, cut);
        assert_eq!(resumed, whole, "cut after {cut} windows");
        assert_eq!(summary, whole_summary);
    }
}

#[test]
fn versions_compare_like_upstream_releases() {
    use Ordering::*;
    for (a, b, o) in [
        ("1.0.1f", "1.0.1g", Less),
        ("1.0.1", "1.0.1a", Less),
        ("1.0.2k", "1.0.2zd", Less),
        ("1.0.2za", "1.0.2z", Greater),
        ("1.2.11", "1.2.8", Greater),
        ("7.4", "7.4p1", Less),
        ("9.3p2", "9.3p1", Greater),
        ("2016.01-rc1", "2016.01", Less),
        ("3.39.2", "3.39.2", Equal),
        ("4.4.0", "4.4", Greater),
    ] {
        assert_eq!(compare_versions(a, b), o, "{a} vs {b}");
    }
}

#[test]
fn cvss_v3_base_scores() {
    assert_eq!(
        cvss3_base_score("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"),
        Some(9.8)
    );
    assert_eq!(
        cvss3_base_score("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"),
        Some(7.5)
    );
    assert_eq!(
        cvss3_base_score("CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H"),
        Some(10.0)
    );
    assert_eq!(
        cvss3_base_score("CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H"),
        Some(7.8)
    );
    assert_eq!(cvss3_base_score("not a vector"), None);
}

#[test]
fn loads_osv_files_and_directories_and_refuses_bad_json() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("nested");
    std::fs::create_dir(&sub).unwrap();
    // A record with a CVSS vector and no severity label, a `versions` list, and one about a
    // package we do not recognise (skipped).
    std::fs::write(
        sub.join("GHSA-test.json"),
        r#"{"id":"GHSA-xxxx-yyyy-zzzz","aliases":["CVE-2099-0001"],"modified":"2025-01-01T00:00:00Z",
            "severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],
            "affected":[{"package":{"ecosystem":"Debian","name":"BusyBox"},"versions":["1.21.1"]}]}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("other.json"),
        r#"[{"id":"PYSEC-1","affected":[{"package":{"ecosystem":"PyPI","name":"requests"},
            "ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"}]}]}]}]"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let mut a = ComponentsAnalyzer::new(&[dir.path().to_path_buf()]).unwrap();
    let carry = a.overlap();
    let (f, summary) = run(&mut a, b"\0BusyBox v1.21.1\0", 64, carry);
    assert_eq!(summary["database"]["records"], 2);
    assert_eq!(summary["database"]["kept"], 1);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].vulnerabilities.len(), 1);
    let v = &f[0].vulnerabilities[0];
    assert_eq!((v.id.as_str(), v.severity), ("GHSA-xxxx-yyyy-zzzz", Severity::Critical));
    assert_eq!(v.aliases, ["CVE-2099-0001"]);
    let dir_source = format!("osv:{}", dir.path().display());
    assert_eq!(summary["database"]["sources"], serde_json::json!([dir_source]));
    assert_eq!(summary["database"]["newestModified"], "2025-01-01T00:00:00Z");

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"id\": \"CVE-1\", \"affected\": [").unwrap();
    let err = ComponentsAnalyzer::new(std::slice::from_ref(&bad)).err().unwrap();
    assert!(matches!(err, AnalyzerError::Fatal { .. }));
    let msg = err.to_string();
    assert!(msg.contains("bad.json") && msg.contains("line 1"), "{msg}");
    std::fs::write(&bad, "[{\"affected\": []}]").unwrap();
    let msg = ComponentsAnalyzer::new(&[bad]).err().unwrap().to_string();
    assert!(msg.contains("record 0") && msg.contains("missing field `id`"), "{msg}");
    let missing = ComponentsAnalyzer::new(&[dir.path().join("nope.json")]).err().unwrap();
    assert!(missing.to_string().contains("nope.json"), "{missing}");
}

#[test]
fn built_in_database_is_well_formed() {
    let db = vulndb::VulnDb::built_in(&known_package).unwrap();
    assert_eq!(db.records(), db.len());
    assert!(db.len() >= 20);
    let ids = |p: &[&str], v| db.lookup(p, v).into_iter().map(|v| v.id).collect::<Vec<_>>();
    assert_eq!(ids(&["openssl"], "1.0.1"), ["CVE-2014-0160"]);
    assert!(ids(&["openssl"], "1.0.0t").is_empty());
    assert_eq!(ids(&["openssl"], "1.1.1m"), ["CVE-2022-0778", "CVE-2023-0286"]);
    assert_eq!(ids(&["openssl"], "1.0.2zd"), ["CVE-2023-0286"]);
    assert_eq!(ids(&["busybox"], "1.27.2"), ["CVE-2017-16544"]);
    assert!(ids(&["busybox"], "1.28.0").is_empty());
    assert_eq!(ids(&["linux"], "5.10.101"), ["CVE-2022-0847"]);
    assert!(ids(&["linux"], "5.10.102").is_empty());
    assert_eq!(ids(&["linux"], "5.13.2"), ["CVE-2022-0847"]);
    assert_eq!(ids(&["openssh"], "9.7p1"), ["CVE-2024-6387"]);
    assert!(ids(&["openssh"], "8.4p1").iter().all(|id| id != "CVE-2024-6387"));
}

/// An NVD CVE JSON 2.0 feed (the API's shape): vulnerable CPE matches with inclusive and
/// exclusive range ends and exact versions, CVSS v3.1 and v2 severities, the English
/// description; a non-vulnerable match and an unknown product are ignored.
#[test]
fn loads_nvd_cve_json_2_feeds() {
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("nvdcve-2.0-2024.json");
    std::fs::write(
        &feed,
        r#"{"resultsPerPage":3,"startIndex":0,"totalResults":3,"format":"NVD_CVE","version":"2.0",
        "timestamp":"2025-06-01T00:00:00.000","vulnerabilities":[
        {"cve":{"id":"CVE-2014-0160","sourceIdentifier":"secalert@redhat.com","published":"2014-04-07T22:55:03.893",
          "lastModified":"2025-04-12T10:46:40.837","vulnStatus":"Analyzed",
          "descriptions":[{"lang":"es","value":"otro"},{"lang":"en","value":"Heartbleed: TLS heartbeat read overrun."}],
          "metrics":{"cvssMetricV31":[{"source":"nvd@nist.gov","type":"Primary","cvssData":{"version":"3.1",
            "vectorString":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N","baseScore":7.5,"baseSeverity":"HIGH"}}]},
          "configurations":[{"nodes":[{"operator":"OR","negate":false,"cpeMatch":[
            {"vulnerable":true,"criteria":"cpe:2.3:a:openssl:openssl:*:*:*:*:*:*:*:*",
             "versionStartIncluding":"1.0.1","versionEndExcluding":"1.0.1g","matchCriteriaId":"A"},
            {"vulnerable":false,"criteria":"cpe:2.3:o:debian:debian_linux:7.0:*:*:*:*:*:*:*","matchCriteriaId":"B"}]}]}]}},
        {"cve":{"id":"CVE-2016-2147","lastModified":"2024-11-21T02:47:55.000",
          "descriptions":[{"lang":"en","value":"BusyBox udhcpc integer overflow."}],
          "metrics":{"cvssMetricV2":[{"source":"nvd@nist.gov","type":"Primary","cvssData":{"version":"2.0","baseScore":7.5},
            "baseSeverity":"HIGH"}]},
          "configurations":[{"nodes":[{"operator":"OR","negate":false,"cpeMatch":[
            {"vulnerable":true,"criteria":"cpe:2.3:a:busybox:busybox:1.21.1:*:*:*:*:*:*:*","matchCriteriaId":"C"}]}]}]}},
        {"cve":{"id":"CVE-2099-9999","lastModified":"2023-01-01T00:00:00.000",
          "descriptions":[{"lang":"en","value":"Not ours."}],
          "configurations":[{"nodes":[{"operator":"OR","negate":false,"cpeMatch":[
            {"vulnerable":true,"criteria":"cpe:2.3:a:example:frobnicator:*:*:*:*:*:*:*:*","versionEndIncluding":"9"}]}]}]}}
        ]}"#,
    )
    .unwrap();
    let mut a = ComponentsAnalyzer::new(std::slice::from_ref(&feed)).unwrap();
    let carry = a.overlap();
    let input = b"\0OpenSSL 1.0.1f 6 Jan 2014\0BusyBox v1.21.1\0OpenSSL 1.0.1g 7 Apr 2014\0";
    let (f, summary) = run(&mut a, input, 64, carry);
    assert_eq!(summary["database"]["records"], 3);
    assert_eq!(summary["database"]["kept"], 2, "the unknown product is not kept");
    let feed_source = format!("nvd:{}", feed.display());
    assert_eq!(summary["database"]["sources"], serde_json::json!([feed_source]));
    assert_eq!(summary["database"]["newestModified"], "2025-04-12T10:46:40Z");
    let vulns = |name: &str, version: &str| -> Vec<(String, Severity)> {
        f.iter()
            .find(|x| x.component.as_deref() == Some(name) && x.version.as_deref() == Some(version))
            .map(|x| x.vulnerabilities.iter().map(|v| (v.id.clone(), v.severity)).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        vulns("OpenSSL", "1.0.1f"),
        [("CVE-2014-0160".to_owned(), Severity::High)]
    );
    let fixed = f.iter().find(|x| x.version.as_deref() == Some("1.0.1g"));
    assert!(fixed.is_some(), "1.0.1g is found");
    assert!(vulns("OpenSSL", "1.0.1g").is_empty(), "the range's end is excluded");
    assert_eq!(
        vulns("BusyBox", "1.21.1"),
        [("CVE-2016-2147".to_owned(), Severity::High)]
    );
    let heartbleed = f
        .iter()
        .flat_map(|x| &x.vulnerabilities)
        .find(|v| v.id == "CVE-2014-0160");
    assert_eq!(
        heartbleed.and_then(|v| v.summary.as_deref()),
        Some("Heartbleed: TLS heartbeat read overrun.")
    );
}
