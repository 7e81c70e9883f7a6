//! Wiring: the `BUSBAR_*` env vars (from `busbar_domain::wiring`, the function `busbar up`
//! uses too), the token by reference to the service's Secret, the label naming the bus, and
//! the pod-template annotation holding a hash of all that, so a change of wiring rolls that
//! Deployment's pods and nothing else. A Deployment is wired when it does not carry its
//! wiring (it is new, the wiring changed, or someone edited it by hand), and unwired when it
//! carries this bus's label but no service of the spec uses it any more.

use std::collections::BTreeMap;

use busbar_domain::{
    spec::{ServiceBusSpec, ServiceSpec, TransportKind},
    wiring::{self, Endpoint},
};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Container, EnvVar, EnvVarSource, PodSpec, PodTemplateSpec, SecretKeySelector},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use sha2::{Digest, Sha256};

use super::{
    actions::{DeploymentApply, DeploymentApplySpec, Wiring},
    drift::live_covers,
    events,
};
use crate::{
    crd::BusRef,
    names::{BUS_LABEL, TOKEN_KEY, WIRING_HASH_ANNOTATION, bus_object_name, declares, deployment_name},
    settings::Settings,
};

/// The URL services use to reach their transport.
pub fn endpoint(bus: &BusRef, spec: &ServiceBusSpec, settings: &Settings) -> Endpoint {
    match &spec.transport.jetstream {
        Some(js) => Endpoint { kind: TransportKind::JetStream, url: js.url.clone() },
        None => Endpoint {
            kind: TransportKind::Builtin,
            url: format!("http://{}.{}.svc:{}", bus_object_name(&bus.name), bus.namespace, settings.bus_port),
        },
    }
}

