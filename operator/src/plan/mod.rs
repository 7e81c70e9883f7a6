//! The operator's decisions, with no I/O: from a ServiceBus and what observe read to every
//! write the operator makes ([`Action`]s) and the status it reports. Execute carries the
//! actions out; nothing here holds a client, so the whole of the operator's judgement is
//! tested as a table of "given this, do that" without a server.
//!
//! - [`observed`]: the input; [`actions`]: the output;
//! - [`secrets`], [`bus_objects`], [`consumers`], [`wiring`]: what each kind of object
//!   should be, and whether the live one already is (with [`drift`] and [`ownership`]);
//! - [`contracts`]: whether each subscriber's reader fits its publisher's writer, and which
//!   new subscriptions are held because it does not;
//! - [`status`]: conditions and figures; [`events`]: what is worth a Kubernetes Event.
//!
//! A reconcile is [`plan`], then execute, then [`report`] (the status and its Events, once
//! it is known which actions succeeded). Deletion is [`cleanup`].

pub mod actions;
pub mod bus_objects;
pub mod consumers;
pub mod contracts;
pub mod drift;
pub mod events;
pub mod observed;
pub mod ownership;
pub mod secrets;
pub mod status;
pub mod wiring;

use std::collections::BTreeMap;

use busbar_domain::spec::{ServiceBusSpec, TransportKind};

use self::{
    actions::Action,
    observed::{Moment, Observed, TransportObserved},
    secrets::BusKeyState,
    status::Findings,
};
use crate::{
    crd::{BusRef, ServiceBusStatus},
    names::{BUS_LABEL, FINALIZER, declares},
    settings::Settings,
};

/// What to do, and what status that leads to.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Validation problems; when not empty there are no actions.
    pub problems: Vec<String>,
    /// In order: the key, then Secrets (a Deployment wired to a missing Secret would not
    /// start), the transport, the wiring, and last the Secrets no service reads any more.
    pub actions: Vec<Action>,
    /// The status once every action succeeded.
    pub status: ServiceBusStatus,
}

/// Decides everything one reconcile writes, except the report.
pub fn plan(bus: &BusRef, spec: &ServiceBusSpec, settings: &Settings, obs: &Observed, moment: &Moment) -> Plan {
    let kind = spec.transport.kind();
    let problems = busbar_domain::spec::validate(spec);
    let mut warnings = busbar_domain::graph::analyze(spec).warnings;
    let key_state = secrets::bus_key(bus, &obs.secrets);
    let transport = status::transport_condition(kind, &problems, &key_state, &obs.transport);
    let contracts = match problems.is_empty() {
        true => contracts::assess(bus, spec, obs.contracts.as_ref(), &obs.deployments),
        false => contracts::Assessment::unknown("InvalidSpec", "contracts are not checked while the spec is invalid"),
    };
    // What the transport delivers: without the subscriptions held for their contracts.
    let delivered = contracts::transport_spec(bus, spec, &contracts.held, &obs.deployments);
    // An invalid spec, or a key Secret that holds no key, leaves the cluster as it is: any
    // write would be a guess (and without the key, every token would be wrong).
    let key = match (&key_state, problems.is_empty()) {
        (_, false) | (BusKeyState::Invalid(_), _) => None,
        (BusKeyState::Found(key), true) => Some(key.clone()),
        (BusKeyState::Missing, true) => Some(moment.new_key.clone()),
    };
    let mut actions = vec![];
    let wiring_states = match &key {
        Some(key) => {
            if key_state == BusKeyState::Missing {
                actions.push(Action::CreateKeySecret(secrets::key_secret(bus, key)));
            }
            let secret_writes = secrets::writes(bus, spec, key, &obs.secrets);
            actions.extend(secret_writes.apply.into_iter().map(Action::ApplySecret));
            match &obs.transport {
                TransportObserved::Builtin(live) => {
                    actions.extend(bus_objects::actions(bus, &delivered, settings, live))
                }
                TransportObserved::JetStream(Ok(live)) => {
                    let (js, cannot) = consumers::actions(&bus.name, &delivered, live);
                    actions.extend(js);
                    warnings.extend(cannot);
                }
                TransportObserved::JetStream(Err(_)) | TransportObserved::NotRead => {}
            }
            let tokens = secrets::tokens(bus, spec, key);
            let wiring = wiring::plan(bus, spec, settings, &obs.deployments, &tokens, &contracts.held);
            actions.extend(wiring.wire.into_iter().map(Action::Wire));
            actions.extend(wiring.unwire.iter().map(|d| unwire(bus, d)));
            actions.extend(secret_writes.delete.into_iter().map(Action::DeleteSecret));
            wiring.services
        }
        None => wiring::unwired_states(spec, &obs.deployments),
    };
    let findings = Findings {
        problems: problems.clone(),
        key_problem: match key_state {
            BusKeyState::Invalid(why) => Some(why),
            BusKeyState::Found(_) | BusKeyState::Missing => None,
        },
        transport,
        services: status::services(spec, &wiring_states, figures(&obs.transport)),
        warnings,
        contracts: contracts.condition,
        incompatible_edges: contracts.edges,
    };
    let status = status::assemble(bus, kind, findings, obs.previous.as_ref(), &moment.time);
    Plan { problems, actions, status }
}

