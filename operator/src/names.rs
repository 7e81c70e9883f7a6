//! Names, labels and annotations: everything the operator calls by name in the cluster, in
//! one place, so that observe (which reads these objects), plan (which decides about them)
//! and execute (which writes them) cannot disagree about what they are called.

use busbar_domain::spec::{ServiceBusSpec, ServiceSpec};

/// Server-side apply field manager: the operator owns exactly the fields it applies.
pub const FIELD_MANAGER: &str = "busbar-operator";
/// On every ServiceBus the operator reconciles: removed once its cleanup is done.
pub const FINALIZER: &str = "busbar.dev/cleanup";
/// Pod-template annotation holding the wiring hash: a change of wiring rolls the pods.
pub const WIRING_HASH_ANNOTATION: &str = "busbar.dev/wiring-hash";
/// On the objects the operator owns: a digest of what it last applied, so a change it stops
/// making (a field it no longer sets) is noticed although the live object still carries it.
pub const APPLIED_HASH_ANNOTATION: &str = "busbar.dev/applied-hash";
/// Label on every object the operator creates or wires, naming the ServiceBus.
pub const BUS_LABEL: &str = "busbar.dev/bus";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Label on a service's token Secret naming the service.
pub const TOKEN_FOR_LABEL: &str = "busbar.dev/token-for";
/// The key in a token Secret.
pub const TOKEN_KEY: &str = "token";
/// The key in the bus key Secret.
pub const BUS_KEY_KEY: &str = "key";
/// The file in the `<bus>-nats-auth` Secret.
pub const NATS_AUTH_FILE: &str = "auth.conf";
/// The key in the contracts ConfigMap: the app's contracts lock, as committed.
pub const CONTRACTS_FILE: &str = "contracts.lock.json";
/// Label on a contracts ConfigMap: a change to a labelled one reconciles its bus at once
/// (without it, at the next periodic reconcile).
pub const CONTRACTS_LABEL: &str = "busbar.dev/contracts";
/// The file in the routes ConfigMap.
pub const ROUTES_FILE: &str = "servicebus.yaml";
/// Where the built-in bus's routes ConfigMap is mounted.
pub const ROUTES_DIR: &str = "/etc/busbar";
/// Where the built-in bus's routes file is.
pub const ROUTES_PATH: &str = "/etc/busbar/servicebus.yaml";
/// Where the built-in bus's key Secret is mounted (the file is [`BUS_KEY_KEY`]).
pub const KEY_DIR: &str = "/etc/busbar-key";

/// The built-in bus's StatefulSet and Service.
pub fn bus_object_name(bus: &str) -> String {
    format!("{bus}-event-bus")
}

/// The ConfigMap holding the built-in bus's routes.
pub fn routes_config_map_name(bus: &str) -> String {
    format!("{}-routes", bus_object_name(bus))
}

/// The ConfigMap holding the bus's contracts lock ([`CONTRACTS_FILE`]), made by the app's
/// kustomization or chart from its `contracts.lock.json`.
pub fn contracts_config_map_name(bus: &str) -> String {
    format!("{bus}-contracts")
}

/// The bus whose contracts ConfigMap is named `config_map`.
pub fn bus_of_contracts(config_map: &str) -> Option<&str> {
    config_map.strip_suffix("-contracts").filter(|b| !b.is_empty())
}

/// The Secret holding the bus's key (both transports: tokens derive from it).
pub fn key_secret_name(bus: &str) -> String {
    format!("{bus}-event-bus-key")
}

/// The Secret holding one service's bus token.
pub fn token_secret_name(bus: &str, service: &str) -> String {
    format!("{bus}-{service}-bus-token")
}

/// The Secret holding the NATS users a JetStream bus expects.
pub fn nats_auth_secret_name(bus: &str) -> String {
    format!("{bus}-nats-auth")
}

/// The Deployment a service is wired into: `deployment:`, else the service's name.
pub fn deployment_name(s: &ServiceSpec) -> &str {
    s.deployment.as_deref().unwrap_or(&s.name)
}

/// Whether `spec` declares the Deployment `deployment`: a Deployment event maps to every bus
/// in its namespace that declares it, or that wired it before.
pub fn declares(spec: &ServiceBusSpec, deployment: &str) -> bool {
    spec.services.iter().any(|s| deployment_name(s) == deployment)
}
