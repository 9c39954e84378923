//! Field ownership (`metadata.managedFields`) and server-side apply.
//!
//! Approximation: ownership is tracked per leaf field path; lists are atomic (owned as a whole).
//! Apply merges the applied configuration into the live object, removes the fields the manager
//! applied before and no longer applies (when nobody else owns them), and refuses with 409 when
//! another manager owns a field the configuration sets to a different value, unless `force`.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::error::{ApiError, Cause};

type Path = Vec<String>;
type FieldSet = BTreeSet<Path>;

/// One `managedFields` entry.
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: String,
    fields: FieldSet,
}

fn now() -> String {
    crate::now_rfc3339()
}

/// Fields that belong to the server or the object's identity, never to a manager.
fn is_identity(path: &[String]) -> bool {
    match path {
        [k] if k == "apiVersion" || k == "kind" => true,
        [m, f, ..] if m == "metadata" => {
            !matches!(f.as_str(), "labels" | "annotations" | "finalizers" | "ownerReferences")
        }
        _ => false,
    }
}

fn leaves(v: &Value, prefix: &mut Path, out: &mut FieldSet) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                prefix.push(k.clone());
                leaves(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {
            if !prefix.is_empty() && !is_identity(prefix) {
                out.insert(prefix.clone());
            }
        }
    }
}

/// The leaf fields an object sets, restricted to `status` or to everything else.
fn fields_of(v: &Value, status_only: bool, drop_status: bool) -> FieldSet {
    let mut all = FieldSet::new();
    leaves(v, &mut Vec::new(), &mut all);
    all.into_iter()
        .filter(|p| {
            let is_status = p.first().is_some_and(|f| f == "status");
            if status_only {
                is_status
            } else {
                !(drop_status && is_status)
            }
        })
        .collect()
}

fn get<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| cur.get(k))
}

fn remove(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for k in parents {
        match cur.get_mut(k) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(map) = cur.as_object_mut() {
        map.remove(last);
    }
}

/// Deep merge where objects merge and everything else replaces.
fn merge_into(target: &mut Value, applied: &Value) {
    match (target, applied) {
        (Value::Object(t), Value::Object(a)) => {
            for (k, v) in a {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge_into(existing, v),
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, a) => *t = a.clone(),
    }
}

fn strip_nulls(v: &mut Value) {
    if let Value::Object(map) = v {
        map.retain(|_, child| !child.is_null());
        map.values_mut().for_each(strip_nulls);
    }
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

fn to_fields_v1(fields: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in fields {
        let mut cur = &mut root;
        for k in path {
            let entry = cur.entry(format!("f:{k}")).or_insert_with(|| Value::Object(Map::new()));
            match entry.as_object_mut() {
                Some(next) => cur = next,
                None => break,
            }
        }
    }
    Value::Object(root)
}

fn from_fields_v1(v: &Value, prefix: &mut Path, out: &mut FieldSet) {
    let children: Vec<(&String, &Value)> = v
        .as_object()
        .map(|m| m.iter().filter(|(k, _)| k.starts_with("f:")).collect())
        .unwrap_or_default();
    if children.is_empty() {
        if !prefix.is_empty() {
            out.insert(prefix.clone());
        }
        return;
    }
    for (k, child) in children {
        prefix.push(k[2..].to_owned());
        from_fields_v1(child, prefix, out);
        prefix.pop();
    }
}

fn read_entries(object: &Value) -> Vec<Entry> {
    let Some(list) = object.pointer("/metadata/managedFields").and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .map(|e| {
            let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
            let mut fields = FieldSet::new();
            if let Some(f) = e.get("fieldsV1") {
                from_fields_v1(f, &mut Vec::new(), &mut fields);
            }
            Entry {
                manager: s("manager"),
                operation: s("operation"),
                api_version: s("apiVersion"),
                time: s("time"),
                subresource: s("subresource"),
                fields,
            }
        })
        .collect()
}

fn write_entries(object: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = Value::String(e.subresource.clone());
            }
            v
        })
        .collect();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Who wrote what, for a request that is not an apply.
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    /// `"status"` for the status subresource.
    pub subresource: &'a str,
}

/// Records an update (create, PUT, non-apply PATCH): the fields it changed now belong to the
/// writer, and nobody else.
pub fn record_update(old: Option<&Value>, new: &mut Value, w: &Writer<'_>) {
    let mut entries = old.map(read_entries).unwrap_or_default();
    let before = old.map(|o| fields_of(o, false, false)).unwrap_or_default();
    let after = fields_of(new, false, false);
    let changed: FieldSet = after
        .iter()
        .filter(|p| !before.contains(*p) || old.and_then(|o| get(o, p)) != get(new, p))
        .cloned()
        .collect();
    // Fields that disappeared belong to nobody any more.
    for e in &mut entries {
        e.fields.retain(|p| after.contains(p) && !changed.contains(p));
    }
    if !changed.is_empty() {
        let position = entries
            .iter()
            .position(|e| e.manager == w.manager && e.operation == "Update" && e.subresource == w.subresource);
        let entry = match position {
            Some(i) => &mut entries[i],
            None => {
                entries.push(Entry {
                    manager: w.manager.to_owned(),
                    operation: "Update".into(),
                    api_version: w.api_version.to_owned(),
                    time: String::new(),
                    subresource: w.subresource.to_owned(),
                    fields: FieldSet::new(),
                });
                let last = entries.len() - 1;
                &mut entries[last]
            }
        };
        entry.fields.extend(changed);
        entry.time = now();
    }
    write_entries(new, &entries);
}

