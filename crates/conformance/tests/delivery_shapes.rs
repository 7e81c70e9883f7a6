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

use busbar_conformance::{events::TYPES, wire::EmitItem};
use support::{
    BUILTIN_POSTGRES, BUILTIN_SQLITE, CONVERGE, Combo, JETSTREAM_POSTGRES, JETSTREAM_SQLITE, STARTUP,
    probe::Probe,
    truth::{assert_clean, converge, of_types},
    world::World,
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
