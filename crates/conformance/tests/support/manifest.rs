//! The ServiceBus a test declares. It is written as a manifest file (the built-in bus
//! reads its routes from it and reloads it when a subscriber is added), and each probe
//! gets exactly the `BUSBAR_*` environment `busbar up` and the operator derive from it
//! ([`busbar::wiring::service_env`]).

use busbar::{
    spec::{ServiceBus, TransportKind},
    wiring::{Endpoint, service_env},
};
use serde_json::{Value, json};

use super::Transport;

#[derive(Debug, Clone)]
pub struct Delivery {
    pub max_deliver: u32,
    pub backoff: Vec<String>,
    pub ack_wait: String,
    pub max_parked_for: String,
}

impl Default for Delivery {
    /// Short waits, so retries and dead-lettering happen within a test's time.
    fn default() -> Self {
        Self {
            max_deliver: 3,
            backoff: vec!["100ms".into(), "200ms".into()],
            ack_wait: "5s".into(),
            max_parked_for: "10m".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServiceDecl {
    pub name: String,
    pub port: Option<u16>,
    pub publishes: Vec<String>,
    pub subscribes: Vec<String>,
    pub start_from_now: bool,
}

#[derive(Debug, Clone)]
pub struct Manifest {
    pub bus: String,
    pub transport: Transport,
    /// The NATS URL, on JetStream.
    pub nats_url: Option<String>,
    pub delivery: Delivery,
    pub services: Vec<ServiceDecl>,
}

impl Manifest {
    pub fn json(&self) -> Value {
        let transport = match (self.transport, &self.nats_url) {
            (Transport::JetStream, Some(url)) => json!({"jetstream": {"url": url}}),
            _ => json!({"builtin": {}}),
        };
        let d = &self.delivery;
        let services: Vec<Value> = self
            .services
            .iter()
            .map(|s| {
                let mut v = json!({"name": s.name});
                if let Some(p) = s.port {
                    v["port"] = json!(p);
                }
                if !s.publishes.is_empty() {
                    v["publishes"] = json!(s.publishes);
                }
                if !s.subscribes.is_empty() {
                    v["subscribes"] = s.subscribes.iter().map(|t| json!({"type": t})).collect();
                }
                if s.start_from_now {
                    v["startFrom"] = json!("now");
                }
                v
            })
            .collect();
        json!({
            "apiVersion": "busbar.dev/v1alpha1",
            "kind": "ServiceBus",
            "metadata": {"name": self.bus},
            "spec": {
                "transport": transport,
                "delivery": {"maxDeliver": d.max_deliver, "backoff": d.backoff, "ackWait": d.ack_wait, "maxParkedFor": d.max_parked_for},
                "services": services,
            }
        })
    }

    /// The manifest as busbar parses it; a test that declares nonsense fails here.
    pub fn parsed(&self) -> ServiceBus {
        let text = self.json().to_string();
        busbar::spec::parse_manifest(&text).unwrap_or_else(|e| panic!("the test's ServiceBus is invalid: {e}\n{text}"))
    }

    /// The wiring of `service`, reaching its transport at `url`.
    pub fn env(&self, service: &str, url: &str) -> Vec<(String, String)> {
        let bus = self.parsed();
        let svc = bus.spec.service(service).unwrap_or_else(|| panic!("service {service} is not declared"));
        let kind = match self.transport {
            Transport::Builtin => TransportKind::Builtin,
            Transport::JetStream => TransportKind::JetStream,
        };
        service_env(&bus.name, &bus.spec, svc, &Endpoint { kind, url: url.to_owned() })
    }
}
