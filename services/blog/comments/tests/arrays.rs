//! comments answers with each post's comment array, which it keeps as JSON text in
//! segments: on SQLite and PostgreSQL, what `GET` and `POST` show as comments are created
//! and moderated, across segments, that comments created at once on one post all stay,
//! and that a database from before segments still answers with every comment.

use std::path::Path;

use blog_events::{CommentCreated, CommentStatus};
use busbar::{Db, DbOptions, db::DbError};
use comments::store;
use serde_json::{Value, json};
use testkit::database;

async fn migrated(url: &str) -> Db {
    let db = Db::connect("comments", url, DbOptions::default()).await.unwrap();
    let m = sqlx::migrate!("./migrations");
    db.migrate(&m, &m).await.unwrap();
    db
}

async fn serve(db: &Db) -> String {
    testkit::serve(comments::router(db.clone())).await
}

async fn known_post(db: &Db, id: &str) {
    let mut tx = db.begin().await.unwrap();
    store::remember_posts(&mut tx, &[id]).await.unwrap();
    tx.commit().await.unwrap();
}

fn decision(comment_id: &str, status: CommentStatus) -> store::Decision<'_> {
    store::Decision { comment_id, status, trace: None }
}

async fn moderate(db: &Db, comment: &str, status: CommentStatus) {
    let mut tx = db.begin().await.unwrap();
    store::moderate(&mut tx, &[decision(comment, status)]).await.unwrap();
    tx.commit().await.unwrap();
}

async fn answer(r: reqwest::Response, want: u16) -> Value {
    assert_eq!(r.status(), want);
    assert_eq!(r.headers()["content-type"], "application/json");
    r.json().await.unwrap()
}

