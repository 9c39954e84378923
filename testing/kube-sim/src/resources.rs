//! The kinds the simulator serves: a table of built-ins plus whatever CustomResourceDefinitions add.

use serde_json::Value;

/// One served resource at one group/version.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceType {
    /// `""` for the core group.
    pub group: String,
    pub version: String,
    /// Plural, lower case: `analysisjobs`.
    pub resource: String,
    pub kind: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Whether `/status` is a subresource (the main endpoint then ignores status).
    pub status_subresource: bool,
    /// The CRD's openAPIV3Schema, for custom resources.
    pub schema: Option<Value>,
    /// The CRD's additionalPrinterColumns, for Table output.
    pub printer_columns: Vec<Value>,
    /// Name of the CRD that serves this resource.
    pub crd: Option<String>,
}

impl ResourceType {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The group objects are stored under: events.k8s.io Events live with core Events.
    pub fn storage_group(&self) -> &str {
        if crate::events::is_events_view(&self.group, &self.resource) {
            ""
        } else {
            &self.group
        }
    }

    /// `pods` or `analysisjobs.streamscan.io`, as error messages name a resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }

    /// `Pod` or `AnalysisJob.streamscan.io`, as validation messages name a kind.
    pub fn group_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }
}

fn builtin(
    group: &str,
    version: &str,
    resource: &str,
    kind: &str,
    namespaced: bool,
    short: &[&str],
    status: bool,
) -> ResourceType {
    ResourceType {
        group: group.into(),
        version: version.into(),
        resource: resource.into(),
        kind: kind.into(),
        singular: kind.to_ascii_lowercase(),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        status_subresource: status,
        schema: None,
        printer_columns: Vec::new(),
        crd: None,
    }
}

pub const CRD_GROUP: &str = "apiextensions.k8s.io";
pub const CRD_RESOURCE: &str = "customresourcedefinitions";

/// Every served resource type.
#[derive(Debug, Clone)]
pub struct Registry {
    types: Vec<ResourceType>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::builtins()
    }
}

