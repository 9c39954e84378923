//! Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902), and strategic merge patch,
//! approximated: merge, except that lists of named items (`containers`, `ports`, `env`, ...) merge
//! by `name` and `conditions` by `type`, and `$`-directives are dropped.

use serde_json::Value;

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchKind {
    pub fn from_content_type(content_type: &str) -> Result<Self, ApiError> {
        let mime = content_type.split(';').next().unwrap_or_default().trim();
        match mime {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/json-patch+json" => Ok(Self::Json),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" | "application/apply-patch+cbor" => {
                Ok(Self::Apply)
            }
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }
}

/// Applies a merge, JSON or strategic patch to `target`.
pub fn apply_patch(kind: PatchKind, target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    match kind {
        PatchKind::Merge => {
            json_patch::merge(target, patch);
            Ok(())
        }
        PatchKind::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            // A failed `test` operation or a missing path is a 422, as the API server answers.
            json_patch::patch(target, &ops).map_err(|e| ApiError {
                code: 422,
                reason: "Invalid",
                message: format!("the server rejected our request due to an error in our request: {e}"),
                details: None,
            })
        }
        PatchKind::Strategic => {
            strategic_merge(target, patch);
            Ok(())
        }
        PatchKind::Apply => Err(ApiError::internal("server-side apply is not a plain patch")),
    }
}

/// The key a list's items merge on, guessed from the items (the real server reads it from the
/// Go types; this covers containers, ports, env, volumes, volumeMounts and conditions).
fn merge_key(items: &[Value]) -> Option<&'static str> {
    ["name", "type", "containerPort", "mountPath"]
        .into_iter()
        .find(|k| !items.is_empty() && items.iter().all(|i| i.get(*k).is_some()))
}

pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Some(target_map) = target.as_object_mut() else {
        return;
    };
    for (key, value) in patch_map {
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                target_map.remove(key);
            }
            Value::Object(_) => strategic_merge(target_map.entry(key.clone()).or_insert(Value::Null), value),
            Value::Array(items) => {
                let existing = target_map.get_mut(key).and_then(Value::as_array_mut);
                match (existing, merge_key(items)) {
                    (Some(current), Some(k)) => {
                        for item in items {
                            let id = item.get(k);
                            if item.get("$patch").and_then(Value::as_str) == Some("delete") {
                                current.retain(|c| c.get(k) != id);
                            } else if let Some(slot) = current.iter_mut().find(|c| c.get(k) == id) {
                                strategic_merge(slot, item);
                            } else {
                                let mut fresh = Value::Null;
                                strategic_merge(&mut fresh, item);
                                current.push(fresh);
                            }
                        }
                    }
                    _ => {
                        target_map.insert(key.clone(), value.clone());
                    }
                }
            }
            _ => {
                target_map.insert(key.clone(), value.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merges_named_lists() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        strategic_merge(
            &mut pod,
            &json!({"$setElementOrder/containers": [], "spec": {"containers": [{"name": "b", "image": "z"}, {"name": "c"}]}}),
        );
        assert_eq!(
            pod,
            json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "z"}, {"name": "c"}]}})
        );
    }

    #[test]
    fn json_patch_test_failure_is_invalid() {
        let mut doc = json!({"a": 1});
        let err = apply_patch(
            PatchKind::Json,
            &mut doc,
            &json!([{"op": "test", "path": "/a", "value": 2}]),
        );
        assert_eq!(err.map_err(|e| e.code), Err(422));
    }
}
