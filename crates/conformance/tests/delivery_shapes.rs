//! Issue 13: every event a service subscribes to is applied exactly once, in order per
//! aggregate, and never gets stuck, for every subscription shape, replica count and
//! failure, on every combination of {built-in bus, JetStream} × {SQLite, PostgreSQL}
//! where the case exists. Each test is named `<case>__<transport>_<store>`, runs real
//! processes (the `busbar-probe` service, the bus, nats-server) on loopback with real
//! databases, and counts every event against the truth: 0 lost, 0 applied twice, order
//! per aggregate kept.
//!
//! Run one case: `cargo test -p busbar-conformance --test delivery_shapes -- subset_of_types`.

// The test names join the case and the combination with `__`, as the issue names them.
#![allow(non_snake_case)]

mod support;

use busbar::{
    bus_api::{DeadLetter, DeadLetterState},
    names::stream_name,
};
use busbar_conformance::{
    events::{Poison, TYPES},
    wire::{EmitItem, EmitRequest},
};
use support::{
    BUILTIN_POSTGRES, BUILTIN_SQLITE, CONVERGE, Combo, JETSTREAM_POSTGRES, JETSTREAM_SQLITE, STALL, STARTUP, TAKEOVER,
    cluster::{stream_cluster, stream_replicas_current},
    load::{Load, LoadSpec},
    manifest::Delivery,
    plan::{fail_always, names, rounds},
    probe::{Probe, metric_sum, metric_value},
    relay::one_leader,
    truth::{self, assert_clean, converge, names_version, of_types},
    world::{PUBLISHER, Topology, World},
};

/// One test per combination: `$test` runs `$case` on `$combo`.
macro_rules! shapes {
    ($case:ident: $($test:ident = $combo:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                $case(stringify!($test), $combo).await
            }
        )+
    };
}

// ---- subset of types --------------------------------------------------------------------

/// A subscriber takes `ItemAdded` and `ItemPriced` but not `ItemRenamed` or
/// `ItemRemoved`, while renames and price changes interleave on the same aggregates: the
/// versions it sees have gaps (1, 2, 4, ...) that are meant to be there. It must apply
/// every event of its types, once, in version order, and not wait for the others.
async fn subset_of_types_subscriber(case: &str, combo: Combo) {
    let mut w = World::new(case, combo).await;
    let taken = ["ItemAdded", "ItemPriced"];
    let mut sub = w.start_subscriber("sub", &taken, false).await;
    let publisher = w.start_publisher().await;
    let items = names("item", 40);
    let mut plan = rounds(&items, 1, |_, _| "ItemAdded");
    plan.extend(rounds(&items, 6, |i, r| if (i + r) % 3 == 0 { "ItemPriced" } else { "ItemRenamed" }));
    plan.extend(rounds(&items, 1, |i, _| if i % 4 == 0 { "ItemRemoved" } else { "ItemPriced" }));
    let emitted = publisher.emit(plan).await;
    let expected = of_types(&emitted, &taken);
    let applied = converge(&w, &mut sub, &expected, CONVERGE).await;
    assert_clean(&w, &sub, &expected, &applied);
}

shapes!(subset_of_types_subscriber:
    subset_of_types_subscriber__builtin_sqlite = BUILTIN_SQLITE,
    subset_of_types_subscriber__builtin_postgres = BUILTIN_POSTGRES,
    subset_of_types_subscriber__jetstream_sqlite = JETSTREAM_SQLITE,
    subset_of_types_subscriber__jetstream_postgres = JETSTREAM_POSTGRES,
);

// ---- startFrom: now ---------------------------------------------------------------------

/// A subscriber added with `startFrom: now` after its aggregates already have several
/// versions applies everything emitted after it started, once, in order, and does not
/// wait for the versions it was never meant to see.
async fn start_from_now_subscriber(case: &str, combo: Combo) {
    let mut w = World::new(case, combo).await;
    let publisher = w.start_publisher().await;
    let old = names("old", 30);
    let history = publisher.emit(rounds(&old, 5, |i, r| TYPES[(i + r) % TYPES.len()])).await;
    publisher.wait_published().await;

    let mut sub = w.start_subscriber("late", &TYPES, true).await;
    sub.wait_ready(STARTUP).await;
    let mut aggregates = old.clone();
    aggregates.extend(names("new", 10));
    let after = publisher.emit(rounds(&aggregates, 4, |i, r| TYPES[(i * 3 + r) % TYPES.len()])).await;
    let applied = converge(&w, &mut sub, &after, CONVERGE).await;
    assert_clean(&w, &sub, &after, &applied);
    println!("{case}: {} events of history before it started, none applied", history.len());
}

shapes!(start_from_now_subscriber:
    start_from_now_subscriber__builtin_sqlite = BUILTIN_SQLITE,
    start_from_now_subscriber__builtin_postgres = BUILTIN_POSTGRES,
    start_from_now_subscriber__jetstream_sqlite = JETSTREAM_SQLITE,
    start_from_now_subscriber__jetstream_postgres = JETSTREAM_POSTGRES,
);

// ---- a failing parked successor ---------------------------------------------------------

