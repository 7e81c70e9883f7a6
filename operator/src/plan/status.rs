//! The status: what is true now, exactly. Conditions `Ready`, `TransportReady`, `Wired` and
//! `GraphValid`; per service its Deployment, wiring and figures; the totals the printer
//! columns show; the warnings. A condition's `lastTransitionTime` moves only when its status
//! does, so an unchanged cluster gives an unchanged status, and [`patch`] then writes
//! nothing. When execute could not carry an action out, [`with_failures`] says so in the
//! conditions and per service.

use std::{collections::BTreeMap, sync::LazyLock};

use busbar_domain::spec::{ServiceBusSpec, TransportKind};
use serde_json::Value;

use super::{
    actions::{Concern, Failure},
    observed::{SubscriberFigures, TransportObserved},
    secrets::BusKeyState,
    wiring::ServiceWiring,
};
use crate::{
    crd::{BusRef, Condition, ContractEdgeStatus, ServiceBusStatus, ServiceStatus},
    names::deployment_name,
};

pub fn transport_name(kind: TransportKind) -> &'static str {
    match kind {
        TransportKind::Builtin => "builtin",
        TransportKind::JetStream => "jetstream",
    }
}

pub fn cond(type_: &str, ok: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: String::new(),
        observed_generation: None,
    }
}

pub fn transport_condition(
    kind: TransportKind,
    problems: &[String],
    key: &BusKeyState,
    transport: &TransportObserved,
) -> Condition {
    const T: &str = "TransportReady";
    if !problems.is_empty() {
        return cond(T, false, "InvalidSpec", "the transport is not provisioned while the spec is invalid");
    }
    if let BusKeyState::Invalid(why) = key {
        return cond(T, false, "InvalidBusKey", why);
    }
    match (kind, transport) {
        (TransportKind::Builtin, TransportObserved::Builtin(b)) if b.ready_replicas().unwrap_or(0) > 0 => {
            cond(T, true, "BusReady", "the built-in event bus is ready")
        }
        (TransportKind::Builtin, _) => cond(T, false, "BusStarting", "waiting for the event bus pod to be ready"),
        (TransportKind::JetStream, TransportObserved::JetStream(Ok(_))) => {
            cond(T, true, "Provisioned", "the JetStream stream and consumers are provisioned")
        }
        (TransportKind::JetStream, TransportObserved::JetStream(Err(e))) => cond(T, false, "ProvisioningFailed", e),
        (TransportKind::JetStream, _) => cond(T, false, "Provisioning", "provisioning JetStream"),
    }
}

/// One entry per declared service, in spec order: its wiring and its transport's figures.
pub fn services(
    spec: &ServiceBusSpec,
    wiring: &[ServiceWiring],
    figures: &BTreeMap<String, SubscriberFigures>,
) -> Vec<ServiceStatus> {
    spec.services
        .iter()
        .zip(wiring)
        .map(|(s, w)| {
            let f = figures.get(&s.name).copied().unwrap_or_default();
            ServiceStatus {
                name: s.name.clone(),
                deployment: deployment_name(s).to_owned(),
                deployment_found: w.found,
                wired: w.wired,
                pending: f.pending,
                redelivered: f.redelivered,
                dead_lettered: f.dead_lettered,
                parked: f.parked.map(|p| p.count),
                oldest_parked_seconds: f.parked.filter(|p| p.count > 0).map(|p| p.oldest_age_ms / 1000),
                message: w.message.clone(),
            }
        })
        .collect()
}

/// What the status is made of, before the conditions that summarise it.
#[derive(Debug, Clone)]
pub struct Findings {
    /// Validation problems of the spec.
    pub problems: Vec<String>,
    /// Why the bus key cannot be used, if it cannot (nothing is wired then).
    pub key_problem: Option<String>,
    pub transport: Condition,
    pub services: Vec<ServiceStatus>,
    pub warnings: Vec<String>,
    /// `ContractsCompatible`.
    pub contracts: Condition,
    pub incompatible_edges: Vec<ContractEdgeStatus>,
}

