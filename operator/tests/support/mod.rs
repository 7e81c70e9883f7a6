//! Builders for the operator's tests and its benchmark: ServiceBuses and Deployments that
//! read like the story they are in, and ([`world`]) a cluster simulated as plain data for
//! the plan's tests. Each test binary uses a part of it.
#![allow(dead_code)]

pub mod cluster;
pub mod fake_bus;
pub mod world;

use std::collections::BTreeMap;

use busbar_domain::spec::{ServiceBusSpec, ServiceSpec, SubscriptionSpec};
use busbar_operator::{
    crd::{self, ServiceBus},
    names,
};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        core::v1::{ConfigMap, Container, EnvVar, PodSpec, PodTemplateSpec},
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
};

/// The blog's manifest, the same file `busbar up` and k8s/ use.
pub const BLOG_MANIFEST: &str = include_str!("../../../k8s/base/servicebus.yaml");

/// The blog's contracts lock, as generated from its services (`busbar contract lock`).
pub const BLOG_CONTRACTS: &str = include_str!("../../../k8s/base/contracts.lock.json");

/// The blog's contracts as if posts had renamed `title` in `PostCreated` to `headline`:
/// query reads the title; comments reads only the id.
pub fn blog_contracts_with_title_renamed() -> String {
    let mut lock = busbar_domain::contracts::Lock::parse(BLOG_CONTRACTS).expect("the blog's lock parses");
    let posts = lock.services.get_mut("posts").expect("posts has a contract");
    let mut schema = posts.publishes["PostCreated"].schema.clone();
    let props = schema["properties"].as_object_mut().unwrap();
    let title = props.remove("title").expect("PostCreated has a title");
    props.insert("headline".into(), title);
    schema["required"] = serde_json::json!(["id", "headline"]);
    posts.publishes.insert("PostCreated".into(), busbar_domain::contracts::TypeSchema::new(schema));
    lock.to_pretty_json()
}

/// The ConfigMap an app's kustomization or chart makes from its contracts lock.
pub fn contracts_config_map(namespace: &str, bus: &str, lock: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(names::contracts_config_map_name(bus)),
            namespace: Some(namespace.into()),
            labels: Some([(names::CONTRACTS_LABEL.to_owned(), bus.to_owned())].into()),
            ..Default::default()
        },
        data: Some([(names::CONTRACTS_FILE.to_owned(), lock.to_owned())].into()),
        ..Default::default()
    }
}

/// The blog's services, which are also its Deployments.
pub const BLOG: [&str; 4] = ["posts", "comments", "moderation", "query"];

pub fn blog_spec() -> ServiceBusSpec {
    busbar_domain::spec::parse_manifest(BLOG_MANIFEST).expect("the blog manifest is valid").spec
}

/// `spec` on JetStream at `url`.
pub fn on_jetstream(mut spec: ServiceBusSpec, url: &str) -> ServiceBusSpec {
    spec.transport.builtin = None;
    spec.transport.jetstream = Some(busbar_domain::spec::JetStreamSpec { url: url.into(), replicas: 1 });
    spec
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
    let labels: BTreeMap<String, String> = [("app".to_owned(), name.to_owned())].into();
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector { match_labels: Some(labels.clone()), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: name.into(),
                        image: Some(format!("ghcr.io/busbar-dev/{name}:latest")),
                        env: Some(vec![EnvVar {
                            name: "DATABASE_URL".into(),
                            value: Some(format!("postgres://{name}-db/{name}")),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}