fn unwire(bus: &BusRef, deployment: &str) -> Action {
    Action::Unwire { deployment: deployment.to_owned(), notes: events::unwired(&bus.name, deployment) }
}

fn figures(transport: &TransportObserved) -> &BTreeMap<String, observed::SubscriberFigures> {
    static NONE: BTreeMap<String, observed::SubscriberFigures> = BTreeMap::new();
    match transport {
        TransportObserved::Builtin(b) => &b.figures,
        TransportObserved::JetStream(Ok(js)) => &js.figures,
        TransportObserved::JetStream(Err(_)) | TransportObserved::NotRead => &NONE,
    }
}

/// The report of a reconcile: Events for what changed in status, then the status patch
/// (none when the status is unchanged).
pub fn report(previous: Option<&ServiceBusStatus>, next: &ServiceBusStatus, settings: &Settings) -> Vec<Action> {
    let mut out: Vec<Action> =
        events::for_status(previous, next, settings.lag_warning).into_iter().map(Action::Event).collect();
    out.extend(status::patch(previous, next).map(Action::PatchStatus));
    out
}

/// What deleting a ServiceBus takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Cleanup {
    pub actions: Vec<Action>,
    /// Why the cleanup cannot finish yet (the finalizer stays until it can).
    pub blocked: Option<String>,
}

/// The wiring goes from every Deployment the bus wired or declares, and on JetStream every
/// consumer on the bus's stream. The built-in bus's objects and the Secrets carry owner
/// references: the API server deletes them. The bus's volume and the JetStream streams
/// (the events) are kept.
pub fn cleanup(bus: &BusRef, spec: &ServiceBusSpec, obs: &Observed) -> Cleanup {
    let wired: Vec<&String> = obs
        .deployments
        .iter()
        .filter(|(name, d)| {
            d.metadata.labels.as_ref().and_then(|l| l.get(BUS_LABEL)) == Some(&bus.name) || declares(spec, name)
        })
        .map(|(name, _)| name)
        .collect();
    let mut actions: Vec<Action> = wired.iter().map(|d| unwire(bus, d)).collect();
    let mut blocked = None;
    if spec.transport.kind() == TransportKind::JetStream {
        match &obs.transport {
            TransportObserved::JetStream(Ok(js)) => {
                actions.extend(js.consumers.keys().map(|c| Action::DeleteConsumer(c.clone())))
            }
            TransportObserved::JetStream(Err(e)) => {
                blocked = Some(format!(
                    "cannot delete the JetStream consumers: {e}; the ServiceBus stays until NATS answers \
                     (or remove the finalizer {FINALIZER} by hand)"
                ))
            }
            _ => {}
        }
    }
    actions.push(Action::Event(match &blocked {
        None => events::cleaned_up(wired.len()),
        Some(why) => events::cleanup_blocked(why),
    }));
    Cleanup { actions, blocked }
}