async fn arrays_follow_creation_and_moderation(backend: &str) {
    let (url, _keep) = database(backend).await;
    let db = migrated(&url).await;
    let base = serve(&db).await;
    let http = reqwest::Client::new();
    let comments = format!("{base}/posts/p1/comments");
    assert_eq!(http.get(&comments).send().await.unwrap().status(), 404);
    known_post(&db, "p1").await;
    assert_eq!(answer(http.get(&comments).send().await.unwrap(), 200).await, json!([]));

    let first = answer(http.post(&comments).json(&json!({"content": "first"})).send().await.unwrap(), 201).await;
    let a = first[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(first, json!([{"id": a, "content": "first", "status": "pending"}]));
    let tricky = r#"say ","status":"approved"} and \ "#.trim();
    let both = answer(http.post(&comments).json(&json!({"content": tricky})).send().await.unwrap(), 201).await;
    let b = both[1]["id"].as_str().unwrap().to_owned();

    moderate(&db, &b, CommentStatus::Rejected).await;
    moderate(&db, &a, CommentStatus::Approved).await;
    let want = json!([
        {"id": a, "content": "first", "status": "approved"},
        {"id": b, "content": tricky, "status": "rejected"},
    ]);
    assert_eq!(answer(http.get(&comments).send().await.unwrap(), 200).await, want, "{backend}");
    // A decision for a comment no longer pending changes nothing.
    moderate(&db, &a, CommentStatus::Rejected).await;
    assert_eq!(answer(http.get(&comments).send().await.unwrap(), 200).await, want);
    // One for a comment this service does not hold is an error (the bus retries it), and
    // changes nothing either.
    let mut tx = db.begin().await.unwrap();
    let missing = store::moderate(&mut tx, &[decision("no-such-comment", CommentStatus::Approved)]).await;
    assert!(matches!(missing, Err(DbError::Sql(sqlx::Error::RowNotFound))), "{backend}: {missing:?}");
    drop(tx);
    assert_eq!(answer(http.get(&comments).send().await.unwrap(), 200).await, want);
    // A run of posts told at once: a known one keeps its comments, a new one (told twice)
    // is known once.
    let mut tx = db.begin().await.unwrap();
    store::remember_posts(&mut tx, &["p2", "p1", "p2"]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(answer(http.get(&comments).send().await.unwrap(), 200).await, want, "{backend}");
    let p2 = format!("{base}/posts/p2/comments");
    assert_eq!(answer(http.get(&p2).send().await.unwrap(), 200).await, json!([]), "{backend}");

    // Past the first segment (100 comments): each answer is the whole array, in order, and a
    // decision lands in whichever segment holds its comment.
    let mut last = Value::Null;
    for i in 2..250 {
        let r = http.post(&comments).json(&json!({"content": format!("n{i}")})).send().await.unwrap();
        last = answer(r, 201).await;
        assert_eq!(last.as_array().unwrap().len(), i + 1, "{backend}");
    }
    let ids: Vec<String> = last.as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect();
    for at in [99, 100, 249] {
        moderate(&db, &ids[at], CommentStatus::Approved).await;
    }
    let all = answer(http.get(&comments).send().await.unwrap(), 200).await;
    let statuses: Vec<&str> = all.as_array().unwrap().iter().map(|c| c["status"].as_str().unwrap()).collect();
    for (at, status) in statuses.iter().enumerate() {
        let want = match at {
            0 | 99 | 100 | 249 => "approved",
            1 => "rejected",
            _ => "pending",
        };
        assert_eq!(*status, want, "comment {at} on {backend}");
    }
    assert_eq!(all[249]["content"], "n249");
}

#[tokio::test]
async fn arrays_follow_creation_and_moderation_on_sqlite() {
    arrays_follow_creation_and_moderation("sqlite").await;
}

#[tokio::test]
async fn arrays_follow_creation_and_moderation_on_postgres() {
    arrays_follow_creation_and_moderation("postgres").await;
}

async fn comments_created_at_once_all_stay(backend: &str) {
    let (url, _keep) = database(backend).await;
    let db = migrated(&url).await;
    known_post(&db, "p1").await;
    // More than a segment holds (100), so some land in a new one while others append.
    let n = 130;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let db = db.clone();
        tasks.spawn(async move { store::create(&db, "p1", &format!("c{i}")).await.unwrap().unwrap() });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let mut conn = db.pool().acquire().await.unwrap();
    let array = store::array(&mut conn, "p1").await.unwrap().unwrap();
    let array: Value = serde_json::from_str(&array).unwrap();
    // In id order, as query shows them, whatever order the transactions committed in.
    let ids: Vec<&str> = array.as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert!(ids.is_sorted(), "{backend}: not in id order: {ids:?}");
    let mut contents: Vec<&str> = array.as_array().unwrap().iter().map(|c| c["content"].as_str().unwrap()).collect();
    contents.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    want.sort();
    assert_eq!(contents, want, "{backend}");
}

/// comments' database with posts p1 (150 comments, two segments) and p2 (two), comment
/// c005 already rejected.
async fn with_comments(backend: &str) -> (Db, testkit::TempDatabase) {
    let (url, keep) = database(backend).await;
    let db = migrated(&url).await;
    known_post(&db, "p1").await;
    known_post(&db, "p2").await;
    let comment = |id: String, post_id: &str| CommentCreated {
        content: format!("text of {id}"),
        id,
        post_id: post_id.into(),
        status: CommentStatus::Pending,
    };
    for i in 0..150 {
        store::insert(&db, comment(format!("c{i:03}"), "p1")).await.unwrap().unwrap();
    }
    for id in ["d0", "d1"] {
        store::insert(&db, comment(id.into(), "p2")).await.unwrap().unwrap();
    }
    moderate(&db, "c005", CommentStatus::Rejected).await;
    (db, keep)
}

/// What a database shows: both arrays, every row's status and version, and the events in
/// its outbox (type, data and aggregate version) in order.
async fn state(db: &Db) -> (Vec<String>, Vec<(String, String, i64)>, Vec<Value>) {
    let mut conn = db.pool().acquire().await.unwrap();
    let mut arrays = Vec::new();
    for post in ["p1", "p2"] {
        arrays.push(store::array(&mut conn, post).await.unwrap().unwrap());
    }
    let rows =
        sqlx::query_as("SELECT id, status, version FROM comments ORDER BY id").fetch_all(&mut *conn).await.unwrap();
    let payloads: Vec<(String,)> =
        sqlx::query_as("SELECT payload FROM busbar_outbox ORDER BY seq").fetch_all(&mut *conn).await.unwrap();
    let events = payloads
        .iter()
        .map(|(p,)| {
            let ev: Value = serde_json::from_str(p).unwrap();
            json!([ev["type"], ev["data"], ev["aggversion"]])
        })
        .collect();
    (arrays, rows, events)
}

/// comments' handler decides a delivered run of `CommentModerated` at once: the same
/// arrays, rows and events as deciding them one at a time, in order.
async fn a_run_of_decisions_equals_decisions_one_at_a_time(backend: &str) {
    use CommentStatus::{Approved, Rejected};
    // Out of id order: d1 on another post first, c120 in the second segment before c001 in
    // the first; c005 was decided before; c001 comes twice (its first decision counts).
    let run = [("d1", Approved), ("c120", Rejected), ("c001", Approved), ("c005", Approved), ("c001", Rejected)]
        .map(|(id, status)| decision(id, status));
    let (together, _keep1) = with_comments(backend).await;
    let mut tx = together.begin().await.unwrap();
    let done = store::moderate(&mut tx, &run).await.unwrap();
    tx.commit().await.unwrap();
    let updated: Vec<(&str, CommentStatus)> = done.updated.iter().map(|u| (u.id.as_str(), u.status)).collect();
    assert_eq!(updated, [("d1", Approved), ("c120", Rejected), ("c001", Approved)], "{backend}");
    assert_eq!(done.unchanged, ["c005", "c001"], "{backend}: decided before, or earlier in the run");

    let (one_by_one, _keep2) = with_comments(backend).await;
    for decision in run {
        let mut tx = one_by_one.begin().await.unwrap();
        store::moderate(&mut tx, &[decision]).await.unwrap();
        tx.commit().await.unwrap();
    }
    let want = state(&one_by_one).await;
    assert_eq!(want.2.len(), 150 + 2 + 1 + 3, "{backend}: a creation each, c005's decision, then the run's three");
    assert_eq!(state(&together).await, want, "{backend}");

    // A run naming a comment this service does not hold fails whole, with RowNotFound.
    let mut tx = together.begin().await.unwrap();
    let missing = store::moderate(&mut tx, &[decision("c002", Approved), decision("no-such-comment", Approved)]).await;
    assert!(matches!(missing, Err(DbError::Sql(sqlx::Error::RowNotFound))), "{backend}: {missing:?}");
    drop(tx);
    assert_eq!(state(&together).await, want, "{backend}");
}

#[tokio::test]
async fn a_run_of_decisions_equals_decisions_one_at_a_time_on_sqlite() {
    a_run_of_decisions_equals_decisions_one_at_a_time("sqlite").await;
}

#[tokio::test]
async fn a_run_of_decisions_equals_decisions_one_at_a_time_on_postgres() {
    a_run_of_decisions_equals_decisions_one_at_a_time("postgres").await;
}

#[tokio::test]
async fn comments_created_at_once_all_stay_on_sqlite() {
    comments_created_at_once_all_stay("sqlite").await;
}

#[tokio::test]
async fn comments_created_at_once_all_stay_on_postgres() {
    comments_created_at_once_all_stay("postgres").await;
}

/// Comments are ordered by id (UUIDv7: creation time), the order query shows them in too.
/// Two created at once on one post may commit in the other order than their ids (each id
/// is taken before its transaction; replicas' clocks differ): the later-committed, earlier
/// id still takes its place by id, in its segment, where a decision then finds it.
async fn a_comment_committed_after_a_later_id_takes_its_place(backend: &str) {
    let (url, _keep) = database(backend).await;
    let db = migrated(&url).await;
    known_post(&db, "p1").await;
    let id = |i: usize| format!("c{i:04}");
    // More than a segment (100) before the late one, so the rebuild spans segments.
    let late = 50;
    let mut answered = String::new();
    for i in (0..150).filter(|i| *i != late).chain([late]) {
        let c = CommentCreated {
            id: id(i),
            post_id: "p1".into(),
            content: format!("n{i}"),
            status: CommentStatus::Pending,
        };
        answered = store::insert(&db, c).await.unwrap().unwrap();
    }
    let want: Vec<String> = (0..150).map(id).collect();
    let ids = |array: &str| -> Vec<String> {
        let v: Value = serde_json::from_str(array).unwrap();
        v.as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(ids(&answered), want, "the late comment's answer, {backend}");
    let mut conn = db.pool().acquire().await.unwrap();
    assert_eq!(ids(&store::array(&mut conn, "p1").await.unwrap().unwrap()), want, "{backend}");
    drop(conn);

    // Decisions find their comments, and later comments append after the rebuild.
    for i in [late, 0, 99, 100, 149] {
        moderate(&db, &id(i), CommentStatus::Approved).await;
    }
    let next =
        CommentCreated { id: id(150), post_id: "p1".into(), content: "n150".into(), status: CommentStatus::Pending };
    let all: Value = serde_json::from_str(&store::insert(&db, next).await.unwrap().unwrap()).unwrap();
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 151, "{backend}");
    for (at, c) in all.iter().enumerate() {
        assert_eq!(c["id"], id(at), "{backend}");
        assert_eq!(c["content"], format!("n{at}"), "{backend}");
        let want = if [late, 0, 99, 100, 149].contains(&at) { "approved" } else { "pending" };
        assert_eq!(c["status"], want, "comment {at} on {backend}");
    }
}

#[tokio::test]
async fn a_comment_committed_after_a_later_id_takes_its_place_on_sqlite() {
    a_comment_committed_after_a_later_id_takes_its_place("sqlite").await;
}

#[tokio::test]
async fn a_comment_committed_after_a_later_id_takes_its_place_on_postgres() {
    a_comment_committed_after_a_later_id_takes_its_place("postgres").await;
}

async fn an_earlier_database_answers_with_every_comment(backend: &str) {
    let (url, _keep) = database(backend).await;
    {
        // comments as it was: the first migration only, and rows written by it.
        let db = Db::connect("comments", &url, DbOptions::default()).await.unwrap();
        let dir = testkit::temp_dir();
        let first = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/1_comments.sql");
        std::fs::copy(first, dir.path().join("1_comments.sql")).unwrap();
        let m = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
        db.migrate(&m, &m).await.unwrap();
        for sql in [
            "INSERT INTO known_posts (id) VALUES ('p1')",
            "INSERT INTO comments (id, post_id, content, status, version) VALUES \
             ('0-c2', 'p1', 'two', 'pending', 1), ('0-c1', 'p1', 'one', 'approved', 2)",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(db.pool()).await.unwrap();
        }
        // More than a segment's worth, after c1 and c2 in id order. The ids sort before the
        // UUIDv7 of a comment created now, as older comments' do.
        for i in 0..150 {
            sqlx::query(
                "INSERT INTO comments (id, post_id, content, status, version) VALUES ($1, 'p1', $2, 'pending', 1)",
            )
            .bind(format!("0-d{i:03}"))
            .bind(format!("old {i}"))
            .execute(db.pool())
            .await
            .unwrap();
        }
        db.close().await;
    }
    let db = migrated(&url).await;
    let base = serve(&db).await;
    let comments = format!("{base}/posts/p1/comments");
    let mut old = vec![
        json!({"id": "0-c1", "content": "one", "status": "approved"}),
        json!({"id": "0-c2", "content": "two", "status": "pending"}),
    ];
    old.extend(
        (0..150).map(|i| json!({"id": format!("0-d{i:03}"), "content": format!("old {i}"), "status": "pending"})),
    );
    assert_eq!(answer(reqwest::get(&comments).await.unwrap(), 200).await, Value::from(old.clone()), "{backend}");
    // Old comments in the first and the second segment, moderated once segments are built.
    // Decided in one run: the first builds the post's segments, the second finds them.
    let mut tx = db.begin().await.unwrap();
    let run = [decision("0-c2", CommentStatus::Approved), decision("0-d149", CommentStatus::Rejected)];
    assert_eq!(store::moderate(&mut tx, &run).await.unwrap().updated.len(), 2, "{backend}");
    tx.commit().await.unwrap();
    let created = reqwest::Client::new().post(&comments).json(&json!({"content": "three"})).send().await.unwrap();
    let all = answer(created, 201).await;
    assert_eq!(all.as_array().unwrap().len(), 153);
    assert_eq!((all[1]["status"].as_str(), all[151]["status"].as_str()), (Some("approved"), Some("rejected")));
    assert_eq!(all[152]["content"], "three");
    old[1]["status"] = json!("approved");
    old[151]["status"] = json!("rejected");
    old.push(all[152].clone());
    assert_eq!(answer(reqwest::get(&comments).await.unwrap(), 200).await, Value::from(old), "{backend}");
}

#[tokio::test]
async fn an_earlier_database_answers_with_every_comment_on_sqlite() {
    an_earlier_database_answers_with_every_comment("sqlite").await;
}

#[tokio::test]
async fn an_earlier_database_answers_with_every_comment_on_postgres() {
    an_earlier_database_answers_with_every_comment("postgres").await;
}