pub fn assemble(
    bus: &BusRef,
    kind: TransportKind,
    findings: Findings,
    previous: Option<&ServiceBusStatus>,
    now: &str,
) -> ServiceBusStatus {
    let Findings { problems, key_problem, transport, services, warnings, contracts, incompatible_edges } = findings;
    let graph = if !problems.is_empty() {
        cond("GraphValid", false, "InvalidSpec", &problems.join("; "))
    } else if warnings.is_empty() {
        cond("GraphValid", true, "Valid", "every subscribed event type has a publisher")
    } else {
        cond("GraphValid", true, "ValidWithWarnings", &format!("{} warning(s); see status.warnings", warnings.len()))
    };
    let wired = wired_condition(&problems, key_problem.is_some(), &services);
    let total = |f: fn(&ServiceStatus) -> Option<u64>| services.iter().filter_map(f).reduce(|a, b| a + b);
    let mut status = ServiceBusStatus {
        observed_generation: bus.generation,
        transport: Some(transport_name(kind).into()),
        wired_services: Some(format!("{}/{}", services.iter().filter(|s| s.wired).count(), services.len())),
        conditions: vec![transport, wired, graph, contracts],
        total_pending: total(|s| s.pending),
        total_dead_lettered: total(|s| s.dead_lettered),
        services,
        warnings,
        incompatible_edges,
    };
    summarise(&mut status, bus, previous, now);
    status
}

fn wired_condition(problems: &[String], bad_key: bool, services: &[ServiceStatus]) -> Condition {
    let wired = services.iter().filter(|s| s.wired).count();
    let missing: Vec<&str> = services.iter().filter(|s| !s.deployment_found).map(|s| s.deployment.as_str()).collect();
    if !problems.is_empty() {
        cond("Wired", false, "InvalidSpec", "nothing is wired while the spec is invalid")
    } else if bad_key {
        cond("Wired", false, "InvalidBusKey", "nothing is wired while the bus key is invalid (see TransportReady)")
    } else if wired == services.len() {
        cond("Wired", true, "AllWired", &format!("{wired} Deployment(s) wired"))
    } else if !missing.is_empty() {
        cond("Wired", false, "DeploymentMissing", &format!("waiting for Deployment(s): {}", missing.join(", ")))
    } else {
        cond("Wired", false, "NotWired", &format!("{wired}/{} Deployment(s) wired", services.len()))
    }
}

/// Puts `Ready` first, from the other conditions (the first that is not True says why it is
/// not ready), and stamps every condition with the generation and its transition time.
fn summarise(status: &mut ServiceBusStatus, bus: &BusRef, previous: Option<&ServiceBusStatus>, now: &str) {
    status.conditions.retain(|c| c.type_ != "Ready");
    let by_type = |t: &str| status.conditions.iter().find(|c| c.type_ == t);
    // Contracts that were not checked (Unknown) do not stop the bus; contracts that do not
    // fit do, and say why before the wiring they hold does.
    let blocking = ["GraphValid", "ContractsCompatible", "TransportReady", "Wired"]
        .into_iter()
        .filter_map(by_type)
        .find(|c| c.status == "False" || (c.status != "True" && c.type_ != "ContractsCompatible"));
    let ready = match blocking {
        None => cond("Ready", true, "Ready", "the transport is up and every service is wired"),
        Some(c) => cond("Ready", false, &c.reason, &c.message),
    };
    status.conditions.insert(0, ready);
    for c in &mut status.conditions {
        c.observed_generation = bus.generation;
        c.last_transition_time = match previous.and_then(|p| p.condition(&c.type_)) {
            Some(prev) if prev.status == c.status => prev.last_transition_time.clone(),
            _ => now.to_owned(),
        };
    }
}