impl Registry {
    /// The built-in kinds a Helm chart and Streamscan's components use. No controllers run for them.
    pub fn builtins() -> Self {
        let types = vec![
            builtin("", "v1", "namespaces", "Namespace", false, &["ns"], true),
            builtin("", "v1", "pods", "Pod", true, &["po"], true),
            builtin("", "v1", "services", "Service", true, &["svc"], true),
            builtin("", "v1", "secrets", "Secret", true, &[], false),
            builtin("", "v1", "configmaps", "ConfigMap", true, &["cm"], false),
            builtin("", "v1", "events", "Event", true, &["ev"], false),
            builtin("", "v1", "serviceaccounts", "ServiceAccount", true, &["sa"], false),
            builtin(
                "",
                "v1",
                "persistentvolumeclaims",
                "PersistentVolumeClaim",
                true,
                &["pvc"],
                true,
            ),
            builtin("", "v1", "endpoints", "Endpoints", true, &["ep"], false),
            builtin("apps", "v1", "deployments", "Deployment", true, &["deploy"], true),
            builtin("apps", "v1", "statefulsets", "StatefulSet", true, &["sts"], true),
            builtin("events.k8s.io", "v1", "events", "Event", true, &["ev"], false),
            builtin("coordination.k8s.io", "v1", "leases", "Lease", true, &[], false),
            builtin("rbac.authorization.k8s.io", "v1", "roles", "Role", true, &[], false),
            builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "rolebindings",
                "RoleBinding",
                true,
                &[],
                false,
            ),
            builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "clusterroles",
                "ClusterRole",
                false,
                &[],
                false,
            ),
            builtin(
                "rbac.authorization.k8s.io",
                "v1",
                "clusterrolebindings",
                "ClusterRoleBinding",
                false,
                &[],
                false,
            ),
            builtin(
                "policy",
                "v1",
                "poddisruptionbudgets",
                "PodDisruptionBudget",
                true,
                &["pdb"],
                true,
            ),
            builtin(
                "networking.k8s.io",
                "v1",
                "networkpolicies",
                "NetworkPolicy",
                true,
                &["netpol"],
                false,
            ),
            // The chart's admission policies (stored, not enforced: the real API server's tests
            // prove what they refuse).
            builtin(
                "admissionregistration.k8s.io",
                "v1",
                "validatingadmissionpolicies",
                "ValidatingAdmissionPolicy",
                false,
                &[],
                true,
            ),
            builtin(
                "admissionregistration.k8s.io",
                "v1",
                "validatingadmissionpolicybindings",
                "ValidatingAdmissionPolicyBinding",
                false,
                &[],
                false,
            ),
            builtin(
                CRD_GROUP,
                "v1",
                CRD_RESOURCE,
                "CustomResourceDefinition",
                false,
                &["crd", "crds"],
                true,
            ),
        ];
        Self { types }
    }

    pub fn find(&self, group: &str, version: &str, resource: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.resource == resource)
    }

    /// Any served version of a group/resource (owner lookups do not care about versions).
    pub fn find_any_version(&self, group: &str, resource: &str) -> Option<&ResourceType> {
        self.types.iter().find(|t| t.group == group && t.resource == resource)
    }

    /// The resource for an owner reference's `apiVersion` and `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)
    }

    /// Groups in registration order (core excluded), each with its versions.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for t in self.types.iter().filter(|t| !t.group.is_empty()) {
            match groups.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, versions)) if !versions.contains(&t.version) => versions.push(t.version.clone()),
                Some(_) => {}
                None => groups.push((t.group.clone(), vec![t.version.clone()])),
            }
        }
        groups
    }

    pub fn in_group_version<'a>(
        &'a self,
        group: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a ResourceType> + 'a {
        self.types
            .iter()
            .filter(move |t| t.group == group && t.version == version)
    }

    pub fn all(&self) -> &[ResourceType] {
        &self.types
    }

    /// Serves every served version of a CRD, replacing what it served before.
    pub fn register_crd(&mut self, crd: &Value) -> Result<(), String> {
        let name = str_at(crd, &["metadata", "name"]).ok_or("metadata.name is required")?;
        let spec = crd.get("spec").ok_or("spec is required")?;
        let group = str_at(spec, &["group"]).ok_or("spec.group is required")?;
        let names = spec.get("names").ok_or("spec.names is required")?;
        let plural = str_at(names, &["plural"]).ok_or("spec.names.plural is required")?;
        let kind = str_at(names, &["kind"]).ok_or("spec.names.kind is required")?;
        if name != format!("{plural}.{group}") {
            return Err(format!(
                "metadata.name: must be spec.names.plural+\".\"+spec.group ({plural}.{group})"
            ));
        }
        let strings = |key: &str| -> Vec<String> {
            names
                .get(key)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                .unwrap_or_default()
        };
        let versions = spec
            .get("versions")
            .and_then(Value::as_array)
            .ok_or("spec.versions is required")?;
        let mut served = Vec::new();
        for v in versions {
            if v.get("served").and_then(Value::as_bool) != Some(true) {
                continue;
            }
            let version = str_at(v, &["name"]).ok_or("spec.versions[].name is required")?;
            served.push(ResourceType {
                group: group.to_owned(),
                version: version.to_owned(),
                resource: plural.to_owned(),
                kind: kind.to_owned(),
                singular: str_at(names, &["singular"])
                    .map(str::to_owned)
                    .unwrap_or_else(|| kind.to_ascii_lowercase()),
                namespaced: str_at(spec, &["scope"]) != Some("Cluster"),
                short_names: strings("shortNames"),
                categories: strings("categories"),
                status_subresource: v.pointer("/subresources/status").is_some(),
                schema: v.pointer("/schema/openAPIV3Schema").cloned(),
                printer_columns: v
                    .get("additionalPrinterColumns")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
                crd: Some(name.to_owned()),
            });
        }
        self.unregister_crd(name);
        self.types.extend(served);
        Ok(())
    }

    pub fn unregister_crd(&mut self, name: &str) {
        self.types.retain(|t| t.crd.as_deref() != Some(name));
    }
}

pub fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}
