//! moderation's decisions, recorded a run at a time, on SQLite and PostgreSQL.

use blog_events::{
    CommentCreated,
    CommentStatus::{Approved, Pending, Rejected},
};
use busbar::{Db, DbOptions, Handler, envelope};
use moderation::{WordList, events, store};
use serde_json::{Value, json};
use testkit::database;

async fn migrated(url: &str) -> Db {
    let db = Db::connect("moderation", url, DbOptions::default()).await.unwrap();
    let m = sqlx::migrate!("./migrations");
    db.migrate(&m, &m).await.unwrap();
    db
}

async fn decisions(db: &Db) -> Vec<(String, String)> {
    sqlx::query_as("SELECT comment_id, status FROM decisions ORDER BY comment_id").fetch_all(db.pool()).await.unwrap()
}

async fn a_run_is_decided_as_one_at_a_time_would_be(backend: &str) {
    let (url, _keep) = database(backend).await;
    let db = migrated(&url).await;
    let mut tx = db.begin().await.unwrap();
    assert_eq!(store::decide(&mut tx, &[("c0", Rejected)]).await.unwrap(), ["c0".to_owned()].into());
    tx.commit().await.unwrap();

    // c0 was decided before; c1 comes twice (its first decision counts); an id JSON must
    // escape.
    let odd = "c\"2\\ ✓";
    let run = [("c1", Approved), ("c0", Approved), (odd, Rejected), ("c1", Rejected), ("c3", Approved)];
    let mut tx = db.begin().await.unwrap();
    let decided = store::decide(&mut tx, &run).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(decided, ["c1", odd, "c3"].map(str::to_owned).into(), "{backend}: the comments decided now");
    let held = [("c0", "rejected"), ("c1", "approved"), (odd, "rejected"), ("c3", "approved")];
    let mut held = held.map(|(id, s)| (id.to_owned(), s.to_owned())).to_vec();
    held.sort();
    assert_eq!(decisions(&db).await, held, "{backend}: a first decision stays");

    // The same run again decides nothing.
    let mut tx = db.begin().await.unwrap();
    assert!(store::decide(&mut tx, &run).await.unwrap().is_empty(), "{backend}");
    tx.commit().await.unwrap();
    assert_eq!(decisions(&db).await, held, "{backend}");
}

#[tokio::test]
async fn a_run_is_decided_as_one_at_a_time_would_be_on_sqlite() {
    a_run_is_decided_as_one_at_a_time_would_be("sqlite").await;
}

#[tokio::test]
async fn a_run_is_decided_as_one_at_a_time_would_be_on_postgres() {
    a_run_is_decided_as_one_at_a_time_would_be("postgres").await;
}

/// The handler gets a run of new comments: one `CommentModerated` per comment decided now,
/// in the run's order, with the first decision of a comment that comes twice.
async fn a_run_emits_a_decision_per_new_comment(backend: &str) {
    let (url, _keep) = database(backend).await;
    let db = migrated(&url).await;
    let created = |id: &str, content: &str| {
        let c = CommentCreated { id: id.into(), post_id: "p1".into(), content: content.into(), status: Pending };
        envelope::build("comments", &c, 1)
    };
    let h = events::handlers(WordList::parse("orange"));
    let mut tx = db.begin().await.unwrap();
    h.handle(&mut tx, &created("c0", "earlier")).await.unwrap();
    tx.commit().await.unwrap();
    let run =
        [created("c2", "an Orange"), created("c0", "earlier"), created("c1", "fine"), created("c2", "fine this time")];
    let mut tx = db.begin().await.unwrap();
    h.handle_run(&mut tx, &run.iter().collect::<Vec<_>>()).await.unwrap();
    tx.commit().await.unwrap();
    let payloads: Vec<(String,)> =
        sqlx::query_as("SELECT payload FROM busbar_outbox ORDER BY seq").fetch_all(db.pool()).await.unwrap();
    let emitted: Vec<Value> = payloads
        .iter()
        .map(|(p,)| {
            let ev: Value = serde_json::from_str(p).unwrap();
            assert_eq!(ev["type"], "CommentModerated");
            json!([ev["data"]["id"], ev["data"]["status"], ev["data"]["content"]])
        })
        .collect();
    let want = [
        json!(["c0", "approved", "earlier"]),
        json!(["c2", "rejected", "an Orange"]),
        json!(["c1", "approved", "fine"]),
    ];
    assert_eq!(emitted, want, "{backend}");
}

#[tokio::test]
async fn a_run_emits_a_decision_per_new_comment_on_sqlite() {
    a_run_emits_a_decision_per_new_comment("sqlite").await;
}

#[tokio::test]
async fn a_run_emits_a_decision_per_new_comment_on_postgres() {
    a_run_emits_a_decision_per_new_comment("postgres").await;
}
