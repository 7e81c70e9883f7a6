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

use busbar::bus_api::DeadLetter;
use busbar_conformance::{
    events::{Poison, TYPES},
    wire::EmitItem,
};
use support::{
    BUILTIN_POSTGRES, BUILTIN_SQLITE, CONVERGE, Combo, JETSTREAM_POSTGRES, JETSTREAM_SQLITE, STARTUP,
    manifest::Delivery,
    probe::Probe,
    truth::{assert_clean, converge, of_types},
    world::{Topology, World},
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

/// `rounds` events on each of `aggregates`, round by round (so one aggregate's versions
/// interleave with the others'), the type of each chosen by `ty(aggregate index, round)`.
fn rounds(aggregates: &[String], rounds: usize, ty: impl Fn(usize, usize) -> &'static str) -> Vec<EmitItem> {
    (0..rounds)
        .flat_map(|r| aggregates.iter().enumerate().map(move |(i, a)| (i, r, a)))
        .map(|(i, r, a)| EmitItem::new(a.clone(), ty(i, r)))
        .collect()
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Waits until the publisher's relay has handed every committed event to the transport.
async fn wait_published(publisher: &Probe) {
    let start = std::time::Instant::now();
    while publisher.metric("busbar_outbox_backlog_events").await != Some(0.0) {
        assert!(
            start.elapsed() < STARTUP,
            "the outbox of {} did not drain:\n{}",
            publisher.replica,
            publisher.log_tail()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
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
    wait_published(&publisher).await;

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
    let left = w.dead_letters("sub").await.expect("list dead letters");
    assert!(left.is_empty(), "{case}: dead letters left after a successful redrive: {left:?}");
}

shapes!(parked_beyond_max_parked_for:
    parked_beyond_max_parked_for__builtin_sqlite = BUILTIN_SQLITE,
    parked_beyond_max_parked_for__builtin_postgres = BUILTIN_POSTGRES,
    parked_beyond_max_parked_for__jetstream_sqlite = JETSTREAM_SQLITE,
    parked_beyond_max_parked_for__jetstream_postgres = JETSTREAM_POSTGRES,
);

/// How long past its `maxParkedFor` (2 s here) a parked event may take to be dead-lettered.
const PARKED_LIMIT_SLACK: std::time::Duration = std::time::Duration::from_secs(20);

fn fail_always() -> Poison {
    Poison::Fail { times: None }
}

/// Whether a dead letter's reason names version `v` (as "version 2", "v2" or "version: 2").
fn names_version(reason: &str, v: i64) -> bool {
    let r = reason.to_lowercase();
    [format!("version {v}"), format!("version: {v}"), format!("v{v}")].iter().any(|pat| {
        r.match_indices(pat.as_str()).any(|(i, _)| !r[i + pat.len()..].starts_with(|c: char| c.is_ascii_digit()))
    })
}
