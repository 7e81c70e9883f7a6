//! Event contracts in the cluster. The app's contracts lock (the `contracts.lock.json` its
//! repository commits, generated from the services' code) reaches the operator as the
//! ConfigMap `<bus>-contracts`. Every edge of the graph is checked with the rules `busbar
//! contract check` applies, and:
//!
//! - a **new** subscription whose reader does not fit its publisher's writer is held: its
//!   Deployment is not wired (it keeps the wiring it had, none for a new one) and the
//!   transport delivers it only the types it already received, until the contracts fit;
//! - an **existing** subscription that no longer fits (a publisher rolled out a change that
//!   breaks a reader already wired) cannot be undone by the operator: it is reported, in
//!   `ContractsCompatible=False` with the edge named, in `status.incompatibleEdges`, and as
//!   a Warning Event.
//!
//! A subscription exists when the subscriber's Deployment carries this bus's wiring with
//! that type in `BUSBAR_SUBSCRIBES`. Without the ConfigMap nothing is checked and
//! `ContractsCompatible` is Unknown, as before contracts existed.

use std::collections::{BTreeMap, BTreeSet};

use busbar_domain::{
    contracts::{EdgeVerdict, Lock, check},
    spec::ServiceBusSpec,
};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap};

use super::status::cond;
use crate::{
    crd::{BusRef, Condition, ContractEdgeStatus},
    names::{BUS_LABEL, CONTRACTS_FILE, contracts_config_map_name, deployment_name},
};

pub const CONDITION: &str = "ContractsCompatible";
/// [`ContractEdgeStatus::state`] of a new subscription that is not wired.
pub const HELD: &str = "Held";
/// [`ContractEdgeStatus::state`] of a subscription that is wired although it does not fit.
pub const WIRED: &str = "Wired";

/// What the contracts say about this reconcile.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub condition: Condition,
    /// Services whose wiring is held, with the sentence their status shows.
    pub held: BTreeMap<String, String>,
    /// The edges that do not fit.
    pub edges: Vec<ContractEdgeStatus>,
}

impl Assessment {
    /// Nothing checked, for this reason.
    pub fn unknown(reason: &str, message: &str) -> Self {
        let mut condition = cond(CONDITION, false, reason, message);
        condition.status = "Unknown".into();
        Assessment { condition, held: BTreeMap::new(), edges: vec![] }
    }
}

