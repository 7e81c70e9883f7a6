//! The thin shell between the plan and the API server: server-side apply with the
//! operator's field manager, status writes, and reading the built-in bus's figures.

use std::{collections::BTreeMap, time::Duration};

use busbar_domain::credentials::BusKey;
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::{ConfigMap, Secret, Service},
};
use kube::{
    Api, Client, Resource,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::{
    crd::{ServiceBus, ServiceBusStatus},
    plan::{self, BUS_LABEL, BuiltinObjects, BusRef, FIELD_MANAGER, SubscriberStats, TOKEN_FOR_LABEL, Wiring},
};

fn apply_params() -> PatchParams {
    // `force`: the operator is the authority for the fields it manages; a hand edit of a
    // wired variable is drift to repair, not a conflict to stop at.
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn apply_one<K>(client: &Client, namespace: &str, body: &Value) -> Result<K, kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let name = body["metadata"]["name"].as_str().unwrap_or_default();
    Api::<K>::namespaced(client.clone(), namespace).patch(name, &apply_params(), &Patch::Apply(body)).await
}

/// Applies the built-in bus's objects; returns the StatefulSet's ready replicas.
pub async fn ensure_builtin(client: &Client, bus: &BusRef, objs: &BuiltinObjects) -> Result<Option<i32>, kube::Error> {
    apply_one::<ConfigMap>(client, &bus.namespace, &objs.config_map).await?;
    apply_one::<Service>(client, &bus.namespace, &objs.service).await?;
    let sts: StatefulSet = apply_one(client, &bus.namespace, &objs.stateful_set).await?;
    Ok(sts.status.and_then(|s| s.ready_replicas))
}

/// The built-in bus's key: read from its Secret, which is created with a random key the
/// first time. Created, not applied: two operators racing must not both pick a key.
pub async fn ensure_bus_key(client: &Client, bus: &BusRef) -> Result<BusKey, crate::controller::Error> {
    let api = Api::<Secret>::namespaced(client.clone(), &bus.namespace);
    let name = plan::key_secret_name(&bus.name);
    for _ in 0..2 {
        if let Some(secret) = api.get_opt(&name).await? {
            let bytes = secret.data.as_ref().and_then(|d| d.get("key")).map(|b| b.0.clone()).unwrap_or_default();
            return BusKey::from_hex(&String::from_utf8_lossy(&bytes)).map_err(|e| {
                crate::controller::Error::BusKey(format!(
                    "Secret {}/{name} does not hold a bus key ({e}); delete it and the operator makes a new one (services get new tokens)",
                    bus.namespace
                ))
            });
        }
        let body: Secret = serde_json::from_value(plan::key_secret(bus, &BusKey::generate())).expect("a Secret");
        match api.create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, &body).await {
            Ok(_) => tracing::info!(bus = %bus.name, namespace = %bus.namespace, secret = %name, "created the bus key"),
            Err(kube::Error::Api(e)) if e.code == 409 => {} // someone else created it: read theirs
            Err(e) => return Err(e.into()),
        }
    }
    Err(crate::controller::Error::BusKey(format!("Secret {}/{name} vanished while being created", bus.namespace)))
}

/// This bus's token Secrets, by name, with the token each holds.
pub async fn token_secrets(client: &Client, bus: &BusRef) -> Result<BTreeMap<String, Option<String>>, kube::Error> {
    let api = Api::<Secret>::namespaced(client.clone(), &bus.namespace);
    let lp = ListParams::default().labels(&format!("{BUS_LABEL}={},{TOKEN_FOR_LABEL}", bus.name));
    Ok(api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .map(|s| {
            let token =
                s.data.as_ref().and_then(|d| d.get(plan::TOKEN_KEY)).and_then(|b| String::from_utf8(b.0.clone()).ok());
            (s.metadata.name.unwrap_or_default(), token)
        })
        .collect())
}

/// One file of a Secret, if the Secret exists.
pub async fn secret_file(
    client: &Client,
    namespace: &str,
    name: &str,
    file: &str,
) -> Result<Option<String>, kube::Error> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace).get_opt(name).await?;
    Ok(secret.and_then(|s| s.data?.get(file).map(|b| String::from_utf8_lossy(&b.0).into_owned())))
}