/// Version 2 of an aggregate arrives before version 1 and is parked; v1 arrives, is
/// applied, and v2's handler fails when it is drained. The event to retry and dead-letter
/// is v2, with its own error: v1 stays applied, and nothing else is held up.
async fn failing_parked_successor(case: &str, combo: Combo) {
    let mut w = World::new(case, combo).await;
    let mut sub = w.start_subscriber("sub", &TYPES, false).await;
    let publisher = w.start_publisher().await;
    let calm = names("calm", 10);
    let mut expected = publisher.emit(rounds(&calm, 2, |i, r| TYPES[(i + r) % TYPES.len()])).await;

    let v2 = publisher.emit(vec![EmitItem::new("x", "ItemRenamed").version(2).poison(fail_always())]).await;
    sub.wait_parked(1).await;
    // What it holds back is visible where an operator looks: its /metrics.
    let parked = sub.metric("busbar_inbox_deferred").await;
    assert_eq!(parked, Some(1.0), "{case}: /metrics must show v2 parked (busbar_inbox_deferred 1)");
    // And in `busbar status` (the transport's subscriber rows), with how long it has waited.
    let row = w.await_status_parked(&sub, 1, STATUS_REPORT).await;
    let waited = row.parked.map(|p| p.oldest_age_ms);
    assert!(waited.is_some_and(|ms| ms < 60_000), "{case}: the oldest parked age is v2's, just now: {waited:?}");
    let v1 = publisher.emit(vec![EmitItem::new("x", "ItemAdded").version(1)]).await;
    expected.extend(v1.clone());
    expected.extend(publisher.emit(rounds(&calm, 2, |i, r| TYPES[(i + r + 2) % TYPES.len()])).await);

    let ids = [v1[0].id.clone(), v2[0].id.clone()];
    let dead = w
        .await_dead_letters(&sub, CONVERGE, "a dead letter for x (v1 or v2)", |d| {
            d.iter().any(|d| d.event_id.as_ref().is_some_and(|id| ids.contains(id)))
        })
        .await;
    let of_x: Vec<_> = dead.iter().filter(|d| d.event_id.as_ref().is_some_and(|id| ids.contains(id))).collect();
    assert!(
        of_x.len() == 1 && of_x[0].event_id.as_deref() == Some(ids[1].as_str()),
        "{case}: the dead letter must be v2 ({}, the failing parked successor), not v1 ({}); got {:?}\n{}",
        ids[1],
        ids[0],
        of_x.iter().map(|d| format!("{:?} {:?}: {}", d.ty, d.event_id, d.last_error)).collect::<Vec<_>>(),
        sub.log_tail()
    );
    assert!(
        of_x[0].last_error.contains("told to fail") && of_x[0].last_error.contains("v2"),
        "{case}: v2's dead letter must carry v2's own error, got: {}",
        of_x[0].last_error
    );
    let applied = converge(&w, &mut sub, &expected, CONVERGE).await;
    assert_clean(&w, &sub, &expected, &applied);
}

shapes!(failing_parked_successor:
    failing_parked_successor__builtin_sqlite = BUILTIN_SQLITE,
    failing_parked_successor__builtin_postgres = BUILTIN_POSTGRES,
    failing_parked_successor__jetstream_sqlite = JETSTREAM_SQLITE,
    failing_parked_successor__jetstream_postgres = JETSTREAM_POSTGRES,
);

// ---- parked beyond maxParkedFor ---------------------------------------------------------

/// v1 is poison and is dead-lettered; v2 waits parked for it. After `maxParkedFor`, v2
/// is dead-lettered too, with a reason naming the missing version. Once the handler is
/// fixed and both are redriven, everything is applied in order, once.
async fn parked_beyond_max_parked_for(case: &str, combo: Combo) {
    let delivery = Delivery { max_parked_for: "2s".into(), ..Delivery::default() };
    let mut w = World::with(case, combo, delivery, Topology::Single).await;
    let mut sub = w.start_subscriber("sub", &TYPES, false).await;
    let publisher = w.start_publisher().await;
    // This case is about live delivery: the subscriber finishes its (empty) backfill before
    // anything is emitted (a poison found by a backfill is `poison_in_history`).
    sub.wait_ready(STARTUP).await;
    let calm = names("calm", 10);
    let mut expected = publisher.emit(rounds(&calm, 2, |i, r| TYPES[(i + r) % TYPES.len()])).await;
    let v1 = publisher.emit(vec![EmitItem::new("x", "ItemAdded").poison(fail_always())]).await;
    let v2 = publisher.emit(vec![EmitItem::new("x", "ItemRenamed")]).await;
    expected.extend(v1.clone());
    expected.extend(v2.clone());
    let (v1_id, v2_id) = (v1[0].id.clone(), v2[0].id.clone());

    let has = |d: &[DeadLetter], id: &str| d.iter().any(|d| d.event_id.as_deref() == Some(id));
    w.await_dead_letters(&sub, CONVERGE, "v1 to be dead-lettered", |d| has(d, &v1_id)).await;
    let v1_dead = std::time::Instant::now();
    let dead = w
        .await_dead_letters(&sub, PARKED_LIMIT_SLACK, "v2, parked beyond maxParkedFor (2s), to be dead-lettered", |d| {
            has(d, &v2_id)
        })
        .await;
    let reason = &dead.iter().find(|d| d.event_id.as_deref() == Some(v2_id.as_str())).unwrap().last_error;
    assert!(names_version(reason, 1), "{case}: v2's dead letter must name the missing version 1, got: {reason}");
    println!("{case}: v2 dead-lettered {:.1?} after v1, reason: {reason}", v1_dead.elapsed());

    // Others are not held up meanwhile.
    expected.extend(publisher.emit(rounds(&calm, 1, |i, _| TYPES[i % TYPES.len()])).await);
    sub.cure(&["x"]).await;
    let redriven = w.redrive_all("sub").await;
    assert_eq!(redriven, 2, "{case}: both v1 and v2 are redriven");
    let applied = converge(&w, &mut sub, &expected, CONVERGE).await;
    assert_clean(&w, &sub, &expected, &applied);
    // A dead letter is deleted once its redrive is handled.
    w.await_dead_letters(&sub, STARTUP, "no dead letters left after the redrive", |d| d.is_empty()).await;
}

