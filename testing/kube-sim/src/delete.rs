//! Deletion: finalizers (deletionTimestamp first, removal when the last finalizer goes) and
//! garbage collection of dependents through ownerReferences (background, foreground, orphan).
//! The real garbage collector is asynchronous; here it runs within the deleting request, so
//! dependents are gone (or marked for deletion) by the time the response is sent.

use serde_json::{Value, json};

use crate::api::{Request, finalizers, now_rfc3339, served};
use crate::error::ApiError;
use crate::resources::{CRD_GROUP, CRD_RESOURCE};
use crate::store::{Inner, ObjKey};

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

/// The parts of DeleteOptions the simulator honours.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub propagation: Option<Propagation>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub dry_run: bool,
}

impl DeleteOptions {
    /// From the request body (may be empty) and the query string.
    pub fn parse(body: &Value, req: &Request) -> Result<Self, ApiError> {
        let policy = body
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .or(req.param("propagationPolicy"));
        let propagation = match policy {
            None => None,
            Some("Background") => Some(Propagation::Background),
            Some("Foreground") => Some(Propagation::Foreground),
            Some("Orphan") => Some(Propagation::Orphan),
            Some(other) => return Err(ApiError::bad_request(format!("unknown propagationPolicy {other:?}"))),
        };
        let pre = |k: &str| {
            body.pointer(&format!("/preconditions/{k}"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let dry_run = req.dry_run()
            || body
                .get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|v| v == "All"));
        Ok(Self {
            propagation,
            uid: pre("uid"),
            resource_version: pre("resourceVersion"),
            dry_run,
        })
    }
}

fn uid_of(object: &Value) -> String {
    object
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// DELETE of one object. Returns the object: marked for deletion, or as it was when removed.
pub fn delete(inner: &mut Inner, req: &Request, opts: &DeleteOptions) -> Result<Value, ApiError> {
    let name = req.name.as_deref().ok_or_else(ApiError::method_not_allowed)?;
    let key = req.key(name);
    let object = inner
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&req.rt.qualified(), name))?;
    let conflict = |why: &str| ApiError::conflict(&req.rt.qualified(), name, why);
    if let Some(uid) = &opts.uid
        && *uid != uid_of(&object)
    {
        return Err(conflict(&format!(
            "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
            uid_of(&object)
        )));
    }
    if let Some(rv) = &opts.resource_version
        && Some(rv.as_str()) != object.pointer("/metadata/resourceVersion").and_then(Value::as_str)
    {
        return Err(conflict(
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    if opts.dry_run {
        return Ok(served(&req.rt, object));
    }
    let object = delete_key(inner, &key, opts.propagation.unwrap_or(Propagation::Background)).unwrap_or(object);
    Ok(served(&req.rt, object))
}

/// Deletes the object at `key` with a propagation policy; `None` if it does not exist.
pub fn delete_key(inner: &mut Inner, key: &ObjKey, propagation: Propagation) -> Option<Value> {
    let mut object = inner.get(key).cloned()?;
    let uid = uid_of(&object);
    let has_dependents = !inner.dependents_of(&uid).is_empty();
    match propagation {
        Propagation::Orphan => orphan_dependents(inner, &uid),
        Propagation::Foreground if has_dependents => {
            let mut fins = finalizers(&object);
            if !fins.iter().any(|f| f == FOREGROUND) {
                fins.push(FOREGROUND.into());
            }
            object["metadata"]["finalizers"] = json!(fins);
        }
        _ => {}
    }
    if finalizers(&object).is_empty() {
        return finalize(inner, key, None);
    }
    if object.pointer("/metadata/deletionTimestamp").is_none() {
        object["metadata"]["deletionTimestamp"] = Value::String(now_rfc3339());
        object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
    }
    let marked = inner.put(key.clone(), object);
    if propagation == Propagation::Foreground {
        for dependent in inner.dependents_of(&uid) {
            delete_key(inner, &dependent, Propagation::Background);
        }
        release_foreground_owner(inner, key);
    }
    inner.get(key).cloned().or(Some(marked))
}

/// Removes the object for good (its last finalizer is gone), then collects what depended on it.
/// `last_state` is the object as the request left it, when an update removed the last finalizer.
pub fn finalize(inner: &mut Inner, key: &ObjKey, last_state: Option<Value>) -> Option<Value> {
    let removed = match last_state {
        Some(state) => inner.remove_as(key, state),
        None => inner.remove(key)?,
    };
    let uid = uid_of(&removed);
    collect_dependents(inner, &uid);
    // Owners waiting in foreground deletion for this dependent may now go.
    if let Some(refs) = removed.pointer("/metadata/ownerReferences").and_then(Value::as_array) {
        for owner_uid in refs.iter().filter_map(|r| r.get("uid").and_then(Value::as_str)) {
            if let Some(owner) = inner.find_uid(owner_uid) {
                release_foreground_owner(inner, &owner);
            }
        }
    }
    if key.group.is_empty() && key.resource == "namespaces" {
        // The namespace controller's job: everything in the namespace goes with it.
        for inside in inner.keys_in_namespace(&key.name) {
            finalize(inner, &inside, None);
        }
    }
    if key.group == CRD_GROUP && key.resource == CRD_RESOURCE {
        if let Some(plural) = key.name.split_once('.').map(|(p, g)| (p.to_owned(), g.to_owned())) {
            for cr in inner.keys_of(&plural.1, &plural.0) {
                finalize(inner, &cr, None);
            }
        }
        inner.registry.unregister_crd(&key.name);
    }
    Some(removed)
}

/// Background collection: a dependent whose owners are all gone is deleted; one that still has
/// an owner loses the dangling reference.
fn collect_dependents(inner: &mut Inner, uid: &str) {
    for dependent in inner.dependents_of(uid) {
        let Some(mut object) = inner.get(&dependent).cloned() else {
            continue;
        };
        let refs: Vec<Value> = object
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let remaining: Vec<Value> = refs
            .into_iter()
            .filter(|r| {
                let owner = r.get("uid").and_then(Value::as_str).unwrap_or_default();
                owner != uid && inner.find_uid(owner).is_some()
            })
            .collect();
        if remaining.is_empty() {
            delete_key(inner, &dependent, Propagation::Background);
        } else {
            object["metadata"]["ownerReferences"] = Value::Array(remaining);
            inner.put(dependent, object);
        }
    }
}

fn orphan_dependents(inner: &mut Inner, uid: &str) {
    for dependent in inner.dependents_of(uid) {
        let Some(mut object) = inner.get(&dependent).cloned() else {
            continue;
        };
        if let Some(refs) = object
            .pointer_mut("/metadata/ownerReferences")
            .and_then(Value::as_array_mut)
        {
            refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid));
        }
        inner.put(dependent, object);
    }
}

/// An owner in foreground deletion loses its `foregroundDeletion` finalizer once no dependent is
/// left, and goes when that was its last finalizer.
fn release_foreground_owner(inner: &mut Inner, key: &ObjKey) {
    let Some(mut owner) = inner.get(key).cloned() else {
        return;
    };
    let fins = finalizers(&owner);
    if owner.pointer("/metadata/deletionTimestamp").is_none()
        || !fins.iter().any(|f| f == FOREGROUND)
        || !inner.dependents_of(&uid_of(&owner)).is_empty()
    {
        return;
    }
    let rest: Vec<String> = fins.into_iter().filter(|f| f != FOREGROUND).collect();
    owner["metadata"]["finalizers"] = json!(rest);
    if rest.is_empty() {
        finalize(inner, key, Some(owner));
    } else {
        inner.put(key.clone(), owner);
    }
}
