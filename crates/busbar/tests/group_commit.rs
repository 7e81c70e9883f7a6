//! `Db::write`, on SQLite and PostgreSQL: writes that arrive together share one
//! transaction, and each caller gets its own answer; a write that fails in a group fails
//! alone while the others commit.
//!
//! The tests run on tokio's current-thread runtime, so every write of a `join_all` is
//! queued before the writer task first runs: they form one group, deterministically.

mod common;

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use busbar::{Db, db::DbError};
use common::{NoteWritten, count, database, notes_db};

/// Writes note `id`, emitting `NoteWritten`; counts its runs in `runs`. Answers the id.
async fn write_note(db: &Db, id: &str, runs: Arc<AtomicUsize>) -> Result<String, DbError> {
    let id = id.to_owned();
    db.write(move |tx| {
        let (id, runs) = (id.clone(), runs.clone());
        Box::pin(async move {
            runs.fetch_add(1, Ordering::SeqCst);
            sqlx::query("INSERT INTO notes (id, text) VALUES ($1, 'hi')").bind(&id).execute(&mut **tx).await?;
            tx.emit(&NoteWritten { id: id.clone(), text: "hi".into() }, 1).await?;
            Ok(id)
        })
    })
    .await
}

async fn a_failing_write_fails_alone(backend: &str) {
    let (url, _keep) = database(backend).await;
    let db = notes_db(&url).await;
    write_note(&db, "taken", Arc::default()).await.unwrap();

    let runs: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::default()).collect();
    let (first, taken, last) = futures::join!(
        write_note(&db, "first", runs[0].clone()),
        write_note(&db, "taken", runs[1].clone()),
        write_note(&db, "last", runs[2].clone()),
    );
    assert_eq!(first.unwrap(), "first", "{backend}");
    assert!(taken.unwrap_err().is_unique_violation(), "the failing write gets its own error ({backend})");
    assert_eq!(last.unwrap(), "last", "{backend}");
    let runs: Vec<usize> = runs.iter().map(|r| r.load(Ordering::SeqCst)).collect();
    // One group: first, then taken failed (last never ran in it); then each alone.
    assert_eq!(runs, [2, 2, 1], "{backend}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM notes").await, 3, "{backend}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM busbar_outbox").await, 3, "one event per committed write ({backend})");
}

#[tokio::test]
async fn a_failing_write_fails_alone_on_sqlite() {
    a_failing_write_fails_alone("sqlite").await;
}

#[tokio::test]
async fn a_failing_write_fails_alone_on_postgres() {
    a_failing_write_fails_alone("postgres").await;
}

async fn writes_that_arrive_together_commit_together_each_with_its_answer(backend: &str) {
    let (url, _keep) = database(backend).await;
    let db = notes_db(&url).await;
    let runs: Arc<AtomicUsize> = Arc::default();
    let ids: Vec<String> = (0..150).map(|i| format!("n{i:03}")).collect();
    let answers = futures::future::join_all(ids.iter().map(|id| write_note(&db, id, runs.clone()))).await;
    let answers: Vec<String> = answers.into_iter().map(Result::unwrap).collect();
    assert_eq!(answers, ids, "each caller gets its own result");
    assert_eq!(runs.load(Ordering::SeqCst), 150, "nothing failed, so nothing ran twice");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM notes").await, 150);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM busbar_outbox").await, 150);
}

async fn a_write_that_panics_fails_and_later_writes_still_commit(backend: &str) {
    let (url, _keep) = database(backend).await;
    let db = notes_db(&url).await;
    let panicking = db.write(|_tx| Box::pin(async { panic!("a bug in a handler") }));
    let (panicked, fine) = futures::join!(panicking, write_note(&db, "fine", Arc::default()));
    let error: Result<(), DbError> = panicked;
    assert!(error.unwrap_err().to_string().contains("the write panicked"));
    assert_eq!(fine.unwrap(), "fine", "the write grouped with it committed");
    assert_eq!(write_note(&db, "later", Arc::default()).await.unwrap(), "later", "the writer still runs");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM notes").await, 2);
}

/// The writer task runs a write in its caller's trace, so the event it emits carries the
/// caller's span as parent (the trace runs on through every service the event reaches).
async fn a_grouped_write_emits_in_its_callers_trace(backend: &str) {
    let (url, _keep) = database(backend).await;
    let db = notes_db(&url).await;
    let (a, b) = (busbar::trace::TraceContext::root(), busbar::trace::TraceContext::root());
    let (ra, rb) = futures::join!(
        busbar::trace::within(a, write_note(&db, "a", Arc::default())),
        busbar::trace::within(b, write_note(&db, "b", Arc::default())),
    );
    assert_eq!((ra.unwrap(), rb.unwrap()), ("a".to_owned(), "b".to_owned()));
    for (id, ctx) in [("a", a), ("b", b)] {
        assert_eq!(emitted_in(&db, id).await.trace_id_hex(), ctx.trace_id_hex(), "note {id}");
    }
}

