//! Reads, and only reads, what plan decides from: the Deployments (from the controller's
//! cache), the bus's Secrets, the built-in bus's objects and its `/subscribers` figures, or
//! JetStream's streams, consumers and figures. Nothing here writes: every write is an
//! action of the plan. What is read depends on the spec only as far as an invalid spec
//! is concerned: it provisions nothing, so the transport is not looked at (its URL may
//! be nonsense).

use std::{collections::BTreeMap, time::Duration};

use busbar_client::{bus::BusClient, jetstream::JetStream};
use busbar_domain::{
    credentials::ADMIN,
    spec::{ServiceBusSpec, TransportKind},
};
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::{ConfigMap, Secret, Service},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, ObjectList},
    runtime::reflector::Store,
};

use crate::{
    crd::{BusRef, ServiceBusStatus},
    jetstream::{self, Links},
    names::{
        BUS_LABEL, TOKEN_FOR_LABEL, bus_object_name, contracts_config_map_name, key_secret_name, nats_auth_secret_name,
        routes_config_map_name,
    },
    plan::{
        observed::{BuiltinObserved, Observed, SubscriberFigures, TransportObserved},
        secrets::{self, BusKeyState},
        wiring::endpoint,
    },
    settings::Settings,
};

/// How long the built-in bus has to report its figures: a reconcile does not wait on a
/// slow bus (status then leaves the figures out).
const FIGURES_TIMEOUT: Duration = Duration::from_secs(2);

/// Where observe reads from.
pub struct Sources<'a> {
    pub client: &'a Client,
    /// The controller's cache of Deployments, in every namespace.
    pub deployments: &'a Store<Deployment>,
    pub jetstream: &'a Links,
    pub settings: &'a Settings,
}

/// What was read, and the NATS connection execute carries JetStream actions out on.
pub struct Observation {
    pub observed: Observed,
    pub nats: Option<JetStream>,
}

