//! Per-aggregate ordering, per subscription. Pure decision logic; the consumer stores the
//! state and parks events that must wait.
//!
//! # Why versions alone are not enough
//!
//! An aggregate's versions go up by one per change, whatever the change's type. A
//! subscriber that takes only some of the types (orders takes `ProductPriceChanged` but
//! not `ProductRenamed`), or that starts from now, sees gaps in the versions that are
//! meant to be there. Waiting for `last + 1` would wait forever for a version that was
//! never meant for it.
//!
//! # What an event says about its predecessors
//!
//! The publisher's SDK knows, for each aggregate, the last version it emitted of each
//! event type, and writes that map into every event it emits (the `aggprev` extension,
//! [`crate::envelope::predecessors`]): "before this version 5, the last `ProductAdded` was
//! 1, the last `ProductRenamed` 4, the last `ProductPriceChanged` 3". A subscriber that
//! takes the types `S` computes its own predecessor of the event: the highest version in
//! that map among the types in `S` ([`predecessor`]). That is exactly the previous event
//! of this aggregate it is meant to receive. It waits only for that one (a real gap: late,
//! lost, or dead-lettered), and never for the others.
//!
//! The publisher computes the map, not the bus, so it is the same on every transport and
//! needs no lookup at delivery time. An event without the map (a producer that is not
//! the busbar SDK) falls back to "the predecessor is `version - 1`".
//!
//! # Subscriptions that start from now
//!
//! A subscription that starts from now has, for an aggregate it has never seen, no way of
//! receiving the predecessors that came before it started. Both transports deliver a
//! subscription's events in log order, so the first event it receives of an aggregate is
//! the first one meant for it: its predecessor becomes the baseline ([`Start::Now`]).
//!
//! # Reactions
//!
//! Types handled only as they happen (`on_new`) are never replayed by a backfill, so a
//! rebuilt copy never receives the reactions of its history. A subscription that also
//! rebuilds from other types waits only for those; see
//! [`crate::subscription::Subscription::scope`].

use std::collections::BTreeMap;

/// Where a subscription's history begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Every event of its types since the beginning is meant for it: on an aggregate it
    /// has never seen, it waits for the first one.
    Beginning,
    /// Only events after it started are: the first event it sees of an aggregate is the
    /// first one meant for it.
    Now,
}

/// What to do with an event, given what was applied of its aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Every earlier event meant for this subscriber is applied: apply it now.
    Apply,
    /// At or below what was applied: applying it again would undo later changes.
    Stale,
    /// Its predecessor `waiting_for` has not been applied yet: park it until it is.
    Defer { waiting_for: i64 },
}

/// The version of the previous event of this aggregate that a subscriber taking `types`
/// is meant to receive (0: none, this is the first). `prev` is the event's map of last
/// versions per type, `None` for a producer that sends none.
pub fn predecessor<'a>(
    version: i64,
    prev: Option<&BTreeMap<String, i64>>,
    mut takes: impl FnMut(&str) -> bool + 'a,
) -> i64 {
    match prev {
        None => version - 1,
        Some(map) => map.iter().filter(|(t, v)| **v < version && takes(t)).map(|(_, v)| *v).max().unwrap_or(0),
    }
}

