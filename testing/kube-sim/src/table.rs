//! `Table` responses (what `kubectl get` asks for): the CRD's additionalPrinterColumns for custom
//! resources, a few columns for built-ins.

use axum::http::HeaderMap;
use serde_json::{Value, json};

use crate::resources::ResourceType;

/// How the client asked to see objects (`Accept: application/json;as=...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr {
    Full,
    /// `as=Table`: what `kubectl get` prints.
    Table,
    /// `as=PartialObjectMetadata[List]`: metadata only, as kube's metadata watchers ask.
    Metadata,
}

impl Repr {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let accept: Vec<&str> = headers
            .get_all(axum::http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        // The first representation the client lists wins, as content negotiation goes.
        for part in accept.iter().flat_map(|v| v.split(',')) {
            if part.contains("as=Table") {
                return Self::Table;
            }
            if part.contains("as=PartialObjectMetadata") {
                return Self::Metadata;
            }
            if part.trim().starts_with("application/json") || part.trim().starts_with("*/*") {
                return Self::Full;
            }
        }
        Self::Full
    }
}

/// An object reduced to its metadata.
pub fn partial(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// `.status.progress.percent` or `.spec.items[0].name` against an object.
fn json_path<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = object;
    let trimmed = path.trim().trim_start_matches('{').trim_end_matches('}');
    for segment in trimmed.split('.').filter(|s| !s.is_empty()) {
        let (name, index) = match segment.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        if !name.is_empty() {
            cur = cur.get(name)?;
        }
        if let Some(i) = index {
            cur = cur.get(i)?;
        }
    }
    Some(cur)
}

/// How long ago, as kubectl prints ages: `42s`, `5m10s`, `3h`, `2d`.
pub fn human_age(timestamp: &str) -> String {
    let Ok(then) = timestamp.parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = (jiff::Timestamp::now().as_second() - then.as_second()).max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match secs {
        s if s < 120 => format!("{s}s"),
        _ if m < 10 => format!("{m}m{}s", secs % 60),
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if d < 8 => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
    }
}

fn column(name: &str, ty: &str, format: &str, priority: i64, description: &str) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
}

fn columns(rt: &ResourceType) -> Vec<Value> {
    let mut cols = vec![column(
        "Name",
        "string",
        "name",
        0,
        "Name must be unique within a namespace.",
    )];
    if rt.printer_columns.is_empty() {
        if rt.group.is_empty() && rt.resource == "pods" {
            cols.push(column("Ready", "string", "", 0, "Ready condition"));
            cols.push(column("Status", "string", "", 0, "Phase"));
            cols.push(column("IP", "string", "", 1, "Pod IP"));
        }
        cols.push(column("Age", "string", "", 0, "Time since creation"));
    } else {
        for c in &rt.printer_columns {
            let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or_default();
            let priority = c.get("priority").and_then(Value::as_i64).unwrap_or(0);
            cols.push(column(s("name"), s("type"), s("format"), priority, s("description")));
        }
    }
    cols
}

fn cells(rt: &ResourceType, object: &Value) -> Vec<Value> {
    let name = object.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
    let created = object
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut cells = vec![name];
    if rt.printer_columns.is_empty() {
        if rt.group.is_empty() && rt.resource == "pods" {
            let ready = object
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| {
                    cs.iter()
                        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
                })
                .and_then(|c| c.get("status").and_then(Value::as_str))
                == Some("True");
            cells.push(json!(if ready { "1/1" } else { "0/1" }));
            cells.push(object.pointer("/status/phase").cloned().unwrap_or(json!("Pending")));
            cells.push(object.pointer("/status/podIP").cloned().unwrap_or(json!("<none>")));
        }
        cells.push(json!(human_age(created)));
    } else {
        for c in &rt.printer_columns {
            let path = c.get("jsonPath").and_then(Value::as_str).unwrap_or_default();
            let value = json_path(object, path).cloned().unwrap_or(Value::Null);
            let cell = match (c.get("type").and_then(Value::as_str), &value) {
                (Some("date"), Value::String(ts)) => json!(human_age(ts)),
                _ => value,
            };
            cells.push(cell);
        }
    }
    cells
}

/// A Table of `objects`; `include_object` is the `includeObject` parameter (default Metadata).
pub fn table(
    rt: &ResourceType,
    objects: &[Value],
    resource_version: Option<u64>,
    include_object: Option<&str>,
) -> Value {
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let embedded = match include_object {
                Some("Object") => o.clone(),
                Some("None") => Value::Null,
                _ => partial(o),
            };
            json!({"cells": cells(rt, o), "object": embedded})
        })
        .collect();
    let mut metadata = json!({});
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = json!(rv.to_string());
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns(rt),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths_and_ages() {
        let o = json!({"status": {"progress": {"percent": 40}, "list": [{"a": 1}]}});
        assert_eq!(json_path(&o, ".status.progress.percent"), Some(&json!(40)));
        assert_eq!(json_path(&o, ".status.list[0].a"), Some(&json!(1)));
        assert_eq!(json_path(&o, ".status.missing"), None);
        assert_eq!(human_age("not a time"), "<unknown>");
        assert!(human_age(&jiff::Timestamp::now().to_string()).ends_with('s'));
    }
}
