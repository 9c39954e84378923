//! The object store: every object of every kind, keyed by group/resource/namespace/name, with one
//! global monotonic resourceVersion, a bounded history of changes for watches that resume, and a
//! broadcast channel for live watches.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::{broadcast, watch};

use crate::resources::Registry;

/// Where an object lives. Cluster-scoped objects have an empty namespace. Versions are not part of
/// the key: one stored object is served under every version of its resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    pub group: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One committed change, as watches see it.
#[derive(Debug, Clone)]
pub struct Change {
    pub rv: u64,
    pub key: ObjKey,
    pub kind: ChangeType,
    pub object: Value,
    /// The object before a modification, so that selector-filtered watches can tell an object that
    /// stopped matching (sent as DELETED) from one that started to (sent as ADDED).
    pub old: Option<Value>,
}

/// Changes kept for watches that resume from an older resourceVersion.
const HISTORY: usize = 10_000;

/// Everything behind the store's lock.
#[derive(Debug)]
pub struct Inner {
    rv: u64,
    objects: BTreeMap<ObjKey, Value>,
    history: VecDeque<Arc<Change>>,
    /// Watches must start at or after this resourceVersion; older ones are answered 410 Gone.
    oldest_watchable: u64,
    tx: broadcast::Sender<Arc<Change>>,
    pub registry: Registry,
}

/// The shared store.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    /// Bumped to end every open watch (as when an API server restarts, or on shutdown).
    closer: watch::Sender<u64>,
}

/// What a new watch starts from: the changes it missed and a live feed.
pub struct WatchStart {
    pub backlog: Vec<Arc<Change>>,
    pub live: broadcast::Receiver<Arc<Change>>,
    pub closed: watch::Receiver<u64>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
        let (closer, _) = watch::channel(0);
        Self {
            inner: Mutex::new(Inner {
                rv: 1,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                oldest_watchable: 1,
                tx,
                registry: Registry::builtins(),
            }),
            closer,
        }
    }

    /// The lock. A panic while holding it cannot leave a half-written object (every write is one
    /// map insert), so a poisoned lock is safe to keep using.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a watch after `after_rv`; `None` when that version is compacted away (410 Gone).
    pub fn watch_from(&self, after_rv: u64) -> Option<WatchStart> {
        let inner = self.lock();
        // Subscribing under the lock means no change can fall between the backlog and the feed.
        let live = inner.tx.subscribe();
        if after_rv + 1 < inner.oldest_watchable {
            return None;
        }
        let backlog = inner.history.iter().filter(|c| c.rv > after_rv).cloned().collect();
        Some(WatchStart {
            backlog,
            live,
            closed: self.closer.subscribe(),
        })
    }

    /// Ends every open watch; clients resume from their last resourceVersion.
    pub fn close_watches(&self) {
        self.closer.send_modify(|n| *n += 1);
    }

    /// Simulates etcd compaction while watches are down: every resourceVersion up to now becomes
    /// too old to watch from, and open watches end. Clients must re-list (kube-runtime's watcher
    /// does on 410 Gone).
    pub fn compact(&self) {
        {
            let mut inner = self.lock();
            // A version nobody saw, so that even a watch from the newest listed version is too old.
            inner.rv += 1;
            inner.history.clear();
            inner.oldest_watchable = inner.rv + 1;
        }
        self.close_watches();
    }
}

impl Inner {
    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, key: &ObjKey) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Objects of one resource, in one namespace or all, ordered by namespace and name.
    pub fn list(&self, group: &str, resource: &str, namespace: Option<&str>) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|(k, _)| k.group == group && k.resource == resource && namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, v)| v)
            .collect()
    }

    /// Keys of every object whose ownerReferences name `uid`.
    pub fn dependents_of(&self, uid: &str) -> Vec<ObjKey> {
        self.objects
            .iter()
            .filter(|(_, v)| {
                v.pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| refs.iter().any(|r| r.get("uid").and_then(Value::as_str) == Some(uid)))
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Keys of every object in a namespace.
    pub fn keys_in_namespace(&self, namespace: &str) -> Vec<ObjKey> {
        self.objects
            .keys()
            .filter(|k| k.namespace == namespace)
            .cloned()
            .collect()
    }

    /// Keys of every object of one resource.
    pub fn keys_of(&self, group: &str, resource: &str) -> Vec<ObjKey> {
        self.objects
            .keys()
            .filter(|k| k.group == group && k.resource == resource)
            .cloned()
            .collect()
    }

    pub fn find_uid(&self, uid: &str) -> Option<ObjKey> {
        self.objects
            .iter()
            .find(|(_, v)| v.pointer("/metadata/uid").and_then(Value::as_str) == Some(uid))
            .map(|(k, _)| k.clone())
    }

    /// Stores `object` under a new resourceVersion and tells the watches.
    pub fn put(&mut self, key: ObjKey, mut object: Value) -> Value {
        self.rv += 1;
        set_rv(&mut object, self.rv);
        let old = self.objects.insert(key.clone(), object.clone());
        let kind = if old.is_some() {
            ChangeType::Modified
        } else {
            ChangeType::Added
        };
        self.record(Change {
            rv: self.rv,
            key,
            kind,
            object: object.clone(),
            old,
        });
        object
    }

    /// Removes an object; the DELETED event carries a new resourceVersion, as the API server's does.
    pub fn remove(&mut self, key: &ObjKey) -> Option<Value> {
        let object = self.objects.get(key)?.clone();
        Some(self.remove_as(key, object))
    }

    /// Removes an object whose last state is `object` (the update that dropped its last finalizer):
    /// watches see one DELETED event carrying that state.
    pub fn remove_as(&mut self, key: &ObjKey, mut object: Value) -> Value {
        self.objects.remove(key);
        self.rv += 1;
        set_rv(&mut object, self.rv);
        self.record(Change {
            rv: self.rv,
            key: key.clone(),
            kind: ChangeType::Deleted,
            object: object.clone(),
            old: None,
        });
        object
    }

    fn record(&mut self, change: Change) {
        let change = Arc::new(change);
        if self.history.len() == HISTORY
            && let Some(dropped) = self.history.pop_front()
        {
            self.oldest_watchable = dropped.rv + 1;
        }
        self.history.push_back(change.clone());
        // No receivers is fine: nobody watches.
        let _ = self.tx.send(change);
    }
}

fn set_rv(object: &mut Value, rv: u64) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}
