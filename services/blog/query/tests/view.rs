//! query's `GET /posts`, served from the post documents it keeps, on SQLite and PostgreSQL:
//! what the course's client reads, in pages, across the chunks it streams in, and from a
//! database written before documents were kept.

use std::path::Path;

use blog_events::PostCreated;
use busbar::{Db, DbOptions};
use query::store;
use serde_json::{Value, json};
use testkit::database;

async fn migrated(url: &str) -> Db {
    let db = Db::connect("query", url, DbOptions::default()).await.unwrap();
    let m = sqlx::migrate!("./migrations");
    db.migrate(&m, &m).await.unwrap();
    db
}

/// query's routes on 127.0.0.1, on a port of their own; the base URL.
async fn serve(db: &Db) -> String {
    testkit::serve(query::router(db.clone())).await
}

async fn get(url: &str) -> Value {
    let r = reqwest::get(url).await.unwrap();
    assert_eq!(r.status(), 200, "GET {url}");
    assert_eq!(r.headers()["content-type"], "application/json");
    r.json().await.unwrap()
}

async fn post(db: &Db, id: &str, title: &str) {
    let mut tx = db.begin().await.unwrap();
    store::upsert_posts(&mut tx, &[&PostCreated { id: id.into(), title: title.into() }]).await.unwrap();
    tx.commit().await.unwrap();
}

async fn comment(db: &Db, id: &str, post_id: &str, content: &str, status: &str) {
    let mut tx = db.begin().await.unwrap();
    store::upsert_comment(&mut tx, id, post_id, content, status).await.unwrap();
    tx.commit().await.unwrap();
}

