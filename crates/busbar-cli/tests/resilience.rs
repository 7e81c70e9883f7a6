//! The blog's copies converge through crashes and rebuilds: query rebuilt from history
//! equals the view before, and comments killed with SIGKILL mid-load loses nothing and
//! gets nothing moderated twice.

mod common;

use std::time::Duration;

use common::{Backend, Blog, T, create_comment, create_post, get};
use serde_json::Value;

async fn converged_view(blog: &Blog, posts: usize, comments: usize) -> Value {
    testkit::wait_until(T, "query to converge", || async {
        let v = get(&format!("{}/posts", blog.url("query"))).await;
        let obj = v.as_object()?;
        let all: Vec<&Value> = obj.values().flat_map(|p| p["comments"].as_array().unwrap().iter()).collect();
        (obj.len() == posts && all.len() == comments && all.iter().all(|c| c["status"] != "pending"))
            .then_some(v.clone())
    })
    .await
}

#[tokio::test]
async fn query_rebuilt_from_an_empty_database_equals_the_view_before() {
    let mut blog = Blog::start(Backend::Sqlite).await;
    for p in 0..3 {
        let id = create_post(&blog.url("posts"), &format!("post {p}")).await;
        create_comment(&blog.url("comments"), &id, "nice").await;
        create_comment(&blog.url("comments"), &id, "orange juice").await;
    }
    let before = converged_view(&blog, 3, 6).await;

    blog.kill9("query");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", blog.sqlite_file("query").display()));
    }
    blog.start_process("query").await; // ready only once the backfill is complete
    let after = get(&format!("{}/posts", blog.url("query"))).await;
    assert_eq!(after, before);
    assert!(blog.procs["query"].log().contains("backfill complete events=15"), "{}", blog.procs["query"].log_tail());
    println!("query rebuilt: 3 posts, 6 comments, identical view");
}

#[tokio::test]
async fn comments_killed_mid_load_loses_nothing_and_moderates_each_comment_once() {
    let mut blog = Blog::start(Backend::Sqlite).await;
    let post = create_post(&blog.url("posts"), "busy post").await;
    create_comment(&blog.url("comments"), &post, "warm-up").await;

    // 200 comments, one at a time; a request that fails while comments is down is retried.
    let load = common::comment_load(blog.url("comments"), post.clone(), 200);

    let comments_url = blog.url("comments");
    testkit::wait_until(T, "some load", || async {
        let n = get(&format!("{comments_url}/posts/{post}/comments")).await.as_array().map(|a| a.len()).unwrap_or(0);
        (n > 60).then_some(())
    })
    .await;
    blog.kill9("comments");
    tokio::time::sleep(Duration::from_millis(300)).await;
    blog.start_process("comments").await;
    let acknowledged = load.await.unwrap();

    // Source of truth: comments' own list. It holds every acknowledged comment (a request
    // cut off by the kill may have committed too, so it may hold a few more).
    let truth = testkit::wait_until(T, "comments to see every comment moderated", || async {
        let v = get(&format!("{}/posts/{post}/comments", blog.url("comments"))).await;
        let all = v.as_array()?.clone();
        (all.len() > 200 && all.iter().all(|c| c["status"] != "pending")).then_some(all)
    })
    .await;
    for content in &acknowledged {
        assert!(truth.iter().any(|c| &c["content"] == content), "acknowledged comment {content} is missing");
    }
    for c in &truth {
        let want = if c["content"].as_str().unwrap().contains("orange") { "rejected" } else { "approved" };
        assert_eq!(c["status"], want, "{c}");
    }

    let view = converged_view(&blog, 1, truth.len()).await;
    assert_eq!(view[&post]["comments"], Value::Array(truth.clone()), "query equals comments");

    // Exactly once: one moderation decision event per comment in the bus's log.
    let moderated = get(&format!("{}/events?type=CommentModerated&limit=10000", blog.url("event-bus"))).await;
    let mut ids: Vec<&str> = moderated.as_array().unwrap().iter().map(|e| e["data"]["id"].as_str().unwrap()).collect();
    let total = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!((total, ids.len()), (truth.len(), truth.len()), "each comment moderated exactly once");
    println!(
        "checked: {} acknowledged, {} comments in comments, {} in query, {} moderation events",
        acknowledged.len(),
        truth.len(),
        view[&post]["comments"].as_array().unwrap().len(),
        total
    );
}