/// The status once `failures` are taken into account: a failed transport write turns
/// `TransportReady` False, a failed wiring turns that service's `wired` and `Wired` False,
/// each with the error, so that what went wrong is in status and not only in a log.
pub fn with_failures(
    mut status: ServiceBusStatus,
    failures: &[Failure],
    bus: &BusRef,
    previous: Option<&ServiceBusStatus>,
    now: &str,
) -> ServiceBusStatus {
    if failures.is_empty() {
        return status;
    }
    let sentences = |pick: &dyn Fn(&Concern) -> bool| {
        failures.iter().filter(|f| pick(&f.concern)).map(ToString::to_string).collect::<Vec<_>>()
    };
    let transport = sentences(&|c| *c == Concern::Transport);
    if !transport.is_empty() {
        replace(&mut status, cond("TransportReady", false, "ProvisioningFailed", &transport.join("; ")));
    }
    let wiring = sentences(&|c| matches!(c, Concern::Wiring { .. }));
    for f in failures {
        if let Concern::Wiring { deployment } = &f.concern {
            for s in status.services.iter_mut().filter(|s| s.deployment == *deployment) {
                s.wired = false;
                s.message = Some(f.to_string());
            }
        }
    }
    if !wiring.is_empty() {
        let wired = status.services.iter().filter(|s| s.wired).count();
        status.wired_services = Some(format!("{wired}/{}", status.services.len()));
        replace(&mut status, cond("Wired", false, "WiringFailed", &wiring.join("; ")));
    }
    summarise(&mut status, bus, previous, now);
    status
}

/// The status when the operator could not even look at the cluster (a read the plan needs
/// failed: RBAC, an unreachable API): the previous status, with `Ready` False and the
/// error, so that `kubectl get sbus` shows why nothing moves and not only the operator's
/// log. What was observed before is kept; it is the last thing known.
pub fn unobserved(previous: Option<&ServiceBusStatus>, bus: &BusRef, error: &str, now: &str) -> ServiceBusStatus {
    let mut status = previous.cloned().unwrap_or_default();
    status.conditions.retain(|c| c.type_ != "Ready");
    let mut ready = cond("Ready", false, "ObservationFailed", &format!("cannot read the cluster's state: {error}"));
    ready.observed_generation = bus.generation;
    ready.last_transition_time = match previous.and_then(|p| p.condition("Ready")) {
        Some(prev) if prev.status == ready.status => prev.last_transition_time.clone(),
        _ => now.to_owned(),
    };
    status.conditions.insert(0, ready);
    status
}

fn replace(status: &mut ServiceBusStatus, c: Condition) {
    match status.conditions.iter_mut().find(|old| old.type_ == c.type_) {
        Some(old) => *old = c,
        None => status.conditions.push(c),
    }
}

/// Every field of [`ServiceBusStatus`] as it is serialized, from its schema.
static STATUS_FIELDS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let schema = serde_json::to_value(schemars::schema_for!(ServiceBusStatus)).expect("a schema serializes");
    schema["properties"].as_object().expect("the status schema has properties").keys().cloned().collect()
});

/// The JSON merge patch that makes `.status` exactly `next`, or None when `previous`
/// already is. Every field `next` leaves out is sent as null, which deletes it (RFC 7386):
/// without it a list that became empty, such as `warnings`, would never be cleared. Lists
/// are replaced whole.
pub fn patch(previous: Option<&ServiceBusStatus>, next: &ServiceBusStatus) -> Option<Value> {
    if previous == Some(next) {
        return None;
    }
    let Value::Object(mut body) = serde_json::to_value(next).expect("a status serializes") else {
        unreachable!("a status is an object")
    };
    for field in STATUS_FIELDS.iter() {
        body.entry(field.clone()).or_insert(Value::Null);
    }
    Some(serde_json::json!({ "status": body }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_names_every_status_field() {
        let fields: Vec<&str> = STATUS_FIELDS.iter().map(String::as_str).collect();
        for f in ["observedGeneration", "warnings", "services", "conditions", "totalPending", "totalDeadLettered"] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
    }

    #[test]
    fn an_unchanged_status_needs_no_patch_and_an_emptied_list_is_deleted() {
        let before =
            ServiceBusStatus { warnings: vec!["w".into()], observed_generation: Some(1), ..Default::default() };
        assert_eq!(patch(Some(&before), &before), None);
        let after = ServiceBusStatus { observed_generation: Some(2), ..Default::default() };
        let p = patch(Some(&before), &after).unwrap();
        assert_eq!(p["status"]["warnings"], Value::Null);
        assert_eq!(p["status"]["observedGeneration"], 2);
        // Applied as a merge patch, it leaves exactly `after`.
        let mut doc = serde_json::json!({ "status": before });
        json_patch::merge(&mut doc, &p);
        assert_eq!(serde_json::from_value::<ServiceBusStatus>(doc["status"].clone()).unwrap(), after);
    }
}
