//! The operator against the in-process fake API server: a [`Cluster`] to set up and read,
//! operator [`Replica`]s to start and stop, and bounded waits.

use std::{future::Future, sync::Arc, time::Duration};

use busbar_operator::{
    controller::{self, RunConfig},
    crd::ServiceBus,
    leader::LeaseConfig,
    metrics::Metrics,
    names::WIRING_HASH_ANNOTATION,
    settings::Settings,
};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use kube_fake::FakeApiServer;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::deployment;

pub const NS: &str = "shop";

pub struct Cluster {
    pub api: FakeApiServer,
}

impl Cluster {
    pub async fn new() -> Cluster {
        let api = FakeApiServer::start().await;
        api.install_crd(busbar_operator::crd::crd_yaml()).expect("the CRD installs");
        Cluster { api }
    }

    /// A client whose requests the fake attributes to `who` (its User-Agent).
    pub fn client_as(&self, who: &str) -> Client {
        let mut cfg = self.api.config();
        cfg.headers.push((http::header::USER_AGENT, http::HeaderValue::from_str(who).unwrap()));
        Client::try_from(cfg).unwrap()
    }

    pub fn user(&self) -> Client {
        self.client_as("kubectl/test")
    }

    pub fn add_deployment(&self, name: &str) {
        self.api.create(serde_json::to_value(deployment(NS, name)).unwrap()).unwrap();
    }

    /// Applies a ConfigMap as `kubectl apply` would.
    pub async fn apply_config_map(&self, cm: &ConfigMap) {
        let api = Api::<ConfigMap>::namespaced(self.user(), NS);
        let body = serde_json::to_value(cm).unwrap();
        api.patch(cm.metadata.name.as_deref().unwrap(), &PatchParams::apply("kubectl").force(), &Patch::Apply(body))
            .await
            .unwrap();
    }

    pub async fn apply_bus(&self, sb: &ServiceBus) {
        let api = Api::<ServiceBus>::namespaced(self.user(), NS);
        let body = serde_json::to_value(sb).unwrap();
        api.patch(sb.metadata.name.as_deref().unwrap(), &PatchParams::apply("kubectl").force(), &Patch::Apply(body))
            .await
            .unwrap();
    }

