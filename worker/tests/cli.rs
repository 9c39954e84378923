//! The `scan` command, run as the built binary.

// Tests may panic on setup failures: that is how they fail.
#![allow(clippy::expect_used, clippy::panic)]

use streamscan_testdata::planted as common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use streamscan_api::{EventStatus, ProgressEvent};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_streamscan-worker"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).stdin(Stdio::null()).output().expect("the binary runs")
}

fn write_input(dir: &Path, name: &str, data: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, data).expect("write input");
    path.to_string_lossy().into_owned()
}

const MINE: &str = "digest,filetype,entropy";

#[test]
fn json_report_has_the_documented_fields_and_exit_0_when_clean() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (data, plants, _) = common::planted_input();
    let input = write_input(dir.path(), "fw.bin", &data);
    let out = run(&["scan", &input, "--format", "json", "--analyzers", MINE, "--quiet"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["bytes"], data.len() as u64);
    let sha = report["digests"]["sha256"].as_str().unwrap_or_default();
    assert_eq!(sha.len(), 64);
    assert!(sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    let findings = report["findings"].as_array().cloned().unwrap_or_default();
    for f in &findings {
        for field in ["analyzer", "rule", "severity", "offset", "message"] {
            assert!(f.get(field).is_some(), "finding without {field}: {f}");
        }
    }
    let embedded = findings.iter().filter(|f| f["analyzer"] == "filetype").count();
    assert_eq!(embedded, plants.len());
    assert!(report["summaries"]["entropy"]["profile"]["points"].is_array());
    assert!(report["timings"]["totalMs"].is_u64());
    Ok(())
}

#[test]
fn findings_at_or_above_fail_on_exit_1() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut data = common::text(100_000, 1);
    let gz = common::gzip_header();
    data[5000..5000 + gz.len()].copy_from_slice(&gz);
    let input = write_input(dir.path(), "x.bin", &data);
    // The gzip header is an info finding: at or above info fails, above it does not.
    for (level, code) in [("info", 1), ("low", 0)] {
        let out = run(&[
            "scan",
            &input,
            "--analyzers",
            MINE,
            "--fail-on",
            level,
            "-q",
            "--format",
            "json",
        ]);
        assert_eq!(out.status.code(), Some(code), "--fail-on {level}");
    }
    Ok(())
}

#[test]
fn bad_input_exits_2_naming_the_problem() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("nope.bin");
    let missing = missing.to_string_lossy();
    let out = run(&["scan", &missing]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nope.bin") && stderr.contains("No such file"),
        "{stderr}"
    );

    let dir_arg = dir.path().to_string_lossy();
    let out = run(&["scan", &dir_arg]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a directory"));

    let out = run(&["scan", "-", "--analyzers", "digest,bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown analyzer `bogus`"));

    let out = run(&["scan", "ftp://example.invalid/x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only http:// and https://"));

    let out = run(&["scan", "-", "--analyzers", "model"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no model endpoint"));
    Ok(())
}

#[test]
fn unreachable_url_exits_2() {
    // Port 9 on loopback: nothing listens, the connection is refused at once.
    let out = run(&["scan", "http://127.0.0.1:9/fw.bin", "-q"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fetching http://127.0.0.1:9/fw.bin"));
}

#[test]
fn stdin_input_and_output_file() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let report_path = dir.path().join("r.json");
    let mut child = bin()
        .args(["scan", "-", "--analyzers", "digest", "-q", "-o"])
        .arg(&report_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin.write_all(b"abc")?;
    }
    let out = child.wait_with_output()?;
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty(), "the report went to the file");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path)?)?;
    assert_eq!(
        report["digests"]["sha256"],
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(report["source"], "-");
    Ok(())
}

#[test]
fn events_are_gapless_json_lines_ending_in_completed() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let data = common::text(3 << 20, 2);
    let input = write_input(dir.path(), "e.bin", &data);
    let events_path = dir.path().join("events.jsonl");
    let out = run(&[
        "scan",
        &input,
        "--analyzers",
        MINE,
        "-q",
        "--format",
        "json",
        "--events",
        &events_path.to_string_lossy(),
        "--chunk-size",
        "65536",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&events_path)?;
    let events: Vec<ProgressEvent> = text
        .lines()
        .map(|l| ProgressEvent::from_slice(l.as_bytes()))
        .collect::<Result<_, _>>()?;
    assert!(events.len() >= 3, "{text}");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64);
        assert_eq!(e.event_id, events[0].event_id);
        assert_eq!(e.server_id, "local");
    }
    assert_eq!(events[0].status, EventStatus::Started);
    let last = events.last().expect("events");
    assert_eq!(last.status, EventStatus::Completed);
    assert_eq!(last.bytes_processed, data.len() as u64);
    assert!(
        events[1..events.len() - 1]
            .iter()
            .all(|e| e.status == EventStatus::Progress)
    );
    assert!(
        events.windows(2).all(|w| w[0].bytes_processed <= w[1].bytes_processed),
        "progress went backwards"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let result = last.result.as_ref().expect("COMPLETED carries the result");
    assert_eq!(result.sha256.as_deref(), report["digests"]["sha256"].as_str());
    assert_eq!(result.report_size as usize, out.stdout.len());
    Ok(())
}

