//! What plan decides from: the cluster and the transport as observe read them, as plain
//! data with no handle to either, so the plan's tests build it directly. Also the
//! [`Moment`]: the two things a reconcile brings that are not observations (the time, and a
//! random key in case the bus has none yet), passed in so that plan itself stays
//! deterministic.

use std::collections::BTreeMap;

use async_nats::jetstream::consumer::pull;
use busbar_domain::credentials::BusKey;
use busbar_protocol::bus_api::{Parked, SubscriberStatus};
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::{ConfigMap, Secret, Service},
};

use crate::crd::ServiceBusStatus;

#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Deployments in the ServiceBus's namespace, by name.
    pub deployments: BTreeMap<String, Deployment>,
    /// This bus's Secrets, by name: its key Secret, its token Secrets, its NATS users Secret.
    pub secrets: BTreeMap<String, Secret>,
    pub transport: TransportObserved,
    /// The ConfigMap `<bus>-contracts` (None: there is none, or the spec is invalid).
    pub contracts: Option<ConfigMap>,
    /// The status as last written (None before the first write).
    pub previous: Option<ServiceBusStatus>,
}

/// The transport as observed.
#[derive(Debug, Clone, Default)]
#[expect(clippy::large_enum_variant, reason = "there is one per reconcile")]
pub enum TransportObserved {
    /// Not read: an invalid spec provisions nothing, so there is nothing to look at.
    #[default]
    NotRead,
    Builtin(BuiltinObserved),
    /// JetStream's state, or why it could not be read (e.g. NATS did not answer).
    JetStream(Result<JetStreamObserved, String>),
}

/// The built-in bus's objects as they are in the cluster, and its figures.
#[derive(Debug, Clone, Default)]
pub struct BuiltinObserved {
    pub config_map: Option<ConfigMap>,
    pub service: Option<Service>,
    pub stateful_set: Option<StatefulSet>,
    /// Per-subscriber figures from the bus's `/subscribers`, by service; empty when they were
    /// not read (the bus is not ready, figures are off) or the bus did not answer.
    pub figures: BTreeMap<String, SubscriberFigures>,
}

impl BuiltinObserved {
    /// The StatefulSet's ready replicas (None: no StatefulSet, or no status yet).
    pub fn ready_replicas(&self) -> Option<i32> {
        self.stateful_set.as_ref()?.status.as_ref()?.ready_replicas
    }
}

/// The bus's JetStream streams and consumers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JetStreamObserved {
    /// The server filters a consumer on several subjects (NATS 2.10+).
    pub multi_filter: bool,
    /// The bus's stream and its dead-letter stream both exist.
    pub streams: bool,
    /// The consumers on the bus's stream, by durable name.
    pub consumers: BTreeMap<String, pull::Config>,
    /// Per-consumer figures, by durable name (a service's durable is its name).
    pub figures: BTreeMap<String, SubscriberFigures>,
}

/// One subscriber's figures, as its transport reports them (None: not reported).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SubscriberFigures {
    pub pending: Option<u64>,
    pub redelivered: Option<u64>,
    pub dead_lettered: Option<u64>,
    pub parked: Option<Parked>,
}

impl From<&SubscriberStatus> for SubscriberFigures {
    /// The built-in bus's `GET /subscribers` row.
    fn from(s: &SubscriberStatus) -> Self {
        SubscriberFigures {
            pending: Some(s.lag.max(0) as u64),
            redelivered: Some(u64::from(s.attempts)),
            dead_lettered: Some(s.dead_letters.max(0) as u64),
            parked: s.parked,
        }
    }
}

/// What a reconcile brings besides its observations.
#[derive(Debug, Clone)]
pub struct Moment {
    /// RFC 3339, for conditions that change status now.
    pub time: String,
    /// The key to create the bus's key Secret with, if it has none yet.
    pub new_key: BusKey,
}

impl Moment {
    pub fn now() -> Self {
        Moment {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            new_key: BusKey::generate(),
        }
    }
}
