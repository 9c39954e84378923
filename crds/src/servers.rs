//! Which servers exist, which are healthy, and which may take a job: a pure view of the worker
//! pods, built from the pod cache on every reconcile.
//!
//! A pod is a server only as the worker StatefulSet made it: controlled by a StatefulSet (the one
//! named by `--worker-statefulset`, when set), named `<statefulset>-<serverId>`, with its
//! `apps.kubernetes.io/pod-index` label equal to its serverId. Pod names are unique, so a pod that
//! merely copies a worker's labels (an impostor, with the internal token as its prize) is a
//! [`Stray`]: it gets no jobs and no traffic, and it is reported.

use std::collections::BTreeMap;

use crate::names::{
    ANNOTATION_CAPACITY, ANNOTATION_HTTP_PORT, DEFAULT_WORKER_HTTP_PORT, LABEL_POD_INDEX, LABEL_SERVER_ID,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// One worker pod that carries a `serverId`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub id: String,
    pub pod_name: String,
    pub ready: bool,
    /// When the pod's Ready condition last changed, for the NotReady grace period.
    pub ready_since: Option<Timestamp>,
    pub capacity: usize,
    pub labels: BTreeMap<String, String>,
    /// `http://ip:port` of the worker's own HTTP service, when the pod has an IP.
    pub endpoint: Option<String>,
}

/// How a pinned server is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health<'a> {
    /// A Ready pod carries the serverId.
    Healthy(&'a Server),
    /// Pods carry it but none is Ready; the grace period ends at `until`.
    Unready { until: Timestamp },
    /// Pods carry it, none has been Ready for longer than the grace period.
    Dead,
    /// No pod carries it any more.
    Gone,
}

/// A pod that carries a serverId but is not a member of the worker StatefulSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stray {
    pub pod_name: String,
    pub server_id: String,
    /// Why it is not taken for a server, as a clause ("it is not controlled by a StatefulSet").
    pub why: String,
}

/// Which pods count as servers.
#[derive(Clone, Debug, Default)]
pub struct PodRule {
    /// Capacity of a server whose pod has no capacity annotation.
    pub default_capacity: usize,
    /// The worker StatefulSet's name; any StatefulSet when unset.
    pub statefulset: Option<String>,
}

/// All worker pods, by serverId.
#[derive(Clone, Debug, Default)]
pub struct ServerSet {
    by_id: BTreeMap<String, Vec<Server>>,
    strays: Vec<Stray>,
}

impl ServerSet {
    /// Builds the set from worker pods (already filtered by the worker selector). Pods without a
    /// serverId label, or being deleted, are not servers; those that are not members of the
    /// worker StatefulSet are [`ServerSet::strays`].
    pub fn from_pods<'a>(pods: impl IntoIterator<Item = &'a Pod>, rule: &PodRule) -> Self {
        let mut set = ServerSet::default();
        for pod in pods {
            match server_of(pod, rule) {
                Some(Ok(server)) => set.by_id.entry(server.id.clone()).or_default().push(server),
                Some(Err(stray)) => set.strays.push(stray),
                None => {}
            }
        }
        set
    }

    /// Builds a set directly (tests, benchmarks).
    pub fn from_servers(servers: impl IntoIterator<Item = Server>) -> Self {
        let mut set = ServerSet::default();
        for server in servers {
            set.by_id.entry(server.id.clone()).or_default().push(server);
        }
        set
    }

    /// Pods that carry a serverId but are not taken for servers.
    pub fn strays(&self) -> &[Stray] {
        &self.strays
    }

    /// serverIds carried by more than one Ready pod, with those pods' names: a configuration
    /// error; such servers get no new jobs until it is resolved.
    pub fn duplicates(&self) -> Vec<(&str, Vec<&str>)> {
        self.by_id
            .iter()
            .filter_map(|(id, pods)| {
                let ready: Vec<&str> = pods.iter().filter(|p| p.ready).map(|p| p.pod_name.as_str()).collect();
                (ready.len() > 1).then_some((id.as_str(), ready))
            })
            .collect()
    }

    /// The Ready pod of a serverId, when there is exactly one.
    pub fn ready_unique(&self, id: &str) -> Option<&Server> {
        let pods = self.by_id.get(id)?;
        let mut ready = pods.iter().filter(|p| p.ready);
        match (ready.next(), ready.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    }

    /// Health of a pinned server. A duplicated serverId still serves the jobs it has.
    pub fn health(&self, id: &str, now: Timestamp, grace: SignedDuration) -> Health<'_> {
        let Some(pods) = self.by_id.get(id).filter(|p| !p.is_empty()) else {
            return Health::Gone;
        };
        if let Some(ready) = pods.iter().find(|p| p.ready) {
            return Health::Healthy(ready);
        }
        // Not ready: the grace period runs from the latest Ready transition (or now, unknown).
        let since = pods.iter().filter_map(|p| p.ready_since).max().unwrap_or(now);
        let until = since.checked_add(grace).unwrap_or(since);
        if until > now {
            Health::Unready { until }
        } else {
            Health::Dead
        }
    }

    /// Servers that may take a new job: one Ready pod for the serverId, matching the job's pin
    /// or selector. Capacity is checked by the caller, who knows the load.
    pub fn eligible<'a>(
        &'a self,
        pin: Option<&'a str>,
        selector: Option<&'a LabelSelector>,
    ) -> impl Iterator<Item = &'a Server> + 'a {
        self.by_id
            .keys()
            .filter(move |id| pin.is_none_or(|p| p == id.as_str()))
            .filter_map(|id| self.ready_unique(id))
            .filter(move |s| selector.is_none_or(|sel| selector_matches(sel, &s.labels)))
    }

    /// Number of distinct serverIds.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Every pod-backed server, for metrics.
    pub fn iter(&self) -> impl Iterator<Item = &Server> {
        self.by_id.values().flatten()
    }
}