/// SARIF 2.1.0 as GitHub code scanning reads it. The official schema could not be fetched (no
/// network here), so this checks the structure the schema and GitHub require.
#[test]
fn sarif_output_has_the_required_structure() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (data, plants, regions) = common::planted_input();
    let input = write_input(dir.path(), "fw image.bin", &data);
    let out = run(&["scan", &input, "--analyzers", MINE, "-q", "--format", "sarif"]);
    assert_eq!(out.status.code(), Some(0));
    let sarif: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(sarif["version"], "2.1.0");
    assert!(sarif["$schema"].as_str().is_some_and(|s| s.contains("sarif-2.1.0")));
    let runs = sarif["runs"].as_array().expect("runs is an array");
    assert_eq!(runs.len(), 1);
    let driver = &runs[0]["tool"]["driver"];
    assert_eq!(driver["name"], "streamscan");
    let rules = driver["rules"].as_array().expect("rules is an array");
    let rule_ids: Vec<&str> = rules.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(rule_ids.len(), rules.len(), "every rule has an id");
    for r in rules {
        assert!(r["shortDescription"]["text"].is_string());
        let level = r["defaultConfiguration"]["level"].as_str().unwrap_or_default();
        assert!(["none", "note", "warning", "error"].contains(&level));
    }
    let results = runs[0]["results"].as_array().expect("results is an array");
    // 5 embedded files (the same rule reported more than once), 2 regions, 0 stream type.
    assert_eq!(results.len(), plants.len() + regions.len());
    for r in results {
        let rule_id = r["ruleId"].as_str().expect("ruleId");
        let index = r["ruleIndex"].as_u64().expect("ruleIndex") as usize;
        assert_eq!(rule_ids[index], rule_id);
        assert!(["none", "note", "warning", "error"].contains(&r["level"].as_str().unwrap_or_default()));
        assert!(!r["message"]["text"].as_str().unwrap_or_default().is_empty());
        let locations = r["locations"].as_array().expect("locations");
        assert_eq!(locations.len(), 1);
        let physical = &locations[0]["physicalLocation"];
        let uri = physical["artifactLocation"]["uri"].as_str().unwrap_or_default();
        assert!(uri.ends_with("fw%20image.bin"), "{uri}");
        let region = &physical["region"];
        assert!(region["byteOffset"].is_u64());
        assert!(
            region["startLine"].as_u64().is_some_and(|l| l >= 1),
            "GitHub requires startLine"
        );
        assert!(r["partialFingerprints"].is_object());
    }
    Ok(())
}

