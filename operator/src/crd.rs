//! The `ServiceBus` custom resource (`busbar.dev/v1alpha1`). The spec is the SDK's
//! [`busbar_domain::spec::ServiceBusSpec`], the one definition `busbar up` and the built-in bus
//! read too; this module adds the Kubernetes wrapper and the status the operator writes.

use std::ops::Deref;

use kube::{CustomResource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Who publishes and who subscribes to which event types, and how events are delivered.
// Group, version and kind match `busbar_domain::spec::API_VERSION`/`KIND`; a test holds them together.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "busbar.dev",
    version = "v1alpha1",
    kind = "ServiceBus",
    plural = "servicebuses",
    singular = "servicebus",
    shortname = "sbus",
    category = "busbar",
    namespaced,
    doc = "A ServiceBus: services that share data only through events, wired by the busbar operator.",
    status = "ServiceBusStatus",
    printcolumn = r#"{"name":"Transport","type":"string","jsonPath":".status.transport"}"#,
    printcolumn = r#"{"name":"Services","type":"string","description":"wired/declared","jsonPath":".status.wiredServices"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Pending","type":"integer","description":"events waiting, all subscribers","jsonPath":".status.totalPending"}"#,
    printcolumn = r#"{"name":"Dead","type":"integer","description":"dead-lettered events, all subscribers","jsonPath":".status.totalDeadLettered"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(transparent)]
#[schemars(transparent)]
pub struct ServiceBusSpec(pub busbar_domain::spec::ServiceBusSpec);

impl Deref for ServiceBusSpec {
    type Target = busbar_domain::spec::ServiceBusSpec;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceBusStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `builtin` or `jetstream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// Wired services out of those declared, e.g. `3/4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wired_services: Option<String>,
    /// `Ready`, `TransportReady`, `Wired`, `GraphValid` and `ContractsCompatible`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// One entry per declared service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceStatus>,
    /// Events waiting, summed over the services the transport reports (absent when none does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_pending: Option<u64>,
    /// Dead-lettered events, summed over the services the transport reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_dead_lettered: Option<u64>,
    /// What looks wrong but does not stop the bus, e.g. an event type nobody publishes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Publisher → subscriber edges whose reader does not accept what the writer sends,
    /// from the contracts in the ConfigMap `<bus>-contracts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub incompatible_edges: Vec<ContractEdgeStatus>,
}

/// One publisher → subscriber edge whose contracts do not fit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContractEdgeStatus {
    pub publisher: String,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    pub subscriber: String,
    /// `Held`: a new subscription, not wired until the contracts fit. `Wired`: a
    /// subscription already wired; its events that do not fit are dead-lettered.
    pub state: String,
    /// One line per field that does not fit, naming the type, the field and why.
    pub problems: Vec<String>,
}

/// A standard Kubernetes condition (`metav1.Condition`'s shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase word for programs, e.g. `DeploymentMissing`.
    pub reason: String,
    /// A sentence for people.
    #[serde(default)]
    pub message: String,
    /// RFC 3339 time the status last changed.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub name: String,
    /// The Deployment wired for this service.
    pub deployment: String,
    pub deployment_found: bool,
    /// The Deployment carries this ServiceBus's current wiring.
    pub wired: bool,
    /// Events waiting for this subscriber, when the transport reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,
    /// Deliveries that were retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redelivered: Option<u64>,
    /// Events moved to the dead-letter store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_lettered: Option<u64>,
    /// Events the subscriber holds back until an earlier version of their aggregate arrives,
    /// as it last reported them (absent when it has not reported lately).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked: Option<u64>,
    /// How long the oldest parked event has waited; absent when none is parked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_parked_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl ServiceBusStatus {
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    pub fn service(&self, name: &str) -> Option<&ServiceStatus> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// The ServiceBus being reconciled, reduced to what the decisions need.
#[derive(Debug, Clone, PartialEq)]
pub struct BusRef {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub generation: Option<i64>,
}

impl ServiceBus {
    pub fn bus_ref(&self) -> BusRef {
        BusRef {
            name: self.name_any(),
            namespace: self.namespace().unwrap_or_else(|| "default".into()),
            uid: self.uid().unwrap_or_default(),
            generation: self.metadata.generation,
        }
    }
}

/// The CRD as YAML, exactly as `crdgen` prints it and as the chart and `k8s/` carry it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = ServiceBus::crd();
    format!(
        "# Generated by `cargo run -p busbar-operator --bin crdgen`; do not edit.\n{}",
        serde_yaml_ng::to_string(&crd).expect("a CRD serializes")
    )
}