shapes!(parked_beyond_max_parked_for:
    parked_beyond_max_parked_for__builtin_sqlite = BUILTIN_SQLITE,
    parked_beyond_max_parked_for__builtin_postgres = BUILTIN_POSTGRES,
    parked_beyond_max_parked_for__jetstream_sqlite = JETSTREAM_SQLITE,
    parked_beyond_max_parked_for__jetstream_postgres = JETSTREAM_POSTGRES,
);

// ---- a poison event already in history when a subscriber backfills -----------------------

/// History holds a poison event (v1 of `x`, whose handler always fails) and its successor
/// v2, among calm events, before the subscriber exists. Its backfill must not retry the
/// poison forever: after maxDeliver attempts it is dead-lettered (once, whichever of the
/// backfill and live delivery gives up on it first), the backfill finishes (`/readyz`
/// 200), v2 waits parked and is dead-lettered after `maxParkedFor`, and everything else is
/// applied. Once cured and redriven, all of it is applied once, in order.
async fn poison_in_history(case: &str, combo: Combo) {
    let delivery = Delivery { max_parked_for: "2s".into(), ..Delivery::default() };
    let mut w = World::with(case, combo, delivery, Topology::Single).await;
    let publisher = w.start_publisher().await;
    let calm = names("calm", 20);
    let mut history = publisher.emit(rounds(&calm, 3, |i, r| TYPES[(i + r) % TYPES.len()])).await;
    let v1 = publisher.emit(vec![EmitItem::new("x", "ItemAdded").poison(fail_always())]).await;
    let v2 = publisher.emit(vec![EmitItem::new("x", "ItemRenamed")]).await;
    history.extend(v1.clone());
    history.extend(v2.clone());
    history.extend(publisher.emit(rounds(&calm, 2, |i, r| TYPES[(i + r + 1) % TYPES.len()])).await);
    publisher.wait_published().await;
    let (v1_id, v2_id) = (v1[0].id.clone(), v2[0].id.clone());

    let mut sub = w.start_subscriber("late", &TYPES, false).await;
    // The backfill gets past the poison: the subscriber becomes ready.
    sub.wait_ready(CONVERGE).await;
    let count = |d: &[DeadLetter], id: &str| d.iter().filter(|d| d.event_id.as_deref() == Some(id)).count();
    let dead = w
        .await_dead_letters(&sub, CONVERGE, "v1 and then v2 (parked beyond maxParkedFor) to be dead-lettered", |d| {
            count(d, &v1_id) >= 1 && count(d, &v2_id) >= 1
        })
        .await;
    assert_eq!(count(&dead, &v1_id), 1, "{case}: the poison is dead-lettered once, got {dead:#?}");
    assert_eq!(dead.len(), 2, "{case}: only v1 and v2 are dead-lettered, got {dead:#?}");

    sub.cure(&["x"]).await;
    let redriven = w.redrive_all("late").await;
    assert_eq!(redriven, 2, "{case}: v1 and v2 are redriven");
    let applied = converge(&w, &mut sub, &history, CONVERGE).await;
    assert_clean(&w, &sub, &history, &applied);
    w.await_dead_letters(&sub, STARTUP, "no dead letters left after the redrive", |d| d.is_empty()).await;
}

shapes!(poison_in_history:
    poison_in_history__builtin_sqlite = BUILTIN_SQLITE,
    poison_in_history__builtin_postgres = BUILTIN_POSTGRES,
    poison_in_history__jetstream_sqlite = JETSTREAM_SQLITE,
    poison_in_history__jetstream_postgres = JETSTREAM_POSTGRES,
);

/// How long a subscriber's parked figure may take to show in its status row: the next
/// push receipt on the built-in bus, the next sweep's report on JetStream (about 1 s).
const STATUS_REPORT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long past its `maxParkedFor` (2 s here) a parked event may take to be dead-lettered.
const PARKED_LIMIT_SLACK: std::time::Duration = std::time::Duration::from_secs(20);

// ---- a subscriber added after 10,000 events, killed twice while it backfills ------------

/// Events of history before the subscriber exists.
const HISTORY: usize = 10_000;

