//! The capacity ledger: which job holds a slot on which server, as decided by this leader.
//!
//! The job cache lags behind our own status writes, so counting slots from it could place two
//! jobs on the last slot. Every placement decision is made under this ledger's lock and reserved
//! in it at once; the ledger is seeded from the cache when the controller starts leading.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

/// Slots held, and jobs waiting for one (oldest first).
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
pub struct Inner {
    holds: HashMap<String, String>,
    /// (creation time as sortable text, uid) of jobs waiting for capacity, plus their key.
    waiting: BTreeSet<(String, String)>,
    waiting_keys: HashMap<String, (String, WaitingKey)>,
}

/// Namespace and name of a waiting job.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WaitingKey {
    pub namespace: String,
    pub name: String,
}

impl Ledger {
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated (each update is one
        // insert or remove), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inner {
    /// Jobs holding a slot on each server, `uid` excluded.
    pub fn load_excluding(&self, uid: &str) -> BTreeMap<String, usize> {
        let mut load = BTreeMap::new();
        for (holder, server) in &self.holds {
            if holder != uid {
                *load.entry(server.clone()).or_insert(0) += 1;
            }
        }
        load
    }

    /// Records what `uid` holds now; returns what it held before.
    pub fn set(&mut self, uid: &str, server: Option<String>) -> Option<String> {
        match server {
            Some(server) => self.holds.insert(uid.to_owned(), server),
            None => self.holds.remove(uid),
        }
    }

    pub fn holding(&self, uid: &str) -> Option<&str> {
        self.holds.get(uid).map(String::as_str)
    }

    /// Total slots held per server.
    pub fn load(&self) -> BTreeMap<String, usize> {
        self.load_excluding("")
    }

    /// Drops holders that no longer exist.
    pub fn retain(&mut self, exists: impl Fn(&str) -> bool) {
        self.holds.retain(|uid, _| exists(uid));
        let gone: Vec<String> = self.waiting_keys.keys().filter(|uid| !exists(uid)).cloned().collect();
        for uid in gone {
            self.unwait(&uid);
        }
    }

    /// Marks `uid` as waiting for capacity; `created` orders the queue (RFC 3339 sorts as text).
    pub fn wait(&mut self, uid: &str, created: String, key: WaitingKey) {
        if self.waiting_keys.contains_key(uid) {
            return;
        }
        self.waiting.insert((created.clone(), uid.to_owned()));
        self.waiting_keys.insert(uid.to_owned(), (created, key));
    }

    pub fn unwait(&mut self, uid: &str) {
        if let Some((created, _)) = self.waiting_keys.remove(uid) {
            self.waiting.remove(&(created, uid.to_owned()));
        }
    }

    /// The oldest `n` waiting jobs.
    pub fn oldest_waiting(&self, n: usize) -> Vec<WaitingKey> {
        self.waiting
            .iter()
            .take(n)
            .filter_map(|(_, uid)| self.waiting_keys.get(uid).map(|(_, key)| key.clone()))
            .collect()
    }

    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> WaitingKey {
        WaitingKey {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn load_counts_holders_except_the_asking_job() {
        let ledger = Ledger::default();
        let mut l = ledger.lock();
        assert_eq!(l.set("a", Some("0".into())), None);
        l.set("b", Some("0".into()));
        l.set("c", Some("1".into()));
        assert_eq!(
            l.load_excluding("a"),
            BTreeMap::from([("0".into(), 1), ("1".into(), 1)])
        );
        assert_eq!(l.set("a", None), Some("0".into()));
        assert_eq!(l.load(), BTreeMap::from([("0".into(), 1), ("1".into(), 1)]));
        l.retain(|uid| uid != "c");
        assert_eq!(l.load(), BTreeMap::from([("0".into(), 1)]));
    }

    #[test]
    fn waiting_jobs_come_out_oldest_first_once_each() {
        let ledger = Ledger::default();
        let mut l = ledger.lock();
        l.wait("u2", "2026-01-01T00:00:02Z".into(), key("second"));
        l.wait("u1", "2026-01-01T00:00:01Z".into(), key("first"));
        l.wait("u1", "2026-01-01T00:00:01Z".into(), key("first"));
        l.wait("u3", "2026-01-01T00:00:03Z".into(), key("third"));
        assert_eq!(l.waiting_len(), 3);
        assert_eq!(l.oldest_waiting(2), [key("first"), key("second")]);
        l.unwait("u1");
        assert_eq!(l.oldest_waiting(5), [key("second"), key("third")]);
        l.retain(|uid| uid != "u3");
        assert_eq!(l.oldest_waiting(5), [key("second")]);
    }
}