/// Checks `spec`'s edges with the lock in `config_map`.
pub fn assess(
    bus: &BusRef,
    spec: &ServiceBusSpec,
    config_map: Option<&ConfigMap>,
    deployments: &BTreeMap<String, Deployment>,
) -> Assessment {
    let name = contracts_config_map_name(&bus.name);
    let Some(cm) = config_map else {
        return Assessment::unknown(
            "NoContracts",
            &format!(
                "no ConfigMap {name}: event contracts are not checked (create it from the app's contracts lock, key \
                 {CONTRACTS_FILE})"
            ),
        );
    };
    let text = cm.data.as_ref().and_then(|d| d.get(CONTRACTS_FILE));
    let lock = match text.map(|t| Lock::parse(t)) {
        None => return invalid(&format!("ConfigMap {name} has no key {CONTRACTS_FILE}")),
        Some(Err(e)) => return invalid(&format!("ConfigMap {name}, key {CONTRACTS_FILE}: {e}")),
        Some(Ok(lock)) => lock,
    };
    let report = check::check(spec, &lock.services);
    let mut held = BTreeMap::new();
    let mut edges = vec![];
    let mut fitting = 0;
    for e in &report.edges {
        let mismatches = match &e.verdict {
            EdgeVerdict::Breaks(ms) => ms,
            EdgeVerdict::Fits => {
                fitting += 1;
                continue;
            }
            EdgeVerdict::NoReader | EdgeVerdict::Unchecked(_) => continue,
        };
        let subscriber = spec.services.iter().find(|s| s.name == e.edge.subscriber).expect("edges join services");
        let wired = wired_types(bus, deployments.get(deployment_name(subscriber)));
        let state = if wired.contains(&e.edge.event_type) { WIRED } else { HELD };
        if state == HELD {
            held.entry(e.edge.subscriber.clone()).or_insert_with(|| {
                format!(
                    "not wired: its new subscription to {} does not fit {}'s contract (see status.incompatibleEdges)",
                    e.edge.event_type, e.edge.publisher
                )
            });
        }
        edges.push(ContractEdgeStatus {
            publisher: e.edge.publisher.clone(),
            event_type: e.edge.event_type.clone(),
            subscriber: e.edge.subscriber.clone(),
            state: state.into(),
            problems: mismatches.iter().map(|m| busbar_domain::contracts::Break::of(&e.edge, m).to_string()).collect(),
        });
    }
    let named = |state: &str| -> Vec<String> {
        edges
            .iter()
            .filter(|e| e.state == state)
            .map(|e| format!("{} → {} {}", e.publisher, e.subscriber, e.event_type))
            .collect()
    };
    let (broken, waiting) = (named(WIRED), named(HELD));
    let condition = if !broken.is_empty() {
        let mut m = format!(
            "the publisher's writer no longer fits a wired reader, whose events will be dead-lettered: {}; roll the \
             publisher back or the readers forward (see status.incompatibleEdges)",
            broken.join(", ")
        );
        if !waiting.is_empty() {
            m.push_str(&format!("; not wired until their contracts fit: {}", waiting.join(", ")));
        }
        cond(CONDITION, false, "ReaderBroken", &m)
    } else if !waiting.is_empty() {
        let m = format!(
            "new subscriptions not wired until their contracts fit: {} (see status.incompatibleEdges)",
            waiting.join(", ")
        );
        cond(CONDITION, false, "SubscriptionHeld", &m)
    } else if !report.problems.is_empty() {
        let m = format!("{fitting} edge(s) fit; not checked: {}", report.problems.join("; "));
        cond(CONDITION, true, "PartlyChecked", &m)
    } else {
        cond(
            CONDITION,
            true,
            "Compatible",
            &format!("every subscriber's reader fits its publisher ({fitting} edge(s))"),
        )
    };
    Assessment { condition, held, edges }
}

fn invalid(message: &str) -> Assessment {
    Assessment { condition: cond(CONDITION, false, "InvalidContracts", message), held: BTreeMap::new(), edges: vec![] }
}

/// The types the Deployment is wired to receive on this bus (none when this bus has not
/// wired it).
fn wired_types(bus: &BusRef, deployment: Option<&Deployment>) -> BTreeSet<String> {
    let Some(d) = deployment.filter(|d| d.metadata.labels.as_ref().and_then(|l| l.get(BUS_LABEL)) == Some(&bus.name))
    else {
        return BTreeSet::new();
    };
    let containers = d.spec.as_ref().and_then(|s| s.template.spec.as_ref()).map(|p| p.containers.as_slice());
    containers
        .unwrap_or_default()
        .iter()
        .flat_map(|c| c.env.iter().flatten())
        .filter(|e| e.name == "BUSBAR_SUBSCRIBES")
        .flat_map(|e| e.value.as_deref().unwrap_or_default().split(',').map(str::to_owned).collect::<Vec<_>>())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The spec the transport delivers by: each held service receives only the types it is
/// already wired for (nothing, when it is new), so that no event reaches a reader that
/// cannot read it.
pub fn transport_spec(
    bus: &BusRef,
    spec: &ServiceBusSpec,
    held: &BTreeMap<String, String>,
    deployments: &BTreeMap<String, Deployment>,
) -> ServiceBusSpec {
    let mut out = spec.clone();
    for s in out.services.iter_mut().filter(|s| held.contains_key(&s.name)) {
        let wired = wired_types(bus, deployments.get(deployment_name(s)));
        s.subscribes.retain(|sub| wired.contains(&sub.ty));
    }
    out
}
