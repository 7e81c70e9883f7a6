//! A cluster and its transport as plain data, for the plan's tests. A [`World`] answers
//! what observe would read from what it holds, and carries actions out the way the API
//! server and JetStream would (server-side apply's removal of the wiring fields the operator
//! no longer applies included, simplified to what the operator sets), so that a test can say
//! "given this, the operator does that, and then nothing more".

use std::collections::BTreeMap;

use async_nats::jetstream::consumer::pull;
use busbar_domain::{credentials::BusKey, spec::ServiceBusSpec};
use busbar_operator::{
    crd::{BusRef, ServiceBusStatus},
    names::{BUS_LABEL, WIRING_HASH_ANNOTATION, key_secret_name},
    plan::{
        self, Cleanup, Plan,
        actions::{Action, Note},
        observed::{BuiltinObserved, JetStreamObserved, Moment, Observed, SubscriberFigures, TransportObserved},
    },
    settings::Settings,
};
use k8s_openapi::{
    ByteString,
    api::{
        apps::v1::{Deployment, StatefulSet, StatefulSetStatus},
        core::v1::{ConfigMap, Container, EnvVar, Secret, Service},
    },
};

use super::{BLOG, blog_spec, deployment, on_jetstream};

pub const NS: &str = "shop";

pub struct World {
    pub bus: BusRef,
    pub spec: ServiceBusSpec,
    pub settings: Settings,
    pub deployments: BTreeMap<String, Deployment>,
    pub secrets: BTreeMap<String, Secret>,
    pub config_map: Option<ConfigMap>,
    pub service: Option<Service>,
    pub stateful_set: Option<StatefulSet>,
    /// The ConfigMap `<bus>-contracts`, when the app ships one.
    pub contracts: Option<ConfigMap>,
    /// What the built-in bus's `/subscribers` says.
    pub bus_figures: BTreeMap<String, SubscriberFigures>,
    /// JetStream as observe would read it, or why it could not.
    pub nats: Result<JetStreamObserved, String>,
    /// The ServiceBus's status as written.
    pub status: Option<ServiceBusStatus>,
    /// Every Event recorded, in order.
    pub events: Vec<Note>,
    /// The env vars the operator applied to each Deployment (server-side apply's record).
    owned_env: BTreeMap<String, Vec<String>>,
    /// The key the next reconcile would pick if the bus had none.
    next_key: BusKey,
    clock: u32,
}

impl World {
    /// The blog's ServiceBus (`blog` in `shop`) on the built-in bus, with no Deployments yet.
    pub fn blog() -> World {
        World {
            bus: BusRef { name: "blog".into(), namespace: NS.into(), uid: "uid-1".into(), generation: Some(1) },
            spec: blog_spec(),
            settings: Settings::default(),
            deployments: BTreeMap::new(),
            secrets: BTreeMap::new(),
            config_map: None,
            service: None,
            stateful_set: None,
            contracts: None,
            bus_figures: BTreeMap::new(),
            nats: Ok(JetStreamObserved { multi_filter: true, ..Default::default() }),
            status: None,
            events: vec![],
            owned_env: BTreeMap::new(),
            next_key: BusKey::generate(),
            clock: 0,
        }
    }

    /// The blog with all four Deployments.
    pub fn blog_with_deployments() -> World {
        World::blog().with_deployments(&BLOG)
    }

    /// The same bus on JetStream (NATS answers, nothing provisioned yet).
    pub fn on_jetstream(mut self) -> World {
        self.spec = on_jetstream(self.spec, "nats://nats:4222");
        self
    }

    pub fn with_deployments(mut self, names: &[&str]) -> World {
        for n in names {
            self.deployments.insert((*n).to_owned(), deployment(NS, n));
        }
        self
    }

    /// A new spec: a new generation, as the API server counts it.
    pub fn with_spec(mut self, spec: ServiceBusSpec) -> World {
        self.spec = spec;
        self.bus.generation = self.bus.generation.map(|g| g + 1);
        self
    }

    pub fn edit_spec(self, edit: impl FnOnce(&mut ServiceBusSpec)) -> World {
        let mut spec = self.spec.clone();
        edit(&mut spec);
        self.with_spec(spec)
    }

    /// Reconciles until nothing is left to do (the operator converges in one step; a second
    /// is allowed for the status the first one reported).
    pub fn settled(mut self) -> World {
        for _ in 0..3 {
            if self.reconcile().is_empty() {
                return self;
            }
        }
        panic!("the plan does not settle: it still wants {:?}", self.reconcile());
    }

