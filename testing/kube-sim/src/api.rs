//! The verbs: get, list, create, update (PUT), patch, with the object semantics of the API server
//! (uid, creationTimestamp, resourceVersion, generation, status subresource, optimistic
//! concurrency, validation of custom resources, CRDs that serve new kinds).

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::apply::{Writer, record_update, server_side_apply};
use crate::delete;
use crate::error::{ApiError, Cause};
use crate::patch::{PatchKind, apply_patch};
use crate::resources::{CRD_GROUP, CRD_RESOURCE, ResourceType};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{Inner, ObjKey};
use crate::validation::{non_metadata, validate_custom};

/// One request against one resource type, parsed from the path and query.
#[derive(Debug, Clone)]
pub struct Request {
    pub rt: ResourceType,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
    pub query: HashMap<String, String>,
    /// `fieldManager`, or what the User-Agent says (as the API server defaults it).
    pub manager: String,
}

/// What a write returns: the object and any warnings (`Warning` headers).
#[derive(Debug)]
pub struct Written {
    pub object: Value,
    pub created: bool,
    pub warnings: Vec<String>,
}

impl Request {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    pub fn key(&self, name: &str) -> ObjKey {
        ObjKey {
            group: self.rt.storage_group().to_owned(),
            resource: self.rt.resource.clone(),
            namespace: if self.rt.namespaced {
                self.namespace.clone().unwrap_or_default()
            } else {
                String::new()
            },
            name: name.to_owned(),
        }
    }

    fn name(&self) -> Result<&str, ApiError> {
        self.name.as_deref().ok_or_else(ApiError::method_not_allowed)
    }

    pub fn dry_run(&self) -> bool {
        self.param("dryRun") == Some("All")
    }

    fn on_status(&self) -> bool {
        self.subresource.as_deref() == Some("status")
    }

    fn writer(&self) -> Writer<'_> {
        Writer {
            manager: &self.manager,
            api_version: "",
            subresource: if self.on_status() { "status" } else { "" },
        }
    }

    pub fn selectors(&self) -> Result<(LabelSelector, FieldSelector), ApiError> {
        Ok((
            LabelSelector::parse(self.param("labelSelector").unwrap_or_default())?,
            FieldSelector::parse(self.param("fieldSelector").unwrap_or_default())?,
        ))
    }

    fn not_found(&self, name: &str) -> ApiError {
        ApiError::not_found(&self.rt.qualified(), name)
    }
}

/// The object as stored: the requested kind, in the storage shape.
fn stored(rt: &ResourceType, object: Value) -> Value {
    if crate::events::is_events_view(&rt.group, &rt.resource) {
        return crate::events::to_core(object);
    }
    served(rt, object)
}

/// The object as served at the requested version.
pub fn served(rt: &ResourceType, mut object: Value) -> Value {
    if crate::events::is_events_view(&rt.group, &rt.resource) {
        return crate::events::from_core(object);
    }
    object["apiVersion"] = Value::String(rt.api_version());
    object["kind"] = Value::String(rt.kind.clone());
    object
}

pub fn get(inner: &Inner, req: &Request) -> Result<Value, ApiError> {
    let name = req.name()?;
    inner
        .get(&req.key(name))
        .map(|o| served(&req.rt, o.clone()))
        .ok_or_else(|| req.not_found(name))
}

/// Matching objects and the list's resourceVersion; `limit` and `continue` page through them.
pub fn list(inner: &Inner, req: &Request) -> Result<(Vec<Value>, u64, Option<String>), ApiError> {
    let (labels, fields) = req.selectors()?;
    let namespace = if req.rt.namespaced {
        req.namespace.as_deref()
    } else {
        None
    };
    let mut items: Vec<Value> = inner
        .list(req.rt.storage_group(), &req.rt.resource, namespace)
        .into_iter()
        .filter(|o| labels.matches(o) && fields.matches(o))
        .map(|o| served(&req.rt, o.clone()))
        .collect();
    let position = |o: &Value| {
        let s = |p: &str| o.pointer(p).and_then(Value::as_str).unwrap_or_default().to_owned();
        format!("{}/{}", s("/metadata/namespace"), s("/metadata/name"))
    };
    if let Some(after) = req.param("continue") {
        items.retain(|o| position(o).as_str() > after);
    }
    let mut next = None;
    if let Some(limit) = req
        .param("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        && items.len() > limit
    {
        items.truncate(limit);
        next = items.last().map(position);
    }
    Ok((items, inner.current_rv(), next))
}

pub fn now_rfc3339() -> String {
    crate::now_rfc3339()
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object
        .get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn random_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..5].to_owned()
}