/// The trace the event emitted for note `id` names as its parent.
async fn emitted_in(db: &Db, id: &str) -> busbar::trace::TraceContext {
    use sqlx::Row;
    let payload: String = sqlx::query("SELECT payload FROM busbar_outbox WHERE payload LIKE $1")
        .bind(format!("%\"id\":\"{id}\"%"))
        .fetch_one(db.pool())
        .await
        .unwrap()
        .get(0);
    let event = busbar::envelope::decode_one(&payload).unwrap();
    busbar::envelope::trace(&event).expect("the event carries a traceparent")
}

/// [`busbar::group_commit::Batched`]'s function for notes: one statement for the lot,
/// recording the size of each call that commits in `calls`, and a `NoteWritten` per note,
/// each in its caller's trace. Answers each note's position in its call.
fn write_notes<'t>(
    tx: &'t mut busbar::Tx,
    notes: &'t [busbar::group_commit::Item<String>],
) -> futures::future::BoxFuture<'t, Result<Vec<usize>, DbError>> {
    Box::pin(async move {
        let ids: Vec<&str> = notes.iter().map(|n| n.as_str()).collect();
        let list = match tx.backend() {
            busbar::Backend::Sqlite => "SELECT value, 'hi' FROM json_each($1)",
            busbar::Backend::Postgres => "SELECT json_array_elements_text(CAST($1 AS json)), 'hi'",
        };
        let sql = format!("INSERT INTO notes (id, text) {list}");
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(serde_json::to_string(&ids).unwrap()).execute(&mut **tx).await?;
        sqlx::query("INSERT INTO calls (size) VALUES ($1)").bind(notes.len() as i64).execute(&mut **tx).await?;
        for note in notes {
            note.traced(tx.emit(&NoteWritten { id: note.to_string(), text: "hi".into() }, 1)).await?;
        }
        Ok((0..notes.len()).collect())
    })
}

async fn batched_notes(url: &str) -> (Db, busbar::group_commit::Batched<String, usize>) {
    let db = notes_db(url).await;
    sqlx::query("CREATE TABLE calls (size BIGINT NOT NULL)").execute(db.pool()).await.unwrap();
    let batched = busbar::group_commit::Batched::start(db.clone(), write_notes);
    (db, batched)
}

async fn call_sizes(db: &Db) -> Vec<i64> {
    sqlx::query_scalar("SELECT size FROM calls").fetch_all(db.pool()).await.unwrap()
}

/// Writes of one kind that arrive together run as one call of their function, each caller
/// answered with its own output once the call's transaction has committed, each event
/// emitted in its own caller's trace.
async fn batched_writes_run_as_one_call_each_with_its_answer(backend: &str) {
    let (url, _keep) = database(backend).await;
    let (db, batched) = batched_notes(&url).await;
    let traces: Vec<_> = (0..5).map(|_| busbar::trace::TraceContext::root()).collect();
    let answers = futures::future::join_all(
        traces.iter().enumerate().map(|(i, t)| busbar::trace::within(*t, batched.write(format!("n{i}")))),
    )
    .await;
    let answers: Vec<usize> = answers.into_iter().map(Result::unwrap).collect();
    assert_eq!(answers, [0, 1, 2, 3, 4], "{backend}");
    assert_eq!(call_sizes(&db).await, [5], "{backend}: one call for the five");
    for (i, t) in traces.iter().enumerate() {
        assert_eq!(emitted_in(&db, &format!("n{i}")).await.trace_id_hex(), t.trace_id_hex(), "{backend}: note n{i}");
    }
    // Alone, a write is a call of one.
    assert_eq!(batched.write("n5".into()).await.unwrap(), 0);
    assert_eq!(call_sizes(&db).await, [5, 1], "{backend}");
}

/// When the call fails, each of its writes runs again by itself: the one at fault gets
/// its error, the others commit.
async fn a_batched_write_that_fails_fails_alone(backend: &str) {
    let (url, _keep) = database(backend).await;
    let (db, batched) = batched_notes(&url).await;
    batched.write("taken".into()).await.unwrap();
    let (first, taken, last) =
        futures::join!(batched.write("first".into()), batched.write("taken".into()), batched.write("last".into()));
    assert_eq!(first.unwrap(), 0, "{backend}");
    assert!(taken.unwrap_err().is_unique_violation(), "{backend}: the failing write gets its own error");
    assert_eq!(last.unwrap(), 0, "{backend}");
    let mut sizes = call_sizes(&db).await;
    sizes.sort();
    assert_eq!(sizes, [1, 1, 1], "{backend}: taken alone, then first and last alone");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM notes").await, 3, "{backend}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM busbar_outbox").await, 3, "{backend}: one event per committed write");
}

common::on_both_backends!(
    writes_that_arrive_together_commit_together_each_with_its_answer,
    a_write_that_panics_fails_and_later_writes_still_commit,
    a_grouped_write_emits_in_its_callers_trace,
    batched_writes_run_as_one_call_each_with_its_answer,
    a_batched_write_that_fails_fails_alone,
);
