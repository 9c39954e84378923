//! One store for Events, two shapes: `events.k8s.io/v1` Events are stored as core `v1` Events (as
//! the API server does), so `kubectl describe` shows what a kube-runtime `Recorder` publishes.

use serde_json::{Map, Value};

/// (core v1 field, events.k8s.io/v1 field); every other field has the same name in both.
const RENAMES: [(&str, &str); 7] = [
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("count", "deprecatedCount"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("source", "deprecatedSource"),
    ("reportingComponent", "reportingController"),
];

const GROUP: &str = "events.k8s.io";

/// Whether this group/resource is the events.k8s.io view of core Events.
pub fn is_events_view(group: &str, resource: &str) -> bool {
    group == GROUP && resource == "events"
}

fn rename(object: Value, to_core: bool) -> Value {
    let Value::Object(map) = object else { return object };
    let mut out = Map::new();
    for (key, value) in map {
        let renamed = RENAMES
            .iter()
            .find(|(core, new)| if to_core { key == *new } else { key == *core })
            .map(|(core, new)| if to_core { *core } else { *new })
            .unwrap_or(key.as_str())
            .to_owned();
        out.insert(renamed, value);
    }
    Value::Object(out)
}

/// events.k8s.io/v1 -> stored core shape.
pub fn to_core(object: Value) -> Value {
    let mut core = rename(object, true);
    core["apiVersion"] = Value::String("v1".into());
    core["kind"] = Value::String("Event".into());
    core
}

/// Stored core shape -> events.k8s.io/v1.
pub fn from_core(object: Value) -> Value {
    let mut new = rename(object, false);
    new["apiVersion"] = Value::String(format!("{GROUP}/v1"));
    new["kind"] = Value::String("Event".into());
    new
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip() {
        let new = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "regarding": {"name": "x"}, "note": "hi", "reason": "Placed", "series": {"count": 2}});
        let core = to_core(new.clone());
        assert_eq!(core["involvedObject"]["name"], "x");
        assert_eq!(core["message"], "hi");
        assert_eq!(from_core(core), new);
    }
}