/// Whether a pod is the one the worker StatefulSet made for serverId `id`.
fn membership(meta: &ObjectMeta, id: &str, statefulset: Option<&str>) -> Result<(), String> {
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .filter(|o| o.kind == "StatefulSet" && o.api_version.starts_with("apps/"))
        .ok_or("it is not controlled by a StatefulSet")?;
    if let Some(expected) = statefulset
        && owner.name != expected
    {
        return Err(format!("its StatefulSet is {}, not {expected}", owner.name));
    }
    let index = meta.labels.as_ref().and_then(|l| l.get(LABEL_POD_INDEX));
    if index.map(String::as_str) != Some(id) {
        return Err(match index {
            Some(index) => format!("its {LABEL_POD_INDEX} label is {index}, not its serverId"),
            None => format!("it has no {LABEL_POD_INDEX} label"),
        });
    }
    let name = meta.name.as_deref().unwrap_or_default();
    let expected = format!("{}-{id}", owner.name);
    if name != expected {
        return Err(format!("its name is not {expected}"));
    }
    Ok(())
}

fn server_of(pod: &Pod, rule: &PodRule) -> Option<Result<Server, Stray>> {
    let meta = &pod.metadata;
    if meta.deletion_timestamp.is_some() {
        return None;
    }
    let labels = meta.labels.clone().unwrap_or_default();
    let id = labels.get(LABEL_SERVER_ID)?.clone();
    if let Err(why) = membership(meta, &id, rule.statefulset.as_deref()) {
        return Some(Err(Stray {
            pod_name: meta.name.clone().unwrap_or_default(),
            server_id: id,
            why,
        }));
    }
    let default_capacity = rule.default_capacity;
    let annotations = meta.annotations.as_ref();
    let capacity = annotations
        .and_then(|a| a.get(ANNOTATION_CAPACITY))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|c| *c > 0)
        .unwrap_or(default_capacity);
    let status = pod.status.as_ref();
    let ready_condition = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    let ready = ready_condition.is_some_and(|c| c.status == "True");
    let ready_since = ready_condition
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0);
    let port = annotations
        .and_then(|a| a.get(ANNOTATION_HTTP_PORT))
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(DEFAULT_WORKER_HTTP_PORT);
    let endpoint = status.and_then(|s| s.pod_ip.as_ref()).map(|ip| {
        if ip.contains(':') {
            format!("http://[{ip}]:{port}")
        } else {
            format!("http://{ip}:{port}")
        }
    });
    Some(Ok(Server {
        id,
        pod_name: meta.name.clone().unwrap_or_default(),
        ready,
        ready_since,
        capacity,
        labels,
        endpoint,
    }))
}