/// Server-side apply of `applied` onto `live` (an empty skeleton when creating). Returns the new
/// object with its managedFields.
pub fn server_side_apply(
    live: &Value,
    applied: &Value,
    w: &Writer<'_>,
    force: bool,
    status_subresource: bool,
) -> Result<Value, ApiError> {
    let on_status = w.subresource == "status";
    let mut entries = read_entries(live);
    // The main endpoint of a kind with a status subresource ignores status, and vice versa.
    let mut applied = applied.clone();
    // A null in an applied configuration means "not set", not "owned and null".
    strip_nulls(&mut applied);
    if status_subresource && let Some(map) = applied.as_object_mut() {
        if on_status {
            map.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status"));
        } else {
            map.remove("status");
        }
    }
    let mut fields = fields_of(&applied, on_status && status_subresource, false);
    if on_status && status_subresource {
        fields.retain(|p| p.first().is_some_and(|f| f == "status"));
    }
    let mine = |e: &Entry| e.manager == w.manager && e.operation == "Apply" && e.subresource == w.subresource;

    let mut conflicts: Vec<(String, Path)> = Vec::new();
    for e in entries.iter().filter(|e| !mine(e)) {
        for owned in &e.fields {
            for f in fields.iter().filter(|f| overlaps(f, owned)) {
                if get(live, owned) != get(&applied, owned) || get(live, f) != get(&applied, f) {
                    conflicts.push((e.manager.clone(), owned.clone()));
                }
            }
        }
    }
    conflicts.sort();
    conflicts.dedup();
    if !conflicts.is_empty() {
        if !force {
            let causes: Vec<Cause> = conflicts
                .iter()
                .map(|(m, p)| Cause {
                    reason: "FieldManagerConflict".into(),
                    message: format!("conflict with \"{m}\""),
                    field: format!(".{}", p.join(".")),
                })
                .collect();
            let list: Vec<String> = conflicts
                .iter()
                .map(|(m, p)| format!("conflict with \"{m}\": .{}", p.join(".")))
                .collect();
            let message = format!(
                "Apply failed with {} conflict{}: {}",
                conflicts.len(),
                if conflicts.len() == 1 { "" } else { "s" },
                list.join(", ")
            );
            return Err(ApiError::apply_conflict(message, causes));
        }
        // Forcing takes the fields away from their previous owners.
        for e in entries.iter_mut().filter(|e| !mine(e)) {
            e.fields
                .retain(|owned| !conflicts.iter().any(|(m, p)| *m == e.manager && p == owned));
        }
    }

    let mut result = live.clone();
    let previous: FieldSet = entries
        .iter()
        .filter(|e| mine(e))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    for dropped in previous.iter().filter(|p| !fields.iter().any(|f| overlaps(f, p))) {
        let owned_elsewhere = entries
            .iter()
            .filter(|e| !mine(e))
            .any(|e| e.fields.iter().any(|o| overlaps(o, dropped)));
        if !owned_elsewhere {
            remove(&mut result, dropped);
        }
    }
    merge_into(&mut result, &applied);

    entries.retain(|e| !mine(e));
    entries.push(Entry {
        manager: w.manager.to_owned(),
        operation: "Apply".into(),
        api_version: w.api_version.to_owned(),
        time: now(),
        subresource: w.subresource.to_owned(),
        fields,
    });
    write_entries(&mut result, &entries);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "v1",
            subresource: "",
        }
    }

    #[test]
    fn apply_conflicts_unless_forced_and_removes_dropped_fields() -> Result<(), ApiError> {
        let live = json!({"metadata": {"name": "x"}});
        let a = server_side_apply(
            &live,
            &json!({"metadata": {"name": "x"}, "data": {"k": "1", "j": "2"}}),
            &writer("a"),
            false,
            false,
        )?;
        assert_eq!(a["data"], json!({"k": "1", "j": "2"}));
        let err = server_side_apply(&a, &json!({"data": {"k": "9"}}), &writer("b"), false, false);
        assert_eq!(err.map_err(|e| e.code).err(), Some(409));
        // Same value: shared ownership, no conflict.
        let shared = server_side_apply(&a, &json!({"data": {"k": "1"}}), &writer("b"), false, false)?;
        let forced = server_side_apply(&shared, &json!({"data": {"j": "3"}}), &writer("b"), true, false)?;
        assert_eq!(forced["data"], json!({"k": "1", "j": "3"}));
        // a stops applying k, which nobody else owns any more: it goes; j belongs to b and stays.
        let again = server_side_apply(&forced, &json!({"metadata": {"name": "x"}}), &writer("a"), false, false)?;
        assert_eq!(again["data"], json!({"j": "3"}));
        Ok(())
    }
}
