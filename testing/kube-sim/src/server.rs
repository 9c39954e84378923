//! The HTTP front: routes discovery and resource paths to the verbs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::api::{self, Request, Written};
use crate::delete::{self, DeleteOptions};
use crate::discovery;
use crate::error::ApiError;
use crate::patch::PatchKind;
use crate::store::Store;
use crate::table::{Repr, partial, table};
use crate::watch::{WatchRequest, watch};

/// What every handler shares.
#[derive(Debug)]
pub struct Shared {
    pub store: Arc<Store>,
    /// `host:port` the server listens on, for `/api`'s serverAddressByClientCIDRs.
    pub address: String,
    pub bookmark_interval: Duration,
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/version", get(|| async { axum::Json(discovery::version()) }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .fallback(handle)
        .with_state(shared)
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (code, axum::Json(body.clone())).into_response()
}

/// The path, split: `/apis/{group}/{version}/namespaces/{ns}/{resource}/{name}/{subresource}`.
#[derive(Debug, Default, PartialEq)]
struct Route {
    group: String,
    version: String,
    namespace: Option<String>,
    resource: String,
    name: Option<String>,
    subresource: Option<String>,
}

enum Target {
    OpenApiRoot,
    OpenApiV2,
    OpenApi(String, String),
    CoreVersions,
    Groups,
    Group(String),
    Resources(String, String),
    Object(Route),
}

fn parse(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["openapi", "v2"] => return Some(Target::OpenApiV2),
        ["openapi", "v3"] => return Some(Target::OpenApiRoot),
        ["openapi", "v3", "api", v] => return Some(Target::OpenApi(String::new(), (*v).to_owned())),
        ["openapi", "v3", "apis", g, v] => return Some(Target::OpenApi((*g).to_owned(), (*v).to_owned())),
        ["api"] => return Some(Target::CoreVersions),
        ["apis"] => return Some(Target::Groups),
        ["apis", g] => return Some(Target::Group((*g).to_owned())),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let own = |s: &&str| (*s).to_owned();
    let mut route = Route {
        group: group.to_owned(),
        version: version.to_owned(),
        ..Default::default()
    };
    match rest {
        [] => return Some(Target::Resources(route.group, route.version)),
        // `/api/v1/namespaces/{ns}/status` is the namespace's own subresource.
        ["namespaces", ns, sub @ ("status" | "finalize")] if group.is_empty() => {
            route.resource = "namespaces".into();
            route.name = Some((*ns).to_owned());
            route.subresource = Some((*sub).to_owned());
        }
        ["namespaces", ns, resource, tail @ ..] => {
            route.namespace = Some((*ns).to_owned());
            route.resource = (*resource).to_owned();
            route.name = tail.first().map(own);
            route.subresource = tail.get(1).map(own);
            if tail.len() > 2 {
                return None;
            }
        }
        [resource, tail @ ..] => {
            route.resource = (*resource).to_owned();
            route.name = tail.first().map(own);
            route.subresource = tail.get(1).map(own);
            if tail.len() > 2 {
                return None;
            }
        }
    }
    Some(Target::Object(route))
}

/// The field manager the API server would record: `fieldManager`, else the User-Agent's program.
fn manager(query: &HashMap<String, String>, headers: &HeaderMap) -> String {
    if let Some(m) = query.get("fieldManager").filter(|m| !m.is_empty()) {
        return m.clone();
    }
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .to_owned()
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).or_else(|json_err| {
        // Apply patches may be YAML.
        let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request(format!("invalid body: {json_err}")))?;
        serde_saphyr::from_str::<Value>(text).map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))
    })
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = route(&shared, &method, &uri, &headers, &body);
    match result {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(%method, %uri, code = error.code, message = %error.message, "refused");
            error.into_response()
        }
    }
}

