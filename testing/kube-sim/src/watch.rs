//! Watches: newline-delimited JSON watch events from a resourceVersion, with bookmarks,
//! `timeoutSeconds`, `sendInitialEvents`, selector filtering, and 410 Gone (as an ERROR event,
//! the way the API server reports it) for a version that is too old.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::api::{Request, served};
use crate::error::ApiError;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{Change, ChangeType, Store};
use crate::table::{Repr, partial, table};

/// How a watch was asked for.
pub struct WatchRequest {
    pub req: Request,
    pub repr: Repr,
    pub bookmark_interval: Duration,
}

struct Filter {
    req: Request,
    labels: LabelSelector,
    fields: FieldSelector,
    repr: Repr,
}

impl Filter {
    fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }

    /// The watch event for a change, if this watch sees it.
    fn event(&self, change: &Change) -> Option<Value> {
        let rt = &self.req.rt;
        if change.key.group != rt.storage_group() || change.key.resource != rt.resource {
            return None;
        }
        if rt.namespaced
            && let Some(ns) = &self.req.namespace
            && *ns != change.key.namespace
        {
            return None;
        }
        let now = self.matches(&change.object);
        let before = change.old.as_ref().is_some_and(|o| self.matches(o));
        let ty = match (change.kind, before, now) {
            (ChangeType::Added, _, true) => "ADDED",
            (ChangeType::Modified, true, true) => "MODIFIED",
            (ChangeType::Modified, false, true) => "ADDED",
            (ChangeType::Modified, true, false) => "DELETED",
            (ChangeType::Deleted, _, true) => "DELETED",
            _ => return None,
        };
        Some(self.wrap(ty, change.object.clone()))
    }

    fn wrap(&self, ty: &str, object: Value) -> Value {
        let object = served(&self.req.rt, object);
        let object = match self.repr {
            Repr::Table => table(&self.req.rt, &[object], None, self.req.param("includeObject")),
            Repr::Metadata => partial(&object),
            Repr::Full => object,
        };
        json!({"type": ty, "object": object})
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Value {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({"type": "BOOKMARK", "object": {"kind": self.req.rt.kind, "apiVersion": self.req.rt.api_version(), "metadata": metadata}})
    }
}

fn line(event: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(event).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// Starts a watch and returns its streaming response.
pub fn watch(store: Arc<Store>, w: WatchRequest) -> Result<Response, ApiError> {
    let (labels, fields) = w.req.selectors()?;
    let req = w.req;
    let bookmarks = req.param("allowWatchBookmarks") == Some("true");
    let send_initial = req.param("sendInitialEvents") == Some("true");
    let timeout = req
        .param("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let from: Option<u64> = match req.param("resourceVersion") {
        None | Some("0") => None,
        Some(rv) => Some(
            rv.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?,
        ),
    };
    let filter = Filter {
        req,
        labels,
        fields,
        repr: w.repr,
    };

    // Without a version (or with sendInitialEvents) the watch starts with the current objects.
    let (initial, start_rv) = match from {
        Some(rv) if !send_initial => (Vec::new(), rv),
        _ => {
            let inner = store.lock();
            let ns = if filter.req.rt.namespaced {
                filter.req.namespace.as_deref()
            } else {
                None
            };
            let objects: Vec<Value> = inner
                .list(filter.req.rt.storage_group(), &filter.req.rt.resource, ns)
                .into_iter()
                .filter(|o| filter.matches(o))
                .cloned()
                .collect();
            (objects, inner.current_rv())
        }
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let Some(start) = store.watch_from(start_rv) else {
        let gone = ApiError::gone(format!(
            "too old resource version: {start_rv} ({})",
            store.lock().current_rv()
        ));
        let event = json!({"type": "ERROR", "object": gone.status()});
        tokio::spawn(async move {
            let _ = tx.send(line(&event)).await;
        });
        return Ok(stream_response(rx));
    };
    let interval = w.bookmark_interval;
    tokio::spawn(async move {
        let mut last_rv = start_rv;
        let mut out: Vec<Value> = initial.into_iter().map(|o| filter.wrap("ADDED", o)).collect();
        if send_initial {
            out.push(filter.bookmark(start_rv, true));
        }
        for change in &start.backlog {
            last_rv = last_rv.max(change.rv);
            out.extend(filter.event(change));
        }
        for event in out {
            if tx.send(line(&event)).await.is_err() {
                return;
            }
        }
        let (mut live, mut closed) = (start.live, start.closed);
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            let event = tokio::select! {
                received = live.recv() => match received {
                    Ok(change) if change.rv <= last_rv => continue,
                    Ok(change) => {
                        last_rv = change.rv;
                        match filter.event(&change) {
                            Some(e) => e,
                            None => continue,
                        }
                    }
                    // A watcher too slow to keep up is cut off; it resumes from its last version.
                    Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => return,
                },
                _ = ticker.tick(), if bookmarks => filter.bookmark(last_rv, false),
                _ = &mut deadline => return,
                _ = closed.changed() => return,
                _ = tx.closed() => return,
            };
            if tx.send(line(&event)).await.is_err() {
                return;
            }
        }
    });
    Ok(stream_response(rx))
}

fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}
