//! Pure decisions: from a ServiceBus and what was observed in the cluster to the objects
//! the operator wants and the status it reports. No I/O here; [`crate::apply`] carries
//! the results out.

use std::collections::{BTreeMap, BTreeSet};

use busbar_domain::{
    credentials::BusKey,
    graph,
    spec::{ServiceBusSpec, ServiceSpec, TransportKind},
    wiring::{self, Endpoint},
};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::crd::{Condition, ServiceBusStatus, ServiceStatus};

/// Server-side apply field manager: the operator owns exactly the fields it applies.
pub const FIELD_MANAGER: &str = "busbar-operator";
pub const FINALIZER: &str = "busbar.dev/cleanup";
/// Pod-template annotation holding the wiring hash: a change of wiring rolls the pods.
pub const WIRING_HASH_ANNOTATION: &str = "busbar.dev/wiring-hash";
/// Label on every object the operator creates or wires, naming the ServiceBus.
pub const BUS_LABEL: &str = "busbar.dev/bus";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Where the built-in bus's routes file is mounted.
pub const ROUTES_PATH: &str = "/etc/busbar/servicebus.yaml";
/// Where the built-in bus's key Secret is mounted (the file is `key`).
pub const KEY_DIR: &str = "/etc/busbar-key";
/// Label on a service's token Secret naming the service.
pub const TOKEN_FOR_LABEL: &str = "busbar.dev/token-for";
/// The key in a token Secret.
pub const TOKEN_KEY: &str = "token";
/// The file in the `<bus>-nats-auth` Secret.
pub const NATS_AUTH_FILE: &str = "auth.conf";

/// The ServiceBus being reconciled, reduced to what the decisions need.
#[derive(Debug, Clone, PartialEq)]
pub struct BusRef {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub generation: Option<i64>,
}

/// Operator-wide settings for the objects it creates.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Image of the built-in event bus.
    pub bus_image: String,
    pub bus_port: u16,
    /// Size of the bus's log volume.
    pub bus_storage: String,
    pub bus_storage_class: Option<String>,
    /// Read per-subscriber figures from the bus's `/subscribers` (off in tests without a bus).
    pub bus_stats: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bus_image: "ghcr.io/busbar-dev/event-bus:latest".into(),
            bus_port: 4005,
            bus_storage: "1Gi".into(),
            bus_storage_class: None,
            bus_stats: true,
        }
    }
}

/// One Deployment as the operator sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObservedDeployment {
    pub name: String,
    /// Container names with their env vars (literal values only), in order.
    pub containers: Vec<(String, Vec<(String, String)>)>,
    pub pod_annotations: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// Env vars taken from Secrets: (container, variable) → (Secret, key).
    pub secret_env: BTreeMap<(String, String), (String, String)>,
}

impl ObservedDeployment {
    pub fn from_deployment(d: &Deployment) -> Self {
        let name = d.metadata.name.clone().unwrap_or_default();
        let template = d.spec.as_ref().map(|s| &s.template);
        let containers = template
            .and_then(|t| t.spec.as_ref())
            .map(|s| {
                s.containers
                    .iter()
                    .map(|c| {
                        let env = c
                            .env
                            .iter()
                            .flatten()
                            .filter_map(|e| e.value.as_ref().map(|v| (e.name.clone(), v.clone())))
                            .collect();
                        (c.name.clone(), env)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let pod_annotations = template
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        let labels = d.metadata.labels.clone().unwrap_or_default().into_iter().collect();
        let secret_env = template
            .and_then(|t| t.spec.as_ref())
            .into_iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.env.iter().flatten().map(move |e| (c, e)))
            .filter_map(|(c, e)| {
                let r = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
                Some(((c.name.clone(), e.name.clone()), (r.name.clone(), r.key.clone())))
            })
            .collect();
        ObservedDeployment { name, containers, pod_annotations, labels, secret_env }
    }
}

/// How the transport looks from outside.
#[derive(Debug, Clone, PartialEq)]
pub enum TransportState {
    /// The built-in bus: its StatefulSet has this many ready replicas (None: not there yet).
    Builtin { ready_replicas: Option<i32> },
    /// JetStream: provisioning succeeded, or failed with a message; `warnings` are changes
    /// JetStream cannot make to an existing consumer.
    JetStream { result: Result<(), String>, warnings: Vec<String> },
}

/// Per-subscriber figures from the transport, by service name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscriberStats {
    pub pending: Option<u64>,
    pub redelivered: Option<u64>,
    pub dead_lettered: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Deployments in the ServiceBus's namespace, by name.
    pub deployments: BTreeMap<String, ObservedDeployment>,
    pub transport: Option<TransportState>,
    pub stats: BTreeMap<String, SubscriberStats>,
    pub previous: Option<ServiceBusStatus>,
    /// The built-in bus's key, once its Secret exists.
    pub bus_key: Option<BusKey>,
    /// This bus's token Secrets, by name, with the token each holds (None: unreadable).
    pub token_secrets: BTreeMap<String, Option<String>>,
    /// On JetStream: the NATS authorization file now in the `<bus>-nats-auth` Secret.
    pub nats_auth: Option<String>,
}

/// The wiring one Deployment should carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Wiring {
    pub service: String,
    pub deployment: String,
    pub container: String,
    pub env: Vec<(String, String)>,
    /// The Secret `BUSBAR_TOKEN` comes from (built-in bus).
    pub token_secret: Option<String>,
    pub hash: String,
}

/// What to do, and what to report.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Validation problems; when not empty nothing is wired or provisioned.
    pub problems: Vec<String>,
    pub transport: TransportKind,
    /// Deployments whose wiring is missing or differs (drift included).
    pub wire: Vec<Wiring>,
    /// Deployments that carry this bus's wiring but are no longer in the spec.
    pub unwire: Vec<String>,
    /// Token Secrets to apply (missing or changed), before the wiring that uses them.
    pub token_secrets: Vec<Value>,
    /// Token Secrets of services no longer in the spec.
    pub delete_token_secrets: Vec<String>,
    /// On JetStream: the NATS users Secret to apply (missing or out of date).
    pub nats_auth_secret: Option<Value>,
    /// Status as it will be once `wire` and `unwire` are done.
    pub status: ServiceBusStatus,
}

