//! The judge: every event a subscriber should apply, counted against what it applied.
//! 0 lost, 0 applied twice, nothing it should not have, and per aggregate in version
//! order. Pure, so it is tested here on its own.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write,
};

use crate::wire::{Applied, Emitted};

#[derive(Debug, Default)]
pub struct Verdict {
    pub expected: usize,
    pub applied: usize,
    /// Expected, never applied.
    pub lost: Vec<Emitted>,
    /// (event id, times applied) for each applied more than once.
    pub doubled: Vec<(String, usize)>,
    /// Applied though not expected.
    pub unexpected: Vec<Applied>,
    /// One line per aggregate whose versions were applied out of order.
    pub disordered: Vec<String>,
}

impl Verdict {
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty() && self.doubled.is_empty() && self.unexpected.is_empty() && self.disordered.is_empty()
    }

    pub fn summary(&self) -> String {
        format!(
            "expected {}, applied {}: {} lost, {} applied twice, {} unexpected, {} aggregates out of order",
            self.expected,
            self.applied,
            self.lost.len(),
            self.doubled.len(),
            self.unexpected.len(),
            self.disordered.len()
        )
    }

    /// The summary and the first few of each kind of mistake.
    pub fn report(&self) -> String {
        let mut s = self.summary();
        for l in self.lost.iter().take(5) {
            let _ = write!(s, "\n  lost: {} v{} {} ({})", l.aggregate, l.version, l.ty, l.id);
        }
        for (id, n) in self.doubled.iter().take(5) {
            let _ = write!(s, "\n  applied {n} times: {id}");
        }
        for a in self.unexpected.iter().take(5) {
            let _ = write!(s, "\n  unexpected: {} v{:?} {} ({})", a.aggregate, a.version, a.ty, a.id);
        }
        for d in self.disordered.iter().take(5) {
            let _ = write!(s, "\n  out of order: {d}");
        }
        s
    }
}

pub fn judge(expected: &[Emitted], applied: &[Applied]) -> Verdict {
    let mut times: HashMap<&str, usize> = HashMap::new();
    for a in applied {
        *times.entry(a.id.as_str()).or_default() += 1;
    }
    let want: HashSet<&str> = expected.iter().map(|e| e.id.as_str()).collect();
    let lost = expected.iter().filter(|e| !times.contains_key(e.id.as_str())).cloned().collect();
    let mut doubled: Vec<(String, usize)> =
        times.iter().filter(|(_, n)| **n > 1).map(|(id, n)| (id.to_string(), *n)).collect();
    doubled.sort();
    let unexpected = applied.iter().filter(|a| !want.contains(a.id.as_str())).cloned().collect();
    let mut by_aggregate: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for a in applied {
        by_aggregate.entry(a.aggregate.as_str()).or_default().push(a.version.unwrap_or_default());
    }
    let disordered = by_aggregate
        .into_iter()
        .filter(|(_, vs)| vs.windows(2).any(|w| w[0] >= w[1]))
        .map(|(agg, vs)| {
            let shown: Vec<String> = vs.iter().take(20).map(|v| v.to_string()).collect();
            format!("{agg} applied as versions [{}{}]", shown.join(", "), if vs.len() > 20 { ", ..." } else { "" })
        })
        .collect();
    Verdict { expected: expected.len(), applied: applied.len(), lost, doubled, unexpected, disordered }
}

/// The events of `types` among `emitted`.
pub fn of_types(emitted: &[Emitted], types: &[&str]) -> Vec<Emitted> {
    emitted.iter().filter(|e| types.contains(&e.ty.as_str())).cloned().collect()
}

/// Whether a dead letter's reason names version `v` (as "version 2", "v2" or "version: 2").
pub fn names_version(reason: &str, v: i64) -> bool {
    let r = reason.to_lowercase();
    [format!("version {v}"), format!("version: {v}"), format!("v{v}")].iter().any(|pat| {
        r.match_indices(pat.as_str()).any(|(i, _)| !r[i + pat.len()..].starts_with(|c: char| c.is_ascii_digit()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emitted(id: &str, aggregate: &str, version: i64) -> Emitted {
        Emitted { id: id.into(), ty: "ItemAdded".into(), aggregate: aggregate.into(), version }
    }

    fn applied(seq: i64, e: &Emitted) -> Applied {
        Applied {
            seq,
            id: e.id.clone(),
            ty: e.ty.clone(),
            aggregate: e.aggregate.clone(),
            version: Some(e.version),
            at: 0,
        }
    }

    #[test]
    fn gaps_that_are_meant_to_be_there_are_clean() {
        let want = [emitted("a1", "a", 1), emitted("a3", "a", 3), emitted("b2", "b", 2)];
        let got: Vec<Applied> = want.iter().enumerate().map(|(i, e)| applied(i as i64, e)).collect();
        let v = judge(&want, &got);
        assert!(v.is_clean(), "{}", v.report());
    }

    #[test]
    fn every_kind_of_mistake_is_counted() {
        let want = [emitted("a1", "a", 1), emitted("a2", "a", 2), emitted("b1", "b", 1)];
        let extra = emitted("c1", "c", 1);
        let got = vec![applied(1, &want[1]), applied(2, &want[0]), applied(3, &want[0]), applied(4, &extra)];
        let v = judge(&want, &got);
        assert_eq!(v.lost, vec![want[2].clone()]);
        assert_eq!(v.doubled, vec![("a1".to_owned(), 2)]);
        assert_eq!(v.unexpected.len(), 1);
        assert_eq!(v.disordered, vec!["a applied as versions [2, 1, 1]".to_owned()]);
        assert!(v.summary().contains("1 lost, 1 applied twice, 1 unexpected, 1 aggregates out of order"));
    }

    #[test]
    fn a_reason_names_a_version_only_as_a_whole_number() {
        assert!(names_version("waiting for version 1 of x", 1));
        assert!(names_version("missing v1", 1));
        assert!(!names_version("missing v12", 1));
        assert!(!names_version("version 10 missing", 1));
    }
}
