//! Live fan-out: each connected client has a bounded queue; a publish never waits, and a client
//! whose queue is full is cut off (it resumes from Redis) so that it cannot slow the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

/// One progress event as pushed to clients: the exact Kafka JSON and its identity.
#[derive(Debug)]
pub struct Published {
    pub analyze_id: String,
    pub event_id: String,
    pub attempt: u32,
    pub seq: u64,
    pub payload: Bytes,
}

struct Slot {
    id: u64,
    tx: mpsc::Sender<Arc<Published>>,
    overflowed: Arc<AtomicBool>,
}

#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    by_analysis: Mutex<HashMap<String, Vec<Slot>>>,
    next_id: AtomicU64,
    queue: usize,
}

/// A client's end: events in publish order; `overflowed` tells why it ended.
pub struct Subscription {
    pub rx: mpsc::Receiver<Arc<Published>>,
    overflowed: Arc<AtomicBool>,
    id: u64,
    analyze_id: String,
    hub: Hub,
}

impl Subscription {
    /// Whether the hub dropped this client because its queue was full.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::SeqCst)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(&self.analyze_id, self.id);
    }
}

impl Hub {
    /// `queue`: events a client may fall behind before it is disconnected.
    pub fn new(queue: usize) -> Self {
        Hub {
            inner: Arc::new(Inner {
                by_analysis: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                queue: queue.max(1),
            }),
        }
    }

    pub fn subscribe(&self, analyze_id: &str) -> Subscription {
        let (tx, rx) = mpsc::channel(self.inner.queue);
        let overflowed = Arc::new(AtomicBool::new(false));
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut map = self.lock();
        map.entry(analyze_id.to_owned()).or_default().push(Slot {
            id,
            tx,
            overflowed: overflowed.clone(),
        });
        Subscription {
            rx,
            overflowed,
            id,
            analyze_id: analyze_id.to_owned(),
            hub: self.clone(),
        }
    }

    /// Hands `event` to every subscriber of its analysis; returns (delivered, dropped slow clients).
    pub fn publish(&self, event: Arc<Published>) -> (usize, usize) {
        let mut map = self.lock();
        let Some(slots) = map.get_mut(&event.analyze_id) else {
            return (0, 0);
        };
        let (mut delivered, mut dropped) = (0, 0);
        slots.retain(|slot| match slot.tx.try_send(event.clone()) {
            Ok(()) => {
                delivered += 1;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Dropping the sender ends the client's stream once it drains what it has.
                slot.overflowed.store(true, Ordering::SeqCst);
                dropped += 1;
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if slots.is_empty() {
            map.remove(&event.analyze_id);
        }
        (delivered, dropped)
    }

    #[cfg(test)]
    fn subscribers(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    fn remove(&self, analyze_id: &str, id: u64) {
        let mut map = self.lock();
        if let Some(slots) = map.get_mut(analyze_id) {
            slots.retain(|s| s.id != id);
            if slots.is_empty() {
                map.remove(analyze_id);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Slot>>> {
        // A panic while holding the lock leaves the map consistent (every operation is a single
        // retain/push), so a poisoned lock is still usable.
        self.inner.by_analysis.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64) -> Arc<Published> {
        Arc::new(Published {
            analyze_id: "a".into(),
            event_id: "e".into(),
            attempt: 1,
            seq,
            payload: Bytes::from_static(b"{}"),
        })
    }

    #[tokio::test]
    async fn slow_subscriber_is_dropped_without_blocking_others() {
        let hub = Hub::new(2);
        let mut fast = hub.subscribe("a");
        let slow = hub.subscribe("a");
        for seq in 0..3 {
            hub.publish(ev(seq));
            assert_eq!(fast.rx.recv().await.map(|e| e.seq), Some(seq));
        }
        assert!(slow.overflowed());
        assert!(!fast.overflowed());
        assert_eq!(hub.subscribers(), 1);
        drop(fast);
        assert_eq!(hub.subscribers(), 0);
    }
}
