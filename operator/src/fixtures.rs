//! Builders for tests and benchmarks: ServiceBuses and Deployments that read like the
//! story they are in.

use busbar_domain::spec::{ServiceBusSpec, ServiceSpec, SubscriptionSpec};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::json;

use crate::crd::{self, ServiceBus};

/// The blog's manifest, the same file `busbar up` and k8s/ use.
pub const BLOG_MANIFEST: &str = include_str!("../../k8s/base/servicebus.yaml");

pub fn blog_spec() -> ServiceBusSpec {
    busbar_domain::spec::parse_manifest(BLOG_MANIFEST).expect("the blog manifest is valid").spec
}

/// A ServiceBus object named `name` in `namespace` with `spec`.
pub fn service_bus(namespace: &str, name: &str, spec: ServiceBusSpec) -> ServiceBus {
    let mut sb = ServiceBus::new(name, crd::ServiceBusSpec(spec));
    sb.metadata.namespace = Some(namespace.into());
    sb
}

/// A chain of `n` services: service i publishes `Event{i}`, service i+1 subscribes to it.
pub fn chain_spec(n: usize) -> ServiceBusSpec {
    let services = (0..n)
        .map(|i| ServiceSpec {
            name: format!("svc-{i}"),
            deployment: None,
            port: Some(8000),
            publishes: vec![format!("Event{i}")],
            subscribes: if i == 0 { vec![] } else { vec![SubscriptionSpec { ty: format!("Event{}", i - 1) }] },
            start_from: None,
        })
        .collect();
    ServiceBusSpec { transport: Default::default(), delivery: Default::default(), services }
}

/// A plain Deployment with one container named after it, as a user would write it.
pub fn deployment(namespace: &str, name: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": name, "namespace": namespace, "labels": { "app": name } },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [ {
                    "name": name, "image": format!("ghcr.io/busbar-dev/{name}:latest"),
                    "env": [ { "name": "DATABASE_URL", "value": format!("postgres://{name}-db/{name}") } ],
                } ] }
            }
        }
    }))
    .expect("a valid Deployment")
}
