//! What plan hands to execute: every write the operator makes, as data. Execute carries
//! them out in order and reports which failed; it decides nothing. Keeping each write a value
//! lets the plan's tests read as "given this, the operator does exactly that".

use std::fmt;

use async_nats::jetstream::consumer::pull;
use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{ConfigMap, PodTemplateSpec, Secret, Service},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::Serialize;
use serde_json::Value;

/// One write, to the API server or to JetStream.
#[derive(Debug, Clone, PartialEq)]
#[expect(clippy::large_enum_variant, reason = "a plan holds a handful of actions; boxing the objects buys nothing")]
pub enum Action {
    /// Creates the bus key Secret. Created, never applied: two operators racing must not
    /// both pick a key. The one that loses gets AlreadyExists, and the rest of its plan
    /// (tokens derived from its key) is stale: execute stops, and the next reconcile reads
    /// the winner's key.
    CreateKeySecret(Secret),
    /// Server-side apply of a Secret the operator owns (a token, or the NATS users).
    ApplySecret(Secret),
    ApplyConfigMap(ConfigMap),
    ApplyService(Service),
    ApplyStatefulSet(StatefulSet),
    /// Creates the bus's JetStream stream and dead-letter stream.
    CreateStreams,
    /// Creates or updates one durable consumer on the bus's stream.
    PutConsumer(Box<pull::Config>),
    DeleteConsumer(String),
    /// Wires one Deployment, then records the notes.
    Wire(Wiring),
    /// Removes everything the operator applied to a Deployment, then records the notes.
    Unwire {
        deployment: String,
        notes: Vec<Note>,
    },
    /// Deletes a Secret (a token of a service that left the spec); a missing one is fine.
    DeleteSecret(String),
    /// A Kubernetes Event.
    Event(Note),
    /// A JSON merge patch of the ServiceBus's status subresource.
    PatchStatus(Value),
}

/// What a failed action leaves wrong: the condition its failure is reported under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Concern {
    /// The transport: its key, tokens, objects, streams and consumers.
    Transport,
    /// One Deployment's wiring.
    Wiring { deployment: String },
    /// Only what people read (Events, status): nothing in the cluster depends on it.
    Report,
}

impl Action {
    pub fn concern(&self) -> Concern {
        match self {
            Action::Wire(w) => Concern::Wiring { deployment: w.deployment.clone() },
            Action::Unwire { deployment, .. } => Concern::Wiring { deployment: deployment.clone() },
            Action::Event(_) | Action::PatchStatus(_) => Concern::Report,
            _ => Concern::Transport,
        }
    }
}

/// A short sentence per action, for logs, failure messages and the plan's tests.
impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |m: &ObjectMeta| m.name.clone().unwrap_or_default();
        match self {
            Action::CreateKeySecret(s) => write!(f, "create Secret {}", name(&s.metadata)),
            Action::ApplySecret(s) => write!(f, "apply Secret {}", name(&s.metadata)),
            Action::ApplyConfigMap(c) => write!(f, "apply ConfigMap {}", name(&c.metadata)),
            Action::ApplyService(s) => write!(f, "apply Service {}", name(&s.metadata)),
            Action::ApplyStatefulSet(s) => write!(f, "apply StatefulSet {}", name(&s.metadata)),
            Action::CreateStreams => write!(f, "create the JetStream streams"),
            Action::PutConsumer(c) => {
                write!(f, "put consumer {}", c.durable_name.as_deref().unwrap_or_default())
            }
            Action::DeleteConsumer(c) => write!(f, "delete consumer {c}"),
            Action::Wire(w) => write!(f, "wire Deployment {}", w.deployment),
            Action::Unwire { deployment, .. } => write!(f, "unwire Deployment {deployment}"),
            Action::DeleteSecret(s) => write!(f, "delete Secret {s}"),
            Action::Event(n) => write!(f, "{n}"),
            Action::PatchStatus(_) => write!(f, "patch status"),
        }
    }
}

/// The wiring one Deployment should carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Wiring {
    pub service: String,
    pub deployment: String,
    pub container: String,
    /// A digest of the wiring, also in the pod template: a new one rolls the pods.
    pub hash: String,
    /// The server-side apply body: only the fields the operator owns.
    pub body: DeploymentApply,
    /// Events to record once the wiring is applied.
    pub notes: Vec<Note>,
}

/// A Deployment as the operator applies it: only the fields it owns. (k8s-openapi's
/// `DeploymentSpec` always serializes `selector`, which the operator must not own, so the
/// apply body has a type of its own.) Applied with none of its fields, it removes
/// everything the operator applied before.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentApply {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: ObjectMeta,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spec: Option<DeploymentApplySpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeploymentApplySpec {
    pub template: PodTemplateSpec,
}

impl DeploymentApply {
    /// An apply body with no fields: the API server removes every field this manager owned.
    pub fn nothing(namespace: &str, name: &str) -> Self {
        DeploymentApply {
            api_version: "apps/v1",
            kind: "Deployment",
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some(namespace.into()), ..Default::default() },
            spec: None,
        }
    }

    /// The env of the one container the body wires, as (name, literal value or
    /// `secret:<name>/<key>`), for logs and tests.
    pub fn env(&self) -> Vec<(String, String)> {
        let containers = self.spec.iter().filter_map(|s| s.template.spec.as_ref()).flat_map(|s| &s.containers);
        containers
            .flat_map(|c| c.env.iter().flatten())
            .map(|e| {
                let from = e.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref());
                let value = match (&e.value, from) {
                    (Some(v), _) => v.clone(),
                    (None, Some(r)) => format!("secret:{}/{}", r.name, r.key),
                    (None, None) => String::new(),
                };
                (e.name.clone(), value)
            })
            .collect()
    }
}

/// The object an Event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Regarding {
    ServiceBus,
    Deployment(String),
}

impl fmt::Display for Regarding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Regarding::ServiceBus => write!(f, "ServiceBus"),
            Regarding::Deployment(d) => write!(f, "Deployment {d}"),
        }
    }
}

/// A Kubernetes Event: what `kubectl describe` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub regarding: Regarding,
    /// The other object involved. It also keeps Events apart: the recorder merges Events
    /// with the same object, reason and related object into one series.
    pub related: Option<Regarding>,
    pub warning: bool,
    /// CamelCase, e.g. `Wired`.
    pub reason: String,
    /// What the operator was doing, e.g. `Wire`.
    pub action: String,
    /// A sentence for people.
    pub note: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.warning { "Warning" } else { "Normal" };
        write!(f, "event {kind} {} on {}", self.reason, self.regarding)?;
        if let Some(r) = &self.related {
            write!(f, " about {r}")?;
        }
        Ok(())
    }
}

/// An action that failed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The action, as [`Action`]'s Display says it.
    pub action: String,
    pub concern: Concern,
    pub error: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot {}: {}", self.action, self.error)
    }
}
