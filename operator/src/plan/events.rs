//! The Kubernetes Events the operator records, so that `kubectl describe servicebus` (and
//! `kubectl describe deployment`) tell what happened. Each is recorded once per transition,
//! never on every reconcile:
//!
//! - `Wired`/`Unwired` when a Deployment's wiring is applied or removed, on the Deployment
//!   and on the ServiceBus;
//! - a condition that changes status (`Ready` either way, the others when they turn False);
//! - `DeadLettered` when a subscriber's dead-letter count goes up;
//! - `LagHigh` when a subscriber's pending count goes over `--lag-warning`, and `LagCleared`
//!   when it is back under;
//! - `SubscriptionHeld` or `ReaderBroken` for each edge whose contracts stop fitting (or
//!   fit differently), naming the fields.
//!
//! Transitions compare the new status with the previous one. A figure the transport did
//! not report before (it was starting, or did not answer) counts as zero for dead letters,
//! so a dead letter is never missed, at the price of announcing them again after such a gap.

use super::actions::{Note, Regarding};
use crate::crd::ServiceBusStatus;

fn note(
    regarding: Regarding,
    related: Option<Regarding>,
    warning: bool,
    reason: &str,
    action: &str,
    text: String,
) -> Note {
    Note { regarding, related, warning, reason: reason.into(), action: action.into(), note: text }
}

/// A Deployment was wired (again, after drift).
pub fn wired(bus: &str, service: &str, deployment: &str, hash: &str) -> Vec<Note> {
    let d = || Regarding::Deployment(deployment.into());
    vec![
        note(
            d(),
            Some(Regarding::ServiceBus),
            false,
            "Wired",
            "Wire",
            format!("wired by ServiceBus {bus} (wiring {hash})"),
        ),
        note(
            Regarding::ServiceBus,
            Some(d()),
            false,
            "Wired",
            "Wire",
            format!("wired Deployment {deployment} for service {service} (wiring {hash})"),
        ),
    ]
}

/// A Deployment left the spec and its wiring was removed.
pub fn unwired(bus: &str, deployment: &str) -> Vec<Note> {
    let d = || Regarding::Deployment(deployment.into());
    vec![
        note(
            d(),
            Some(Regarding::ServiceBus),
            false,
            "Unwired",
            "Unwire",
            format!("left ServiceBus {bus}; its wiring was removed"),
        ),
        note(
            Regarding::ServiceBus,
            Some(d()),
            false,
            "Unwired",
            "Unwire",
            format!("unwired Deployment {deployment}: no service of this ServiceBus uses it any more"),
        ),
    ]
}

/// The ServiceBus's cleanup finished.
pub fn cleaned_up(unwired: usize) -> Note {
    note(Regarding::ServiceBus, None, false, "CleanedUp", "Cleanup", format!("unwired {unwired} Deployment(s)"))
}

/// The ServiceBus cannot be cleaned up yet.
pub fn cleanup_blocked(why: &str) -> Note {
    note(Regarding::ServiceBus, None, true, "CleanupBlocked", "Cleanup", why.to_owned())
}

/// What changed from `previous` to `next` that people should hear about.
pub fn for_status(previous: Option<&ServiceBusStatus>, next: &ServiceBusStatus, lag_warning: u64) -> Vec<Note> {
    let mut out = vec![];
    for c in &next.conditions {
        let before = previous.and_then(|p| p.condition(&c.type_)).map(|p| p.status.as_str());
        if before != Some(c.status.as_str()) && (c.type_ == "Ready" || c.status == "False") {
            out.push(note(
                Regarding::ServiceBus,
                None,
                c.status != "True",
                &c.reason,
                "Reconcile",
                format!("{}={}: {}", c.type_, c.status, c.message),
            ));
        }
    }
    let edges_before = previous.map(|p| p.incompatible_edges.as_slice()).unwrap_or_default();
    for e in next.incompatible_edges.iter().filter(|e| !edges_before.contains(e)) {
        let deployment = next.service(&e.subscriber).map(|s| Regarding::Deployment(s.deployment.clone()));
        let problems = e.problems.join("; ");
        let (reason, text) = match e.state.as_str() {
            super::contracts::HELD => (
                "SubscriptionHeld",
                format!(
                    "{}'s new subscription to {} from {} is not wired, its reader does not fit: {problems}",
                    e.subscriber, e.event_type, e.publisher
                ),
            ),
            _ => (
                "ReaderBroken",
                format!(
                    "{}'s {} no longer fits {}, which is wired and dead-letters what it cannot read: {problems}",
                    e.publisher, e.event_type, e.subscriber
                ),
            ),
        };
        out.push(note(Regarding::ServiceBus, deployment, true, reason, "CheckContracts", text));
    }
    for s in &next.services {
        let before = previous.and_then(|p| p.service(&s.name));
        let d = || Some(Regarding::Deployment(s.deployment.clone()));
        let dead_before = before.and_then(|b| b.dead_lettered).unwrap_or(0);
        if let Some(dead) = s.dead_lettered.filter(|n| *n > dead_before) {
            out.push(note(
                Regarding::ServiceBus,
                d(),
                true,
                "DeadLettered",
                "Deliver",
                format!(
                    "{}: {} new dead letter(s), {dead} in all; see them with `busbar dlq list`",
                    s.name,
                    dead - dead_before
                ),
            ));
        }
        let over = |n: Option<u64>| n.is_some_and(|n| n > lag_warning);
        let pending_before = before.and_then(|b| b.pending);
        match s.pending {
            Some(n) if over(s.pending) && !over(pending_before) => out.push(note(
                Regarding::ServiceBus,
                d(),
                true,
                "LagHigh",
                "Deliver",
                format!("{}: {n} events pending, over {lag_warning}; is it running and keeping up?", s.name),
            )),
            Some(n) if !over(s.pending) && over(pending_before) => out.push(note(
                Regarding::ServiceBus,
                d(),
                false,
                "LagCleared",
                "Deliver",
                format!("{}: {n} events pending, back under {lag_warning}", s.name),
            )),
            _ => {}
        }
    }
    out
}
