//! The bus's Secrets. Each bus has one random key, created once and owned by the
//! ServiceBus; each service's token derives from it (see `busbar_domain::credentials`): the
//! built-in bus checks it, and on JetStream it is the service's NATS password. A service
//! reads its token from a Secret of its own, applied when missing or altered and deleted
//! when the service leaves the spec. On JetStream the NATS users, generated from the spec and
//! the key, go in one more Secret for the NATS server to include.

use std::collections::{BTreeMap, BTreeSet};

use busbar_domain::{
    credentials::BusKey,
    spec::{ServiceBusSpec, TransportKind},
};
use k8s_openapi::{ByteString, api::core::v1::Secret};

use super::{
    drift::{fingerprinted, live_covers},
    ownership::{bus_labels, owned_meta},
};
use crate::{
    crd::BusRef,
    names::{
        BUS_KEY_KEY, BUS_LABEL, FIELD_MANAGER, MANAGED_BY_LABEL, NATS_AUTH_FILE, TOKEN_FOR_LABEL, TOKEN_KEY,
        key_secret_name, nats_auth_secret_name, token_secret_name,
    },
};

/// The bus key as its Secret holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum BusKeyState {
    Found(BusKey),
    Missing,
    /// The Secret exists but holds no key; the sentence says what to do.
    Invalid(String),
}

pub fn bus_key(bus: &BusRef, secrets: &BTreeMap<String, Secret>) -> BusKeyState {
    let name = key_secret_name(&bus.name);
    let Some(secret) = secrets.get(&name) else { return BusKeyState::Missing };
    let bytes = secret.data.as_ref().and_then(|d| d.get(BUS_KEY_KEY)).map(|b| b.0.clone()).unwrap_or_default();
    match BusKey::from_hex(&String::from_utf8_lossy(&bytes)) {
        Ok(key) => BusKeyState::Found(key),
        Err(e) => BusKeyState::Invalid(format!(
            "Secret {}/{name} does not hold a bus key ({e}); delete it and the operator makes a new one \
             (services get new tokens)",
            bus.namespace
        )),
    }
}

fn secret(meta: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, key: &str, value: &str) -> Secret {
    Secret {
        metadata: meta,
        type_: Some("Opaque".into()),
        data: Some([(key.to_owned(), ByteString(value.as_bytes().to_vec()))].into()),
        ..Default::default()
    }
}

/// The bus key Secret, owned by the ServiceBus.
pub fn key_secret(bus: &BusRef, key: &BusKey) -> Secret {
    secret(owned_meta(bus, &key_secret_name(&bus.name), bus_labels(bus)), BUS_KEY_KEY, &key.to_hex())
}

/// One service's token Secret; its Deployment reads `BUSBAR_TOKEN` from it.
pub fn token_secret(bus: &BusRef, service: &str, token: &str) -> Secret {
    let labels = [(MANAGED_BY_LABEL, FIELD_MANAGER), (BUS_LABEL, bus.name.as_str()), (TOKEN_FOR_LABEL, service)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    fingerprinted(secret(owned_meta(bus, &token_secret_name(&bus.name, service), labels), TOKEN_KEY, token))
}

/// The NATS `authorization` block for the bus's services, for the NATS server to `include`
/// (see the README's access-control section).
pub fn nats_auth_secret(bus: &BusRef, conf: &str) -> Secret {
    fingerprinted(secret(owned_meta(bus, &nats_auth_secret_name(&bus.name), bus_labels(bus)), NATS_AUTH_FILE, conf))
}

/// Each service's token, and the Secret it is read from, by service name.
pub fn tokens(bus: &BusRef, spec: &ServiceBusSpec, key: &BusKey) -> BTreeMap<String, (String, String)> {
    spec.services
        .iter()
        .map(|s| (s.name.clone(), (token_secret_name(&bus.name, &s.name), key.token(&s.name))))
        .collect()
}

/// The Secret writes a valid spec needs.
#[derive(Debug, Default)]
pub struct SecretWrites {
    /// Missing or altered.
    pub apply: Vec<Secret>,
    /// Token Secrets of services no longer in the spec.
    pub delete: Vec<String>,
}

pub fn writes(bus: &BusRef, spec: &ServiceBusSpec, key: &BusKey, live: &BTreeMap<String, Secret>) -> SecretWrites {
    let mut desired: Vec<Secret> =
        spec.services.iter().map(|s| token_secret(bus, &s.name, &key.token(&s.name))).collect();
    if spec.transport.kind() == TransportKind::JetStream {
        desired.push(nats_auth_secret(bus, &busbar_domain::nats_auth::authorization_block(&bus.name, spec, key)));
    }
    let name = |s: &Secret| s.metadata.name.clone().unwrap_or_default();
    let wanted: BTreeSet<String> = desired.iter().map(name).collect();
    let delete = live
        .values()
        .filter(|s| {
            let labels = s.metadata.labels.as_ref();
            labels.is_some_and(|l| l.contains_key(TOKEN_FOR_LABEL) && l.get(BUS_LABEL) == Some(&bus.name))
                && !wanted.contains(&name(s))
        })
        .map(name)
        .collect();
    let apply = desired.into_iter().filter(|d| !live_covers(live.get(&name(d)), d)).collect();
    SecretWrites { apply, delete }
}
