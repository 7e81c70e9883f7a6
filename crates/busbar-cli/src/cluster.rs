//! Reading a ServiceBus from a cluster, for `busbar graph --cluster`: its spec, and each
//! subscriber's figures from its status (as the operator writes them).
//!
//! The object is read as a [`DynamicObject`], so the command needs nothing of the
//! operator's: the spec is the domain's [`ServiceBusSpec`] and the status plain JSON.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow};
use busbar::{graph::render::Figures, spec::ServiceBusSpec};
use kube::{
    Api, Client, Config,
    api::{ApiResource, DynamicObject},
    config::KubeConfigOptions,
};
use serde_json::Value;

const GROUP: &str = "busbar.dev";
const VERSION: &str = "v1alpha1";
const KIND: &str = "ServiceBus";
const PLURAL: &str = "servicebuses";

/// A ServiceBus as the cluster has it.
pub struct LiveBus {
    pub name: String,
    pub namespace: String,
    pub spec: ServiceBusSpec,
    /// Each service's figures from `.status.services[]`, by name.
    pub figures: BTreeMap<String, Figures>,
}

fn api_resource() -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: KIND.into(),
        plural: PLURAL.into(),
    }
}

fn unreachable(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("cannot reach the cluster: {e}; is kubectl configured?")
}

/// Reads the ServiceBus `name` in `namespace` (default: the kubeconfig context's
/// namespace, else `default`), with the kubeconfig's `context` (default: its current one).
pub async fn read(name: &str, namespace: Option<&str>, context: Option<&str>) -> Result<LiveBus> {
    let config = match context {
        Some(c) => Config::from_kubeconfig(&KubeConfigOptions { context: Some(c.into()), ..Default::default() })
            .await
            .map_err(unreachable)?,
        None => Config::infer().await.map_err(unreachable)?,
    };
    let server = config.cluster_url.to_string();
    let namespace = namespace.map(str::to_string).unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(unreachable)?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &api_resource());
    let obj = match api.get(name).await {
        Ok(obj) => obj,
        Err(kube::Error::Api(s)) if s.code == 404 => {
            return Err(if kind_is_served(&client).await {
                anyhow!("no ServiceBus {name} in namespace {namespace}; `kubectl get sbus -A` lists them")
            } else {
                anyhow!(
                    "the cluster at {server} has no ServiceBus kind (CRD {PLURAL}.{GROUP} {VERSION} is not installed); \
                     install busbar's operator, or its CRD: kubectl apply -f k8s/base/operator/crd.yaml"
                )
            });
        }
        Err(kube::Error::Api(s)) => {
            return Err(anyhow!("cannot read ServiceBus {name} in namespace {namespace}: {} ({})", s.message, s.code));
        }
        Err(e) => return Err(anyhow!("cannot reach the cluster at {server}: {e}; is kubectl configured?")),
    };
    let spec = obj.data.get("spec").cloned().unwrap_or(Value::Null);
    let spec: ServiceBusSpec = serde_json::from_value(spec)
        .map_err(|e| anyhow!("ServiceBus {name} in namespace {namespace} has a spec busbar cannot read: {e}"))?;
    let figures = obj.data.get("status").map(figures).unwrap_or_default();
    Ok(LiveBus { name: name.into(), namespace, spec, figures })
}

/// Whether the cluster serves ServiceBuses (its discovery lists them).
async fn kind_is_served(client: &Client) -> bool {
    match client.list_api_group_resources(&format!("{GROUP}/{VERSION}")).await {
        Ok(list) => list.resources.iter().any(|r| r.name == PLURAL),
        Err(_) => false,
    }
}

/// Each service's figures from a ServiceBus's `.status`: `services[]` with `name`,
/// `pending` and `deadLettered`. What the status does not report stays `None`.
pub fn figures(status: &Value) -> BTreeMap<String, Figures> {
    let mut out = BTreeMap::new();
    for s in status.get("services").and_then(Value::as_array).into_iter().flatten() {
        let Some(name) = s.get("name").and_then(Value::as_str) else { continue };
        let f = Figures {
            pending: s.get("pending").and_then(Value::as_u64),
            dead: s.get("deadLettered").and_then(Value::as_u64),
        };
        out.insert(name.to_string(), f);
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn figures_are_read_from_the_status() {
        let status = json!({"totalPending": 3, "services": [
            {"name": "query", "deployment": "query", "pending": 3, "deadLettered": 1, "parked": 2},
            {"name": "moderation", "pending": 0},
            {"name": "posts"},
            {"pending": 7},
        ]});
        let f = figures(&status);
        assert_eq!(f["query"], Figures { pending: Some(3), dead: Some(1) });
        assert_eq!(f["moderation"], Figures { pending: Some(0), dead: None });
        assert_eq!(f["posts"], Figures::default());
        assert_eq!(f.len(), 3);
        assert!(figures(&json!({})).is_empty());
    }
}
