//! Every sample under manifests/samples/ is accepted by the CRD's openAPIV3Schema and CEL rules;
//! every fixture under e2e/fixtures/invalid/ is refused with the message it names.
//!
//! A fixture starts with `# expect: <text>`; the refusal must contain that text. A fixture with two
//! documents is an update: the first is created, the second must be refused as its replacement.

use std::path::{Path, PathBuf};

use jsonschema::error::ValidationErrorKind;
use kube::core::cel::Validator;
use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn open_api_schema() -> Result<Value, Box<dyn std::error::Error>> {
    let crd = streamscan_api::generate::crd();
    let version = crd.spec.versions.first().ok_or("CRD has no version")?;
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .ok_or("CRD has no openAPIV3Schema")?;
    Ok(serde_json::to_value(schema)?)
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

fn documents(path: &Path) -> Result<Vec<Value>, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path)?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Renders a JSON pointer (`/spec/analyzers/0`) as a Kubernetes field path (`spec.analyzers[0]`).
fn field_path(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').filter(|s| !s.is_empty()) {
        if segment.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    out
}

/// Schema and CEL errors, worded the way the API server words them.
fn refusals(schema: &Value, object: &Value, old: Option<&Value>) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let validator = jsonschema::draft4::new(schema)?;
    let mut errors: Vec<String> = validator
        .iter_errors(object)
        .map(|e| {
            let path = field_path(&e.instance_path().to_string());
            match e.kind() {
                ValidationErrorKind::Required { property } => {
                    let property = property.as_str().unwrap_or_default();
                    let full = if path.is_empty() {
                        property.to_owned()
                    } else {
                        format!("{path}.{property}")
                    };
                    format!("{full}: Required value")
                }
                ValidationErrorKind::Enum { .. } => format!("{path}: Unsupported value: {}", e.instance()),
                _ => format!("{path}: Invalid value: {e}"),
            }
        })
        .collect();
    if errors.is_empty()
        && let Err(cel) = Validator::new().validate(schema, object, old)
    {
        errors.extend(cel.iter().map(|e| e.to_string()));
    }
    Ok(errors)
}

#[test]
fn every_sample_is_accepted() -> TestResult {
    let schema = open_api_schema()?;
    let samples = yaml_files(&workspace_root().join("manifests/samples"))?;
    assert!(
        samples.len() >= 3,
        "expected one sample per source kind, found {samples:?}"
    );
    let mut kinds = std::collections::BTreeSet::new();
    for path in samples {
        for doc in documents(&path)? {
            let errors = refusals(&schema, &doc, None)?;
            assert!(errors.is_empty(), "{} is refused: {errors:?}", path.display());
            // The sample must also be a well-typed AnalysisJob.
            let job: streamscan_api::AnalysisJob = serde_json::from_value(doc)?;
            kinds.insert(job.spec.source.kind());
            // Re-applying the same object is never refused by a transition rule.
            let same = serde_json::to_value(&job)?;
            assert!(
                refusals(&schema, &same, Some(&same))?.is_empty(),
                "{} refused as an update",
                path.display()
            );
        }
    }
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), ["upload", "url", "volume"]);
    Ok(())
}

#[test]
fn every_invalid_fixture_is_refused_with_its_message() -> TestResult {
    let schema = open_api_schema()?;
    let fixtures = yaml_files(&workspace_root().join("e2e/fixtures/invalid"))?;
    assert!(fixtures.len() >= 10, "too few invalid fixtures: {fixtures:?}");
    for path in fixtures {
        let text = std::fs::read_to_string(&path)?;
        let expected = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .ok_or_else(|| format!("{} has no `# expect:` line", path.display()))?;
        let docs = documents(&path)?;
        let errors = match docs.as_slice() {
            [object] => refusals(&schema, object, None)?,
            [old, new] => {
                assert!(
                    refusals(&schema, old, None)?.is_empty(),
                    "{}: the original must be valid",
                    path.display()
                );
                refusals(&schema, new, Some(old))?
            }
            _ => return Err(format!("{} must hold one or two documents", path.display()).into()),
        };
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{}: expected a refusal containing {expected:?}, got {errors:?}",
            path.display()
        );
    }
    Ok(())
}