/// A subscriber added after 10,000 events is killed with SIGKILL twice while it catches up
/// from history. At the end every event is applied exactly once, in order.
async fn backfill_killed_twice(case: &str, combo: Combo) {
    let started = std::time::Instant::now();
    // The bus keeps pushing while the subscriber is down: enough attempts, far enough
    // apart, to ride out a restart (about 8 s) rather than dead-letter what it pushes then.
    let delivery = Delivery { max_deliver: 10, backoff: vec!["200ms".into(), "1s".into()], ..Delivery::default() };
    let mut w = World::with(case, combo, delivery, Topology::Single).await;
    let publisher = w.start_publisher().await;
    let aggregates = names("item", 200);
    let plan = rounds(&aggregates, HISTORY / aggregates.len(), |i, r| TYPES[(i + r) % TYPES.len()]);
    // 1,000 events per transaction: the history is only the setting, and cheap this way.
    let history = publisher.emit_req(&EmitRequest { items: plan, per_tx: Some(1000) }).await;
    assert_eq!(history.len(), HISTORY);
    let committed = started.elapsed();
    publisher.wait_published().await;
    println!(
        "{case}: {HISTORY} events of history committed after {committed:.1?}, published after {:.1?}",
        started.elapsed()
    );

    // A millisecond per application: catching up takes seconds, not a blink, so the
    // harness sees it part-way through even when the machine is loaded and the subscriber
    // is not.
    w.set_probe_env("PROBE_APPLY_DELAY_MS", "1");
    let mut sub = w.start_subscriber("late", &TYPES, false).await;
    let (mut seen_before, mut resumed_before) = (0, 0);
    for kill in 1..=2 {
        let (applied, readyz) = wait_mid_backfill(&mut sub, seen_before + KILL_EVERY).await;
        sub.kill9();
        println!("{case}: kill {kill} with {applied}/{HISTORY} applied; /readyz said {readyz:?}");
        seen_before = applied;
        sub.restart().await;
        // It resumes from the progress it saved, further on each time, not from the start.
        let resumed = resumed_backfill_at(&sub, STARTUP).await;
        assert!(
            resumed.is_some_and(|p| p > resumed_before),
            "{case}: after kill {kill} the backfill did not resume from a saved position past {resumed_before} \
             (it said {resumed:?})\n{}",
            sub.log_tail()
        );
        resumed_before = resumed.unwrap_or_default();
        println!("{case}: after kill {kill} the backfill resumed at position {resumed_before}");
    }
    // Catching up on 10,000 events (and then skipping the live copies of what backfill
    // applied) is the longest wait of the suite; stalls are still caught after STALL.
    let applied = converge(&w, &mut sub, &history, CONVERGE * 4).await;
    assert_clean(&w, &sub, &history, &applied);
    sub.wait_ready(STARTUP).await;
    println!("{case}: done in {:.1?}", started.elapsed());
}