pub fn bus_object_name(bus: &str) -> String {
    format!("{bus}-event-bus")
}

/// The URL services use to reach their transport.
pub fn endpoint(bus: &BusRef, spec: &ServiceBusSpec, settings: &Settings) -> Endpoint {
    match &spec.transport.jetstream {
        Some(js) => Endpoint { kind: TransportKind::JetStream, url: js.url.clone() },
        None => Endpoint {
            kind: TransportKind::Builtin,
            url: format!("http://{}.{}.svc:{}", bus_object_name(&bus.name), bus.namespace, settings.bus_port),
        },
    }
}

/// The Secret holding the built-in bus's key.
pub fn key_secret_name(bus: &str) -> String {
    format!("{bus}-event-bus-key")
}

/// The Secret holding one service's bus token.
pub fn token_secret_name(bus: &str, service: &str) -> String {
    format!("{bus}-{service}-bus-token")
}

pub fn deployment_name(s: &ServiceSpec) -> &str {
    s.deployment.as_deref().unwrap_or(&s.name)
}

/// A short, stable digest of the wiring: the same env always gives the same hash.
pub fn wiring_hash(env: &[(String, String)]) -> String {
    let mut h = Sha256::new();
    for (k, v) in env {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The container to wire: the one named after the service or the Deployment, else the first.
fn container_for(service: &ServiceSpec, d: &ObservedDeployment) -> Option<String> {
    let names = || d.containers.iter().map(|(n, _)| n);
    names().find(|n| **n == service.name || n.as_str() == deployment_name(service)).or_else(|| names().next()).cloned()
}

fn in_sync(w: &Wiring, d: &ObservedDeployment) -> bool {
    let Some((_, env)) = d.containers.iter().find(|(n, _)| *n == w.container) else { return false };
    let token_ok = w.token_secret.as_ref().is_none_or(|secret| {
        d.secret_env.get(&(w.container.clone(), wiring::TOKEN_ENV.to_owned()))
            == Some(&(secret.clone(), TOKEN_KEY.to_owned()))
    });
    d.pod_annotations.get(WIRING_HASH_ANNOTATION) == Some(&w.hash)
        && d.labels.get(BUS_LABEL).map(String::as_str) == Some(bus_label_value(w))
        && w.env.iter().all(|pair| env.contains(pair))
        && token_ok
}

fn bus_label_value(w: &Wiring) -> &str {
    // The bus name is the BUSBAR_BUS value; the env always carries it.
    w.env.iter().find(|(k, _)| k == "BUSBAR_BUS").map(|(_, v)| v.as_str()).unwrap_or_default()
}

/// Decides everything for one reconcile.
pub fn plan(bus: &BusRef, spec: &ServiceBusSpec, settings: &Settings, obs: &Observed, now: &str) -> Plan {
    let transport = spec.transport.kind();
    let problems = busbar_domain::spec::validate(spec);
    let graph = graph::analyze(spec);
    let mut warnings = graph.warnings;
    let mut wire = vec![];
    let mut services = vec![];
    let endpoint = endpoint(bus, spec, settings);
    let declared: BTreeSet<&str> = spec.services.iter().map(deployment_name).collect();
    // Each service gets a token Secret, applied when missing or altered: the built-in bus
    // checks it, and on JetStream it is the service's NATS password.
    let key = obs.bus_key.as_ref().filter(|_| problems.is_empty());
    let nats_auth_secret = key.filter(|_| transport == TransportKind::JetStream).and_then(|key| {
        let conf = busbar_domain::nats_auth::authorization_block(&bus.name, spec, key);
        (obs.nats_auth.as_deref() != Some(conf.as_str())).then(|| nats_auth_secret(bus, &conf))
    });
    let mut token_secrets = vec![];
    let mut tokens = BTreeMap::new();
    if let Some(key) = key {
        for s in &spec.services {
            let (name, token) = (token_secret_name(&bus.name, &s.name), key.token(&s.name));
            if obs.token_secrets.get(&name) != Some(&Some(token.clone())) {
                token_secrets.push(token_secret(bus, &s.name, &token));
            }
            tokens.insert(s.name.clone(), (name, token));
        }
    }
    let wanted: BTreeSet<&String> = tokens.values().map(|(n, _)| n).collect();
    let delete_token_secrets = if problems.is_empty() {
        obs.token_secrets.keys().filter(|n| !wanted.contains(n)).cloned().collect()
    } else {
        vec![]
    };
    for s in &spec.services {
        let deployment = deployment_name(s).to_owned();
        let stats = obs.stats.get(&s.name).cloned().unwrap_or_default();
        let mut st = ServiceStatus {
            name: s.name.clone(),
            deployment: deployment.clone(),
            pending: stats.pending,
            redelivered: stats.redelivered,
            dead_lettered: stats.dead_lettered,
            ..Default::default()
        };
        match obs.deployments.get(&deployment) {
            None => st.message = Some(format!("Deployment {deployment} not found; it is wired once it exists")),
            Some(d) => {
                st.deployment_found = true;
                match container_for(s, d) {
                    None => st.message = Some(format!("Deployment {deployment} has no containers")),
                    Some(container) if problems.is_empty() => {
                        let env = wiring::service_env(&bus.name, spec, s, &endpoint);
                        let token = tokens.get(&s.name);
                        // The hash covers the token's fingerprint, so a new key rolls the pods
                        // (env from a Secret is read only when a container starts).
                        let mut hashed = env.clone();
                        if let Some((secret, token)) = token {
                            hashed.push((
                                wiring::TOKEN_ENV.into(),
                                format!("{secret} {}", &wiring_hash(&[(token.clone(), String::new())])),
                            ));
                        }
                        let w = Wiring {
                            service: s.name.clone(),
                            deployment,
                            container,
                            hash: wiring_hash(&hashed),
                            env,
                            token_secret: token.map(|(secret, _)| secret.clone()),
                        };
                        if !in_sync(&w, d) {
                            wire.push(w);
                        }
                        st.wired = true;
                    }
                    Some(_) => {}
                }
            }
        }
        services.push(st);
    }
    // Deployments this bus wired before but no longer declares (or shares with another bus).
    let unwire = if problems.is_empty() {
        obs.deployments
            .values()
            .filter(|d| d.labels.get(BUS_LABEL) == Some(&bus.name) && !declared.contains(d.name.as_str()))
            .map(|d| d.name.clone())
            .collect()
    } else {
        vec![]
    };

    let transport_cond = transport_condition(transport, obs.transport.as_ref(), &problems);
    if let Some(TransportState::JetStream { warnings: w, .. }) = &obs.transport {
        warnings.extend(w.iter().cloned());
    }
    let wired = services.iter().filter(|s| s.wired).count();
    let missing: Vec<&str> = services.iter().filter(|s| !s.deployment_found).map(|s| s.deployment.as_str()).collect();
    let mut conditions = vec![];
    let graph_cond = if problems.is_empty() {
        if warnings.is_empty() {
            cond("GraphValid", true, "Valid", "every subscribed event type has a publisher")
        } else {
            cond(
                "GraphValid",
                true,
                "ValidWithWarnings",
                &format!("{} warning(s); see status.warnings", warnings.len()),
            )
        }
    } else {
        cond("GraphValid", false, "InvalidSpec", &problems.join("; "))
    };
    let wired_cond = if !problems.is_empty() {
        cond("Wired", false, "InvalidSpec", "nothing is wired while the spec is invalid")
    } else if wired == services.len() {
        cond("Wired", true, "AllWired", &format!("{wired} Deployment(s) wired"))
    } else if !missing.is_empty() {
        cond("Wired", false, "DeploymentMissing", &format!("waiting for Deployment(s): {}", missing.join(", ")))
    } else {
        cond("Wired", false, "NotWired", &format!("{wired}/{} Deployment(s) wired", services.len()))
    };
    let ready = [&graph_cond, &transport_cond, &wired_cond].iter().all(|c| c.status == "True");
    let ready_cond = if ready {
        cond("Ready", true, "Ready", "the transport is up and every service is wired")
    } else {
        let first = [&graph_cond, &transport_cond, &wired_cond].into_iter().find(|c| c.status != "True").unwrap();
        cond("Ready", false, &first.reason, &first.message)
    };
    conditions.extend([ready_cond, transport_cond, wired_cond, graph_cond]);
    for c in &mut conditions {
        c.observed_generation = bus.generation;
        c.last_transition_time = match obs.previous.as_ref().and_then(|p| p.condition(&c.type_)) {
            Some(prev) if prev.status == c.status => prev.last_transition_time.clone(),
            _ => now.to_owned(),
        };
    }
    let status = ServiceBusStatus {
        observed_generation: bus.generation,
        transport: Some(transport_name(transport).into()),
        wired_services: Some(format!("{wired}/{}", services.len())),
        conditions,
        services,
        warnings,
    };
    Plan { problems, transport, wire, unwire, token_secrets, delete_token_secrets, nats_auth_secret, status }
}

pub fn transport_name(kind: TransportKind) -> &'static str {
    match kind {
        TransportKind::Builtin => "builtin",
        TransportKind::JetStream => "jetstream",
    }
}

fn transport_condition(kind: TransportKind, state: Option<&TransportState>, problems: &[String]) -> Condition {
    if !problems.is_empty() {
        return cond(
            "TransportReady",
            false,
            "InvalidSpec",
            "the transport is not provisioned while the spec is invalid",
        );
    }
    match (kind, state) {
        (TransportKind::Builtin, Some(TransportState::Builtin { ready_replicas: Some(n) })) if *n > 0 => {
            cond("TransportReady", true, "BusReady", "the built-in event bus is ready")
        }
        (TransportKind::Builtin, _) => {
            cond("TransportReady", false, "BusStarting", "waiting for the event bus pod to be ready")
        }
        (TransportKind::JetStream, Some(TransportState::JetStream { result: Ok(()), .. })) => {
            cond("TransportReady", true, "Provisioned", "the JetStream stream and consumers are provisioned")
        }
        (TransportKind::JetStream, Some(TransportState::JetStream { result: Err(e), .. })) => {
            cond("TransportReady", false, "ProvisioningFailed", e)
        }
        (TransportKind::JetStream, _) => cond("TransportReady", false, "Provisioning", "provisioning JetStream"),
    }
}

fn cond(type_: &str, ok: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: String::new(),
        observed_generation: None,
    }
}

