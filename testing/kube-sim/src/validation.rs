//! Validation of custom resources as the API server does it: prune unknown fields, apply
//! defaults, check the openAPIV3Schema (types, required, enums, patterns, bounds), then evaluate
//! the `x-kubernetes-validations` CEL rules (transition rules see the old object as `oldSelf`).

use kube::core::cel::{Validator, apply_defaults};
use serde_json::{Map, Value};

use crate::error::Cause;

/// Prunes, defaults and validates `object` in place. `Ok` carries the pruned unknown fields
/// (`spec.foo`), which `fieldValidation=Strict` turns into an error.
pub fn validate_custom(schema: &Value, object: &mut Value, old: Option<&Value>) -> Result<Vec<String>, Vec<Cause>> {
    let mut unknown = Vec::new();
    prune(schema, object, "", true, &mut unknown);
    *object = apply_defaults(schema, object);
    let mut causes = Vec::new();
    check(schema, object, "", &mut causes);
    if causes.is_empty()
        && let Err(errors) = Validator::new().validate(schema, object, old)
    {
        for e in errors {
            causes.push(cel_cause(object, &e.field_path, &e.message, e.reason.as_deref()));
        }
    }
    if causes.is_empty() { Ok(unknown) } else { Err(causes) }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn schema_bool(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

/// Drops fields the schema does not declare, as the API server prunes them.
fn prune(schema: &Value, v: &mut Value, path: &str, root: bool, unknown: &mut Vec<String>) {
    if schema_bool(schema, "x-kubernetes-preserve-unknown-fields") {
        return;
    }
    match v {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let embedded = root || schema_bool(schema, "x-kubernetes-embedded-resource");
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let keep_meta = embedded && matches!(key.as_str(), "apiVersion" | "kind" | "metadata");
                if let Some(sub) = props.and_then(|p| p.get(&key)) {
                    if let Some(child) = map.get_mut(&key) {
                        prune(sub, child, &join(path, &key), false, unknown);
                    }
                } else if let Some(sub) = additional {
                    if let Some(child) = map.get_mut(&key) {
                        prune(sub, child, &join(path, &key), false, unknown);
                    }
                } else if !keep_meta
                    && (props.is_some() || schema.get("type").and_then(Value::as_str) == Some("object"))
                {
                    map.remove(&key);
                    unknown.push(join(path, &key));
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(sub, item, &format!("{path}[{i}]"), false, unknown);
                }
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn cause(reason: &str, field: &str, message: String) -> Cause {
    Cause {
        reason: reason.into(),
        message,
        field: field.into(),
    }
}

fn invalid(field: &str, value: &Value, what: String) -> Cause {
    cause(
        "FieldValueInvalid",
        field,
        format!("Invalid value: {value}: {field} in body {what}"),
    )
}

/// The structural checks, collecting every violation.
fn check(schema: &Value, v: &Value, path: &str, causes: &mut Vec<Cause>) {
    let ty = schema.get("type").and_then(Value::as_str);
    if v.is_null() {
        if !schema_bool(schema, "nullable")
            && let Some(ty) = ty
        {
            causes.push(cause(
                "FieldValueTypeInvalid",
                path,
                format!("Invalid value: \"null\": {path} in body must be of type {ty}: \"null\""),
            ));
        }
        return;
    }
    let actual = type_name(v);
    let int_or_string = schema_bool(schema, "x-kubernetes-int-or-string");
    let type_ok = match ty {
        _ if int_or_string => matches!(actual, "integer" | "string"),
        None => true,
        Some("number") => matches!(actual, "integer" | "number"),
        Some("integer") => actual == "integer" || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        Some(t) => t == actual,
    };
    if !type_ok {
        let t = ty.unwrap_or("integer or string");
        causes.push(cause(
            "FieldValueTypeInvalid",
            path,
            format!("Invalid value: \"{actual}\": {path} in body must be of type {t}: \"{actual}\""),
        ));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().filter(|a| !a.is_null()).map(Value::to_string).collect();
        causes.push(cause(
            "FieldValueNotSupported",
            path,
            format!("Unsupported value: {v}: supported values: {}", list.join(", ")),
        ));
    }
    let num = |k: &str| schema.get(k).and_then(Value::as_f64);
    match v {
        Value::String(s) => {
            let len = s.chars().count() as f64;
            if let Some(max) = num("maxLength")
                && len > max
            {
                causes.push(cause(
                    "FieldValueTooLong",
                    path,
                    format!("Too long: may not be more than {max} bytes"),
                ));
            }
            if let Some(min) = num("minLength")
                && len < min
            {
                causes.push(invalid(path, v, format!("should be at least {min} chars long")));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                match regex::Regex::new(pattern) {
                    Ok(re) if !re.is_match(s) => causes.push(invalid(path, v, format!("should match '{pattern}'"))),
                    Ok(_) => {}
                    Err(e) => causes.push(invalid(path, v, format!("has an invalid pattern {pattern:?}: {e}"))),
                }
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            let exclusive = |k: &str| schema_bool(schema, k);
            if let Some(min) = num("minimum") {
                if exclusive("exclusiveMinimum") && x <= min {
                    causes.push(invalid(path, v, format!("should be greater than {min}")));
                } else if x < min {
                    causes.push(invalid(path, v, format!("should be greater than or equal to {min}")));
                }
            }
            if let Some(max) = num("maximum") {
                if exclusive("exclusiveMaximum") && x >= max {
                    causes.push(invalid(path, v, format!("should be less than {max}")));
                } else if x > max {
                    causes.push(invalid(path, v, format!("should be less than or equal to {max}")));
                }
            }
        }
        Value::Array(items) => {
            let len = items.len() as f64;
            if let Some(max) = num("maxItems")
                && len > max
            {
                causes.push(cause(
                    "FieldValueTooMany",
                    path,
                    format!("Too many: {len}: must have at most {max} items"),
                ));
            }
            if let Some(min) = num("minItems")
                && len < min
            {
                causes.push(invalid(path, v, format!("should have at least {min} items")));
            }
            let list_type = schema.get("x-kubernetes-list-type").and_then(Value::as_str);
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut seen: Vec<Value> = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{path}[{i}]");
                let identity = match list_type {
                    Some("set") => Some(item.clone()),
                    Some("map") => Some(Value::Array(
                        keys.iter()
                            .map(|k| item.get(*k).cloned().unwrap_or(Value::Null))
                            .collect(),
                    )),
                    _ => None,
                };
                if let Some(id) = identity {
                    if seen.contains(&id) {
                        causes.push(cause(
                            "FieldValueDuplicate",
                            &item_path,
                            format!("Duplicate value: {id}"),
                        ));
                    }
                    seen.push(id);
                }
                if let Some(sub) = schema.get("items") {
                    check(sub, item, &item_path, causes);
                }
            }
        }
        Value::Object(map) => {
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for r in required.iter().filter_map(Value::as_str) {
                    if !map.contains_key(r) {
                        causes.push(cause("FieldValueRequired", &join(path, r), "Required value".into()));
                    }
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, child) in map {
                if let Some(sub) = props.and_then(|p| p.get(key)).or(additional) {
                    check(sub, child, &join(path, key), causes);
                }
            }
        }
        _ => {}
    }
}

/// `spec.analyzers[0]` -> the value there.
fn value_at<'a>(object: &'a Value, field_path: &str) -> Option<&'a Value> {
    let mut cur = object;
    for segment in field_path.split('.').filter(|s| !s.is_empty()) {
        let (name, indices) = match segment.find('[') {
            Some(i) => (&segment[..i], &segment[i..]),
            None => (segment, ""),
        };
        if !name.is_empty() {
            cur = cur.get(name)?;
        }
        for index in indices.split(['[', ']']).filter(|s| !s.is_empty()) {
            cur = match index.parse::<usize>() {
                Ok(i) => cur.get(i)?,
                Err(_) => cur.get(index.trim_matches(['\'', '"']))?,
            };
        }
    }
    Some(cur)
}

/// A failed CEL rule, worded as the API server words it:
/// `spec.source: Invalid value: "object": spec.source must set exactly one of ...`.
fn cel_cause(object: &Value, field_path: &str, message: &str, reason: Option<&str>) -> Cause {
    let ty = value_at(object, field_path).map(type_name).unwrap_or("object");
    let (reason, text) = match reason {
        Some("FieldValueForbidden") => ("FieldValueForbidden", format!("Forbidden: {message}")),
        Some("FieldValueRequired") => ("FieldValueRequired", format!("Required value: {message}")),
        Some("FieldValueDuplicate") => ("FieldValueDuplicate", format!("Duplicate value: {message}")),
        _ => ("FieldValueInvalid", format!("Invalid value: \"{ty}\": {message}")),
    };
    cause(reason, field_path, text)
}

/// An object's fields minus `apiVersion`, `kind` and `metadata`: what `generation` tracks.
pub fn non_metadata(object: &Value, exclude_status: bool) -> Map<String, Value> {
    object
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| {
                    !(matches!(k.as_str(), "apiVersion" | "kind" | "metadata") || (exclude_status && *k == "status"))
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 5, "pattern": "^[a-z]+$"},
                        "count": {"type": "integer", "minimum": 1, "maximum": 3, "default": 2},
                        "mode": {"type": "string", "enum": ["a", "b"], "nullable": true},
                        "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                    },
                    "x-kubernetes-validations": [{"rule": "self.name != 'bad'", "message": "name must not be bad"}],
                },
            },
        })
    }

    fn messages(object: Value) -> Vec<String> {
        let mut object = object;
        match validate_custom(&schema(), &mut object, None) {
            Ok(_) => Vec::new(),
            Err(causes) => causes.iter().map(Cause::render).collect(),
        }
    }

    #[test]
    fn defaults_and_pruning() {
        let mut object = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "n"}, "spec": {"name": "ok", "extra": 1, "mode": null}});
        let unknown = validate_custom(&schema(), &mut object, None);
        assert_eq!(unknown, Ok(vec!["spec.extra".to_owned()]));
        assert_eq!(object["spec"], json!({"name": "ok", "count": 2, "mode": null}));
        assert_eq!(object["metadata"]["name"], "n");
    }

    #[test]
    fn structural_errors_are_worded_like_the_api_server() {
        assert_eq!(messages(json!({"spec": {}})), ["spec.name: Required value"]);
        assert_eq!(
            messages(json!({"spec": {"name": "ok", "mode": "c"}})),
            [r#"spec.mode: Unsupported value: "c": supported values: "a", "b""#]
        );
        assert_eq!(
            messages(json!({"spec": {"name": "ok", "count": 9}})),
            ["spec.count: Invalid value: 9: spec.count in body should be less than or equal to 3"]
        );
        assert_eq!(
            messages(json!({"spec": {"name": "ok", "count": "x"}})),
            [r#"spec.count: Invalid value: "string": spec.count in body must be of type integer: "string""#]
        );
        assert_eq!(messages(json!({"spec": {"name": "toolong"}})).len(), 1);
        assert_eq!(messages(json!({"spec": {"name": "A"}})).len(), 1);
        assert_eq!(
            messages(json!({"spec": {"name": "ok", "tags": ["a", "a"]}})),
            [r#"spec.tags[1]: Duplicate value: "a""#]
        );
        assert_eq!(
            messages(json!({"spec": {"name": "ok", "tags": ["a", "b", "c"]}})).len(),
            1
        );
    }

    #[test]
    fn cel_rules_run_after_the_schema() {
        assert_eq!(
            messages(json!({"spec": {"name": "bad"}})),
            [r#"spec: Invalid value: "object": name must not be bad"#]
        );
    }
}
