//! The transactional outbox on SQLite and PostgreSQL: state and events commit together
//! or not at all, and the relay publishes committed events in order, promptly.

mod common;

use std::time::Duration;

use busbar::outbox::{RelayOptions, spawn_relay};
use common::{NoteWritten, Recording, count, database, notes_db};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(20);

/// A relay that would not poll again for an hour, so anything published promptly was
/// woken by the commit.
fn lazy() -> RelayOptions {
    RelayOptions { idle_poll: Duration::from_secs(3600), ..RelayOptions::default() }
}

async fn write_note(db: &busbar::Db, id: &str, commit: bool) -> String {
    use busbar::AttributesReader;
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO notes (id, text) VALUES ($1, $2)").bind(id).bind("hi").execute(&mut *tx).await.unwrap();
    let ev = tx.emit(&NoteWritten { id: id.into(), text: "hi".into() }, 1).await.unwrap();
    if commit {
        tx.commit().await.unwrap()
    } else {
        tx.rollback().await.unwrap()
    }
    ev.id().to_owned()
}

async fn rolled_back_never_publishes_and_committed_publishes_promptly(backend: &str) {
    let (url, _keep) = database(backend).await;
    let db = notes_db(&url).await;
    let transport = Recording::new();
    let stop = CancellationToken::new();
    let relay = spawn_relay(db.clone(), transport.clone(), lazy(), stop.clone());
    // Let the relay go idle first, so the next publication must come from a wake-up.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let rolled_back = write_note(&db, "n1", false).await;
    let committed = write_note(&db, "n2", true).await;
    testkit::wait_until(T, "the committed event to be published", || async {
        (transport.ids().contains(&committed)).then_some(())
    })
    .await;
    assert_eq!(transport.ids(), vec![committed.clone()], "only the committed event, never {rolled_back}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM notes").await, 1, "the rolled-back state change is gone too");
    testkit::wait_until(T, "the row to be marked sent", || async {
        (busbar::outbox::backlog(&db).await.unwrap() == 0).then_some(())
    })
    .await;
    stop.cancel();
    relay.await.unwrap();
}

#[tokio::test]
async fn outbox_atomicity_on_sqlite() {
    rolled_back_never_publishes_and_committed_publishes_promptly("sqlite").await;
}

#[tokio::test]
async fn outbox_atomicity_on_postgres() {
    rolled_back_never_publishes_and_committed_publishes_promptly("postgres").await;
}

