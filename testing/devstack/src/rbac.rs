//! On the real backend every component runs under its own ServiceAccount's token, bound by the
//! chart's own Roles (taken from `manifests/install.yaml`, the chart rendered and checked for
//! drift), so a call the chart does not grant fails the scenario as it would on a cluster. The
//! simulator enforces no RBAC; there the components share the admin kubeconfig.

use std::path::Path;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::DevstackError;

const INSTALL: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../manifests/install.yaml"));

/// The components and their chart ServiceAccounts.
pub const ACCOUNTS: [(&str, &str); 3] = [
    ("controller", "streamscan-controller"),
    ("gateway", "streamscan-gateway"),
    ("worker", "streamscan-worker"),
];

fn bad(what: impl std::fmt::Display) -> DevstackError {
    DevstackError::Other(format!("manifests/install.yaml: {what}"))
}

/// Applies the chart's ServiceAccounts, Roles and RoleBindings into `namespace`.
pub async fn apply_chart_rbac(client: &kube::Client, namespace: &str) -> Result<usize, DevstackError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(INSTALL).map_err(bad)?;
    let params = PatchParams::apply("streamscan-devstack").force();
    let mut applied = 0;
    for mut doc in docs.into_iter().filter(|d| !d.is_null()) {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        if !matches!(kind.as_str(), "ServiceAccount" | "Role" | "RoleBinding") {
            continue;
        }
        doc["metadata"]["namespace"] = json!(namespace);
        if let Some(subjects) = doc.get_mut("subjects").and_then(Value::as_array_mut) {
            for subject in subjects {
                subject["namespace"] = json!(namespace);
            }
        }
        let name = doc["metadata"]["name"]
            .as_str()
            .ok_or_else(|| bad(format!("a {kind} without a name")))?
            .to_owned();
        match kind.as_str() {
            "ServiceAccount" => apply::<ServiceAccount>(client, namespace, &name, doc, &params).await?,
            "Role" => apply::<Role>(client, namespace, &name, doc, &params).await?,
            _ => apply::<RoleBinding>(client, namespace, &name, doc, &params).await?,
        }
        applied += 1;
    }
    if applied == 0 {
        return Err(bad("no ServiceAccount, Role or RoleBinding"));
    }
    Ok(applied)
}

async fn apply<K>(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    doc: Value,
    params: &PatchParams,
) -> Result<(), DevstackError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned
        + serde::Serialize,
{
    let object: K = serde_json::from_value(doc).map_err(bad)?;
    Api::<K>::namespaced(client.clone(), namespace)
        .patch(name, params, &Patch::Apply(&object))
        .await?;
    Ok(())
}

/// Writes a kubeconfig at `out` for `account`: the admin kubeconfig's server and CA, with a
/// token issued for the ServiceAccount (TokenRequest, valid a day).
pub async fn write_account_kubeconfig(
    client: &kube::Client,
    admin: &Path,
    namespace: &str,
    account: &str,
    out: &Path,
) -> Result<(), DevstackError> {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(86_400),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let issued = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(account, &PostParams::default(), &request)
        .await?;
    let token = issued
        .status
        .map(|s| s.token)
        .ok_or_else(|| DevstackError::Other(format!("no token issued for {account}")))?;
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| DevstackError::Io { what, source }
    };
    let text = std::fs::read_to_string(admin).map_err(io("reading the admin kubeconfig"))?;
    let mut config: Value = serde_saphyr::from_str(&text).map_err(|e| DevstackError::Other(e.to_string()))?;
    config["users"] = json!([{"name": account, "user": {"token": token}}]);
    config["contexts"] = json!([{
        "name": account,
        "context": {"cluster": config["clusters"][0]["name"].clone(), "user": account, "namespace": namespace},
    }]);
    config["current-context"] = json!(account);
    let json = serde_json::to_vec_pretty(&config).map_err(|e| DevstackError::Other(e.to_string()))?;
    std::fs::write(out, json).map_err(io("writing a component kubeconfig"))
}