pub async fn apply_secret(client: &Client, namespace: &str, body: &Value) -> Result<(), kube::Error> {
    apply_one::<Secret>(client, namespace, body).await.map(drop)
}

pub async fn delete_secret(client: &Client, namespace: &str, name: &str) -> Result<(), kube::Error> {
    match Api::<Secret>::namespaced(client.clone(), namespace).delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

pub async fn wire(client: &Client, bus: &BusRef, w: &Wiring) -> Result<(), kube::Error> {
    apply_one::<Deployment>(client, &bus.namespace, &plan::wire_patch(bus, w)).await.map(drop)
}

/// Removes everything the operator applied to a Deployment. A Deployment that is gone
/// (404), or that the API server would have to create from the empty body (422), needs
/// nothing removed.
pub async fn unwire(client: &Client, namespace: &str, deployment: &str) -> Result<(), kube::Error> {
    let api = Api::<Deployment>::namespaced(client.clone(), namespace);
    if api.get_opt(deployment).await?.is_none() {
        return Ok(());
    }
    match api.patch(deployment, &apply_params(), &Patch::Apply(plan::unwire_patch(namespace, deployment))).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 422 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes status through the status subresource, only when it changed.
pub async fn write_status(client: &Client, sb: &ServiceBus, status: &ServiceBusStatus) -> Result<bool, kube::Error> {
    if sb.status.as_ref() == Some(status) {
        return Ok(false);
    }
    let api = Api::<ServiceBus>::namespaced(client.clone(), sb.metadata.namespace.as_deref().unwrap_or("default"));
    let name = sb.metadata.name.as_deref().unwrap_or_default();
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await?;
    Ok(true)
}

/// The built-in bus's per-subscriber figures from `GET /subscribers`; empty when the bus
/// does not answer (it may still be starting; status then omits the figures).
pub async fn builtin_stats(
    http: &reqwest::Client,
    bus_url: &str,
    admin_token: &str,
) -> BTreeMap<String, SubscriberStats> {
    let got = async {
        let rows: Vec<Value> = http
            .get(format!("{bus_url}/subscribers"))
            .bearer_auth(admin_token)
            .timeout(Duration::from_secs(2))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok::<_, reqwest::Error>(rows)
    };
    match got.await {
        Ok(rows) => rows
            .iter()
            .filter_map(|r| {
                let n = |k: &str| r[k].as_u64();
                Some((
                    r["name"].as_str()?.to_owned(),
                    SubscriberStats { pending: n("lag"), redelivered: n("attempts"), dead_lettered: n("deadLetters") },
                ))
            })
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "the event bus did not report subscriber figures");
            BTreeMap::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape `services/event-bus` answers on `GET /subscribers` (see its api.rs).
    #[tokio::test]
    async fn the_bus_figures_become_per_service_stats() {
        let body = json!([
            { "name": "query", "endpoint": "http://query:4002/events", "types": ["PostCreated"], "position": 7,
              "lag": 3, "attempts": 2, "lastError": "HTTP 500", "deadLetters": 1 },
            { "name": "comments", "endpoint": "http://comments:4001/events", "types": ["PostCreated"], "position": 10,
              "lag": 0, "attempts": 0, "lastError": null, "deadLetters": 0 },
        ]);
        let app =
            axum::Router::new().route("/subscribers", axum::routing::get(move || async move { axum::Json(body) }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });

        let stats = builtin_stats(&reqwest::Client::new(), &url, "t").await;
        assert_eq!(stats["query"], SubscriberStats { pending: Some(3), redelivered: Some(2), dead_lettered: Some(1) });
        assert_eq!(stats["comments"].pending, Some(0));

        // A bus that does not answer leaves the figures out instead of failing the reconcile.
        let closed = format!("http://127.0.0.1:{}", testkit::free_port());
        assert!(builtin_stats(&reqwest::Client::new(), &closed, "t").await.is_empty());
    }
}
