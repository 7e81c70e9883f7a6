//! Per-aggregate ordering: version n+1 is applied only after n. Pure decision logic; the
//! consumer stores the state and parks early events.

/// What to do with an event carrying `incoming`, given the last version applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// It is the next version: apply it now.
    Apply,
    /// It is at or below what was applied: applying it again would undo later changes.
    Stale,
    /// A version in between is missing: park it until `waiting_for` has been applied.
    Defer { waiting_for: i64 },
}

/// Decides the fate of version `incoming` for an aggregate whose last applied version is
/// `last` (`None` for an aggregate never seen; versions start at 1).
pub fn decide(last: Option<i64>, incoming: i64) -> Decision {
    let expected = last.unwrap_or(0) + 1;
    match incoming.cmp(&expected) {
        std::cmp::Ordering::Equal => Decision::Apply,
        std::cmp::Ordering::Less => Decision::Stale,
        std::cmp::Ordering::Greater => Decision::Defer { waiting_for: expected },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn first_version_applies_and_gaps_defer() {
        assert_eq!(decide(None, 1), Decision::Apply);
        assert_eq!(decide(None, 2), Decision::Defer { waiting_for: 1 });
        assert_eq!(decide(Some(1), 3), Decision::Defer { waiting_for: 2 });
        assert_eq!(decide(Some(3), 3), Decision::Stale);
        assert_eq!(decide(Some(3), 1), Decision::Stale);
    }

    /// Simulates a consumer that parks deferred versions and drains them after each apply.
    fn apply_in_any_order(arrivals: &[i64]) -> Vec<i64> {
        let mut last = None;
        let mut parked = std::collections::BTreeSet::new();
        let mut applied = vec![];
        for &v in arrivals {
            match decide(last, v) {
                Decision::Apply => {
                    applied.push(v);
                    last = Some(v);
                    while let Some(next) = parked.take(&(last.unwrap() + 1)) {
                        applied.push(next);
                        last = Some(next);
                    }
                }
                Decision::Defer { .. } => {
                    parked.insert(v);
                }
                Decision::Stale => {}
            }
        }
        applied
    }

    #[test]
    fn one_three_two_applies_as_one_two_three() {
        assert_eq!(apply_in_any_order(&[1, 3, 2]), vec![1, 2, 3]);
    }

    proptest! {
        #[test]
        fn any_permutation_with_duplicates_applies_in_order_exactly_once(
            perm in Just((1..=12i64).collect::<Vec<_>>()).prop_shuffle(),
            dups in proptest::collection::vec(1..=12i64, 0..6),
        ) {
            let mut arrivals = perm.clone();
            arrivals.extend(dups);
            prop_assert_eq!(apply_in_any_order(&arrivals), (1..=12).collect::<Vec<_>>());
        }

        #[test]
        fn a_missing_version_is_never_skipped(missing in 1..=10i64, perm in Just((1..=10i64).collect::<Vec<_>>()).prop_shuffle()) {
            let arrivals: Vec<_> = perm.into_iter().filter(|v| *v != missing).collect();
            prop_assert_eq!(apply_in_any_order(&arrivals), (1..missing).collect::<Vec<_>>());
        }
    }
}