async fn the_view_follows_posts_and_comments(backend: &str) {
    let (url, _keep) = database(backend).await;
    let db = migrated(&url).await;
    let base = serve(&db).await;
    assert_eq!(get(&format!("{base}/posts")).await, json!({}));

    // A comment may arrive before its post: it shows once the post does.
    comment(&db, "c1", "p1", "early", "pending").await;
    assert_eq!(get(&format!("{base}/posts")).await, json!({}));
    post(&db, "p1", "first").await;
    assert_eq!(
        get(&format!("{base}/posts")).await,
        json!({"p1": {"id": "p1", "title": "first", "comments": [{"id": "c1", "content": "early", "status": "pending"}]}}),
        "the post shows the comment that waited for it ({backend})"
    );
    comment(&db, "c2", "p1", "second \"quoted\" ✓", "pending").await;
    comment(&db, "c1", "p1", "early", "approved").await;
    // Text that JSON must escape, in a title and a comment.
    let tricky = "line\nbreak\ttab \u{1} back\\slash \"q\" </script> 'single' ✓ \u{7f}";
    post(&db, "p2", tricky).await;
    comment(&db, "c3", "p2", tricky, "rejected").await;
    post(&db, "p3", "other").await;
    let p1 = json!({"id": "p1", "title": "first", "comments": [
        {"id": "c1", "content": "early", "status": "approved"},
        {"id": "c2", "content": "second \"quoted\" ✓", "status": "pending"},
    ]});
    let p2 = json!({"id": "p2", "title": tricky, "comments": [{"id": "c3", "content": tricky, "status": "rejected"}]});
    let p3 = json!({"id": "p3", "title": "other", "comments": []});
    assert_eq!(get(&format!("{base}/posts")).await, json!({"p1": p1, "p2": p2, "p3": p3}), "{backend}");
    // Compact text, as serde_json writes it: no spaces to send.
    let body = reqwest::get(format!("{base}/posts")).await.unwrap().text().await.unwrap();
    assert!(body.contains(r#""p3":{"id":"p3","title":"other","comments":[]}"#), "{backend}: {body}");
    let c1 = r#"{"id":"c1","content":"early","status":"approved"}"#;
    assert!(
        body.contains(&format!(r#""p1":{{"id":"p1","title":"first","comments":[{c1},{{"id":"c2""#)),
        "{backend}: {body}"
    );

    // Pages: after an id, at most `limit` posts.
    assert_eq!(get(&format!("{base}/posts?limit=1")).await, json!({"p1": p1}));
    assert_eq!(get(&format!("{base}/posts?after=p1&limit=5")).await, json!({"p2": p2, "p3": p3}));
    assert_eq!(get(&format!("{base}/posts?after=p3")).await, json!({}));
}

#[tokio::test]
async fn the_view_follows_posts_and_comments_on_sqlite() {
    the_view_follows_posts_and_comments("sqlite").await;
}

#[tokio::test]
async fn the_view_follows_posts_and_comments_on_postgres() {
    the_view_follows_posts_and_comments("postgres").await;
}

async fn a_large_view_streams_whole_and_in_order(backend: &str) {
    let (url, _keep) = database(backend).await;
    let db = migrated(&url).await;
    let base = serve(&db).await;
    // More posts than one chunk of the stream (1,000), with comments on some.
    let n = 2_345;
    let mut tx = db.begin().await.unwrap();
    for i in 0..n {
        let id = format!("p{i:05}");
        store::upsert_posts(&mut tx, &[&PostCreated { id: id.clone(), title: format!("t{i}") }]).await.unwrap();
        if i % 100 == 0 {
            store::upsert_comment(&mut tx, &format!("c{i}"), &id, "hi", "approved").await.unwrap();
        }
    }
    tx.commit().await.unwrap();

    let view = get(&format!("{base}/posts")).await;
    let view = view.as_object().unwrap();
    assert_eq!(view.len(), n, "{backend}");
    assert_eq!(
        view["p01700"],
        json!({"id": "p01700", "title": "t1700", "comments": [{"id": "c1700", "content": "hi", "status": "approved"}]})
    );
    assert_eq!(view["p02344"], json!({"id": "p02344", "title": "t2344", "comments": []}));

    // The body lists posts in id order (the stream's chunks follow one another).
    let text = reqwest::get(format!("{base}/posts")).await.unwrap().text().await.unwrap();
    let at = |id: &str| text.find(&format!("\"{id}\":")).unwrap_or_else(|| panic!("{id} missing"));
    assert!(at("p00999") < at("p01000") && at("p01999") < at("p02000"));

    // A page larger than a chunk stops at its limit.
    let page = get(&format!("{base}/posts?after=p00010&limit=1500")).await;
    let keys: Vec<&String> = page.as_object().unwrap().keys().collect();
    assert_eq!((keys.len(), keys[0].as_str(), keys[1499].as_str()), (1500, "p00011", "p01510"));
}

#[tokio::test]
async fn a_large_view_streams_whole_and_in_order_on_sqlite() {
    a_large_view_streams_whole_and_in_order("sqlite").await;
}

#[tokio::test]
async fn a_large_view_streams_whole_and_in_order_on_postgres() {
    a_large_view_streams_whole_and_in_order("postgres").await;
}

/// A database of an earlier query, which kept no documents: only the first migration.
async fn database_from_before_documents(url: &str) -> Db {
    let db = Db::connect("query", url, DbOptions::default()).await.unwrap();
    let dir = testkit::temp_dir();
    let first = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/1_query.sql");
    std::fs::copy(first, dir.path().join("1_query.sql")).unwrap();
    let m = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    db.migrate(&m, &m).await.unwrap();
    for sql in [
        "INSERT INTO posts (id, title) VALUES ('p1', 'one'), ('p2', 'two')",
        "INSERT INTO comments (id, post_id, content, status) VALUES ('c1', 'p2', 'kept', 'approved')",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(db.pool()).await.unwrap();
    }
    db
}

async fn an_earlier_database_is_rendered_at_start(backend: &str) {
    let (url, _keep) = database(backend).await;
    database_from_before_documents(&url).await.close().await;
    let db = migrated(&url).await;
    assert_eq!(store::render_missing(&db).await.unwrap(), 2, "{backend}");
    assert_eq!(store::render_missing(&db).await.unwrap(), 0, "a second start renders nothing");
    let base = serve(&db).await;
    assert_eq!(
        get(&format!("{base}/posts")).await,
        json!({
            "p1": {"id": "p1", "title": "one", "comments": []},
            "p2": {"id": "p2", "title": "two", "comments": [{"id": "c1", "content": "kept", "status": "approved"}]},
        })
    );
}

#[tokio::test]
async fn an_earlier_database_is_rendered_at_start_on_sqlite() {
    an_earlier_database_is_rendered_at_start("sqlite").await;
}

#[tokio::test]
async fn an_earlier_database_is_rendered_at_start_on_postgres() {
    an_earlier_database_is_rendered_at_start("postgres").await;
}

/// The ids in a whole `GET /posts`, in the order sent.
async fn ids(base: &str) -> Vec<String> {
    let text = reqwest::get(format!("{base}/posts")).await.unwrap().text().await.unwrap();
    let view: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    view.keys().cloned().collect()
}

/// The whole view is answered from a copy in memory, which must never be older than the
/// database: a write still running when a read begins is in the next read once it commits
/// (on PostgreSQL even when a later transaction committed first and was read already), and
/// a second replica on the same database sees what the first one's reads brought in.
async fn every_read_sees_what_committed_before_it(backend: &str) {
    let (url, _keep) = database(backend).await;
    let db = migrated(&url).await;
    let (a, b) = (serve(&db).await, serve(&db).await);
    post(&db, "p1", "one").await;
    assert_eq!(ids(&a).await, ["p1"], "{backend}");

    let mut slow = db.begin().await.unwrap();
    store::upsert_posts(&mut slow, &[&PostCreated { id: "p2".into(), title: "two".into() }]).await.unwrap();
    if backend == "postgres" {
        // Stamps are transaction ids: p3's is above p2's, and p3 is read first.
        post(&db, "p3", "three").await;
        comment(&db, "c1", "p1", "hi", "approved").await;
        assert_eq!(ids(&a).await, ["p1", "p3"]);
    } else {
        // SQLite's one writer is busy: readers see what committed before it began.
        assert_eq!(ids(&a).await, ["p1"]);
    }
    slow.commit().await.unwrap();
    let mut want = vec!["p1", "p2"];
    if backend == "postgres" {
        want.push("p3");
    } else {
        post(&db, "p3", "three").await;
        comment(&db, "c1", "p1", "hi", "approved").await;
        want.push("p3");
    }
    for base in [&a, &b] {
        assert_eq!(ids(base).await, want, "{backend} {base}");
        assert_eq!(
            get(&format!("{base}/posts")).await["p1"],
            json!({"id": "p1", "title": "one", "comments": [{"id": "c1", "content": "hi", "status": "approved"}]})
        );
    }
    // A comment on the oldest post changes its document in place, read by both replicas.
    comment(&db, "c1", "p1", "hi", "rejected").await;
    for base in [&a, &b] {
        assert_eq!(get(&format!("{base}/posts")).await["p1"]["comments"][0]["status"], "rejected", "{backend}");
    }
}

#[tokio::test]
async fn every_read_sees_what_committed_before_it_on_sqlite() {
    every_read_sees_what_committed_before_it("sqlite").await;
}

#[tokio::test]
async fn every_read_sees_what_committed_before_it_on_postgres() {
    every_read_sees_what_committed_before_it("postgres").await;
}

/// Every post's stored document, by id.
async fn documents(db: &Db) -> Vec<(String, String)> {
    sqlx::query_as("SELECT id, doc FROM posts ORDER BY id").fetch_all(db.pool()).await.unwrap()
}

/// A comment changes its post's document in place (appended, or its entry swapped) rather
/// than by rendering every comment again, so the document must stay byte for byte what a
/// full render gives: comments arriving out of id order, before their post, changing
/// status and content, and holding text that looks like another comment's entry.
async fn a_document_changed_in_place_equals_a_full_render(backend: &str) {
    let (url, _keep) = database(backend).await;
    let db = migrated(&url).await;
    let base = serve(&db).await;
    post(&db, "p1", "one").await;
    post(&db, "p2", "two").await;
    comment(&db, "c05", "p3", "before its post", "pending").await;
    post(&db, "p3", "three").await;
    // The text of c20's entry inside another comment (JSON escapes its quotes).
    let lookalike = r#"{"id":"c20","content":"x","status":"pending"}"#;
    // A fixed pseudo-random walk: new comments with ids above and below the post's last,
    // and changes to comments already there.
    let mut seen: Vec<(String, String)> = vec![];
    let mut state = 7u64;
    for step in 0..120u32 {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let r = (state >> 33) as usize;
        let post_id = ["p1", "p2", "p3"][r % 3].to_string();
        let status = ["pending", "approved", "rejected"][(r / 3) % 3];
        if !seen.is_empty() && r.is_multiple_of(5) {
            let (id, post_id) = seen[(r / 7) % seen.len()].clone();
            let content = if r.is_multiple_of(2) { format!("changed {step} ✓") } else { lookalike.to_string() };
            comment(&db, &id, &post_id, &content, status).await;
        } else {
            // Mostly rising ids, as UUIDv7 gives; sometimes one that sorts before the last.
            let id = if r.is_multiple_of(4) { format!("c{:02}", r % 90) } else { format!("c{:03}", 100 + step) };
            if seen.iter().any(|(s, _)| *s == id) {
                continue;
            }
            let content = if step.is_multiple_of(9) { lookalike.to_string() } else { format!("comment \"{step}\"\n") };
            comment(&db, &id, &post_id, &content, status).await;
            seen.push((id, post_id));
        }
    }
    let changed_in_place = documents(&db).await;
    sqlx::query("UPDATE posts SET doc = NULL").execute(db.pool()).await.unwrap();
    assert_eq!(store::render_missing(&db).await.unwrap(), 3);
    assert_eq!(changed_in_place, documents(&db).await, "{backend}");
    // And what the view shows is every comment, in id order, as last written.
    let view = get(&format!("{base}/posts")).await;
    let shown: usize = view.as_object().unwrap().values().map(|p| p["comments"].as_array().unwrap().len()).sum();
    assert_eq!(shown, seen.len() + 1, "{backend}: every comment once, c05 included");
    for p in view.as_object().unwrap().values() {
        let ids: Vec<&str> = p["comments"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{backend}: {ids:?} in id order");
    }
}

#[tokio::test]
async fn a_document_changed_in_place_equals_a_full_render_on_sqlite() {
    a_document_changed_in_place_equals_a_full_render("sqlite").await;
}

#[tokio::test]
async fn a_document_changed_in_place_equals_a_full_render_on_postgres() {
    a_document_changed_in_place_equals_a_full_render("postgres").await;
}

/// query stores a run of posts in one statement. Each post must come out as storing them
/// one after another gives: holding the comments that overtook it, titles JSON must escape,
/// a post stored again (the last of one id in the run wins, as it would one by one), a post
/// already there, and a run of one.
async fn posts_stored_together_equal_posts_stored_one_by_one(backend: &str) {
    let tricky = "line\nbreak \"q\" \\ ✓ \u{1}";
    let run: Vec<PostCreated> = [("p1", "one"), ("p2", tricky), ("p1", "one again"), ("p3", "three"), ("p0", "zero")]
        .into_iter()
        .map(|(id, title)| PostCreated { id: id.into(), title: title.into() })
        .collect();
    let mut stored = vec![];
    for together in [false, true] {
        let (url, _keep) = database(backend).await;
        let db = migrated(&url).await;
        post(&db, "p0", "before").await;
        comment(&db, "c1", "p2", "overtook its post", "pending").await;
        comment(&db, "c2", "p2", "and another", "approved").await;
        let mut tx = db.begin().await.unwrap();
        if together {
            store::upsert_posts(&mut tx, &run.iter().collect::<Vec<_>>()).await.unwrap();
        } else {
            for p in &run {
                store::upsert_posts(&mut tx, &[p]).await.unwrap();
            }
        }
        tx.commit().await.unwrap();
        // The run's posts changed after the one stored before it: the view's copy reads them.
        let view = get(&format!("{}/posts", serve(&db).await)).await;
        assert_eq!(view["p1"]["title"], "one again", "{backend}, together: {together}");
        assert_eq!(view["p2"]["comments"].as_array().unwrap().len(), 2, "{backend}, together: {together}");
        assert_eq!(view["p0"]["title"], "zero", "{backend}, together: {together}");
        stored.push(documents(&db).await);
    }
    assert_eq!(stored[0].len(), 4);
    assert_eq!(stored[0], stored[1], "{backend}");
}

#[tokio::test]
async fn posts_stored_together_equal_posts_stored_one_by_one_on_sqlite() {
    posts_stored_together_equal_posts_stored_one_by_one("sqlite").await;
}

#[tokio::test]
async fn posts_stored_together_equal_posts_stored_one_by_one_on_postgres() {
    posts_stored_together_equal_posts_stored_one_by_one("postgres").await;
}

/// Two replicas of query on one PostgreSQL database may apply two comments of one post at
/// once (each comment is its own aggregate). The second waits for the first's lock on the
/// post's row; its document must then be built on what the first committed: both comments,
/// in id order, and still JSON.
#[tokio::test]
async fn comments_on_one_post_applied_at_once_both_show_on_postgres() {
    let (url, _keep) = database("postgres").await;
    let db = migrated(&url).await;
    let base = serve(&db).await;
    post(&db, "p1", "one").await;
    let mut first = db.begin().await.unwrap();
    store::upsert_comment(&mut first, "c1", "p1", "first", "pending").await.unwrap();
    let second = tokio::spawn({
        let db = db.clone();
        async move { comment(&db, "c2", "p1", "second", "pending").await }
    });
    // The second is waiting for a lock the first holds (bounded wait, polled).
    let waiting =
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while sqlx::query_scalar::<_, i64>(waiting).fetch_one(db.pool()).await.unwrap() == 0 {
        assert!(std::time::Instant::now() < deadline, "the second comment never waited for the first");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    first.commit().await.unwrap();
    second.await.unwrap();
    assert_eq!(
        get(&format!("{base}/posts")).await["p1"]["comments"],
        json!([{"id": "c1", "content": "first", "status": "pending"}, {"id": "c2", "content": "second", "status": "pending"}])
    );
}
