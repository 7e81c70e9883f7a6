//! The judge: every event a subscriber should apply, counted against what it applied.
//! 0 lost, 0 applied twice, nothing it should not have, and per aggregate in version
//! order.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write,
    time::{Duration, Instant},
};

use busbar_conformance::wire::{Applied, Emitted};

use super::{STALL, probe::Probe, world::World};

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

/// Waits until `sub` has applied every one of `expected` and the transport has nothing
/// left for it, then returns everything it applied. Fails (with the verdict so far, the
/// subscriber's and the transport's logs and the dead letters) when it applies nothing
/// new for [`STALL`] or has not finished within `within`.
pub async fn converge(world: &World, sub: &mut Probe, expected: &[Emitted], within: Duration) -> Vec<Applied> {
    let start = Instant::now();
    let (mut last_count, mut last_change) = (-1i64, Instant::now());
    loop {
        let count = match sub.try_stats().await {
            Ok(s) => s.applied,
            Err(_) if !sub.is_running() => {
                fail(world, sub, expected, &format!("{} died", sub.replica)).await;
            }
            Err(_) => last_count,
        };
        if count != last_count {
            (last_count, last_change) = (count, Instant::now());
        }
        if count >= expected.len() as i64 {
            let applied = sub.applied().await;
            if judge(expected, &applied).lost.is_empty() && world.caught_up(&sub.service).await == Ok(true) {
                // Read again now that nothing is in flight: a late duplicate shows here.
                return sub.applied().await;
            }
        }
        if last_change.elapsed() > STALL {
            let why = format!("stuck: {} applied nothing new for {STALL:?} ({count} applications so far)", sub.replica);
            fail(world, sub, expected, &why).await;
        }
        if start.elapsed() > within {
            fail(world, sub, expected, &format!("not done after {within:?}")).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fails the test with `why`, the verdict so far, the dead letters, and the logs.
pub async fn fail(world: &World, sub: &Probe, expected: &[Emitted], why: &str) -> ! {
    let (applied, parked) = match sub.try_stats().await {
        Ok(s) => (sub.applied().await, s.parked.to_string()),
        Err(e) => (vec![], format!("unknown ({e})")),
    };
    let verdict = judge(expected, &applied);
    let dead = match world.dead_letters(&sub.service).await {
        Ok(d) => d.iter().map(|d| format!("\n  {:?} {:?}: {}", d.ty, d.event_id, d.last_error)).collect::<String>(),
        Err(e) => format!(" (cannot list: {e})"),
    };
    let caught_up = world.caught_up(&sub.service).await;
    panic!(
        "{} [{}]: {why}\n{}\nparked at the subscriber: {parked}; transport caught up: {caught_up:?}\ndead letters of {}:{dead}\n{}\n{}",
        world.case,
        world.combo,
        verdict.report(),
        sub.service,
        sub.log_tail(),
        world.diagnostics()
    )
}

/// Asserts a clean verdict, printing the counts it checked.
pub fn assert_clean(world: &World, sub: &Probe, expected: &[Emitted], applied: &[Applied]) {
    let v = judge(expected, applied);
    assert!(
        v.is_clean(),
        "{} [{}]: {}\n{}\n{}",
        world.case,
        world.combo,
        v.report(),
        sub.log_tail(),
        world.diagnostics()
    );
    println!("{} [{}]: {}", world.case, world.combo, v.summary());
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
