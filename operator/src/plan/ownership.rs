//! Metadata of the objects the operator creates for a ServiceBus: owned by it (so the API
//! server deletes them with it) and labelled as the operator's (so its watches find them).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::{
    crd::BusRef,
    names::{BUS_LABEL, FIELD_MANAGER, MANAGED_BY_LABEL, bus_object_name},
};

/// The labels of the bus's own objects (key, NATS users, the built-in bus's objects).
pub fn bus_labels(bus: &BusRef) -> BTreeMap<String, String> {
    [
        (MANAGED_BY_LABEL, FIELD_MANAGER.to_owned()),
        (BUS_LABEL, bus.name.clone()),
        ("app.kubernetes.io/name", "event-bus".to_owned()),
        ("app.kubernetes.io/instance", bus_object_name(&bus.name)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

pub fn owner_reference(bus: &BusRef) -> OwnerReference {
    OwnerReference {
        api_version: busbar_domain::spec::API_VERSION.into(),
        kind: busbar_domain::spec::KIND.into(),
        name: bus.name.clone(),
        uid: bus.uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Metadata for an object named `name` in the bus's namespace, owned by the bus.
pub fn owned_meta(bus: &BusRef, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(bus.namespace.clone()),
        labels: Some(labels),
        owner_references: Some(vec![owner_reference(bus)]),
        ..Default::default()
    }
}