/// Labels on every object the operator creates for `bus`.
fn owned_labels(bus: &BusRef) -> Value {
    json!({ MANAGED_BY_LABEL: FIELD_MANAGER, BUS_LABEL: bus.name, "app.kubernetes.io/name": "event-bus",
            "app.kubernetes.io/instance": bus_object_name(&bus.name) })
}

fn owner_reference(bus: &BusRef) -> Value {
    json!([{ "apiVersion": busbar_domain::spec::API_VERSION, "kind": busbar_domain::spec::KIND, "name": bus.name, "uid": bus.uid,
             "controller": true, "blockOwnerDeletion": true }])
}

/// The server-side apply body that wires one Deployment. Applying a later version
/// without a variable removes it; applying [`unwire_patch`] removes everything.
pub fn wire_patch(bus: &BusRef, w: &Wiring) -> Value {
    let mut env: Vec<Value> = w.env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect();
    if let Some(secret) = &w.token_secret {
        env.push(json!({"name": wiring::TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": secret, "key": TOKEN_KEY}}}));
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": w.deployment, "namespace": bus.namespace, "labels": { BUS_LABEL: bus.name } },
        "spec": { "template": {
            "metadata": { "annotations": { WIRING_HASH_ANNOTATION: w.hash } },
            "spec": { "containers": [ { "name": w.container, "env": env } ] }
        } }
    })
}

/// An apply body with no fields: the API server removes every field this manager owned.
pub fn unwire_patch(namespace: &str, deployment: &str) -> Value {
    json!({ "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": deployment, "namespace": namespace } })
}

fn secret(bus: &BusRef, name: &str, labels: Value, key: &str, value: &str) -> Value {
    // ByteString serializes as base64, the form `data` takes.
    let encoded = serde_json::to_value(k8s_openapi::ByteString(value.as_bytes().to_vec())).expect("bytes serialize");
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": { "name": name, "namespace": bus.namespace, "labels": labels, "ownerReferences": owner_reference(bus) },
        "data": { key: encoded },
    })
}

