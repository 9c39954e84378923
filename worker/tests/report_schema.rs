//! The committed report schema is exactly what the code generates, and reports follow it.

use std::path::Path;

use streamscan_engine::report::{REGENERATE_COMMAND, SCHEMA_PATH, schema_json};

#[test]
fn committed_report_schema_matches_the_code() -> Result<(), serde_json::Error> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(SCHEMA_PATH);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == schema_json()?,
        "{SCHEMA_PATH} is out of date with the Rust types (or missing). Regenerate it with:\n    {REGENERATE_COMMAND}\nand commit the result."
    );
    Ok(())
}

#[test]
fn schema_requires_the_documented_fields() -> Result<(), serde_json::Error> {
    let schema: serde_json::Value = serde_json::from_str(&schema_json()?)?;
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    for field in [
        "bytes",
        "digests",
        "findings",
        "analyzers",
        "dropped",
        "summaries",
        "timings",
    ] {
        if field == "dropped" {
            continue; // omitted when nothing was dropped
        }
        assert!(required.contains(&field), "{field} not required: {required:?}");
    }
    let finding = &schema["$defs"]["Finding"];
    let finding_required: Vec<&str> = finding["required"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    for field in ["analyzer", "rule", "severity", "offset", "message"] {
        assert!(finding_required.contains(&field), "finding.{field} not required");
    }
    Ok(())
}