async fn publishes_in_commit_order_and_survives_a_bus_outage(backend: &str) {
    let (url, _keep) = database(backend).await;
    let db = notes_db(&url).await;
    let transport = Recording::new();
    *transport.failing.lock().unwrap() = true;
    let stop = CancellationToken::new();
    let relay = spawn_relay(db.clone(), transport.clone(), RelayOptions { batch: 7, ..lazy() }, stop.clone());

    let mut ids = vec![];
    for i in 0..40 {
        ids.push(write_note(&db, &format!("n{i}"), true).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(transport.ids().is_empty(), "nothing gets through while the bus is down");
    assert_eq!(busbar::outbox::backlog(&db).await.unwrap(), 40, "the events wait in the outbox");

    *transport.failing.lock().unwrap() = false;
    testkit::wait_until(T, "all 40 events", || async { (transport.ids().len() >= 40).then_some(()) }).await;
    assert_eq!(transport.ids(), ids, "in commit order, each once");
    stop.cancel();
    relay.await.unwrap();
}

#[tokio::test]
async fn relay_order_and_outage_on_sqlite() {
    publishes_in_commit_order_and_survives_a_bus_outage("sqlite").await;
}

#[tokio::test]
async fn relay_order_and_outage_on_postgres() {
    publishes_in_commit_order_and_survives_a_bus_outage("postgres").await;
}

/// The outbox rows of `db`, oldest first: (event id, payload).
async fn outbox_rows(db: &busbar::Db) -> Vec<(String, String)> {
    use sqlx::Row;
    sqlx::query("SELECT event_id, payload FROM busbar_outbox ORDER BY seq")
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// A transaction's events are written together at commit: each lands once, in emit order,
/// and an event emitted after another of its aggregate in the same transaction still names
/// that one as its predecessor (the head it moved is not in the table yet).
async fn several_events_of_one_transaction_land_in_emit_order(backend: &str) {
    use busbar::{AttributesReader, envelope};
    let (url, _keep) = database(backend).await;
    let db = notes_db(&url).await;
    let mut tx = db.begin().await.unwrap();
    let mut emitted = vec![];
    for (agg, version) in [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("a", 3)] {
        let text = format!("{agg}{version} with \"quotes\", a \\ and ünïcödé");
        emitted.push(tx.emit(&NoteWritten { id: agg.into(), text }, version).await.unwrap());
    }
    assert!(outbox_rows(&db).await.is_empty(), "nothing is visible before the commit");
    tx.commit().await.unwrap();

    let rows = outbox_rows(&db).await;
    let ids: Vec<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, emitted.iter().map(|e| e.id()).collect::<Vec<_>>(), "each once, in emit order");
    for ((_, payload), ev) in rows.iter().zip(&emitted) {
        assert_eq!(&envelope::decode_one(payload).unwrap(), ev, "stored as emitted");
    }
    let prev = |i: usize| envelope::predecessors(&emitted[i]).unwrap_or_default();
    assert_eq!(prev(2), [("NoteWritten".to_owned(), 1)].into(), "a2 follows a1 of the same transaction");
    assert_eq!(prev(4), [("NoteWritten".to_owned(), 2)].into(), "a3 follows a2, not a1");
    assert!(prev(1).is_empty() && prev(3).is_empty(), "first versions follow nothing");

    // The heads were written too: a later transaction's a4 follows a3.
    let mut tx = db.begin().await.unwrap();
    let a4 = tx.emit(&NoteWritten { id: "a".into(), text: "a4".into() }, 4).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(envelope::predecessors(&a4).unwrap_or_default(), [("NoteWritten".to_owned(), 3)].into());
    assert_eq!(outbox_rows(&db).await.len(), 6);
}

#[tokio::test]
async fn emit_order_in_one_transaction_on_sqlite() {
    several_events_of_one_transaction_land_in_emit_order("sqlite").await;
}

#[tokio::test]
async fn emit_order_in_one_transaction_on_postgres() {
    several_events_of_one_transaction_land_in_emit_order("postgres").await;
}

/// A relay on PostgreSQL leads while it holds an advisory lock on a connection of its own.
/// When the server ends that session (as a network partition or an idle timeout would),
/// the lock goes with it, here to a waiting contender: the relay must notice before it
/// publishes anything more, stand by while the other holds the lock, and publish what
/// waits once it leads again, each event once.
#[tokio::test]
async fn a_relay_whose_lock_session_ends_stands_by_until_it_leads_again() {
    use prometheus_client::metrics::gauge::Gauge;
    use sqlx::Connection;
    let (url, _keep) = database("postgres").await;
    let db = notes_db(&url).await;
    let transport = Recording::new();
    let leads = Gauge::default();
    let stop = CancellationToken::new();
    let options =
        RelayOptions { leading: leads.clone(), idle_poll: Duration::from_millis(50), ..RelayOptions::default() };
    let relay = spawn_relay(db.clone(), transport.clone(), options, stop.clone());
    testkit::wait_until(T, "the relay to lead", || async { (leads.get() == 1).then_some(()) }).await;
    let first = write_note(&db, "n0", true).await;
    testkit::wait_until(T, "the relay to publish", || async { transport.ids().contains(&first).then_some(()) }).await;

    // A contender waits for the relay's lock (found in pg_locks: a bigint key is split
    // into classid and objid), then the server ends the relay's session: the lock passes
    // to the contender as it is released.
    macro_rules! advisory {
        ($select:literal, $granted:literal) => {
            concat!(
                "SELECT ",
                $select,
                " FROM pg_locks WHERE locktype = 'advisory' AND granted = ",
                $granted,
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        };
    }
    let (key, holder): (i64, i32) = sqlx::query_as(advisory!("(classid::bigint << 32) | objid::bigint, pid", "true"))
        .fetch_one(db.pool())
        .await
        .unwrap();
    let mut contender = sqlx::AnyConnection::connect(&url).await.unwrap();
    let contending = tokio::spawn(async move {
        sqlx::query("SELECT pg_advisory_lock($1)").bind(key).execute(&mut contender).await.unwrap();
        contender
    });
    testkit::wait_until(T, "the contender to wait for the lock", || async {
        (count(&db, advisory!("COUNT(*)", "false")).await == 1).then_some(())
    })
    .await;
    let ended: (bool,) =
        sqlx::query_as("SELECT pg_terminate_backend($1)").bind(holder).fetch_one(db.pool()).await.unwrap();
    assert!(ended.0);
    let contender = tokio::time::timeout(T, contending).await.expect("the contender gets the lock").unwrap();

    let second = write_note(&db, "n1", true).await;
    testkit::wait_until(T, "the relay to stand by", || async { (leads.get() == 0).then_some(()) }).await;
    assert_eq!(transport.ids(), std::slice::from_ref(&first), "a relay that lost its lock publishes nothing");

    contender.close().await.unwrap();
    testkit::wait_until(T, "the relay to lead again and publish", || async {
        transport.ids().contains(&second).then_some(())
    })
    .await;
    assert_eq!(transport.ids(), [first, second], "each event once");
    stop.cancel();
    relay.await.unwrap();
}