pub fn create(inner: &mut Inner, req: &Request, body: Value) -> Result<Written, ApiError> {
    let mut object = body;
    if !object.is_object() {
        return Err(ApiError::bad_request("the body of the request must be an object"));
    }
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    let name = match (meta_str(&object, "name"), meta_str(&object, "generateName")) {
        (Some(n), _) if !n.is_empty() => n.to_owned(),
        (_, Some(prefix)) => format!("{prefix}{}", random_suffix()),
        _ => {
            return Err(invalid(
                req,
                "",
                vec![Cause {
                    reason: "FieldValueRequired".into(),
                    message: "Required value: name or generateName is required".into(),
                    field: "metadata.name".into(),
                }],
            ));
        }
    };
    if let Some(ns) = meta_str(&object, "namespace")
        && req.rt.namespaced
        && req.namespace.as_deref().is_some_and(|n| n != ns)
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let key = req.key(&name);
    if inner.get(&key).is_some() {
        return Err(ApiError::already_exists(&req.rt.qualified(), &name));
    }
    commit(inner, req, &key, None, object, false)
}

/// Checks name, namespace and sets the fields the server owns on a new object.
fn prepare_new(inner: &Inner, req: &Request, key: &ObjKey, object: &mut Value) -> Result<(), ApiError> {
    if !valid_name(&key.name) {
        return Err(invalid(
            req,
            &key.name,
            vec![Cause {
                reason: "FieldValueInvalid".into(),
                message: format!(
                    "Invalid value: \"{}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
                    key.name
                ),
                field: "metadata.name".into(),
            }],
        ));
    }
    if req.rt.namespaced {
        let ns_key = ObjKey {
            group: String::new(),
            resource: "namespaces".into(),
            namespace: String::new(),
            name: key.namespace.clone(),
        };
        if inner.get(&ns_key).is_none() {
            return Err(ApiError::not_found("namespaces", &key.namespace));
        }
    }
    let meta = &mut object["metadata"];
    meta["uid"] = Value::String(uuid::Uuid::new_v4().to_string());
    meta["creationTimestamp"] = Value::String(now_rfc3339());
    meta["generation"] = json!(1);
    if let Some(m) = meta.as_object_mut() {
        for server_owned in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
            "managedFields",
        ] {
            m.remove(server_owned);
        }
    }
    if req.rt.status_subresource
        && let Some(map) = object.as_object_mut()
    {
        map.remove("status");
        match (req.rt.group.as_str(), req.rt.resource.as_str()) {
            ("", "pods") => {
                map.insert("status".into(), json!({"phase": "Pending"}));
            }
            ("", "namespaces") => {
                map.insert("status".into(), json!({"phase": "Active"}));
            }
            _ => {}
        }
    }
    Ok(())
}

fn invalid(req: &Request, name: &str, causes: Vec<Cause>) -> ApiError {
    ApiError::invalid(&req.rt.group_kind(), &req.rt.group, &req.rt.kind, name, causes)
}