#[test]
fn text_format_names_the_digest_and_findings() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (data, ..) = common::planted_input();
    let input = write_input(dir.path(), "fw.bin", &data);
    let out = run(&["scan", &input, "--analyzers", MINE, "-q", "--format", "text"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout)?;
    assert!(text.contains("sha256   "), "{text}");
    assert!(text.contains("filetype/embedded-elf"), "{text}");
    assert!(text.contains("entropy/high-entropy-region"), "{text}");
    Ok(())
}

#[test]
fn quiet_prints_nothing_and_a_pipe_gets_no_progress_bar() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let input = write_input(dir.path(), "p.bin", &common::text(200_000, 4));
    let out = run(&["scan", &input, "--analyzers", "digest", "-q", "--format", "json"]);
    assert!(
        out.stderr.is_empty(),
        "--quiet printed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["scan", &input, "--analyzers", "digest", "--format", "json"]);
    assert!(out.stderr.iter().all(|&b| b != 0x1b), "terminal escapes on a pipe");
    Ok(())
}

/// `--format cyclonedx` lists the demo firmware's components with their evidence and known
/// vulnerabilities, is valid CycloneDX 1.5 (the official schema, through cyclonedx-python-lib's
/// strict validator), and keeps its serial number for the same file.
#[test]
fn a_cyclonedx_sbom_lists_the_components_and_is_valid_1_5() -> Result<(), Box<dyn std::error::Error>> {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/fixtures/demo/firmware-demo.bin");
    let demo = demo.to_string_lossy();
    let bom_of = || -> Result<(Vec<u8>, serde_json::Value), Box<dyn std::error::Error>> {
        let out = run(&["scan", &demo, "-q", "--format", "cyclonedx"]);
        // 1: the demo's vulnerable versions are at or above the default --fail-on (high).
        assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
        let bom = serde_json::from_slice(&out.stdout)?;
        Ok((out.stdout, bom))
    };
    let (raw, bom) = bom_of()?;
    assert_eq!(
        (bom["bomFormat"].as_str(), bom["specVersion"].as_str()),
        (Some("CycloneDX"), Some("1.5"))
    );
    let components = bom["components"].as_array().ok_or("components")?;
    let mut found: Vec<(String, String)> = components
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["version"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    found.sort();
    let expected = [
        ("BusyBox", "1.21.1"),
        ("OpenSSH", "7.4"),
        ("OpenSSL", "1.0.1f"),
        ("U-Boot", "2016.01"),
    ];
    assert_eq!(found, expected.map(|(n, v)| (n.to_owned(), v.to_owned())));
    for c in components {
        let location = c["evidence"]["occurrences"][0]["location"].as_str().unwrap_or_default();
        assert!(location.starts_with("offset 0x"), "{c}");
    }
    let refs: Vec<&str> = components.iter().filter_map(|c| c["bom-ref"].as_str()).collect();
    let vulns = bom["vulnerabilities"].as_array().ok_or("vulnerabilities")?;
    assert!(!vulns.is_empty(), "the demo's versions have known vulnerabilities");
    for v in vulns {
        for a in v["affects"].as_array().ok_or("affects")? {
            assert!(refs.contains(&a["ref"].as_str().unwrap_or_default()), "{v}");
        }
    }
    assert_eq!(
        bom_of()?.1["serialNumber"],
        bom["serialNumber"],
        "same file, same BOM identity"
    );

    let mut python = Command::new("python3")
        .args([
            "-c",
            "import sys\n\
             try:\n    from cyclonedx.validation.json import JsonStrictValidator\n    from cyclonedx.schema import SchemaVersion\n\
             except ImportError:\n    sys.exit('cyclonedx-python-lib[json-validation] is missing (scripts/test.sh installs it)')\n\
             err = JsonStrictValidator(SchemaVersion.V1_5).validate_str(sys.stdin.read())\n\
             sys.exit(str(err) if err else 0)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(python.stdin.as_mut().ok_or("stdin")?, &raw)?;
    let verdict = python.wait_with_output()?;
    assert!(verdict.status.success(), "{}", String::from_utf8_lossy(&verdict.stderr));
    Ok(())
}
