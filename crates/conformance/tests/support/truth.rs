//! Waiting for a subscriber to finish, and judging what it applied
//! ([`busbar_conformance::judge`]), with the evidence when it fails.

use std::time::{Duration, Instant};

pub use busbar_conformance::judge::{judge, names_version};
use busbar_conformance::wire::{Applied, Emitted};

use super::{STALL, probe::Probe, world::World};

/// Waits until `sub` has applied every one of `expected` and the transport has nothing
/// left for it, then returns everything it applied. Fails (with the verdict so far, the
/// subscriber's and the transport's logs and the dead letters) when it makes no progress
/// for [`STALL`] (applies nothing new and the transport's backlog for it does not move:
/// skipping duplicates is progress too) or has not finished within `within`.
pub async fn converge(world: &World, sub: &mut Probe, expected: &[Emitted], within: Duration) -> Vec<Applied> {
    let start = Instant::now();
    let (mut last_count, mut last_change) = (-1i64, Instant::now());
    let mut last_backlog = None;
    loop {
        let count = match sub.try_stats().await {
            Ok(s) => s.applied,
            Err(_) if !sub.is_running() => {
                fail(world, sub, expected, &format!("{} died", sub.replica)).await;
            }
            Err(_) => last_count,
        };
        let backlog = world.backlog(&sub.service).await.ok();
        if count != last_count || backlog != last_backlog {
            (last_count, last_backlog, last_change) = (count, backlog, Instant::now());
        }
        if count >= expected.len() as i64 {
            let applied = sub.applied().await;
            if judge(expected, &applied).lost.is_empty() && world.caught_up(&sub.service).await == Ok(true) {
                // Read again now that nothing is in flight: a late duplicate shows here.
                return sub.applied().await;
            }
        }
        if last_change.elapsed() > STALL {
            let why = format!(
                "stuck: {} applied nothing new and its backlog stayed at {last_backlog:?} for {STALL:?} ({count} \
                 applications so far)",
                sub.replica
            );
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

pub use busbar_conformance::judge::of_types;
