//! The committed CRD and event schema are exactly what the code generates.

use std::path::Path;

use streamscan_api::generate;

fn check(relative: &str, generated: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{relative} is out of date with the Rust types (or missing). Regenerate it with:\n    {}\nand commit the result.",
        generate::REGENERATE_COMMAND
    );
}

#[test]
fn committed_crd_matches_the_code() -> Result<(), generate::GenerateError> {
    check(generate::CRD_PATH, &generate::crd_yaml()?);
    Ok(())
}

#[test]
fn committed_event_schema_matches_the_code() -> Result<(), generate::GenerateError> {
    check(generate::EVENT_SCHEMA_PATH, &generate::progress_event_schema_json()?);
    Ok(())
}

#[test]
fn crd_names_and_columns() {
    let crd = generate::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("analysisjobs.streamscan.io"));
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names.as_deref(), Some(&["aj".to_owned()][..]));
    assert_eq!(
        crd.spec.names.categories.as_deref(),
        Some(&["streamscan".to_owned()][..])
    );
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.subresources.as_ref().is_some_and(|s| s.status.is_some()));
    let columns: Vec<(String, Option<i32>)> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.clone(), c.priority))
        .collect();
    let expected = [
        ("Phase", None),
        ("Server", None),
        ("Progress", None),
        ("Age", None),
        ("User", Some(1)),
        ("Attempt", Some(1)),
    ];
    assert_eq!(columns, expected.map(|(n, p)| (n.to_owned(), p)));
}

/// A real API server refuses non-structural schemas; these are the rules a generator most often breaks.
#[test]
fn schema_is_structural() -> Result<(), Box<dyn std::error::Error>> {
    let crd = generate::crd();
    let schema = serde_json::to_value(&crd.spec.versions[0].schema)?;
    fn walk(v: &serde_json::Value, path: &str, problems: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for forbidden in [
                    "$ref",
                    "anyOf",
                    "oneOf",
                    "allOf",
                    "not",
                    "additionalItems",
                    "definitions",
                    "$schema",
                ] {
                    if map.contains_key(forbidden) {
                        problems.push(format!("{path}: `{forbidden}`"));
                    }
                }
                if map.contains_key("properties") && map.get("type").and_then(|t| t.as_str()) != Some("object") {
                    problems.push(format!("{path}: properties without type: object"));
                }
                if let Some(props) = map.get("properties").and_then(|p| p.as_object()) {
                    for (name, sub) in props {
                        if sub.get("type").is_none()
                            && sub.get("x-kubernetes-preserve-unknown-fields").is_none()
                            && sub.get("x-kubernetes-int-or-string").is_none()
                        {
                            problems.push(format!("{path}.{name}: no type"));
                        }
                    }
                }
                if map.contains_key("x-kubernetes-preserve-unknown-fields") {
                    problems.push(format!("{path}: preserve-unknown-fields"));
                }
                for (k, sub) in map {
                    walk(sub, &format!("{path}/{k}"), problems);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, sub) in items.iter().enumerate() {
                    walk(sub, &format!("{path}[{i}]"), problems);
                }
            }
            _ => {}
        }
    }
    let mut problems = Vec::new();
    walk(&schema, "", &mut problems);
    assert!(problems.is_empty(), "non-structural schema: {problems:#?}");
    Ok(())
}
