//! The idempotent inbox and per-aggregate ordering, on SQLite and PostgreSQL, directly and
//! through the `POST /events` receiver on a real loopback server.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use busbar::{
    AttributesReader, CloudEvent, Consumer, Handler, HandlerError, Handlers, Outcome, Received, Tx, envelope,
    trace::TraceContext,
};
use common::{NoteWritten, count, database, event_metric, notes_db};
use sqlx::Row;

/// Records each applied event in `applied`, in application order. Fails on text "boom".
struct Recorder;

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, tx: &mut Tx, ev: &CloudEvent) -> Result<(), HandlerError> {
        let note: NoteWritten = envelope::data(ev)?;
        if note.text == "boom" {
            return Err("the handler refuses boom".into());
        }
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM applied").fetch_one(&mut **tx).await?.get(0);
        sqlx::query("INSERT INTO applied (pos, event_id, version) VALUES ($1, $2, $3)")
            .bind(n)
            .bind(ev.id().to_owned())
            .bind(envelope::aggregate_version(ev).unwrap_or(0))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// `H`, declared [`Handler::transactional`]: a batch's events get no savepoints, and a
/// failure re-runs the events before it in a new transaction.
struct Transactional<H>(H);

#[async_trait]
impl<H: Handler> Handler for Transactional<H> {
    async fn handle(&self, tx: &mut Tx, ev: &CloudEvent) -> Result<(), HandlerError> {
        self.0.handle(tx, ev).await
    }

    fn transactional(&self) -> bool {
        true
    }
}

/// The handler as given, or declared transactional.
fn declared(h: impl Handler, transactional: bool) -> Arc<dyn Handler> {
    if transactional { Arc::new(Transactional(h)) } else { Arc::new(h) }
}

async fn consumer(url: &str) -> Consumer {
    consumer_of(url, Arc::new(Recorder)).await
}

async fn consumer_of(url: &str, handler: Arc<dyn Handler>) -> Consumer {
    let db = notes_db(url).await;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS applied (pos BIGINT PRIMARY KEY, event_id TEXT NOT NULL, version BIGINT NOT NULL)",
    )
    .execute(db.pool())
    .await
    .unwrap();
    Consumer::new(db, handler)
}

fn note(agg: &str, version: i64, text: &str) -> CloudEvent {
    envelope::build("writer", &NoteWritten { id: agg.into(), text: text.into() }, version)
}