/// A short, stable digest of the wiring: the same env always gives the same hash.
pub fn wiring_hash(env: &[(String, String)]) -> String {
    let mut h = Sha256::new();
    for (k, v) in env {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// How one declared service's Deployment stands, for status.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceWiring {
    pub found: bool,
    /// It carries its wiring once the plan's actions are done.
    pub wired: bool,
    pub message: Option<String>,
}

impl ServiceWiring {
    fn missing(deployment: &str) -> Self {
        let message = format!("Deployment {deployment} not found; it is wired once it exists");
        ServiceWiring { found: false, wired: false, message: Some(message) }
    }
}

#[derive(Debug, Default)]
pub struct WiringPlan {
    /// Deployments whose wiring is missing or differs (drift included).
    pub wire: Vec<Wiring>,
    /// Deployments that carry this bus's label but are no longer in the spec.
    pub unwire: Vec<String>,
    /// Per declared service, in spec order.
    pub services: Vec<ServiceWiring>,
}

/// `tokens`: each service's (token Secret, token). `held`: services not to (re)wire, with
/// why (a new subscription whose contract does not fit): their Deployments keep what they
/// carry.
pub fn plan(
    bus: &BusRef,
    spec: &ServiceBusSpec,
    settings: &Settings,
    deployments: &BTreeMap<String, Deployment>,
    tokens: &BTreeMap<String, (String, String)>,
    held: &BTreeMap<String, String>,
) -> WiringPlan {
    let at = endpoint(bus, spec, settings);
    let mut out = WiringPlan::default();
    for s in &spec.services {
        let name = deployment_name(s);
        let Some(d) = deployments.get(name) else {
            out.services.push(ServiceWiring::missing(name));
            continue;
        };
        let Some(container) = container_for(s, d) else {
            let message = format!("Deployment {name} has no containers");
            out.services.push(ServiceWiring { found: true, wired: false, message: Some(message) });
            continue;
        };
        if let Some(why) = held.get(&s.name) {
            out.services.push(ServiceWiring { found: true, wired: false, message: Some(why.clone()) });
            continue;
        }
        let w = wiring(bus, spec, s, &at, container, tokens.get(&s.name));
        if !live_covers(Some(d), &w.body) {
            out.wire.push(w);
        }
        out.services.push(ServiceWiring { found: true, wired: true, message: None });
    }
    // Deployments this bus wired before but no longer declares.
    out.unwire = deployments
        .values()
        .filter(|d| d.metadata.labels.as_ref().and_then(|l| l.get(BUS_LABEL)) == Some(&bus.name))
        .filter_map(|d| d.metadata.name.clone())
        .filter(|name| !declares(spec, name))
        .collect();
    out
}

/// How the declared services stand when nothing is wired (the spec or the key is invalid).
pub fn unwired_states(spec: &ServiceBusSpec, deployments: &BTreeMap<String, Deployment>) -> Vec<ServiceWiring> {
    let state = |name: &str| match deployments.contains_key(name) {
        true => ServiceWiring { found: true, wired: false, message: None },
        false => ServiceWiring::missing(name),
    };
    spec.services.iter().map(|s| state(deployment_name(s))).collect()
}

/// The container to wire: the one named after the service or the Deployment, else the first.
fn container_for(service: &ServiceSpec, d: &Deployment) -> Option<String> {
    let containers = d.spec.as_ref()?.template.spec.as_ref()?.containers.iter();
    let names = || containers.clone().map(|c| &c.name);
    names().find(|n| **n == service.name || n.as_str() == deployment_name(service)).or_else(|| names().next()).cloned()
}

fn wiring(
    bus: &BusRef,
    spec: &ServiceBusSpec,
    s: &ServiceSpec,
    at: &Endpoint,
    container: String,
    token: Option<&(String, String)>,
) -> Wiring {
    let env = wiring::service_env(&bus.name, spec, s, at);
    // The hash covers the token's fingerprint, so a new key rolls the pods (env from a
    // Secret is read only when a container starts).
    let mut hashed = env.clone();
    if let Some((secret, token)) = token {
        hashed.push((wiring::TOKEN_ENV.into(), format!("{secret} {}", wiring_hash(&[(token.clone(), String::new())]))));
    }
    let hash = wiring_hash(&hashed);
    let mut vars: Vec<EnvVar> =
        env.into_iter().map(|(name, value)| EnvVar { name, value: Some(value), ..Default::default() }).collect();
    if let Some((secret, _)) = token {
        vars.push(EnvVar {
            name: wiring::TOKEN_ENV.into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.clone(),
                    key: TOKEN_KEY.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let deployment = deployment_name(s).to_owned();
    let body = DeploymentApply {
        metadata: ObjectMeta {
            labels: Some([(BUS_LABEL.to_owned(), bus.name.clone())].into()),
            ..DeploymentApply::nothing(&bus.namespace, &deployment).metadata
        },
        spec: Some(DeploymentApplySpec {
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    annotations: Some([(WIRING_HASH_ANNOTATION.to_owned(), hash.clone())].into()),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container { name: container.clone(), env: Some(vars), ..Default::default() }],
                    ..Default::default()
                }),
            },
        }),
        ..DeploymentApply::nothing(&bus.namespace, &deployment)
    };
    Wiring {
        service: s.name.clone(),
        notes: events::wired(&bus.name, &s.name, &deployment, &hash),
        deployment,
        container,
        hash,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any change to the wiring gives a new hash: a value, a name, or where one ends and
        /// the next begins.
        #[test]
        fn the_wiring_hash_changes_with_the_wiring(
            env in proptest::collection::vec(("[A-Z_]{1,8}", "[ -~]{0,12}"), 1..8),
            i in 0usize..8,
            extra in "[a-z]{1,4}",
        ) {
            let i = i % env.len();
            let hash = wiring_hash(&env);
            let mut value = env.clone();
            value[i].1.push_str(&extra);
            proptest::prop_assert_ne!(&hash, &wiring_hash(&value));
            let mut name = env.clone();
            name[i].0.push_str(&extra);
            proptest::prop_assert_ne!(&hash, &wiring_hash(&name));
            let mut moved = env.clone();
            let (k, v) = moved[i].clone();
            moved[i] = (format!("{k}{}", v.chars().next().unwrap_or('=')), v.chars().skip(1).collect());
            proptest::prop_assert_ne!(&hash, &wiring_hash(&moved));
        }
    }

    /// The hash of a given wiring never changes between operator versions: a new hash
    /// would roll every wired Deployment's pods on upgrade. (The first 8 bytes of SHA-256
    /// over each `name NUL value NUL`, as earlier versions wrote it.)
    #[test]
    fn the_wiring_hash_is_the_one_earlier_versions_wrote() {
        let env = [("BUSBAR_SERVICE".to_owned(), "query".to_owned()), ("BUSBAR_BUS".to_owned(), "blog".to_owned())];
        assert_eq!(wiring_hash(&env), "1184826d573ee7b4");
    }
}
