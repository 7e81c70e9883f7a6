//! The `BUSBAR_*` environment a service gets from its ServiceBus. One function decides it
//! for both `busbar up` (process environment) and the operator (Deployment env vars), so
//! a service is wired the same way on a laptop and in a cluster. Pure.

use crate::spec::{ServiceBusSpec, ServiceSpec, StartFrom, TransportKind};

/// The variable holding a service's bus token. Not part of [`service_env`]: `busbar up`
/// sets it to the token, the operator to a reference to the service's Secret.
pub const TOKEN_ENV: &str = "BUSBAR_TOKEN";

/// Where a service reaches its transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub kind: TransportKind,
    /// The bus's base URL (`http://…`) or the NATS URL (`nats://…`).
    pub url: String,
}

/// The environment variables that wire `service` into bus `bus_name`, in a fixed order.
/// `config::BusbarConfig::from_env` reads exactly these.
pub fn service_env(
    bus_name: &str,
    spec: &ServiceBusSpec,
    service: &ServiceSpec,
    at: &Endpoint,
) -> Vec<(String, String)> {
    let delivery = &spec.delivery;
    let replicas = spec.transport.jetstream.as_ref().map_or(1, |j| j.replicas);
    let vars = [
        ("BUSBAR_SERVICE", service.name.clone()),
        (
            "BUSBAR_TRANSPORT",
            match at.kind {
                TransportKind::Builtin => "http",
                TransportKind::JetStream => "jetstream",
            }
            .to_owned(),
        ),
        ("BUSBAR_URL", at.url.clone()),
        ("BUSBAR_BUS", bus_name.to_owned()),
        ("BUSBAR_SUBSCRIBES", service.subscribed_types().into_iter().collect::<Vec<_>>().join(",")),
        (
            "BUSBAR_START_FROM",
            match service.start_from() {
                StartFrom::Beginning => "beginning",
                StartFrom::Now => "now",
            }
            .to_owned(),
        ),
        ("BUSBAR_MAX_DELIVER", delivery.max_deliver.to_string()),
        ("BUSBAR_ACK_WAIT", delivery.ack_wait.clone()),
        ("BUSBAR_MAX_PARKED_FOR", delivery.max_parked_for.clone()),
        ("BUSBAR_BACKOFF", delivery.backoff.join(",")),
    ];
    let mut env: Vec<(String, String)> = vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    // Only JetStream has stream replicas; leaving it out elsewhere keeps the built-in bus's
    // wiring (and its hash, which rolls pods) as it was.
    if at.kind == TransportKind::JetStream {
        env.push(("BUSBAR_JETSTREAM_REPLICAS".to_owned(), replicas.to_string()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BusbarConfig;

    #[test]
    fn the_wiring_is_what_the_service_reads() {
        let bus = crate::spec::parse_manifest(
            "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nmetadata: {name: blog}\nspec:\n  delivery: {maxDeliver: 3, backoff: [1s, 2s], ackWait: 10s}\n  services:\n  - {name: query, port: 4002, subscribes: [{type: PostCreated}, {type: CommentCreated}], startFrom: now}\n",
        )
        .unwrap();
        let at = Endpoint { kind: TransportKind::Builtin, url: "http://event-bus:4005".into() };
        let env = service_env(&bus.name, &bus.spec, &bus.spec.services[0], &at);
        let cfg = BusbarConfig::from_lookup("x", |k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())).unwrap();
        assert_eq!(cfg.service, "query");
        assert_eq!(cfg.bus, "blog");
        assert_eq!(cfg.subscribes, Some(vec!["CommentCreated".to_owned(), "PostCreated".to_owned()]));
        assert_eq!(cfg.start_from, StartFrom::Now);
        assert_eq!(cfg.max_deliver, 3);
        assert_eq!(cfg.ack_wait, std::time::Duration::from_secs(10));
    }
}