/// The bus key Secret, created once (the key is random) and owned by the ServiceBus.
pub fn key_secret(bus: &BusRef, key: &BusKey) -> Value {
    secret(bus, &key_secret_name(&bus.name), owned_labels(bus), "key", &key.to_hex())
}

/// The Secret holding the NATS users a JetStream bus expects.
pub fn nats_auth_secret_name(bus: &str) -> String {
    format!("{bus}-nats-auth")
}

/// The NATS `authorization` block for the bus's services, for the NATS server to
/// `include` (see the README's access-control section).
pub fn nats_auth_secret(bus: &BusRef, conf: &str) -> Value {
    secret(bus, &nats_auth_secret_name(&bus.name), owned_labels(bus), NATS_AUTH_FILE, conf)
}

/// One service's token Secret; its Deployment reads `BUSBAR_TOKEN` from it.
pub fn token_secret(bus: &BusRef, service: &str, token: &str) -> Value {
    let labels = json!({ MANAGED_BY_LABEL: FIELD_MANAGER, BUS_LABEL: bus.name, TOKEN_FOR_LABEL: service });
    secret(bus, &token_secret_name(&bus.name, service), labels, TOKEN_KEY, token)
}

/// The built-in bus's objects, all owned by the ServiceBus (garbage-collected with it).
/// The routes ConfigMap is the ServiceBus manifest itself; the bus re-reads the mounted
/// file, so a routes change needs no restart (the pod template does not depend on it).
pub fn builtin_objects(bus: &BusRef, spec: &ServiceBusSpec, settings: &Settings) -> BuiltinObjects {
    let name = bus_object_name(&bus.name);
    let labels = owned_labels(bus);
    let selector = json!({ "app.kubernetes.io/instance": name, "app.kubernetes.io/name": "event-bus" });
    let manifest = serde_yaml_ng::to_string(&json!({
        "apiVersion": busbar_domain::spec::API_VERSION, "kind": busbar_domain::spec::KIND,
        "metadata": { "name": bus.name }, "spec": spec,
    }))
    .expect("a spec serializes");
    let meta = |n: &str| json!({ "name": n, "namespace": bus.namespace, "labels": labels, "ownerReferences": owner_reference(bus) });
    let config_map = json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(&format!("{name}-routes")),
        "data": { "servicebus.yaml": manifest },
    });
    let service = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": meta(&name),
        "spec": { "selector": selector, "ports": [ { "name": "http", "port": settings.bus_port, "targetPort": "http" } ] },
    });
    let mut pvc_spec =
        json!({ "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": settings.bus_storage } } });
    if let Some(class) = &settings.bus_storage_class {
        pvc_spec["storageClassName"] = json!(class);
    }
    let stateful_set = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta(&name),
        "spec": {
            "serviceName": name, "replicas": 1,
            "selector": { "matchLabels": selector },
            "template": {
                "metadata": { "labels": labels },
                "spec": {
                    "securityContext": { "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                                         "seccompProfile": { "type": "RuntimeDefault" } },
                    "automountServiceAccountToken": false,
                    "containers": [{
                        "name": "event-bus", "image": settings.bus_image,
                        "args": ["--listen", format!("0.0.0.0:{}", settings.bus_port),
                                 "--database-url", "sqlite:///data/event-bus.db",
                                 "--routes", ROUTES_PATH,
                                 "--auth-key-file", format!("{KEY_DIR}/key"),
                                 "--endpoint-template", format!("http://{{name}}.{}.svc:{{port}}/events", bus.namespace)],
                        "ports": [{ "name": "http", "containerPort": settings.bus_port }],
                        "readinessProbe": { "httpGet": { "path": "/readyz", "port": "http" }, "periodSeconds": 5 },
                        "livenessProbe": { "httpGet": { "path": "/healthz", "port": "http" }, "periodSeconds": 10 },
                        "resources": { "requests": { "cpu": "50m", "memory": "32Mi" }, "limits": { "cpu": "1", "memory": "256Mi" } },
                        "securityContext": { "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                             "capabilities": { "drop": ["ALL"] } },
                        "volumeMounts": [ { "name": "data", "mountPath": "/data" },
                                          { "name": "routes", "mountPath": "/etc/busbar", "readOnly": true },
                                          { "name": "key", "mountPath": KEY_DIR, "readOnly": true } ],
                    }],
                    "volumes": [ { "name": "routes", "configMap": { "name": format!("{name}-routes") } },
                                 { "name": "key", "secret": { "secretName": key_secret_name(&bus.name), "defaultMode": 0o440 } } ],
                }
            },
            "volumeClaimTemplates": [ { "metadata": { "name": "data" }, "spec": pvc_spec } ],
        }
    });
    BuiltinObjects { config_map, service, stateful_set }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BuiltinObjects {
    pub config_map: Value,
    pub service: Value,
    pub stateful_set: Value,
}