    /// Changes only the ServiceBus's metadata (an annotation), as `kubectl annotate` would:
    /// the operator reconciles it, with nothing in the spec to act on.
    pub async fn touch(&self, bus: &str) {
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let patch = json!({ "metadata": { "annotations": { "test/touch": stamp.to_string() } } });
        Api::<ServiceBus>::namespaced(self.user(), NS)
            .patch(bus, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    /// Starts one operator replica; it stops when the token is cancelled. It reads no
    /// figures from a built-in bus (there is none).
    pub fn start_operator(&self, identity: &str, leader_election: bool) -> Replica {
        self.start_operator_with(identity, leader_election, Settings { bus_stats: false, ..Settings::default() })
    }

    pub fn start_operator_with(&self, identity: &str, leader_election: bool, settings: Settings) -> Replica {
        let stop = CancellationToken::new();
        let cfg = RunConfig {
            settings,
            identity: identity.into(),
            lease: leader_election.then(|| LeaseConfig {
                namespace: "busbar-system".into(),
                name: "busbar-operator".into(),
                identity: identity.into(),
                lease_duration: Duration::from_secs(2),
                retry_period: Duration::from_millis(200),
            }),
        };
        let metrics = Arc::new(Metrics::default());
        let task = tokio::spawn(controller::run(self.client_as(identity), cfg, metrics.clone(), stop.clone()));
        Replica { stop, task, metrics }
    }

    pub fn deployment(&self, name: &str) -> Deployment {
        self.api.get_as::<Deployment>(NS, name).unwrap_or_else(|| panic!("Deployment {name} exists"))
    }

    pub fn env_of(&self, name: &str) -> Vec<(String, String)> {
        let d = self.deployment(name);
        let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
        c.env.iter().flatten().map(|e| (e.name.clone(), e.value.clone().unwrap_or_default())).collect()
    }

    pub fn env_var(&self, name: &str, var: &str) -> Option<String> {
        self.env_of(name).into_iter().find(|(k, _)| k == var).map(|(_, v)| v)
    }

    pub fn wiring_hash(&self, name: &str) -> Option<String> {
        self.deployment(name).spec?.template.metadata?.annotations?.get(WIRING_HASH_ANNOTATION).cloned()
    }

    pub fn bus(&self, name: &str) -> Option<Value> {
        self.api.get("servicebuses.busbar.dev", NS, name)
    }

    pub fn condition(&self, bus: &str, type_: &str) -> Option<(String, String)> {
        let b = self.bus(bus)?;
        let c = b["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?.clone();
        Some((c["status"].as_str()?.to_owned(), c["reason"].as_str()?.to_owned()))
    }

    /// Nothing runs pods here: the test says when the bus's pod is ready.
    pub fn bus_pod_ready(&self, bus: &str) {
        self.api
            .patch_status("statefulsets", NS, &format!("{bus}-event-bus"), json!({ "readyReplicas": 1, "replicas": 1 }))
            .unwrap();
    }

    /// The reasons of the Events about one object, oldest first (what `kubectl describe`
    /// lists for it).
    pub fn events_about(&self, kind: &str, name: &str) -> Vec<String> {
        self.api
            .events(NS)
            .iter()
            .filter(|e| e["regarding"]["kind"] == kind && e["regarding"]["name"] == name)
            .filter_map(|e| e["reason"].as_str().map(str::to_owned))
            .collect()
    }

    pub fn event_reasons(&self) -> Vec<String> {
        self.api.events(NS).iter().filter_map(|e| e["reason"].as_str().map(str::to_owned)).collect()
    }
}

/// Every request the operator replicas made is allowed by the RBAC the repository ships
/// (`rbac.rs`): the fake has no RBAC, so this is where a missing rule would show.
pub fn assert_rbac_covers_what_the_operator_did(api: &FakeApiServer) {
    let rules: Vec<Value> = [busbar_operator::rbac::cluster_rules(), busbar_operator::rbac::lease_rules()]
        .into_iter()
        .flat_map(|r| r.as_array().unwrap().clone())
        .collect();
    let allowed = |group: &str, resource: &str, verb: &str| {
        rules.iter().any(|r| {
            let has = |k: &str, v: &str| r[k].as_array().unwrap().iter().any(|x| x == v);
            has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
        })
    };
    let mut missing = std::collections::BTreeSet::new();
    for r in api.requests() {
        let ua = r.user_agent.as_deref().unwrap_or_default();
        if !(ua.starts_with("op-") || ua.starts_with("replica-")) || r.verb == "discovery" {
            continue;
        }
        let resource = match &r.subresource {
            Some(sub) => format!("{}/{sub}", r.resource),
            None => r.resource.clone(),
        };
        if !allowed(&r.group, &resource, &r.verb) {
            missing.insert(format!("{} {}/{}", r.verb, r.group, resource));
        }
    }
    assert!(missing.is_empty(), "requests the shipped RBAC does not allow: {missing:?}");
}

pub struct Replica {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    pub metrics: Arc<Metrics>,
}

impl Replica {
    /// Runs `trigger`, then waits (at most 10 s) until a reconcile that started after this
    /// call has finished and none is running.
    pub async fn reconcile_after(&self, trigger: impl Future<Output = ()>) {
        let before = self.metrics.reconciles.get();
        trigger.await;
        eventually("a reconcile after the trigger finishes", || async {
            let done = self.metrics.completed.get();
            done > before && done == self.metrics.reconciles.get()
        })
        .await;
    }

    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task).await.expect("the operator stops").unwrap();
    }
}

/// Waits (at most 10 s) until `check` holds.
pub async fn eventually<F: Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    testkit::wait_until(Duration::from_secs(10), what, || async { check().await.then_some(()) }).await
}