    /// Nothing runs pods: the test says when the bus's pod is ready.
    pub fn bus_ready(mut self) -> World {
        let sts = self.stateful_set.as_mut().expect("the bus's StatefulSet exists");
        sts.status = Some(StatefulSetStatus { ready_replicas: Some(1), replicas: 1, ..Default::default() });
        self
    }

    /// What the transport reports for `service`.
    pub fn figures(mut self, service: &str, figures: SubscriberFigures) -> World {
        match &mut self.nats {
            Ok(js) if self.spec.transport.jetstream.is_some() => js.figures.insert(service.into(), figures),
            _ => self.bus_figures.insert(service.into(), figures),
        };
        self
    }

    /// A Deployment carries the label of `bus`, as if that bus had wired it.
    pub fn labelled(mut self, deployment: &str, bus: &str) -> World {
        let d = self.deployments.get_mut(deployment).expect("the Deployment exists");
        d.metadata.labels.get_or_insert_default().insert(BUS_LABEL.into(), bus.into());
        self
    }

    /// NATS does not answer.
    pub fn nats_down(mut self) -> World {
        self.nats = Err("NATS at nats://nats:4222: connection refused".into());
        self
    }

    /// The app's contracts lock, in its ConfigMap.
    pub fn with_contracts(mut self, lock: &str) -> World {
        self.contracts = Some(super::contracts_config_map(NS, &self.bus.name, lock));
        self
    }

    pub fn without_deployment(mut self, name: &str) -> World {
        self.deployments.remove(name);
        self
    }

    /// Someone edits a Deployment's first container by hand.
    pub fn edit_container(mut self, name: &str, edit: impl FnOnce(&mut Container)) -> World {
        let d = self.deployments.get_mut(name).expect("the Deployment exists");
        edit(&mut d.spec.as_mut().unwrap().template.spec.as_mut().unwrap().containers[0]);
        self
    }

    /// Someone overwrites one value of a Secret.
    pub fn overwrite_secret(mut self, name: &str, key: &str, value: &str) -> World {
        let s = self.secrets.get_mut(name).expect("the Secret exists");
        s.data.get_or_insert_default().insert(key.into(), ByteString(value.as_bytes().to_vec()));
        self
    }

    pub fn add_secret(mut self, secret: Secret) -> World {
        self.secrets.insert(secret.metadata.name.clone().unwrap(), secret);
        self
    }

    pub fn delete_secret(mut self, name: &str) -> World {
        self.secrets.remove(name);
        self
    }

    /// The key the bus's key Secret holds.
    pub fn key(&self) -> BusKey {
        let s = &self.secrets[&key_secret_name(&self.bus.name)];
        BusKey::from_hex(&String::from_utf8_lossy(&s.data.as_ref().unwrap()["key"].0)).unwrap()
    }

    /// What observe would read.
    pub fn observed(&self) -> Observed {
        let mut o =
            Observed { deployments: self.deployments.clone(), previous: self.status.clone(), ..Default::default() };
        if !busbar_domain::spec::validate(&self.spec).is_empty() {
            return o;
        }
        o.secrets = self.secrets.clone();
        o.contracts = self.contracts.clone();
        o.transport = match &self.spec.transport.jetstream {
            Some(_) => TransportObserved::JetStream(self.nats.clone()),
            None => {
                let live = BuiltinObserved {
                    config_map: self.config_map.clone(),
                    service: self.service.clone(),
                    stateful_set: self.stateful_set.clone(),
                    figures: BTreeMap::new(),
                };
                let ready = live.ready_replicas().unwrap_or(0) > 0;
                let figures = if ready { self.bus_figures.clone() } else { BTreeMap::new() };
                TransportObserved::Builtin(BuiltinObserved { figures, ..live })
            }
        };
        o
    }

    fn moment(&mut self) -> Moment {
        self.clock += 1;
        Moment { time: format!("t{}", self.clock), new_key: self.next_key.clone() }
    }

    /// The plan for the world as it is.
    pub fn plan(&mut self) -> Plan {
        let (observed, moment) = (self.observed(), self.moment());
        plan::plan(&self.bus, &self.spec, &self.settings, &observed, &moment)
    }

    /// One reconcile in which every action succeeds: the plan, then the report. Returns
    /// what was done, as sentences.
    pub fn reconcile(&mut self) -> Vec<String> {
        let plan = self.plan();
        self.apply(&plan.actions);
        let report = plan::report(self.status.as_ref(), &plan.status, &self.settings);
        self.apply(&report);
        plan.actions.iter().chain(&report).map(ToString::to_string).collect()
    }