/// The Deployments to watch for one ServiceBus: a Deployment event maps to every bus in its
/// namespace that declares it, or that wired it before.
pub fn declares(spec: &ServiceBusSpec, deployment: &str) -> bool {
    spec.services.iter().any(|s| deployment_name(s) == deployment)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{blog_spec, chain_spec, deployment};

    fn bus() -> BusRef {
        BusRef { name: "blog".into(), namespace: "shop".into(), uid: "uid-1".into(), generation: Some(3) }
    }

    fn observed(names: &[&str]) -> Observed {
        Observed {
            deployments: names
                .iter()
                .map(|n| (n.to_string(), ObservedDeployment::from_deployment(&deployment("shop", n))))
                .collect(),
            transport: Some(TransportState::Builtin { ready_replicas: Some(1) }),
            ..Default::default()
        }
    }

    fn cond_of<'a>(p: &'a Plan, t: &str) -> &'a Condition {
        p.status.condition(t).unwrap()
    }

    /// What a Deployment looks like after the API server applied `w` to it.
    fn after_wiring(d: &mut ObservedDeployment, w: &Wiring) {
        let (_, env) = d.containers.iter_mut().find(|(n, _)| *n == w.container).unwrap();
        for (k, v) in &w.env {
            env.retain(|(n, _)| n != k);
            env.push((k.clone(), v.clone()));
        }
        d.pod_annotations.insert(WIRING_HASH_ANNOTATION.into(), w.hash.clone());
        d.labels.insert(BUS_LABEL.into(), "blog".into());
    }

    #[test]
    fn every_declared_deployment_is_wired_and_the_bus_is_ready() {
        let p = plan(
            &bus(),
            &blog_spec(),
            &Settings::default(),
            &observed(&["posts", "comments", "moderation", "query"]),
            "t0",
        );
        assert!(p.problems.is_empty());
        assert_eq!(
            p.wire.iter().map(|w| w.deployment.as_str()).collect::<Vec<_>>(),
            ["posts", "comments", "moderation", "query"]
        );
        let query = p.wire.iter().find(|w| w.service == "query").unwrap();
        let env: BTreeMap<_, _> = query.env.iter().cloned().collect();
        assert_eq!(env["BUSBAR_URL"], "http://blog-event-bus.shop.svc:4005");
        assert_eq!(env["BUSBAR_SUBSCRIBES"], "CommentCreated,CommentUpdated,PostCreated");
        assert_eq!(query.container, "query");
        assert_eq!(cond_of(&p, "Ready").status, "True");
        assert_eq!(p.status.wired_services.as_deref(), Some("4/4"));
        assert_eq!(p.status.observed_generation, Some(3));
        assert!(p.status.warnings.is_empty(), "{:?}", p.status.warnings);
    }

    #[test]
    fn a_wired_deployment_needs_nothing_until_someone_changes_it() {
        let mut obs = observed(&["posts", "comments", "moderation", "query"]);
        let first = plan(&bus(), &blog_spec(), &Settings::default(), &obs, "t0");
        for w in &first.wire {
            after_wiring(obs.deployments.get_mut(&w.deployment).unwrap(), w);
        }
        assert!(plan(&bus(), &blog_spec(), &Settings::default(), &obs, "t1").wire.is_empty());
        // Someone deletes BUSBAR_URL from query by hand: drift, wired again.
        obs.deployments.get_mut("query").unwrap().containers[0].1.retain(|(k, _)| k != "BUSBAR_URL");
        let again = plan(&bus(), &blog_spec(), &Settings::default(), &obs, "t2");
        assert_eq!(again.wire.iter().map(|w| w.deployment.as_str()).collect::<Vec<_>>(), ["query"]);
    }

    #[test]
    fn with_a_bus_key_each_service_gets_a_token_secret_and_a_new_key_rolls_the_pods() {
        let key = BusKey::generate();
        let mut obs = observed(&["posts", "comments", "moderation", "query"]);
        obs.bus_key = Some(key.clone());
        let first = plan(&bus(), &blog_spec(), &Settings::default(), &obs, "t0");
        assert_eq!(first.token_secrets.len(), 4);
        let query = &first.token_secrets[3];
        assert_eq!(query["metadata"]["name"], "blog-query-bus-token");
        assert_eq!(query["metadata"]["labels"][TOKEN_FOR_LABEL], "query");
        let w = first.wire.iter().find(|w| w.service == "query").unwrap();
        assert_eq!(w.token_secret.as_deref(), Some("blog-query-bus-token"));
        let body = wire_patch(&bus(), w);
        let env = body["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
        assert_eq!(
            env.last().unwrap()["valueFrom"]["secretKeyRef"],
            json!({"name": "blog-query-bus-token", "key": "token"})
        );

        // Once Secrets and wiring are in place, nothing is to do.
        for w in &first.wire {
            let d = obs.deployments.get_mut(&w.deployment).unwrap();
            after_wiring(d, w);
            d.secret_env.insert(
                (w.container.clone(), "BUSBAR_TOKEN".into()),
                (w.token_secret.clone().unwrap(), "token".into()),
            );
        }
        for s in &blog_spec().services {
            obs.token_secrets.insert(token_secret_name("blog", &s.name), Some(key.token(&s.name)));
        }
        let settled = plan(&bus(), &blog_spec(), &Settings::default(), &obs, "t1");
        assert!(settled.wire.is_empty() && settled.token_secrets.is_empty() && settled.delete_token_secrets.is_empty());

        // A tampered Secret is applied again; a leftover one is deleted.
        obs.token_secrets.insert(token_secret_name("blog", "posts"), Some("forged".into()));
        obs.token_secrets.insert(token_secret_name("blog", "billing"), Some("x".into()));
        let repair = plan(&bus(), &blog_spec(), &Settings::default(), &obs, "t2");
        assert_eq!(repair.token_secrets.len(), 1);
        assert_eq!(repair.token_secrets[0]["metadata"]["name"], "blog-posts-bus-token");
        assert_eq!(repair.delete_token_secrets, ["blog-billing-bus-token"]);

        // A new key (the Secret was deleted and recreated): every pod rolls for its new token.
        obs.bus_key = Some(BusKey::generate());
        let rekeyed = plan(&bus(), &blog_spec(), &Settings::default(), &obs, "t3");
        assert_eq!(rekeyed.wire.len(), 4);
        assert!(rekeyed.wire.iter().zip(&first.wire).all(|(a, b)| a.hash != b.hash));
    }

    #[test]
    fn on_jetstream_the_tokens_are_nats_passwords_and_the_users_go_in_a_secret() {
        let key = BusKey::generate();
        let mut spec = blog_spec();
        spec.transport.builtin = None;
        spec.transport.jetstream =
            Some(busbar_domain::spec::JetStreamSpec { url: "nats://nats:4222".into(), replicas: 1 });
        let mut obs = observed(&["posts", "comments", "moderation", "query"]);
        obs.transport = Some(TransportState::JetStream { result: Ok(()), warnings: vec![] });
        obs.bus_key = Some(key.clone());
        let p = plan(&bus(), &spec, &Settings::default(), &obs, "t0");
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        assert_eq!(p.token_secrets.len(), 4);
        assert!(p.wire.iter().all(|w| w.token_secret.is_some()));
        let secret = p.nats_auth_secret.expect("the NATS users Secret");
        assert_eq!(secret["metadata"]["name"], "blog-nats-auth");
        let conf = busbar_domain::nats_auth::authorization_block("blog", &spec, &key);
        obs.nats_auth = Some(conf);
        assert!(plan(&bus(), &spec, &Settings::default(), &obs, "t1").nats_auth_secret.is_none(), "up to date");
    }

    #[test]
    fn a_missing_deployment_is_reported_and_the_rest_are_wired() {
        let p = plan(&bus(), &blog_spec(), &Settings::default(), &observed(&["posts", "comments"]), "t0");
        assert_eq!(p.wire.len(), 2);
        let wired = cond_of(&p, "Wired");
        assert_eq!((wired.status.as_str(), wired.reason.as_str()), ("False", "DeploymentMissing"));
        assert!(wired.message.contains("moderation, query"), "{}", wired.message);
        assert_eq!(cond_of(&p, "Ready").reason, "DeploymentMissing");
        let q = p.status.services.iter().find(|s| s.name == "query").unwrap();
        assert!(!q.deployment_found && !q.wired);
    }

    #[test]
    fn an_invalid_spec_wires_nothing_and_says_why() {
        let mut spec = blog_spec();
        spec.services[3].subscribes[0].ty = "not valid!".into();
        let p =
            plan(&bus(), &spec, &Settings::default(), &observed(&["posts", "comments", "moderation", "query"]), "t0");
        assert!(p.wire.is_empty() && p.unwire.is_empty());
        let g = cond_of(&p, "GraphValid");
        assert_eq!((g.status.as_str(), g.reason.as_str()), ("False", "InvalidSpec"));
        assert!(g.message.contains("not a valid event type"), "{}", g.message);
        assert_eq!(cond_of(&p, "Ready").status, "False");
    }

    #[test]
    fn graph_warnings_reach_status_without_blocking() {
        let mut spec = blog_spec();
        spec.services[3].subscribes.push(busbar_domain::spec::SubscriptionSpec { ty: "CommentDeleted".into() });
        let p =
            plan(&bus(), &spec, &Settings::default(), &observed(&["posts", "comments", "moderation", "query"]), "t0");
        assert_eq!(p.status.warnings, ["query subscribes to CommentDeleted but no service publishes it"]);
        assert_eq!(cond_of(&p, "GraphValid").reason, "ValidWithWarnings");
        assert_eq!(cond_of(&p, "Ready").status, "True");
    }

    #[test]
    fn a_service_removed_from_the_spec_is_unwired() {
        let mut obs = observed(&["posts", "comments", "moderation", "query", "legacy"]);
        obs.deployments.get_mut("legacy").unwrap().labels.insert(BUS_LABEL.into(), "blog".into());
        // A Deployment of another bus is left alone.
        obs.deployments.insert("other".into(), ObservedDeployment::from_deployment(&deployment("shop", "other")));
        obs.deployments.get_mut("other").unwrap().labels.insert(BUS_LABEL.into(), "billing".into());
        let p = plan(&bus(), &blog_spec(), &Settings::default(), &obs, "t0");
        assert_eq!(p.unwire, ["legacy"]);
    }

    #[test]
    fn condition_times_move_only_on_a_change() {
        let mut obs = observed(&["posts", "comments", "moderation", "query"]);
        let first = plan(&bus(), &blog_spec(), &Settings::default(), &obs, "t0");
        obs.previous = Some(first.status.clone());
        let same = plan(&bus(), &blog_spec(), &Settings::default(), &obs, "t1");
        assert_eq!(cond_of(&same, "Ready").last_transition_time, "t0");
        obs.transport = Some(TransportState::Builtin { ready_replicas: Some(0) });
        let down = plan(&bus(), &blog_spec(), &Settings::default(), &obs, "t2");
        assert_eq!(cond_of(&down, "Ready").last_transition_time, "t2");
        assert_eq!(cond_of(&down, "TransportReady").reason, "BusStarting");
        assert_eq!(cond_of(&down, "Wired").last_transition_time, "t0");
    }

    #[test]
    fn the_builtin_bus_is_owned_by_the_servicebus_and_reads_the_routes_file() {
        let objs = builtin_objects(&bus(), &blog_spec(), &Settings::default());
        for o in [&objs.config_map, &objs.service, &objs.stateful_set] {
            assert_eq!(o["metadata"]["ownerReferences"][0]["uid"], "uid-1");
            assert_eq!(o["metadata"]["labels"][MANAGED_BY_LABEL], FIELD_MANAGER);
        }
        let routes = objs.config_map["data"]["servicebus.yaml"].as_str().unwrap();
        assert_eq!(busbar_domain::spec::parse_manifest(routes).unwrap().spec, blog_spec());
        let args = objs.stateful_set["spec"]["template"]["spec"]["containers"][0]["args"].as_array().unwrap();
        assert!(args.windows(2).any(|w| w[0] == "--routes" && w[1] == ROUTES_PATH));
        // The routes file is read at run time, so the pod template does not depend on the spec.
        let mut spec = blog_spec();
        spec.services.pop();
        let other = builtin_objects(&bus(), &spec, &Settings::default());
        assert_eq!(other.stateful_set, objs.stateful_set);
        assert_ne!(other.config_map, objs.config_map);
    }

    #[test]
    fn the_apply_body_carries_only_the_wiring() {
        let p = plan(&bus(), &blog_spec(), &Settings::default(), &observed(&["posts"]), "t0");
        let body = wire_patch(&bus(), &p.wire[0]);
        let d: Deployment = serde_json::from_value(body.clone()).unwrap();
        let spec = d.spec.unwrap();
        assert_eq!(spec.template.spec.unwrap().containers[0].env.as_ref().unwrap().len(), 9);
        assert!(body["spec"].get("replicas").is_none() && body["spec"].get("selector").is_none());
        assert_eq!(unwire_patch("shop", "posts")["metadata"]["name"], "posts");
        assert!(unwire_patch("shop", "posts").get("spec").is_none());
    }

    #[test]
    fn a_thousand_services_plan_in_one_pass() {
        let spec = chain_spec(1000);
        let names: Vec<String> = (0..1000).map(|i| format!("svc-{i}")).collect();
        let obs = observed(&names.iter().map(String::as_str).collect::<Vec<_>>());
        let p = plan(&bus(), &spec, &Settings::default(), &obs, "t0");
        assert_eq!(p.wire.len(), 1000);
        assert_eq!(p.status.warnings, ["svc-999 publishes Event999 but no service subscribes to it"]);
    }

    proptest::proptest! {
        /// The hash depends on the wiring only: equal env, equal hash; any change, a new hash.
        #[test]
        fn the_wiring_hash_is_stable_and_sensitive(
            env in proptest::collection::vec(("[A-Z_]{1,8}", "[ -~]{0,12}"), 0..8),
            i in 0usize..8,
            extra in "[a-z]{1,4}",
        ) {
            proptest::prop_assert_eq!(wiring_hash(&env), wiring_hash(&env.clone()));
            if let Some((k, v)) = env.get(i % env.len().max(1)).cloned() {
                let mut changed = env.clone();
                changed[i % env.len()] = (k, format!("{v}{extra}"));
                proptest::prop_assert_ne!(wiring_hash(&env), wiring_hash(&changed));
            }
        }

        /// Shuffling services in the spec changes no service's wiring.
        #[test]
        fn the_order_of_services_does_not_change_the_wiring(seed in 0u64..1000) {
            let spec = blog_spec();
            let mut shuffled = spec.clone();
            let n = shuffled.services.len();
            shuffled.services.rotate_left((seed as usize) % n);
            let obs = observed(&["posts", "comments", "moderation", "query"]);
            let hashes = |s: &ServiceBusSpec| {
                let mut h: Vec<(String, String)> =
                    plan(&bus(), s, &Settings::default(), &obs, "t").wire.into_iter().map(|w| (w.service, w.hash)).collect();
                h.sort();
                h
            };
            proptest::prop_assert_eq!(hashes(&spec), hashes(&shuffled));
        }
    }
}