fn route(
    shared: &Arc<Shared>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let query: HashMap<String, String> = Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    let target = parse(uri.path()).ok_or_else(ApiError::no_route)?;
    let store = &shared.store;
    let discovery_doc = |doc: Option<Value>| {
        doc.map(|d| json_response(StatusCode::OK, &d))
            .ok_or_else(ApiError::no_route)
    };
    let route = match target {
        // An OpenAPI v2 document with no definitions (an empty protobuf message): kubectl's
        // client-side validation then knows no schema and leaves validation to the server.
        Target::OpenApiV2 => {
            return Ok((
                [(
                    header::CONTENT_TYPE,
                    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                )],
                Bytes::new(),
            )
                .into_response());
        }
        Target::OpenApiRoot => return discovery_doc(Some(discovery::openapi_root(&store.lock().registry))),
        Target::OpenApi(g, v) => return discovery_doc(discovery::openapi_gv(&store.lock().registry, &g, &v)),
        Target::CoreVersions => return discovery_doc(Some(discovery::core_versions(&shared.address))),
        Target::Groups => return discovery_doc(Some(discovery::group_list(&store.lock().registry))),
        Target::Group(g) => return discovery_doc(discovery::group(&store.lock().registry, &g)),
        Target::Resources(g, v) => return discovery_doc(discovery::resource_list(&store.lock().registry, &g, &v)),
        Target::Object(route) => route,
    };
    let rt = store
        .lock()
        .registry
        .find(&route.group, &route.version, &route.resource)
        .cloned()
        .ok_or_else(ApiError::no_route)?;
    if route.namespace.is_some() && !rt.namespaced {
        return Err(ApiError::no_route());
    }
    if let Some(sub) = &route.subresource
        && !(sub == "status" && rt.status_subresource)
    {
        return Err(ApiError::no_route());
    }
    let req = Request {
        rt,
        namespace: route.namespace,
        name: route.name,
        subresource: route.subresource,
        manager: manager(&query, headers),
        query,
    };
    let repr = Repr::from_headers(headers);
    tracing::trace!(%method, %uri, "request");

    match (method.clone(), req.name.is_some()) {
        (Method::GET, false) if matches!(req.param("watch"), Some("true" | "1")) => watch(
            store.clone(),
            WatchRequest {
                req,
                repr,
                bookmark_interval: shared.bookmark_interval,
            },
        ),
        (Method::GET, true) if matches!(req.param("watch"), Some("true" | "1")) => Err(ApiError::bad_request(
            "watch a single object with a fieldSelector on metadata.name",
        )),
        (Method::GET, false) => {
            let inner = store.lock();
            let (items, rv, next) = api::list(&inner, &req)?;
            if repr == Repr::Table {
                let mut t = table(&req.rt, &items, Some(rv), req.param("includeObject"));
                if let Some(next) = next {
                    t["metadata"]["continue"] = json!(next);
                }
                return Ok(json_response(StatusCode::OK, &t));
            }
            let mut metadata = json!({"resourceVersion": rv.to_string()});
            if let Some(next) = next {
                metadata["continue"] = json!(next);
            }
            if repr == Repr::Metadata {
                let items: Vec<Value> = items.iter().map(partial).collect();
                return Ok(json_response(
                    StatusCode::OK,
                    &json!({
                        "kind": "PartialObjectMetadataList",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": metadata,
                        "items": items,
                    }),
                ));
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "kind": format!("{}List", req.rt.kind),
                    "apiVersion": req.rt.api_version(),
                    "metadata": metadata,
                    "items": items,
                }),
            ))
        }
        (Method::GET, true) => {
            let object = api::get(&store.lock(), &req)?;
            let body = match repr {
                Repr::Table => table(&req.rt, &[object], None, req.param("includeObject")),
                Repr::Metadata => partial(&object),
                Repr::Full => object,
            };
            Ok(json_response(StatusCode::OK, &body))
        }
        (Method::POST, false) => {
            let written = api::create(&mut store.lock(), &req, parse_body(body)?)?;
            Ok(written_response(written))
        }
        (Method::PUT, true) => {
            let written = api::update(&mut store.lock(), &req, parse_body(body)?)?;
            Ok(written_response(written))
        }
        (Method::PATCH, true) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let kind = PatchKind::from_content_type(content_type)?;
            let written = api::patch(&mut store.lock(), &req, kind, parse_body(body)?)?;
            Ok(written_response(written))
        }
        (Method::DELETE, true) => {
            let opts = DeleteOptions::parse(&parse_body(body)?, &req)?;
            let object = delete::delete(&mut store.lock(), &req, &opts)?;
            Ok(json_response(StatusCode::OK, &object))
        }
        (Method::DELETE, false) => {
            let opts = DeleteOptions::parse(&parse_body(body)?, &req)?;
            let mut inner = store.lock();
            let (items, _, _) = api::list(&inner, &req)?;
            let mut deleted = Vec::new();
            for item in items {
                let mut one = req.clone();
                one.namespace = item
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                one.name = item
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                deleted.push(delete::delete(&mut inner, &one, &opts)?);
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "kind": format!("{}List", req.rt.kind),
                    "apiVersion": req.rt.api_version(),
                    "metadata": {"resourceVersion": inner.current_rv().to_string()},
                    "items": deleted,
                }),
            ))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn written_response(written: Written) -> Response {
    let code = if written.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = json_response(code, &written.object);
    for warning in written.warnings {
        let text = format!("299 - \"{}\"", warning.replace('"', "\\\""));
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let Some(Target::Object(r)) = parse("/apis/streamscan.io/v1alpha1/namespaces/ns/analysisjobs/x/status") else {
            panic!("not an object route");
        };
        assert_eq!(
            (r.group.as_str(), r.namespace.as_deref(), r.resource.as_str()),
            ("streamscan.io", Some("ns"), "analysisjobs")
        );
        assert_eq!(
            (r.name.as_deref(), r.subresource.as_deref()),
            (Some("x"), Some("status"))
        );
        let Some(Target::Object(r)) = parse("/api/v1/namespaces/ns/status") else {
            panic!("namespace status")
        };
        assert_eq!(
            (r.resource.as_str(), r.name.as_deref(), r.namespace),
            ("namespaces", Some("ns"), None)
        );
        let Some(Target::Object(r)) = parse("/api/v1/namespaces/ns") else {
            panic!("namespace")
        };
        assert_eq!((r.resource.as_str(), r.name.as_deref()), ("namespaces", Some("ns")));
        let Some(Target::Object(r)) = parse("/api/v1/namespaces") else {
            panic!("namespaces")
        };
        assert_eq!((r.resource.as_str(), r.name), ("namespaces", None));
        assert!(matches!(parse("/apis/apps/v1"), Some(Target::Resources(_, _))));
    }
}