/// The position from which the subscriber, since its last start, says it resumed its
/// backfill (its log line "resuming the backfill where it stopped ... position=N"); `None`
/// if it has not said so within `within`.
async fn resumed_backfill_at(sub: &Probe, within: std::time::Duration) -> Option<u64> {
    let start = std::time::Instant::now();
    loop {
        let log = sub.log();
        let since_start = log.rsplit_once("===== harness: start #").map_or(log.as_str(), |(_, s)| s);
        let said = since_start
            .lines()
            .filter(|l| l.contains("resuming the backfill where it stopped"))
            .find_map(|l| l.split_once("position=")?.1.split_whitespace().next()?.parse().ok());
        if said.is_some() || start.elapsed() >= within {
            return said;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// How many more events the subscriber applies between the harness's kills.
const KILL_EVERY: i64 = 2_000;

/// Waits until the subscriber is part-way through history: it has applied at least
/// `at_least` events and fewer than all of them. The first time it must also say it is
/// backfilling (`/readyz` 503). Returns what it had applied and what `/readyz` said.
async fn wait_mid_backfill(sub: &mut Probe, at_least: i64) -> (i64, Option<u16>) {
    // The budget runs from the last progress, not from the start: on a busy machine 2,000
    // events of backfill may take longer than a start-up, and that is not a failure.
    let (mut start, mut last_applied) = (std::time::Instant::now(), -1);
    loop {
        let readyz = sub.readyz().await;
        if let Ok(s) = sub.try_stats().await {
            if s.applied != last_applied {
                (start, last_applied) = (std::time::Instant::now(), s.applied);
            }
            assert!(
                s.applied < HISTORY as i64,
                "{}: finished catching up ({} applied) before the harness could kill it mid-backfill\n{}",
                sub.replica,
                s.applied,
                sub.log_tail()
            );
            let backfilling = at_least > KILL_EVERY || readyz == Some(503);
            if s.applied >= at_least && backfilling {
                if at_least <= KILL_EVERY {
                    // It says how far it is, for `busbar up` and a person to see.
                    // (Unless it finished in between.)
                    let said = sub.readyz_text().await.unwrap_or_default();
                    let count = said
                        .split_once("backfilling from history: ")
                        .and_then(|(_, rest)| rest.split_once(" events so far"))
                        .map(|(n, _)| n.parse::<u64>().is_ok());
                    assert!(
                        count == Some(true) || !said.contains("backfilling"),
                        "{}: /readyz while backfilling said {said}",
                        sub.replica
                    );
                }
                return (s.applied, readyz);
            }
        }
        assert!(
            start.elapsed() < STARTUP,
            "{}: not seen backfilling (/readyz {readyz:?}), and no progress for {STARTUP:?}\n{}",
            sub.replica,
            sub.log_tail()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

shapes!(backfill_killed_twice:
    backfill_killed_twice__builtin_sqlite = BUILTIN_SQLITE,
    backfill_killed_twice__builtin_postgres = BUILTIN_POSTGRES,
    backfill_killed_twice__jetstream_sqlite = JETSTREAM_SQLITE,
    backfill_killed_twice__jetstream_postgres = JETSTREAM_POSTGRES,
);

// ---- a process-crashing poison event and a panicking handler ----------------------------

/// One event aborts the subscriber process whenever it is handled, another makes its
/// handler panic; calm events around them share their batches. The test restarts the
/// subscriber each time it dies, as Kubernetes would (more than twice `maxDeliver` deaths
/// is a crash loop and fails): the crashing event must be dead-lettered after `maxDeliver`
/// attempts counted across restarts, a panic counts as a failed attempt, every calm event
/// is applied once in order (none is dead-lettered in the poison's place), and `/readyz`
/// never says ready while the subscriber consumes nothing.
async fn crashing_poison_and_panicking_handler(case: &str, combo: Combo) {
    // Retries 2 s apart: longer than a restart, so the bus's attempts while the subscriber
    // is down do not use up an event's attempts on their own (only the poison may fail).
    let delivery = Delivery { ack_wait: "2s".into(), backoff: vec!["2s".into()], ..Delivery::default() };
    let max_deliver = delivery.max_deliver;
    let mut w = World::with(case, combo, delivery, Topology::Single).await;
    let mut sub = w.start_subscriber("sub", &TYPES, false).await;
    sub.wait_ready(STARTUP).await;
    let publisher = w.start_publisher().await;
    let calm = names("calm", 10);
    let mut plan = rounds(&calm, 2, |i, r| TYPES[(i + r) % TYPES.len()]);
    plan.push(EmitItem::new("panics", "ItemAdded").poison(Poison::Panic));
    plan.extend(rounds(&calm, 2, |i, r| TYPES[(i + r + 2) % TYPES.len()]));
    plan.push(EmitItem::new("crashes", "ItemAdded").poison(Poison::Crash));
    plan.extend(rounds(&calm, 2, |i, r| TYPES[(i + r) % TYPES.len()]));
    let emitted = publisher.emit(plan).await;
    let poison_id = |agg: &str| emitted.iter().find(|e| e.aggregate == agg).unwrap().id.clone();
    let (panic_id, crash_id) = (poison_id("panics"), poison_id("crashes"));
    let expected: Vec<_> = emitted.iter().filter(|e| e.id != panic_id && e.id != crash_id).cloned().collect();

    let (mut crashes, start) = (0u32, std::time::Instant::now());
    let (mut last, mut last_change) = ((0i64, 0usize, 0u32), std::time::Instant::now());
    loop {
        if !sub.is_running() {
            crashes += 1;
            if crashes > 2 * max_deliver {
                let dead = w.dead_letters("sub").await.unwrap_or_default();
                let listed: Vec<String> =
                    dead.iter().map(|d| format!("{:?} {:?}: {}", d.ty, d.event_id, d.last_error)).collect();
                panic!(
                    "{case}: the subscriber died {crashes} times, crash-looping: with maxDeliver {max_deliver} the \
                     crashing event ({crash_id}) must be dead-lettered after {max_deliver} attempts counted across \
                     restarts; dead letters so far: {listed:#?}\n{}",
                    sub.log_tail()
                );
            }
            sub.restart().await;
            continue;
        }
        let dead = w.dead_letters("sub").await.unwrap_or_default();
        let applied = sub.try_stats().await.map(|s| s.applied).unwrap_or(last.0);
        let has = |id: &str| dead.iter().any(|d| d.event_id.as_deref() == Some(id));
        if has(&panic_id) && has(&crash_id) && applied >= expected.len() as i64 {
            break;
        }
        let now = (applied, dead.len(), crashes);
        if now != last {
            (last, last_change) = (now, std::time::Instant::now());
        }
        if last_change.elapsed() > STALL || start.elapsed() > CONVERGE {
            let readyz = sub.readyz().await;
            truth::fail(
                &w,
                &sub,
                &expected,
                &format!(
                    "no progress for {:?} ({applied} applied, {} dead letters, {crashes} crashes); /readyz answers \
                     {readyz:?}: a subscriber that consumes nothing must not say it is ready",
                    last_change.elapsed(),
                    dead.len()
                ),
            )
            .await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let applied = converge(&w, &mut sub, &expected, CONVERGE).await;
    assert_clean(&w, &sub, &expected, &applied);
    let dead = w.dead_letters("sub").await.expect("list dead letters");
    let listed: Vec<String> = dead.iter().map(|d| format!("{:?} {:?}: {}", d.ty, d.event_id, d.last_error)).collect();
    assert_eq!(dead.len(), 2, "{case}: exactly the two poison events are dead-lettered, got {listed:#?}");
    let panicked = dead.iter().find(|d| d.event_id.as_deref() == Some(panic_id.as_str())).unwrap();
    assert!(panicked.last_error.contains("panic"), "{case}: the panic's dead letter says so: {}", panicked.last_error);
    assert_eq!(sub.readyz().await, Some(200), "{case}: ready once it has consumed everything");
    println!(
        "{case}: {crashes} crashes before the crashing event was dead-lettered; attempts recorded: {:?}",
        dead.iter().map(|d| (d.event_id.as_deref() == Some(crash_id.as_str()), d.attempts)).collect::<Vec<_>>()
    );
}

shapes!(crashing_poison_and_panicking_handler:
    crashing_poison_and_panicking_handler__builtin_sqlite = BUILTIN_SQLITE,
    crashing_poison_and_panicking_handler__builtin_postgres = BUILTIN_POSTGRES,
    crashing_poison_and_panicking_handler__jetstream_sqlite = JETSTREAM_SQLITE,
    crashing_poison_and_panicking_handler__jetstream_postgres = JETSTREAM_POSTGRES,
);

// ---- redrive during load ----------------------------------------------------------------

/// Two dead letters: A's v1 (its handler is then fixed; A's later versions wait parked)
/// and B, which still fails. Both are redriven while new events keep flowing. New events
/// are not held up by the redrive: an event emitted once A's v1 has been applied again is
/// applied before B, retried with a 1 s backoff, is back among the dead letters. A's
/// versions, old and new, are applied in order, once.
async fn redrive_during_load(case: &str, combo: Combo) {
    let delivery = Delivery { backoff: vec!["1s".into()], ..Delivery::default() };
    let mut w = World::with(case, combo, delivery, Topology::Single).await;
    let mut sub = w.start_subscriber("sub", &TYPES, false).await;
    let publisher = w.start_publisher().await;
    let a = publisher
        .emit(vec![
            EmitItem::new("redrive-a", "ItemAdded").poison(fail_always()),
            EmitItem::new("redrive-a", "ItemRenamed").count(3),
        ])
        .await;
    let b = publisher.emit(vec![EmitItem::new("redrive-b", "ItemAdded").poison(fail_always())]).await;
    let (a_id, b_id) = (a[0].id.clone(), b[0].id.clone());
    let has = |d: &[DeadLetter], id: &str| d.iter().any(|d| d.event_id.as_deref() == Some(id));
    let dead =
        w.await_dead_letters(&sub, CONVERGE, "A's v1 and B dead-lettered", |d| has(d, &a_id) && has(d, &b_id)).await;
    let b_before = dead.iter().find(|d| d.event_id.as_deref() == Some(b_id.as_str())).unwrap().clone();

    let mut aggregates = names("load", 20);
    aggregates.push("redrive-a".into());
    let load = Load::start(LoadSpec {
        targets: vec![publisher.url.clone()],
        aggregates,
        per_request: 5,
        pause: std::time::Duration::from_millis(50),
        max_events: 5_000,
        max_time: CONVERGE,
    });
    load.progress(50, STARTUP, "load before the redrive").await;
    sub.cure(&["redrive-a"]).await;
    assert_eq!(w.redrive_all("sub").await, 2, "{case}: both dead letters are redriven");
    // The redrive is under way once A's v1 is applied; B is still being retried then.
    w.wait_applied(&sub, &a_id, CONVERGE).await;
    let b_now = w.dead_letters("sub").await.unwrap_or_default();
    assert!(
        !b_now.iter().any(|d| d.event_id.as_deref() == Some(b_id.as_str())
            && d.state == DeadLetterState::Dead
            && (d.id != b_before.id || d.attempts > b_before.attempts)),
        "{case}: B's redrive was over before A's v1 was applied; the case cannot tell whether new events wait for it"
    );
    let marker = publisher.emit(vec![EmitItem::new("marker", "ItemAdded")]).await;
    let back = w
        .await_dead_letters(&sub, CONVERGE, "B, redriven and failing again, back among the dead letters", |d| {
            d.iter().any(|d| {
                d.event_id.as_deref() == Some(b_id.as_str())
                    && d.state == DeadLetterState::Dead
                    && (d.id != b_before.id || d.attempts > b_before.attempts)
            })
        })
        .await;
    let b_back_at = back.iter().find(|d| d.event_id.as_deref() == Some(b_id.as_str())).unwrap().dead_at;
    load.progress(50, STARTUP, "load after the redrive").await;
    let log = load.stop().await;
    assert_eq!(log.failed_requests, 0, "{case}: the publisher refused load: {:?}", log.first_errors);

    let expected: Vec<_> = publisher.emitted().await.into_iter().filter(|e| e.id != b_id).collect();
    let applied = converge(&w, &mut sub, &expected, CONVERGE).await;
    assert_clean(&w, &sub, &expected, &applied);
    let marker_at = applied.iter().find(|x| x.id == marker[0].id).unwrap().at;
    assert!(
        marker_at < b_back_at,
        "{case}: the event emitted during the redrive was applied {} ms after B's redrive had failed again: \
         new events were held up by the redrive",
        marker_at - b_back_at
    );
    println!(
        "{case}: {} load events; the event emitted during the redrive was applied {} ms before B was back in the dead letters",
        log.acked.len(),
        b_back_at - marker_at
    );
}

shapes!(redrive_during_load:
    redrive_during_load__builtin_sqlite = BUILTIN_SQLITE,
    redrive_during_load__builtin_postgres = BUILTIN_POSTGRES,
    redrive_during_load__jetstream_sqlite = JETSTREAM_SQLITE,
    redrive_during_load__jetstream_postgres = JETSTREAM_POSTGRES,
);

// ---- three replicas of a publishing service, the leading relay killed -------------------

/// Three probe processes publish from one PostgreSQL database under load. Exactly one
/// outbox relay leads ("one relay publishes per database"); it is killed with SIGKILL, and
/// another replica's relay takes over. Nothing is lost, nothing applied twice, and the
/// subscriber sees each aggregate in order. Prints how long until the relays publish again.
async fn three_replicas_leader_killed(case: &str, combo: Combo) {
    let mut w = World::new(case, combo).await;
    let mut sub = w.start_subscriber("sub", &TYPES, false).await;
    let db = w.database(PUBLISHER).await;
    let mut replicas = vec![];
    for i in 1..=3 {
        replicas.push(w.start_probe(PUBLISHER, &format!("{PUBLISHER}-{i}"), &db).await);
    }
    let load = Load::start(LoadSpec {
        targets: replicas.iter().map(|r| r.url.clone()).collect(),
        aggregates: names("agg", 30),
        per_request: 4,
        pause: std::time::Duration::from_millis(20),
        max_events: 6_000,
        max_time: CONVERGE,
    });
    load.progress(200, STARTUP, "load on three replicas").await;
    let leader = one_leader(case, &replicas, &[]).await;
    let before = sub.try_stats().await.map(|s| s.applied).unwrap_or_default();
    replicas[leader].kill9();
    let killed = std::time::Instant::now();
    let new_leader = one_leader(case, &replicas, &[leader]).await;
    let took_lead = killed.elapsed();
    // Publishing again: an event committed after the kill reaches the subscriber.
    let after_kill = replicas[new_leader].emit(vec![EmitItem::new("after-kill", "ItemAdded")]).await;
    w.wait_applied(&sub, &after_kill[0].id, TAKEOVER).await;
    let publishing = killed.elapsed();
    load.progress(200, STARTUP, "load after the takeover").await;
    let log = load.stop().await;

    let emitted = replicas[new_leader].emitted().await;
    let ids: std::collections::HashSet<&str> = emitted.iter().map(|e| e.id.as_str()).collect();
    let unrecorded: Vec<_> = log.acked.iter().filter(|e| !ids.contains(e.id.as_str())).collect();
    assert!(unrecorded.is_empty(), "{case}: acknowledged emits missing from the publisher's database: {unrecorded:?}");
    let applied = converge(&w, &mut sub, &emitted, CONVERGE).await;
    assert_clean(&w, &sub, &emitted, &applied);
    println!(
        "{case}: killed {} (leading) with {before} applied; {} led after {took_lead:.1?}; an event committed after \
         the kill was applied after {publishing:.1?}; {} events, {} load requests failed over",
        replicas[leader].replica,
        replicas[new_leader].replica,
        emitted.len(),
        log.failed_requests
    );
}

shapes!(three_replicas_leader_killed:
    three_replicas_leader_killed__builtin_postgres = BUILTIN_POSTGRES,
    three_replicas_leader_killed__jetstream_postgres = JETSTREAM_POSTGRES,
);

// ---- two bus processes on one database, the active one killed ---------------------------

/// Two built-in bus processes share one database. The services are given one bus URL: a
/// loopback forwarder that, like a Kubernetes Service, sends each connection to a bus
/// whose `/readyz` says 200. The second bus is a standby while the first holds the lock:
/// `/readyz` 503, it refuses to ingest, and it delivers nothing. Under load the active bus
/// is killed with SIGKILL; the standby takes over, and the services, retrying, reach it.
/// The killed bus comes back as the standby. Nothing lost, nothing applied twice, order
/// kept. Prints the takeover time.
async fn two_bus_processes_active_killed(case: &str, combo: Combo) {
    let mut w = World::with(case, combo, Delivery::default(), Topology::TwoBuses).await;
    w.await_standby(1).await;
    let refused = w.publish_to_bus(1).await;
    assert!(refused >= 500, "{case}: the standby bus ingested a publish (HTTP {refused}); it must refuse (503)");
    let mut sub = w.start_subscriber("sub", &TYPES, false).await;
    let publisher = w.start_publisher().await;
    let load = Load::start(LoadSpec {
        targets: vec![publisher.url.clone()],
        aggregates: names("agg", 30),
        per_request: 4,
        pause: std::time::Duration::from_millis(20),
        max_events: 6_000,
        max_time: CONVERGE,
    });
    load.progress(200, STARTUP, "load through the active bus").await;
    // The standby serves its own metrics: it stands by, and its delivery counter for the
    // subscriber is there and counted nothing (a missing figure, e.g. a 503 body, would
    // prove nothing). Restarted so that it starts from routes that name the subscriber.
    w.buses[1].restart().await;
    w.await_standby(1).await;
    let standby_metrics = w.buses[1].metrics().await;
    let standing_by = metric_value(&standby_metrics, "busbar_bus_active");
    assert_eq!(
        standing_by,
        Some(0.0),
        "{case}: the standby bus does not report busbar_bus_active 0:\n{standby_metrics}"
    );
    let delivered_by_standby = metric_sum(&standby_metrics, "busbar_bus_events_delivered_total");
    assert_eq!(
        delivered_by_standby,
        Some(0.0),
        "{case}: the standby bus delivered {delivered_by_standby:?} events while the active one held the lock:\n{standby_metrics}"
    );

    w.buses[0].kill9();
    let killed = std::time::Instant::now();
    let start = std::time::Instant::now();
    while w.buses[1].readyz().await != Some(200) {
        assert!(
            start.elapsed() < TAKEOVER,
            "{case}: the standby did not take over within {TAKEOVER:?} of the active bus's death\n{}",
            w.diagnostics()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let takeover = killed.elapsed();
    let after_kill = publisher.emit(vec![EmitItem::new("after-kill", "ItemAdded")]).await;
    w.wait_applied(&sub, &after_kill[0].id, TAKEOVER).await;
    let flowing = killed.elapsed();
    load.progress(200, STARTUP, "load through the bus that took over").await;
    w.buses[0].restart().await;
    w.await_standby(0).await;
    let log = load.stop().await;

    let emitted = publisher.emitted().await;
    let applied = converge(&w, &mut sub, &emitted, CONVERGE).await;
    assert_clean(&w, &sub, &emitted, &applied);
    println!(
        "{case}: the standby was ready {takeover:.2?} after the active bus was killed; an event emitted then was \
         applied after {flowing:.2?}; {} events, {} emit requests failed",
        emitted.len(),
        log.failed_requests
    );
}

shapes!(two_bus_processes_active_killed:
    two_bus_processes_active_killed__builtin_sqlite = BUILTIN_SQLITE,
    two_bus_processes_active_killed__builtin_postgres = BUILTIN_POSTGRES,
);

// ---- a three-node JetStream cluster -----------------------------------------------------

/// Three nats-servers in a cluster, the bus's streams with 3 replicas
/// (`BUSBAR_JETSTREAM_REPLICAS=3`). Under load, the node leading the stream is killed;
/// events keep flowing with it down; it comes back; then the node leading now is killed,
/// and comes back. Nothing lost, nothing applied twice.
async fn three_node_jetstream_cluster(case: &str, combo: Combo) {
    let mut w = World::with(case, combo, Delivery::default(), Topology::Cluster3).await;
    let mut sub = w.start_subscriber("sub", &TYPES, false).await;
    let publisher = w.start_publisher().await;
    let load = Load::start(LoadSpec {
        targets: vec![publisher.url.clone()],
        aggregates: names("agg", 30),
        per_request: 4,
        pause: std::time::Duration::from_millis(20),
        max_events: 8_000,
        max_time: CONVERGE * 2,
    });
    load.progress(100, STARTUP, "load on the cluster").await;
    let (replicas, _) = stream_cluster(&w).await;
    assert_eq!(
        replicas,
        3,
        "{case}: stream {} has {replicas} replica(s); with BUSBAR_JETSTREAM_REPLICAS=3 it must have 3",
        stream_name(&w.id)
    );
    let mut previous = None;
    for round in 1..=2 {
        let (_, leader) = stream_cluster(&w).await;
        let cluster = w.cluster.as_ref().unwrap();
        let leading = cluster.index_of(&leader).expect("the stream leader is a node");
        // The node leading the stream, unless it is the one killed last round: then another.
        let victim = if Some(leading) == previous { (leading + 1) % cluster.nodes.len() } else { leading };
        let leader = cluster.nodes[victim].name.clone();
        previous = Some(victim);
        let before = sub.try_stats().await.map(|s| s.applied).unwrap_or_default();
        w.cluster.as_mut().unwrap().kill9(victim);
        let killed = std::time::Instant::now();
        let start = std::time::Instant::now();
        // Progress with a node down: the subscriber applies events emitted since the kill.
        while sub.try_stats().await.map(|s| s.applied).unwrap_or_default() < before + 200 {
            assert!(
                start.elapsed() < TAKEOVER,
                "{case}: round {round}: no progress within {TAKEOVER:?} with node {leader} (the stream leader) down\n{}\n{}",
                sub.log_tail(),
                w.diagnostics()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        println!("{case}: round {round}: killed {leader}; 200 more events applied {:.1?} later", killed.elapsed());
        w.cluster.as_mut().unwrap().restart(victim).await;
        stream_replicas_current(&w).await;
        load.progress(100, STARTUP, "load after the node came back").await;
    }
    let log = load.stop().await;
    let emitted = publisher.emitted().await;
    let applied = converge(&w, &mut sub, &emitted, CONVERGE).await;
    assert_clean(&w, &sub, &emitted, &applied);
    println!("{case}: {} events, {} load requests failed", emitted.len(), log.failed_requests);
}

shapes!(three_node_jetstream_cluster:
    three_node_jetstream_cluster__jetstream_sqlite = JETSTREAM_SQLITE,
    three_node_jetstream_cluster__jetstream_postgres = JETSTREAM_POSTGRES,
);