    /// What deleting the ServiceBus takes.
    pub fn cleanup(&self) -> Cleanup {
        plan::cleanup(&self.bus, &self.spec, &self.observed())
    }

    /// Carries `actions` out as the API server and JetStream would.
    pub fn apply(&mut self, actions: &[Action]) {
        for a in actions {
            self.apply_one(a);
        }
    }

    fn apply_one(&mut self, action: &Action) {
        let name = |m: &Option<String>| m.clone().expect("objects have names");
        match action {
            Action::CreateKeySecret(s) => {
                assert!(self.secrets.insert(name(&s.metadata.name), s.clone()).is_none(), "the key is created once");
                self.next_key = BusKey::generate();
            }
            Action::ApplySecret(s) => {
                self.secrets.insert(name(&s.metadata.name), s.clone());
            }
            Action::ApplyConfigMap(c) => self.config_map = Some(c.clone()),
            Action::ApplyService(s) => self.service = Some(s.clone()),
            Action::ApplyStatefulSet(s) => {
                let status = self.stateful_set.take().and_then(|old| old.status);
                self.stateful_set = Some(StatefulSet { status, ..s.clone() });
            }
            Action::CreateStreams => self.nats.as_mut().expect("NATS answers").streams = true,
            Action::PutConsumer(c) => {
                let js = self.nats.as_mut().expect("NATS answers");
                assert!(js.streams, "a consumer needs its stream");
                js.consumers.insert(c.durable_name.clone().unwrap(), pull::Config::clone(c));
            }
            Action::DeleteConsumer(c) => {
                self.nats.as_mut().expect("NATS answers").consumers.remove(c);
            }
            Action::Wire(w) => {
                let env: Vec<EnvVar> = w.body.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0]
                    .env
                    .clone()
                    .unwrap_or_default();
                let names: Vec<String> = env.iter().map(|e| e.name.clone()).collect();
                let before = self.owned_env.insert(w.deployment.clone(), names.clone()).unwrap_or_default();
                let d = self.deployments.get_mut(&w.deployment).expect("only existing Deployments are wired");
                let container = containers(d).iter_mut().find(|c| c.name == w.container).expect("the container");
                let live = container.env.get_or_insert_default();
                live.retain(|e| !before.contains(&e.name) || names.contains(&e.name));
                for var in env {
                    match live.iter_mut().find(|e| e.name == var.name) {
                        Some(e) => *e = var,
                        None => live.push(var),
                    }
                }
                d.metadata.labels.get_or_insert_default().insert(BUS_LABEL.into(), self.bus.name.clone());
                let template = d.spec.as_mut().unwrap().template.metadata.get_or_insert_default();
                template.annotations.get_or_insert_default().insert(WIRING_HASH_ANNOTATION.into(), w.hash.clone());
                self.events.extend(w.notes.iter().cloned());
            }
            Action::Unwire { deployment, notes } => {
                let owned = self.owned_env.remove(deployment).unwrap_or_default();
                if let Some(d) = self.deployments.get_mut(deployment) {
                    for c in containers(d) {
                        c.env.get_or_insert_default().retain(|e| !owned.contains(&e.name));
                    }
                    d.metadata.labels.get_or_insert_default().remove(BUS_LABEL);
                    let template = d.spec.as_mut().unwrap().template.metadata.get_or_insert_default();
                    template.annotations.get_or_insert_default().remove(WIRING_HASH_ANNOTATION);
                    self.events.extend(notes.iter().cloned());
                }
            }
            Action::DeleteSecret(s) => {
                self.secrets.remove(s);
            }
            Action::Event(n) => self.events.push(n.clone()),
            Action::PatchStatus(patch) => {
                let mut doc = serde_json::json!({ "status": self.status });
                json_patch::merge(&mut doc, patch);
                self.status = Some(serde_json::from_value(doc["status"].clone()).expect("a status"));
            }
        }
    }

    /// The reasons of the Events recorded so far, as `kubectl describe` would list them.
    pub fn event_reasons(&self) -> Vec<String> {
        self.events.iter().map(|n| n.reason.clone()).collect()
    }

    pub fn env(&self, deployment: &str) -> BTreeMap<String, String> {
        let d = &self.deployments[deployment];
        d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| {
                let from = e.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref());
                (e.name.clone(), e.value.clone().or(from.map(|r| format!("secret:{}/{}", r.name, r.key))).unwrap())
            })
            .collect()
    }
}

fn containers(d: &mut Deployment) -> &mut Vec<Container> {
    &mut d.spec.as_mut().unwrap().template.spec.as_mut().unwrap().containers
}