/// The one write path of every verb: fixes identity, applies the status-subresource rules,
/// validates, bumps generation, records field managers, then stores (or not, on dry run or no-op).
fn commit(
    inner: &mut Inner,
    req: &Request,
    key: &ObjKey,
    old: Option<&Value>,
    mut new: Value,
    applied: bool,
) -> Result<Written, ApiError> {
    let rt = &req.rt;
    new = stored(rt, new);
    if !new.get("metadata").is_some_and(Value::is_object) {
        new["metadata"] = json!({});
    }
    new["metadata"]["name"] = Value::String(key.name.clone());
    if rt.namespaced {
        new["metadata"]["namespace"] = Value::String(key.namespace.clone());
    } else if let Some(m) = new["metadata"].as_object_mut() {
        m.remove("namespace");
    }
    match old {
        None => {
            let managed = new.pointer("/metadata/managedFields").cloned();
            prepare_new(inner, req, key, &mut new)?;
            if let (true, Some(managed)) = (applied, managed) {
                new["metadata"]["managedFields"] = managed;
            }
        }
        Some(old) => {
            if req.on_status() {
                // /status changes status only.
                let mut base = old.clone();
                base["status"] = new.get("status").cloned().unwrap_or(Value::Null);
                if let Some(mf) = new.pointer("/metadata/managedFields") {
                    base["metadata"]["managedFields"] = mf.clone();
                }
                new = base;
            } else if rt.status_subresource {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            for server_owned in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match old.pointer(&format!("/metadata/{server_owned}")) {
                    Some(v) => new["metadata"][server_owned] = v.clone(),
                    None => {
                        if let Some(m) = new["metadata"].as_object_mut() {
                            m.remove(server_owned);
                        }
                    }
                }
            }
            if !applied && !req.on_status() {
                // Clients echo managedFields back; the server keeps its own.
                if let Some(mf) = old.pointer("/metadata/managedFields") {
                    new["metadata"]["managedFields"] = mf.clone();
                } else if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove("managedFields");
                }
            }
            if new.pointer("/metadata/deletionTimestamp").is_some() {
                let before = finalizers(old);
                if finalizers(&new).iter().any(|f| !before.contains(f)) {
                    return Err(ApiError::invalid(
                        &rt.group_kind(),
                        &rt.group,
                        &rt.kind,
                        &key.name,
                        vec![Cause {
                            reason: "FieldValueForbidden".into(),
                            message: "Forbidden: no new finalizers can be added if the object is being deleted".into(),
                            field: "metadata.finalizers".into(),
                        }],
                    ));
                }
            }
        }
    }
    if let Some(m) = new.as_object_mut()
        && m.get("status").is_some_and(Value::is_null)
    {
        m.remove("status");
    }

    let mut warnings = Vec::new();
    if let Some(schema) = &rt.schema {
        match validate_custom(schema, &mut new, old) {
            Ok(unknown) if !unknown.is_empty() => match req.param("fieldValidation") {
                Some("Strict") => {
                    let list: Vec<String> = unknown.iter().map(|u| format!("unknown field \"{u}\"")).collect();
                    return Err(ApiError::bad_request(format!(
                        "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                        rt.kind,
                        rt.version,
                        rt.kind,
                        list.join(", ")
                    )));
                }
                Some("Ignore") => {}
                _ => warnings.extend(unknown.iter().map(|u| format!("unknown field \"{u}\""))),
            },
            Ok(_) => {}
            Err(causes) => return Err(invalid(req, &key.name, causes)),
        }
    }
    if rt.group == CRD_GROUP && rt.resource == CRD_RESOURCE && !req.dry_run() {
        establish_crd(inner, req, &mut new)?;
    }

    if let Some(old) = old {
        let changed = non_metadata(old, rt.status_subresource) != non_metadata(&new, rt.status_subresource);
        let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
        new["metadata"]["generation"] = json!(if changed { generation + 1 } else { generation });
    }
    if !applied {
        let mut writer = req.writer();
        let api_version = rt.api_version();
        writer.api_version = &api_version;
        record_update(old, &mut new, &writer);
    }
    stamp_api_version(&mut new, &rt.api_version());

    if let Some(old) = old
        && same_ignoring_bookkeeping(old, &new)
    {
        // A no-op write changes nothing, not even the resourceVersion; watches see no event.
        return Ok(Written {
            object: served(rt, old.clone()),
            created: false,
            warnings,
        });
    }
    if req.dry_run() {
        return Ok(Written {
            object: served(rt, new),
            created: old.is_none(),
            warnings,
        });
    }
    if new.pointer("/metadata/deletionTimestamp").is_some() && finalizers(&new).is_empty() {
        let object = delete::finalize(inner, key, Some(new));
        return Ok(Written {
            object: object.map(|o| served(rt, o)).unwrap_or(Value::Null),
            created: false,
            warnings,
        });
    }
    let object = inner.put(key.clone(), new);
    Ok(Written {
        object: served(rt, object),
        created: old.is_none(),
        warnings,
    })
}

fn stamp_api_version(object: &mut Value, api_version: &str) {
    if let Some(list) = object
        .pointer_mut("/metadata/managedFields")
        .and_then(Value::as_array_mut)
    {
        for e in list {
            if e.get("apiVersion").and_then(Value::as_str).is_none_or(str::is_empty) {
                e["apiVersion"] = Value::String(api_version.to_owned());
            }
        }
    }
}