impl Sources<'_> {
    /// Everything a reconcile of `bus` decides from.
    pub async fn observe(
        &self,
        bus: &BusRef,
        spec: &ServiceBusSpec,
        previous: Option<ServiceBusStatus>,
    ) -> Result<Observation, kube::Error> {
        let mut observed =
            Observed { deployments: self.deployments_in(&bus.namespace), previous, ..Default::default() };
        if !busbar_domain::spec::validate(spec).is_empty() {
            return Ok(Observation { observed, nats: None });
        }
        let kind = spec.transport.kind();
        observed.contracts = Api::<ConfigMap>::namespaced(self.client.clone(), &bus.namespace)
            .get_opt(&contracts_config_map_name(&bus.name))
            .await?;
        observed.secrets = self.secrets(bus, kind).await?;
        let admin = admin_token(bus, &observed.secrets);
        let nats = match kind {
            TransportKind::Builtin => {
                observed.transport = TransportObserved::Builtin(self.builtin(bus, spec, admin.as_deref()).await?);
                None
            }
            TransportKind::JetStream => {
                let url = endpoint(bus, spec, self.settings).url;
                let (state, nats) = self.jetstream(&url, bus, admin.as_deref()).await;
                observed.transport = state;
                nats
            }
        };
        Ok(Observation { observed, nats })
    }

    /// What deleting `bus` decides from: the Deployments, and on JetStream its consumers.
    pub async fn observe_for_cleanup(&self, bus: &BusRef, spec: &ServiceBusSpec) -> Result<Observation, kube::Error> {
        let mut observed = Observed { deployments: self.deployments_in(&bus.namespace), ..Default::default() };
        let mut nats = None;
        if let Some(js) = &spec.transport.jetstream {
            let secrets = Api::<Secret>::namespaced(self.client.clone(), &bus.namespace);
            observed.secrets.extend(named(secrets.get_opt(&key_secret_name(&bus.name)).await?));
            let admin = admin_token(bus, &observed.secrets);
            (observed.transport, nats) = self.jetstream(&js.url, bus, admin.as_deref()).await;
        }
        Ok(Observation { observed, nats })
    }

    /// JetStream's state for `bus`, and the connection it was read on.
    async fn jetstream(&self, url: &str, bus: &BusRef, admin: Option<&str>) -> (TransportObserved, Option<JetStream>) {
        match self.jetstream.connect(url, &bus.name, admin).await {
            Ok(js) => {
                let state = jetstream::observe(&js).await.map_err(|e| format!("NATS at {url}: {e}"));
                (TransportObserved::JetStream(state), Some(js))
            }
            Err(e) => (TransportObserved::JetStream(Err(e)), None),
        }
    }

    fn deployments_in(&self, namespace: &str) -> BTreeMap<String, Deployment> {
        self.deployments
            .state()
            .iter()
            .filter(|d| d.namespace().as_deref() == Some(namespace))
            .map(|d| (d.name_any(), Deployment::clone(d)))
            .collect()
    }

    /// The key Secret and the NATS users Secret by name, the token Secrets by label (so
    /// those of services that left the spec are found too).
    async fn secrets(&self, bus: &BusRef, kind: TransportKind) -> Result<BTreeMap<String, Secret>, kube::Error> {
        let api = Api::<Secret>::namespaced(self.client.clone(), &bus.namespace);
        let tokens = ListParams::default().labels(&format!("{BUS_LABEL}={},{TOKEN_FOR_LABEL}", bus.name));
        let mut out: BTreeMap<String, Secret> = listed(api.list(&tokens).await?);
        out.extend(named(api.get_opt(&key_secret_name(&bus.name)).await?));
        if kind == TransportKind::JetStream {
            out.extend(named(api.get_opt(&nats_auth_secret_name(&bus.name)).await?));
        }
        Ok(out)
    }

    async fn builtin(
        &self,
        bus: &BusRef,
        spec: &ServiceBusSpec,
        admin: Option<&str>,
    ) -> Result<BuiltinObserved, kube::Error> {
        let (ns, name) = (&bus.namespace, bus_object_name(&bus.name));
        let mut seen = BuiltinObserved {
            config_map: Api::<ConfigMap>::namespaced(self.client.clone(), ns)
                .get_opt(&routes_config_map_name(&bus.name))
                .await?,
            service: Api::<Service>::namespaced(self.client.clone(), ns).get_opt(&name).await?,
            stateful_set: Api::<StatefulSet>::namespaced(self.client.clone(), ns).get_opt(&name).await?,
            figures: BTreeMap::new(),
        };
        if let Some(admin) = admin.filter(|_| self.settings.bus_stats && seen.ready_replicas().unwrap_or(0) > 0) {
            seen.figures = self.figures(bus, spec, admin).await;
        }
        Ok(seen)
    }

    /// The built-in bus's per-subscriber figures; none when it does not answer in time (it
    /// may be starting).
    async fn figures(&self, bus: &BusRef, spec: &ServiceBusSpec, admin: &str) -> BTreeMap<String, SubscriberFigures> {
        let url = match &self.settings.bus_stats_url {
            Some(template) => template.replace("{bus}", &bus.name).replace("{namespace}", &bus.namespace),
            None => endpoint(bus, spec, self.settings).url,
        };
        let client = BusClient::new(&url, Some(admin.to_owned()));
        match tokio::time::timeout(FIGURES_TIMEOUT, client.subscribers()).await {
            Ok(Ok(rows)) => rows.iter().map(|r| (r.name.clone(), SubscriberFigures::from(r))).collect(),
            Ok(Err(e)) => {
                tracing::debug!(bus = %bus.name, error = %e, "the event bus did not report subscriber figures");
                BTreeMap::new()
            }
            Err(_) => {
                tracing::debug!(bus = %bus.name, %url, "the event bus did not report its figures in time");
                BTreeMap::new()
            }
        }
    }
}

/// The admin token when the bus's key Secret holds a key.
fn admin_token(bus: &BusRef, secrets: &BTreeMap<String, Secret>) -> Option<String> {
    match secrets::bus_key(bus, secrets) {
        BusKeyState::Found(key) => Some(key.token(ADMIN)),
        BusKeyState::Missing | BusKeyState::Invalid(_) => None,
    }
}

fn named(s: Option<Secret>) -> Option<(String, Secret)> {
    s.map(|s| (s.name_any(), s))
}

fn listed(list: ObjectList<Secret>) -> BTreeMap<String, Secret> {
    list.items.into_iter().map(|s| (s.name_any(), s)).collect()
}
