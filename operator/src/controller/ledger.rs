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
    /// Slots being given up whose release is not written yet: still counted, so a slot is never
    /// handed to another job before the API shows the previous holder let go of it.
    releasing: HashMap<String, String>,
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
    /// Slots held on each server (including releases not yet written), `uid` excluded.
    pub fn load_excluding(&self, uid: &str) -> BTreeMap<String, usize> {
        let mut load = BTreeMap::new();
        for (holder, server) in self.holds.iter().chain(&self.releasing) {
            if holder != uid {
                *load.entry(server.clone()).or_insert(0) += 1;
            }
        }
        load
    }

    /// Records what `uid` holds now, immediately; returns what it held before.
    pub fn set(&mut self, uid: &str, server: Option<String>) -> Option<String> {
        match server {
            Some(server) => self.holds.insert(uid.to_owned(), server),
            None => self.holds.remove(uid),
        }
    }

    /// Starts a change of what `uid` holds: a new slot counts at once, a slot given up keeps
    /// counting until [`Inner::commit`]. Returns what it held before, for [`Inner::rollback`].
    pub fn begin(&mut self, uid: &str, server: Option<String>) -> Option<String> {
        let previous = self.set(uid, server.clone());
        if let Some(prev) = &previous
            && Some(prev) != server.as_ref()
        {
            self.releasing.insert(uid.to_owned(), prev.clone());
        }
        previous
    }

    /// The change is written: a slot given up is free now. Returns whether one was.
    pub fn commit(&mut self, uid: &str) -> bool {
        self.releasing.remove(uid).is_some()
    }

    /// The change could not be written: `uid` holds what it held before.
    pub fn rollback(&mut self, uid: &str, previous: Option<String>) {
        self.releasing.remove(uid);
        self.set(uid, previous);
    }

    pub fn holding(&self, uid: &str) -> Option<&str> {
        self.holds.get(uid).map(String::as_str)
    }

    /// Total slots held per server.
    pub fn load(&self) -> BTreeMap<String, usize> {
        self.load_excluding("")
    }

    /// Drops holders that no longer exist; returns how many slots that freed.
    pub fn retain(&mut self, exists: impl Fn(&str) -> bool) -> usize {
        let before = self.holds.len();
        self.holds.retain(|uid, _| exists(uid));
        let freed = before - self.holds.len();
        self.releasing.retain(|uid, _| exists(uid));
        let gone: Vec<String> = self.waiting_keys.keys().filter(|uid| !exists(uid)).cloned().collect();
        for uid in gone {
            self.unwait(&uid);
        }
        freed
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
    fn a_slot_given_up_counts_until_the_release_is_written() {
        let ledger = Ledger::default();
        let mut l = ledger.lock();
        l.set("a", Some("0".into()));
        // a moves from server 0 to 1: both count until the move is written.
        assert_eq!(l.begin("a", Some("1".into())), Some("0".into()));
        assert_eq!(
            l.load_excluding("b"),
            BTreeMap::from([("0".into(), 1), ("1".into(), 1)])
        );
        assert!(l.commit("a"));
        assert_eq!(l.load_excluding("b"), BTreeMap::from([("1".into(), 1)]));
        // a finishes, but the write fails: it holds server 1 again.
        assert_eq!(l.begin("a", None), Some("1".into()));
        assert_eq!(l.load_excluding("b"), BTreeMap::from([("1".into(), 1)]));
        l.rollback("a", Some("1".into()));
        assert_eq!(l.holding("a"), Some("1"));
        assert!(!l.commit("a"));
        // Acquiring counts at once, and there is nothing to release.
        assert_eq!(l.begin("c", Some("2".into())), None);
        assert_eq!(l.load_excluding("b").get("2"), Some(&1));
        assert!(!l.commit("c"));
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
