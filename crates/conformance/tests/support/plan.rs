//! What the cases emit: aggregates, rounds of events over them, poison.

use busbar_conformance::{events::Poison, wire::EmitItem};

/// `rounds` events on each of `aggregates`, round by round (so one aggregate's versions
/// interleave with the others'), the type of each chosen by `ty(aggregate index, round)`.
pub fn rounds(aggregates: &[String], rounds: usize, ty: impl Fn(usize, usize) -> &'static str) -> Vec<EmitItem> {
    (0..rounds)
        .flat_map(|r| aggregates.iter().enumerate().map(move |(i, a)| (i, r, a)))
        .map(|(i, r, a)| EmitItem::new(a.clone(), ty(i, r)))
        .collect()
}

/// `prefix-0`, `prefix-1`, ...: `n` aggregate ids.
pub fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// A handler that fails every time, until the subscriber is told the aggregate is cured.
pub fn fail_always() -> Poison {
    Poison::Fail { times: None }
}
