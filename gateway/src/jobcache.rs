//! The gateway's view of the jobs, for [`crate::admit`]: a watch-fed cache, and a read from the
//! API server when the cache may be behind the event.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use streamscan_api::{AnalysisJob, ProgressEvent};
use tokio_util::sync::CancellationToken;

use crate::admit::{self, JobFacts, Judgement, Refusal};

/// Refusals remembered after a look at the API server, so a flood of events of a deleted job
/// (or forged ones) costs one read per attempt, not one per event.
const REMEMBERED: usize = 4096;
/// Longest wait for one read of a job.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

pub struct JobCache {
    store: Store<AnalysisJob>,
    client: Client,
    namespace: Option<String>,
    refused: Remembered,
}

#[derive(Default)]
struct Remembered {
    why: HashMap<(String, String), Refusal>,
    order: VecDeque<(String, String)>,
}

impl Remembered {
    fn insert(&mut self, key: (String, String), why: Refusal) {
        if self.why.insert(key.clone(), why).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.why.remove(&old);
            }
        }
    }
}

impl JobCache {
    /// Starts watching the jobs (of `namespace`, or of every namespace) until `shutdown`.
    pub fn start(client: Client, namespace: Option<String>, shutdown: CancellationToken) -> Self {
        let api: Api<AnalysisJob> = match &namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let (store, writer) = reflector::store();
        let events = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    next = events.next() => match next {
                        Some(Ok(_)) => {}
                        Some(Err(err)) => tracing::warn!(%err, "watching AnalysisJobs failed; retrying"),
                        None => return,
                    },
                }
            }
        });
        JobCache {
            store,
            client,
            namespace,
            refused: Remembered::default(),
        }
    }

    /// Waits (at most `limit`) for the first full list of jobs, so that the events read at
    /// start are judged from the cache rather than one API read each.
    pub async fn wait_until_ready(&self, limit: Duration) {
        if tokio::time::timeout(limit, self.store.wait_until_ready())
            .await
            .is_err()
        {
            tracing::warn!(
                ?limit,
                "the job cache is not filled yet; judging events by reading each job"
            );
        }
    }

    /// Whether `event` belongs to its job ([`admit::judge`]).
    pub async fn admit(&mut self, event: &ProgressEvent) -> Result<(), Refusal> {
        if self.namespace.as_ref().is_some_and(|ns| *ns != event.namespace) {
            return Err(Refusal::NoSuchJob);
        }
        let key = ObjectRef::new(&event.name).within(&event.namespace);
        let cached = self.store.get(&key).map(|job| JobFacts::of(&job));
        match admit::judge(event, cached.as_ref()) {
            Judgement::Accept => Ok(()),
            Judgement::Refuse(why) => Err(why),
            Judgement::Recheck(_) => self.recheck(event).await,
        }
    }

    async fn recheck(&mut self, event: &ProgressEvent) -> Result<(), Refusal> {
        let memo = (event.analyze_id.clone(), event.event_id.clone());
        if let Some(why) = self.refused.why.get(&memo) {
            return Err(*why);
        }
        let api: Api<AnalysisJob> = Api::namespaced(self.client.clone(), &event.namespace);
        let fresh = match tokio::time::timeout(READ_TIMEOUT, api.get_opt(&event.name)).await {
            Ok(Ok(job)) => job,
            Ok(Err(err)) => {
                tracing::warn!(%err, namespace = %event.namespace, name = %event.name, "cannot read the job to check an event");
                return Err(Refusal::Unverifiable);
            }
            Err(_) => {
                tracing::warn!(namespace = %event.namespace, name = %event.name, "reading the job to check an event timed out");
                return Err(Refusal::Unverifiable);
            }
        };
        // A GET reads the latest state, so its answer stands for this attempt.
        let judged = admit::judge_fresh(event, fresh.as_ref().map(JobFacts::of).as_ref());
        if let Err(why) = judged {
            self.refused.insert(memo, why);
        }
        judged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_refusals_are_bounded_oldest_first() {
        let mut r = Remembered::default();
        for i in 0..REMEMBERED + 10 {
            r.insert((format!("u{i}"), "e".into()), Refusal::NoSuchJob);
        }
        r.insert(("u20".into(), "e".into()), Refusal::OtherJob);
        assert_eq!(r.why.len(), REMEMBERED);
        assert_eq!(r.order.len(), REMEMBERED);
        assert!(!r.why.contains_key(&("u0".to_owned(), "e".to_owned())));
        assert_eq!(r.why.get(&("u20".to_owned(), "e".to_owned())), Some(&Refusal::OtherJob));
    }
}