fn same_ignoring_bookkeeping(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
            if let Some(list) = m.get_mut("managedFields").and_then(Value::as_array_mut) {
                for e in list {
                    if let Some(e) = e.as_object_mut() {
                        e.remove("time");
                    }
                }
            }
        }
        v
    };
    strip(old) == strip(new)
}

pub fn finalizers(object: &Value) -> Vec<String> {
    object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|f| f.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// Serves the CRD's kinds and marks it Established, as the apiextensions controller would.
fn establish_crd(inner: &mut Inner, req: &Request, crd: &mut Value) -> Result<(), ApiError> {
    inner.registry.register_crd(crd).map_err(|message| {
        invalid(
            req,
            meta_str(crd, "name").unwrap_or_default(),
            vec![Cause {
                reason: "FieldValueInvalid".into(),
                message: format!("Invalid value: {message}"),
                field: "spec".into(),
            }],
        )
    })?;
    let now = now_rfc3339();
    let condition = |ty: &str, reason: &str, message: &str| json!({"type": ty, "status": "True", "reason": reason, "message": message, "lastTransitionTime": now});
    let stored: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                .filter_map(|v| v.get("name").cloned())
                .collect()
        })
        .unwrap_or_default();
    crd["status"] = json!({
        "acceptedNames": crd.pointer("/spec/names").cloned().unwrap_or(Value::Null),
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": stored,
    });
    Ok(())
}

/// PUT.
pub fn update(inner: &mut Inner, req: &Request, body: Value) -> Result<Written, ApiError> {
    let name = req.name()?;
    let key = req.key(name);
    if body
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_some_and(|n| n != name)
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            body.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
        )));
    }
    let old = inner.get(&key).cloned().ok_or_else(|| req.not_found(name))?;
    check_precondition(req, name, &old, body.pointer("/metadata/resourceVersion"))?;
    commit(inner, req, &key, Some(&old), body, false)
}

/// Optimistic concurrency: a given resourceVersion must be the current one.
fn check_precondition(req: &Request, name: &str, current: &Value, given: Option<&Value>) -> Result<(), ApiError> {
    let given = given.and_then(Value::as_str).filter(|s| !s.is_empty());
    let current_rv = current.pointer("/metadata/resourceVersion").and_then(Value::as_str);
    match given {
        Some(g) if Some(g) != current_rv => Err(ApiError::conflict(
            &req.rt.qualified(),
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )),
        _ => Ok(()),
    }
}

/// PATCH: merge, JSON, strategic, or server-side apply (which may create).
pub fn patch(inner: &mut Inner, req: &Request, kind: PatchKind, body: Value) -> Result<Written, ApiError> {
    let name = req.name()?;
    let key = req.key(name);
    let existing = inner.get(&key).cloned();
    if kind == PatchKind::Apply {
        if req.param("fieldManager").is_none() {
            return Err(ApiError::bad_request(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        }
        let live = match &existing {
            Some(o) => served(&req.rt, o.clone()),
            None if req.on_status() => return Err(req.not_found(name)),
            None => json!({"apiVersion": req.rt.api_version(), "kind": req.rt.kind, "metadata": {"name": name}}),
        };
        if let Some(old) = &existing {
            check_precondition(req, name, old, body.pointer("/metadata/resourceVersion"))?;
        }
        let force = req.param("force") == Some("true");
        let mut writer = req.writer();
        let api_version = req.rt.api_version();
        writer.api_version = &api_version;
        let new = server_side_apply(&live, &body, &writer, force, req.rt.status_subresource)?;
        if existing.is_none() {
            // Apply of a missing object creates it, as POST would.
            return commit(inner, req, &key, None, new, true);
        }
        return commit(inner, req, &key, existing.as_ref(), new, true);
    }
    let old = existing.ok_or_else(|| req.not_found(name))?;
    let mut new = served(&req.rt, old.clone());
    apply_patch(kind, &mut new, &body)?;
    let given = match kind {
        PatchKind::Json => new.pointer("/metadata/resourceVersion").cloned(),
        _ => body.pointer("/metadata/resourceVersion").cloned(),
    };
    check_precondition(req, name, &old, given.as_ref())?;
    commit(inner, req, &key, Some(&old), new, false)
}