/// Whether labels satisfy a Kubernetes label selector (matchLabels AND matchExpressions).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // An unknown operator matches nothing, as the API server would refuse it.
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta, OwnerReference, Time};

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    /// A worker pod as a StatefulSet makes it: `<set>-<ordinal>`, owned by `<set>`, its ordinal in
    /// the pod-index label.
    fn pod(name: &str, id: Option<&str>, ready: bool, since: i64) -> Pod {
        let mut labels = BTreeMap::from([("app.kubernetes.io/component".to_owned(), "worker".to_owned())]);
        if let Some(id) = id {
            labels.insert(LABEL_SERVER_ID.to_owned(), id.to_owned());
        }
        let (set, ordinal) = name.rsplit_once('-').unwrap_or((name, ""));
        labels.insert(LABEL_POD_INDEX.to_owned(), ordinal.to_owned());
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "StatefulSet".into(),
                    name: set.into(),
                    uid: format!("uid-{set}"),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                labels: Some(labels),
                annotations: Some(BTreeMap::from([(ANNOTATION_HTTP_PORT.to_owned(), "8080".to_owned())])),
                ..Default::default()
            },
            status: Some(PodStatus {
                pod_ip: Some("10.0.0.7".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    last_transition_time: Some(Time(ts(since))),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pods_without_server_id_or_terminating_are_not_servers() {
        let mut terminating = pod("w-2", Some("2"), true, 0);
        terminating.metadata.deletion_timestamp = Some(Time(ts(5)));
        let pods = [pod("w-0", Some("0"), true, 0), pod("other", None, true, 0), terminating];
        let set = ServerSet::from_pods(&pods, &rule(None));
        assert_eq!(set.len(), 1);
        let s = set.ready_unique("0").unwrap();
        assert_eq!(s.capacity, 4);
        assert_eq!(s.endpoint.as_deref(), Some("http://10.0.0.7:8080"));
    }

    fn rule(statefulset: Option<&str>) -> PodRule {
        PodRule {
            default_capacity: 4,
            statefulset: statefulset.map(str::to_owned),
        }
    }

    #[test]
    fn only_a_statefulsets_pod_named_and_indexed_for_its_server_id_is_a_server() {
        let mut no_owner = pod("w-1", Some("1"), true, 0);
        no_owner.metadata.owner_references = None;
        let mut replica_set = pod("w-2", Some("2"), true, 0);
        if let Some(o) = replica_set.metadata.owner_references.as_mut() {
            o[0].kind = "ReplicaSet".into();
        }
        let mut not_controller = pod("w-3", Some("3"), true, 0);
        if let Some(o) = not_controller.metadata.owner_references.as_mut() {
            o[0].controller = None;
        }
        let pods = [
            pod("w-0", Some("0"), true, 0),
            no_owner,
            replica_set,
            not_controller,
            // Label copied, name of another ordinal.
            pod("w-4", Some("5"), true, 0),
            pod("other-6", Some("6"), true, 0),
        ];
        let set = ServerSet::from_pods(&pods, &rule(None));
        let ids: Vec<&str> = set.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            ["0", "6"],
            "any StatefulSet's member, without --worker-statefulset"
        );
        let why: Vec<(&str, &str)> = set
            .strays()
            .iter()
            .map(|s| (s.pod_name.as_str(), s.why.as_str()))
            .collect();
        assert_eq!(
            why,
            [
                ("w-1", "it is not controlled by a StatefulSet"),
                ("w-2", "it is not controlled by a StatefulSet"),
                ("w-3", "it is not controlled by a StatefulSet"),
                ("w-4", "its apps.kubernetes.io/pod-index label is 4, not its serverId"),
            ]
        );
        let set = ServerSet::from_pods(&pods, &rule(Some("w")));
        let ids: Vec<&str> = set.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["0"]);
        assert!(
            set.strays()
                .iter()
                .any(|s| s.pod_name == "other-6" && s.why == "its StatefulSet is other, not w")
        );
        // The index label right, the name not: a pod named for another server.
        let mut renamed = pod("w-8", Some("9"), true, 0);
        if let Some(l) = renamed.metadata.labels.as_mut() {
            l.insert(LABEL_POD_INDEX.to_owned(), "9".to_owned());
        }
        let set = ServerSet::from_pods(&[renamed], &rule(None));
        assert_eq!(set.strays()[0].why, "its name is not w-9");
        let mut unindexed = pod("w-9", Some("9"), true, 0);
        if let Some(l) = unindexed.metadata.labels.as_mut() {
            l.remove(LABEL_POD_INDEX);
        }
        let set = ServerSet::from_pods(&[unindexed], &rule(None));
        assert_eq!(set.strays()[0].why, "it has no apps.kubernetes.io/pod-index label");
    }

    #[test]
    fn capacity_annotation_overrides_default_and_bad_values_are_ignored() {
        let mut a = pod("w-0", Some("0"), true, 0);
        a.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANNOTATION_CAPACITY.into(), "9".into());
        let mut b = pod("w-1", Some("1"), true, 0);
        b.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ANNOTATION_CAPACITY.into(), "lots".into());
        let set = ServerSet::from_pods(&[a, b], &rule(None));
        let capacity = |id: &str| set.iter().find(|s| s.id == id).map(|s| s.capacity);
        assert_eq!(capacity("0"), Some(9));
        assert_eq!(capacity("1"), Some(4));
    }

    #[test]
    fn duplicate_ready_server_ids_are_reported_and_not_eligible() {
        let pods = [
            pod("w-7", Some("7"), true, 0),
            pod("x-7", Some("7"), true, 0),
            pod("w-1", Some("1"), true, 0),
        ];
        let set = ServerSet::from_pods(&pods, &rule(None));
        assert_eq!(set.duplicates(), vec![("7", vec!["w-7", "x-7"])]);
        let eligible: Vec<&str> = set.eligible(None, None).map(|s| s.id.as_str()).collect();
        assert_eq!(eligible, ["1"]);
        // Existing jobs on the duplicated server still see it as alive.
        assert!(matches!(
            set.health("7", ts(100), SignedDuration::from_secs(30)),
            Health::Healthy(_)
        ));
    }

    #[test]
    fn health_honours_the_not_ready_grace() {
        let set = ServerSet::from_pods(&[pod("w-0", Some("0"), false, 100)], &rule(None));
        let grace = SignedDuration::from_secs(30);
        assert_eq!(set.health("0", ts(110), grace), Health::Unready { until: ts(130) });
        assert_eq!(set.health("0", ts(130), grace), Health::Dead);
        assert_eq!(set.health("9", ts(130), grace), Health::Gone);
        assert_eq!(set.eligible(None, None).count(), 0);
    }

    #[test]
    fn selector_and_pin_restrict_eligibility() {
        let mut large = pod("w-0", Some("0"), true, 0);
        large
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("streamscan.io/pool".into(), "large".into());
        let set = ServerSet::from_pods(&[large, pod("w-1", Some("1"), true, 0)], &rule(None));
        let sel = LabelSelector {
            match_labels: Some(BTreeMap::from([("streamscan.io/pool".to_owned(), "large".to_owned())])),
            ..Default::default()
        };
        let ids = |it: Vec<&Server>| it.into_iter().map(|s| s.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(set.eligible(None, Some(&sel)).collect()), ["0"]);
        assert_eq!(ids(set.eligible(Some("1"), None).collect()), ["1"]);
        assert!(set.eligible(Some("1"), Some(&sel)).next().is_none());
    }

    #[test]
    fn selector_expressions() {
        let labels = BTreeMap::from([("tier".to_owned(), "gold".to_owned())]);
        let expr = |op: &str, values: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            ..Default::default()
        };
        assert!(selector_matches(&expr("In", &["gold", "silver"]), &labels));
        assert!(!selector_matches(&expr("NotIn", &["gold"]), &labels));
        assert!(selector_matches(&expr("Exists", &[]), &labels));
        assert!(!selector_matches(&expr("DoesNotExist", &[]), &labels));
        assert!(!selector_matches(&expr("Bogus", &[]), &labels));
        assert!(selector_matches(&LabelSelector::default(), &labels));
    }
}