/// Decides the fate of an event with `version` whose predecessor for this subscription
/// is `predecessor`, on an aggregate whose last applied version is `last` (`None`: never
/// seen).
pub fn decide(last: Option<i64>, version: i64, predecessor: i64, start: Start) -> Decision {
    let last = match (last, start) {
        (Some(l), _) => l,
        // Never seen, and everything before this event predates the subscription.
        (None, Start::Now) => predecessor,
        (None, Start::Beginning) => 0,
    };
    if version <= last {
        Decision::Stale
    } else if predecessor <= last {
        Decision::Apply
    } else {
        Decision::Defer { waiting_for: predecessor }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
        pairs.iter().map(|(t, v)| (t.to_string(), *v)).collect()
    }

    #[test]
    fn the_predecessor_is_the_last_version_of_a_type_taken() {
        // v5 after Added 1, Renamed 4, Priced 3.
        let prev = map(&[("Added", 1), ("Renamed", 4), ("Priced", 3)]);
        assert_eq!(predecessor(5, Some(&prev), |_| true), 4);
        assert_eq!(predecessor(5, Some(&prev), |t| t != "Renamed"), 3);
        assert_eq!(predecessor(5, Some(&prev), |t| t == "Added"), 1);
        assert_eq!(predecessor(5, Some(&prev), |t| t == "Removed"), 0);
        // A producer without the map: the previous version.
        assert_eq!(predecessor(5, None, |_| true), 4);
    }

    #[test]
    fn contiguous_versions_apply_in_order_and_gaps_defer() {
        let b = Start::Beginning;
        assert_eq!(decide(None, 1, 0, b), Decision::Apply);
        assert_eq!(decide(None, 2, 1, b), Decision::Defer { waiting_for: 1 });
        assert_eq!(decide(Some(1), 3, 2, b), Decision::Defer { waiting_for: 2 });
        assert_eq!(decide(Some(3), 3, 2, b), Decision::Stale);
        assert_eq!(decide(Some(3), 1, 0, b), Decision::Stale);
    }

    #[test]
    fn a_partial_subscriber_applies_across_gaps_meant_to_be_there() {
        // Takes Added and Priced: sees 1 (Added), 2 (Priced), 4 (Priced); 3 was a rename.
        let b = Start::Beginning;
        assert_eq!(decide(None, 1, 0, b), Decision::Apply);
        assert_eq!(decide(Some(1), 2, 1, b), Decision::Apply);
        assert_eq!(decide(Some(2), 4, 2, b), Decision::Apply);
        // 4 arriving before 2 still waits for 2, which is meant for it.
        assert_eq!(decide(Some(1), 4, 2, b), Decision::Defer { waiting_for: 2 });
    }

    #[test]
    fn a_subscription_from_now_starts_each_aggregate_at_the_first_event_it_sees() {
        assert_eq!(decide(None, 7, 6, Start::Now), Decision::Apply);
        assert_eq!(decide(Some(7), 9, 8, Start::Now), Decision::Defer { waiting_for: 8 });
        // From the beginning, the same event waits for its predecessor.
        assert_eq!(decide(None, 7, 6, Start::Beginning), Decision::Defer { waiting_for: 6 });
    }

    #[test]
    fn a_narrowed_subscription_does_not_wait_for_what_it_already_passed() {
        // Applied up to 5 (of a type no longer taken); the next taken one's predecessor is 3.
        assert_eq!(decide(Some(5), 6, 3, Start::Beginning), Decision::Apply);
    }

    /// A history of one aggregate: version i has type `types[i-1]`; each event carries the
    /// map of last versions per type before it, as the publisher's SDK writes it.
    fn history(types: &[u8]) -> Vec<(i64, u8, BTreeMap<String, i64>)> {
        let mut last: BTreeMap<String, i64> = BTreeMap::new();
        let mut out = vec![];
        for (i, t) in types.iter().enumerate() {
            let v = i as i64 + 1;
            out.push((v, *t, last.clone()));
            last.insert(t.to_string(), v);
        }
        out
    }

    /// A consumer that parks and drains, as `consumer.rs` does.
    fn consume(arrivals: &[(i64, u8, BTreeMap<String, i64>)], takes: &[u8], start: Start) -> Vec<i64> {
        let taken = |t: &str| takes.iter().any(|x| x.to_string() == t);
        let mut last: Option<i64> = None;
        let mut parked: BTreeMap<i64, i64> = BTreeMap::new(); // version -> waiting_for
        let mut applied = vec![];
        for (v, _, prev) in arrivals {
            let p = predecessor(*v, Some(prev), taken);
            match decide(last, *v, p, start) {
                Decision::Apply => {
                    applied.push(*v);
                    last = Some(*v);
                    while let Some((&next, _)) = parked.iter().find(|(_, w)| **w <= last.unwrap()) {
                        parked.remove(&next);
                        if next > last.unwrap() {
                            applied.push(next);
                            last = Some(next);
                        }
                    }
                }
                Decision::Defer { waiting_for } => {
                    parked.insert(*v, waiting_for);
                }
                Decision::Stale => {}
            }
        }
        applied
    }

    proptest! {
        /// Any history of up to 4 types, any subset taken, any arrival order with
        /// duplicates: every event of a taken type is applied once, in version order.
        #[test]
        fn a_subset_subscriber_applies_exactly_its_events_in_order(
            types in proptest::collection::vec(0u8..4, 1..16),
            takes in proptest::collection::btree_set(0u8..4, 1..4),
            order in any::<u64>(),
            dups in proptest::collection::vec(0usize..16, 0..4),
        ) {
            let h = history(&types);
            let taken: Vec<u8> = takes.iter().copied().collect();
            let meant: Vec<_> = h.iter().filter(|(_, t, _)| taken.contains(t)).cloned().collect();
            let mut arrivals = meant.clone();
            // A deterministic shuffle from the generated seed.
            let mut seed = order;
            for i in (1..arrivals.len()).rev() {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                arrivals.swap(i, (seed >> 33) as usize % (i + 1));
            }
            for d in dups {
                if let Some(e) = meant.get(d % meant.len().max(1)) { arrivals.push(e.clone()); }
            }
            let applied = consume(&arrivals, &taken, Start::Beginning);
            let want: Vec<i64> = meant.iter().map(|(v, _, _)| *v).collect();
            prop_assert_eq!(applied, want);
        }

        /// A subscription from now sees, in log order, a suffix of its events: it applies
        /// all of them, in order, without waiting for anything before the suffix.
        #[test]
        fn a_subscription_from_now_applies_the_suffix_it_receives(
            types in proptest::collection::vec(0u8..3, 1..16),
            takes in proptest::collection::btree_set(0u8..3, 1..3),
            from in 0usize..16,
        ) {
            let h = history(&types);
            let taken: Vec<u8> = takes.iter().copied().collect();
            let suffix: Vec<_> = h.iter().skip(from.min(h.len())).filter(|(_, t, _)| taken.contains(t)).cloned().collect();
            let applied = consume(&suffix, &taken, Start::Now);
            let want: Vec<i64> = suffix.iter().map(|(v, _, _)| *v).collect();
            prop_assert_eq!(applied, want);
        }

        /// A missing event of a taken type is never skipped: everything after it waits.
        #[test]
        fn a_real_gap_is_waited_for(types in proptest::collection::vec(0u8..3, 2..12), missing in 0usize..12) {
            let h = history(&types);
            let missing = missing % h.len();
            let arrivals: Vec<_> = h.iter().enumerate().filter(|(i, _)| *i != missing).map(|(_, e)| e.clone()).collect();
            let applied = consume(&arrivals, &[0, 1, 2], Start::Beginning);
            prop_assert_eq!(applied, (1..=missing as i64).collect::<Vec<_>>());
        }
    }
}