async fn applied_versions(c: &Consumer) -> Vec<i64> {
    sqlx::query("SELECT version FROM applied ORDER BY pos")
        .fetch_all(c.db().pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn duplicates_apply_once_and_gaps_wait(backend: &str) {
    let (url, _keep) = database(backend).await;
    let c = consumer(&url).await;
    let received = |outcome: &str| {
        event_metric(&format!(r#"busbar_events_received_total{{event_type="NoteWritten",outcome="{outcome}"}}"#))
    };
    let outcomes = ["applied", "duplicate", "parked", "stale"];
    let before = outcomes.map(received);

    let v1 = note("a", 1, "x");
    assert_eq!(c.receive(&v1).await.unwrap(), Outcome::Applied { drained: 0 });
    assert_eq!(c.receive(&v1).await.unwrap(), Outcome::Duplicate);
    assert_eq!(applied_versions(&c).await, vec![1], "the duplicate had no effect");

    // Versions 3 then 2 arrive: 3 waits for 2, then both apply, in order.
    let v2 = note("a", 2, "x");
    let v3 = note("a", 3, "x");
    assert_eq!(c.receive(&v3).await.unwrap(), Outcome::Deferred { waiting_for: 2 });
    assert_eq!(c.receive(&v3).await.unwrap(), Outcome::Duplicate, "a parked event is already in the inbox");
    assert_eq!(applied_versions(&c).await, vec![1], "3 is not applied before 2");
    assert_eq!(busbar::consumer::deferred_count(c.db()).await.unwrap(), 1);
    assert_eq!(c.receive(&v2).await.unwrap(), Outcome::Applied { drained: 1 });
    assert_eq!(applied_versions(&c).await, vec![1, 2, 3]);
    assert_eq!(busbar::consumer::deferred_count(c.db()).await.unwrap(), 0);

    // A different event id carrying an already-applied version is stale: ignored.
    assert_eq!(c.receive(&note("a", 2, "x")).await.unwrap(), Outcome::Stale);
    // Aggregates are independent.
    assert_eq!(c.receive(&note("b", 1, "x")).await.unwrap(), Outcome::Applied { drained: 0 });
    assert_eq!(applied_versions(&c).await, vec![1, 2, 3, 1]);

    // `/metrics` tells the same story, per type and outcome. (The counters are the
    // process's: other tests running meanwhile add to them, so at least this run's.)
    let after = outcomes.map(received);
    for (i, (outcome, want)) in outcomes.iter().zip([4.0, 2.0, 1.0, 1.0]).enumerate() {
        assert!(after[i] - before[i] >= want, "{outcome}: {} then {}, wanted {want} more", before[i], after[i]);
    }
}

#[tokio::test]
async fn inbox_and_ordering_on_sqlite() {
    duplicates_apply_once_and_gaps_wait("sqlite").await;
}

#[tokio::test]
async fn inbox_and_ordering_on_postgres() {
    duplicates_apply_once_and_gaps_wait("postgres").await;
}

async fn a_failing_handler_leaves_no_trace(backend: &str) {
    let (url, _keep) = database(backend).await;
    let c = consumer(&url).await;
    let bad = note("a", 1, "boom");
    let err = c.receive(&bad).await.unwrap_err().to_string();
    assert!(err.contains("the handler refuses boom") && err.contains(bad.id()), "{err}");
    // Not recorded in the inbox: a redelivery is handled again, not dropped as a duplicate.
    assert_eq!(count(c.db(), "SELECT COUNT(*) FROM busbar_inbox").await, 0);
    assert!(c.receive(&bad).await.is_err());
    assert_eq!(applied_versions(&c).await, Vec::<i64>::new());
}

#[tokio::test]
async fn failing_handler_rolls_back_on_sqlite() {
    a_failing_handler_leaves_no_trace("sqlite").await;
}

#[tokio::test]
async fn failing_handler_rolls_back_on_postgres() {
    a_failing_handler_leaves_no_trace("postgres").await;
}

/// A batch shares one transaction; when an event in it fails, the events before it are
/// committed once, and the failing one and everything after it leave no trace: with a
/// savepoint per event, and with none (a transactional handler, the batch re-run).
async fn a_batch_commits_up_to_the_failing_event(backend: &str, transactional: bool) {
    let (url, _keep) = database(backend).await;
    let c = consumer_of(&url, declared(Recorder, transactional)).await;
    // Out of order within the batch: 2 parks, 1 applies and drains it.
    let batch = [note("a", 2, "x"), note("a", 1, "x"), note("b", 1, "x"), note("b", 2, "boom"), note("b", 3, "x")];
    let (done, err) = c.receive_all(&batch).await.unwrap_err();
    assert_eq!(
        done,
        [Outcome::Deferred { waiting_for: 1 }, Outcome::Applied { drained: 1 }, Outcome::Applied { drained: 0 }]
    );
    assert!(err.to_string().contains("refuses boom"), "{err}");
    assert_eq!(applied_versions(&c).await, vec![1, 2, 1], "a1, a2, b1: each once");
    assert_eq!(
        count(c.db(), "SELECT COUNT(*) FROM busbar_inbox").await,
        3,
        "the failing event and the one after it are not in the inbox"
    );
    // Redelivered from the failure on, with the problem fixed: the rest applies.
    let rest = [note("b", 2, "fixed"), batch[4].clone(), batch[0].clone()];
    let outcomes = c.receive_all(&rest).await.unwrap();
    assert_eq!(outcomes, [Outcome::Applied { drained: 0 }, Outcome::Applied { drained: 0 }, Outcome::Duplicate]);
    assert_eq!(applied_versions(&c).await, vec![1, 2, 1, 2, 3]);
}

#[tokio::test]
async fn batches_on_sqlite() {
    a_batch_commits_up_to_the_failing_event("sqlite", false).await;
}

#[tokio::test]
async fn batches_on_postgres() {
    a_batch_commits_up_to_the_failing_event("postgres", false).await;
}

#[tokio::test]
async fn batches_without_savepoints_on_sqlite() {
    a_batch_commits_up_to_the_failing_event("sqlite", true).await;
}

#[tokio::test]
async fn batches_without_savepoints_on_postgres() {
    a_batch_commits_up_to_the_failing_event("postgres", true).await;
}

/// Counts its runs outside the transaction (what a transactional handler must not do);
/// fails on "boom".
struct Counting(Arc<std::sync::atomic::AtomicUsize>);

#[async_trait]
impl Handler for Counting {
    async fn handle(&self, _: &mut Tx, ev: &CloudEvent) -> Result<(), HandlerError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let note: NoteWritten = envelope::data(ev)?;
        if note.text == "boom" {
            return Err("the handler refuses boom".into());
        }
        Ok(())
    }
}

/// A handler runs once per event of a call, unless it is declared transactional: then the
/// batch goes to it in runs first (a, b, c: 3 runs of the handler), is handled again one
/// event at a time to find the one at fault (a, b, c: 3), and the events before that one
/// once more, after the rollback (a, b: 2).
async fn handler_runs_per_call(backend: &str) {
    let (url, _keep) = database(backend).await;
    let batch = [note("a", 1, "x"), note("b", 1, "x"), note("c", 1, "boom"), note("d", 1, "x")];
    for (transactional, runs) in [(false, 3), (true, 8)] {
        let counted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = Consumer::new(notes_db(&url).await, declared(Counting(counted.clone()), transactional));
        let (done, err) = c.receive_all(&batch).await.unwrap_err();
        assert_eq!(done, [Outcome::Applied { drained: 0 }; 2], "transactional: {transactional}");
        assert!(err.to_string().contains("refuses boom"), "{err}");
        assert_eq!(counted.load(std::sync::atomic::Ordering::Relaxed), runs, "transactional: {transactional}");
        assert_eq!(count(c.db(), "SELECT COUNT(*) FROM busbar_inbox").await, 2, "a and b, once");
        sqlx::query("DELETE FROM busbar_inbox").execute(c.db().pool()).await.unwrap();
        sqlx::query("DELETE FROM busbar_aggregate_versions").execute(c.db().pool()).await.unwrap();
    }
}

#[tokio::test]
async fn handler_runs_per_call_on_sqlite() {
    handler_runs_per_call("sqlite").await;
}

#[tokio::test]
async fn handler_runs_per_call_on_postgres() {
    handler_runs_per_call("postgres").await;
}

/// [`Recorder`], declared transactional, taking runs: each call's event ids go into `calls`
/// (a call of one event through `handle`, of several through `handle_run`).
struct RunRecorder(Arc<std::sync::Mutex<Vec<Vec<String>>>>);

#[async_trait]
impl Handler for RunRecorder {
    async fn handle(&self, tx: &mut Tx, ev: &CloudEvent) -> Result<(), HandlerError> {
        self.0.lock().unwrap().push(vec![ev.id().to_owned()]);
        Recorder.handle(tx, ev).await
    }

    async fn handle_run(&self, tx: &mut Tx, events: &[&CloudEvent]) -> Result<(), HandlerError> {
        self.0.lock().unwrap().push(events.iter().map(|e| e.id().to_owned()).collect());
        for ev in events {
            Recorder.handle(tx, ev).await?;
        }
        Ok(())
    }

    fn transactional(&self) -> bool {
        true
    }
}

/// A transactional handler gets the events of a batch it may apply in runs: consecutive,
/// in order, a run ending where a parked event's predecessor arrives (the parked event is
/// applied after it, seeing its writes). When a run fails, the batch is handled again one
/// event at a time: the error names the event at fault and the events before it commit.
async fn a_transactional_handler_gets_runs(backend: &str) {
    let (url, _keep) = database(backend).await;
    let calls = Arc::new(std::sync::Mutex::new(vec![]));
    let c = consumer_of(&url, Arc::new(RunRecorder(calls.clone()))).await;
    let batch = [note("a", 2, "x"), note("b", 1, "x"), note("c", 1, "x"), note("a", 1, "x"), note("d", 1, "x")];
    let ids = |i: &[usize]| i.iter().map(|&i| batch[i].id().to_owned()).collect::<Vec<_>>();
    let outcomes = c.receive_all(&batch).await.unwrap();
    assert_eq!(outcomes[0], Outcome::Deferred { waiting_for: 1 });
    assert_eq!(outcomes[3], Outcome::Applied { drained: 1 });
    assert_eq!(*calls.lock().unwrap(), [ids(&[1, 2, 3]), ids(&[0]), ids(&[4])], "{backend}");
    let applied: Vec<String> = sqlx::query("SELECT event_id FROM applied ORDER BY pos")
        .fetch_all(c.db().pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(applied, ids(&[1, 2, 3, 0, 4]));

    calls.lock().unwrap().clear();
    let failing = [note("e", 1, "x"), note("f", 1, "boom"), note("g", 1, "x")];
    let (done, err) = c.receive_all(&failing).await.unwrap_err();
    assert_eq!(done, [Outcome::Applied { drained: 0 }]);
    match &err {
        busbar::consumer::ConsumeError::Handler { event_id, .. } => assert_eq!(event_id, failing[1].id(), "{backend}"),
        other => panic!("{backend}: not a handler error: {other}"),
    }
    let tried: Vec<usize> = calls.lock().unwrap().iter().map(Vec::len).collect();
    assert_eq!(tried, [3, 1, 1, 1], "{backend}: the run, then e and f alone, then e again");
    assert_eq!(count(c.db(), "SELECT COUNT(*) FROM applied").await, 6, "{backend}: e is committed");
    assert_eq!(count(c.db(), "SELECT COUNT(*) FROM busbar_inbox").await, 6, "{backend}: f and g are not");
}

#[tokio::test]
async fn a_transactional_handler_gets_runs_on_sqlite() {
    a_transactional_handler_gets_runs("sqlite").await;
}

#[tokio::test]
async fn a_transactional_handler_gets_runs_on_postgres() {
    a_transactional_handler_gets_runs("postgres").await;
}

/// What [`echo_each`] emits for each note: its id.
#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct Echoed {
    id: String,
}

impl busbar::Event for Echoed {
    const TYPE: &'static str = "Echoed";
    fn aggregate_id(&self) -> String {
        self.id.clone()
    }
}

/// Emits an `Echoed` for each note of a run, in that note's trace; records the run's size.
async fn echo_each(
    runs: &Arc<std::sync::Mutex<Vec<usize>>>,
    tx: &mut Tx,
    notes: Vec<Received<NoteWritten>>,
) -> Result<(), busbar::db::DbError> {
    runs.lock().unwrap().push(notes.len());
    for n in &notes {
        n.traced(tx.emit(&Echoed { id: n.id.clone() }, 1)).await?;
    }
    Ok(())
}

/// A function taking a run is called as the run's first event's span; what it emits for
/// another event of the run, in that event's `traced`, continues that event's trace, as if
/// the event were handled alone.
async fn what_a_run_emits_for_an_event_continues_its_trace(backend: &str) {
    let (url, _keep) = database(backend).await;
    let runs = Arc::new(std::sync::Mutex::new(vec![]));
    let handlers =
        Handlers::new(runs.clone()).on_new_many::<NoteWritten>(echo_each).publishes::<Echoed>().transactional();
    let c = consumer_of(&url, Arc::new(handlers)).await;
    let batch = ["a", "b", "c"].map(|id| {
        let mut ev = note(id, 1, "x");
        envelope::set_trace(&mut ev, &TraceContext::root());
        ev
    });
    c.receive_all(&batch).await.unwrap();
    assert_eq!(*runs.lock().unwrap(), [3], "{backend}: one run of three");
    let emitted: Vec<String> = sqlx::query("SELECT payload FROM busbar_outbox ORDER BY seq")
        .fetch_all(c.db().pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(emitted.len(), 3, "{backend}");
    for (out, ev) in emitted.iter().zip(&batch) {
        let out = envelope::decode_one(out).unwrap();
        let (got, want) = (envelope::trace(&out).unwrap(), envelope::trace(ev).unwrap());
        assert_eq!(
            got.trace_id,
            want.trace_id,
            "{backend}: {} is in the trace of the note it was emitted for",
            out.id()
        );
    }
}

#[tokio::test]
async fn what_a_run_emits_for_an_event_continues_its_trace_on_sqlite() {
    what_a_run_emits_for_an_event_continues_its_trace("sqlite").await;
}

#[tokio::test]
async fn what_a_run_emits_for_an_event_continues_its_trace_on_postgres() {
    what_a_run_emits_for_an_event_continues_its_trace("postgres").await;
}

/// `finish` (a backfill's record of its position) writes only when every event of the
/// batch is handled: when one fails, the events before it commit without it, with or
/// without savepoints, so a restart resumes from the failing event, not past it.
async fn finish_writes_only_when_every_event_is_handled(backend: &str) {
    let (url, _keep) = database(backend).await;
    for transactional in [false, true] {
        let c = consumer_of(&url, declared(Recorder, transactional)).await;
        let batch = [note("a", 1, "x"), note("b", 1, "boom"), note("c", 1, "x")];
        let (done, err) = c
            .receive_all_then(&batch, |tx| {
                Box::pin(async move {
                    sqlx::query("INSERT INTO applied (pos, event_id, version) VALUES (1000, 'finish', 0)")
                        .execute(&mut **tx)
                        .await?;
                    Ok(())
                })
            })
            .await
            .unwrap_err();
        assert_eq!(done, [Outcome::Applied { drained: 0 }], "{backend}, transactional: {transactional}");
        assert!(err.to_string().contains("refuses boom"), "{err}");
        assert_eq!(
            count(c.db(), "SELECT COUNT(*) FROM applied WHERE event_id = 'finish'").await,
            0,
            "{backend}, transactional: {transactional}: finish must not write"
        );
        for table in ["applied", "busbar_inbox", "busbar_aggregate_versions"] {
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}"))).execute(c.db().pool()).await.unwrap();
        }
    }
}

#[tokio::test]
async fn finish_writes_only_when_every_event_is_handled_on_sqlite() {
    finish_writes_only_when_every_event_is_handled("sqlite").await;
}

#[tokio::test]
async fn finish_writes_only_when_every_event_is_handled_on_postgres() {
    finish_writes_only_when_every_event_is_handled("postgres").await;
}

/// One batch may carry the same event twice (a redelivery that overtook the original): the
/// first copy is handled, the second is a duplicate, whatever lies between them.
async fn the_same_event_twice_in_one_batch_applies_once(backend: &str) {
    let (url, _keep) = database(backend).await;
    let c = consumer(&url).await;
    let (v1, v2, v3) = (note("a", 1, "x"), note("a", 2, "x"), note("a", 3, "x"));
    let batch = [v3.clone(), v1.clone(), v3.clone(), v2.clone(), v1.clone(), note("b", 1, "x")];
    let outcomes = c.receive_all(&batch).await.unwrap();
    assert_eq!(
        outcomes,
        [
            Outcome::Deferred { waiting_for: 2 },
            Outcome::Applied { drained: 0 },
            Outcome::Duplicate,
            Outcome::Applied { drained: 1 },
            Outcome::Duplicate,
            Outcome::Applied { drained: 0 },
        ]
    );
    assert_eq!(applied_versions(&c).await, vec![1, 2, 3, 1]);
    assert_eq!(count(c.db(), "SELECT COUNT(*) FROM busbar_inbox").await, 4);
    assert_eq!(busbar::consumer::deferred_count(c.db()).await.unwrap(), 0);
}

#[tokio::test]
async fn one_batch_twice_the_same_event_on_sqlite() {
    the_same_event_twice_in_one_batch_applies_once("sqlite").await;
}

#[tokio::test]
async fn one_batch_twice_the_same_event_on_postgres() {
    the_same_event_twice_in_one_batch_applies_once("postgres").await;
}

/// Records each applied event with a sequence the database assigns, so that concurrent
/// replicas can record side by side (PostgreSQL only).
struct Sequenced;

#[async_trait]
impl Handler for Sequenced {
    async fn handle(&self, tx: &mut Tx, ev: &CloudEvent) -> Result<(), HandlerError> {
        sqlx::query("INSERT INTO seen (aggregate, version) VALUES ($1, $2)")
            .bind(ev.subject().unwrap_or_default().to_owned())
            .bind(envelope::aggregate_version(ev).unwrap_or(0))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// Two replicas of a subscriber on one PostgreSQL database take the same events at once, in
/// batches, one in the order sent and the other in reverse. Neither may fail (their inbox
/// records and aggregate locks, taken in opposite orders, would deadlock, which PostgreSQL
/// resolves by failing one), and between them each event is applied once, in order.
#[tokio::test]
async fn replicas_taking_the_same_batches_in_opposite_orders_apply_each_event_once_in_order() {
    let (url, _keep) = database("postgres").await;
    let db = notes_db(&url).await;
    sqlx::query(
        "CREATE TABLE seen (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, aggregate TEXT NOT NULL, \
         version BIGINT NOT NULL)",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let replicas = [Consumer::new(db, Arc::new(Sequenced)), Consumer::new(notes_db(&url).await, Arc::new(Sequenced))];
    let (aggregates, versions) = (30, 4);
    let events: Vec<CloudEvent> =
        (1..=versions).flat_map(|v| (0..aggregates).map(move |a| note(&format!("agg{a}"), v, "x"))).collect();
    let reversed: Vec<CloudEvent> = events.iter().rev().cloned().collect();
    let run = |c: &Consumer, evs: Vec<CloudEvent>| {
        let c = c.clone();
        tokio::spawn(async move {
            for batch in evs.chunks(20) {
                if let Err((_, e)) = c.receive_all(batch).await {
                    return Err(e.to_string());
                }
            }
            Ok(())
        })
    };
    let (a, b) = (run(&replicas[0], events.clone()), run(&replicas[1], reversed));
    let within = std::time::Duration::from_secs(60);
    let (a, b) = tokio::time::timeout(within, async { (a.await.unwrap(), b.await.unwrap()) }).await.unwrap();
    assert_eq!((a, b), (Ok(()), Ok(())));
    let rows = sqlx::query("SELECT aggregate, version FROM seen ORDER BY seq")
        .fetch_all(replicas[0].db().pool())
        .await
        .unwrap();
    assert_eq!(rows.len(), events.len(), "each event applied once between the two replicas");
    let mut per_aggregate = std::collections::BTreeMap::<String, Vec<i64>>::new();
    for r in rows {
        per_aggregate.entry(r.get(0)).or_default().push(r.get(1));
    }
    assert!(per_aggregate.values().all(|v| *v == [1, 2, 3, 4]), "{per_aggregate:?}");
    assert_eq!(busbar::consumer::deferred_count(replicas[0].db()).await.unwrap(), 0);
}

#[tokio::test]
async fn receiver_answers_2xx_after_commit_and_reports_partial_progress() {
    let (url, _keep) = database("sqlite").await;
    let c = consumer(&url).await;
    let app = busbar::receive::router(c.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest::Client::new();
    let post = |body: String| {
        let client = client.clone();
        async move {
            let r = client.post(format!("http://{addr}/events")).body(body).send().await.unwrap();
            (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
        }
    };

    let (v1, v2, v3) = (note("a", 1, "x"), note("a", 2, "x"), note("a", 3, "x"));
    let batch = serde_json::to_string(&vec![v1.clone(), v3.clone(), v2.clone(), v1.clone()]).unwrap();
    let (status, receipt) = post(batch).await;
    assert_eq!(status, 200);
    // v3 was parked and then drained by v2 in the same push: nothing is held back at its end.
    assert_eq!(
        receipt,
        serde_json::json!({"handled": 4, "applied": 3, "duplicates": 1, "deferred": 1, "stale": 0,
                           "parked": {"count": 0, "oldest_age_ms": 0}})
    );
    assert_eq!(applied_versions(&c).await, vec![1, 2, 3], "committed before the 200");

    // A single bare event is accepted as well.
    let (status, _) = post(serde_json::to_string(&note("b", 1, "x")).unwrap()).await;
    assert_eq!(status, 200);

    // A failure mid-batch says how many leading events committed.
    let batch = serde_json::to_string(&vec![note("c", 1, "x"), note("d", 1, "boom"), note("e", 1, "x")]).unwrap();
    let (status, body) = post(batch).await;
    assert_eq!(status, 500);
    assert_eq!(body["handled"], 1);
    assert!(body["error"].as_str().unwrap().contains("boom"));

    // Data that can never be a NoteWritten is the event's fault, not the service's: 422,
    // with the same progress report; the id is not recorded as handled.
    let mut poison = serde_json::to_value(note("g", 1, "x")).unwrap();
    poison["data"] = serde_json::json!({"id": 5});
    let (status, body) = post(serde_json::json!([note("f", 1, "x"), poison]).to_string()).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["handled"], 1);
    assert_eq!(body["event_id"], poison["id"]);
    assert!(body["error"].as_str().unwrap().contains("data does not match NoteWritten"), "{body}");
    let mut fixed = poison.clone();
    fixed["data"] = serde_json::json!({"id": "g", "text": "x"});
    let (status, body) = post(fixed.to_string()).await;
    assert_eq!((status, &body["applied"]), (200, &serde_json::json!(1)), "{body}");

    let (status, body) = post("{\"specversion\":\"1.0\"}".into()).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("missing required attribute `id`"), "{body}");
}

/// Emits an echo of each event before deciding, then refuses "boom": what a failing event
/// emitted must be taken back with its writes.
struct Echo;

#[async_trait]
impl Handler for Echo {
    async fn handle(&self, tx: &mut Tx, ev: &CloudEvent) -> Result<(), HandlerError> {
        let note: NoteWritten = envelope::data(ev)?;
        let version = envelope::aggregate_version(ev).unwrap_or(0);
        let echo = NoteWritten { id: format!("echo-{}", note.id), text: format!("{}{version}", note.id) };
        tx.emit(&echo, version).await?;
        if note.text == "boom" {
            return Err("the handler refuses boom".into());
        }
        Ok(())
    }
}

/// The texts of the echoes in the outbox, oldest first.
async fn echoes(db: &busbar::Db) -> Vec<String> {
    let rows = sqlx::query("SELECT payload FROM busbar_outbox ORDER BY seq").fetch_all(db.pool()).await.unwrap();
    rows.iter().map(|r| envelope::data::<NoteWritten>(&envelope::decode_one(r.get(0)).unwrap()).unwrap().text).collect()
}

/// Events are written to the outbox at commit, so a failing event's rollback (of its
/// savepoint or of the batch, in a batch; of its savepoint, draining a parked event) must
/// also drop what it emitted.
async fn a_failing_event_emits_nothing(backend: &str, transactional: bool) {
    let (url, _keep) = database(backend).await;
    let c = Consumer::new(notes_db(&url).await, declared(Echo, transactional));
    // In a batch: a2 parks, a1 applies and drains it, b1 applies, b2 fails, b3 is not reached.
    let batch = [note("a", 2, "x"), note("a", 1, "x"), note("b", 1, "x"), note("b", 2, "boom"), note("b", 3, "x")];
    let (done, _) = c.receive_all(&batch).await.unwrap_err();
    assert_eq!(done.len(), 3);
    assert_eq!(echoes(c.db()).await, ["a1", "a2", "b1"], "b2's echo went with its rollback");

    // Draining: c2 parks; when c1 arrives, c1 applies and c2 fails in its own savepoint.
    assert_eq!(c.receive(&note("c", 2, "boom")).await.unwrap(), Outcome::Deferred { waiting_for: 1 });
    assert_eq!(c.receive(&note("c", 1, "x")).await.unwrap(), Outcome::Applied { drained: 0 });
    assert_eq!(busbar::consumer::deferred_count(c.db()).await.unwrap(), 1, "c2 stays parked");
    assert_eq!(echoes(c.db()).await, ["a1", "a2", "b1", "c1"], "c2's echo went with its rollback");
}

#[tokio::test]
async fn failing_event_emits_nothing_on_sqlite() {
    a_failing_event_emits_nothing("sqlite", false).await;
    a_failing_event_emits_nothing("sqlite", true).await;
}

#[tokio::test]
async fn failing_event_emits_nothing_on_postgres() {
    a_failing_event_emits_nothing("postgres", false).await;
    a_failing_event_emits_nothing("postgres", true).await;
}
