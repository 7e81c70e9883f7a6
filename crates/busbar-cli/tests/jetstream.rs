//! The blog on JetStream through NATS outages: services started before NATS wait for it
//! instead of crash-looping, and a nats-server killed with SIGKILL mid-stream and
//! restarted loses nothing: query converges and every comment is moderated once.

mod common;

use std::time::Duration;

use busbar::transport::jetstream::JetStream;
use common::{Blog, SERVICES, T, create_comment, create_post, get};
use serde_json::json;
use testkit::Nats;

#[tokio::test]
async fn nats_down_at_start_and_killed_mid_stream_loses_nothing() {
    let mut nats = Nats::new();
    let bus = format!("outage-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    // NATS is not running yet.
    let mut blog = Blog::start_on_jetstream(&nats.url(), &bus);
    // Each service (but query, which waits to backfill) answers while NATS is down.
    for &s in SERVICES.iter().filter(|s| **s != "query") {
        let url = format!("{}/healthz", blog.url(s));
        testkit::wait_until(T, &format!("{s} to serve while NATS is down"), || async {
            reqwest::get(&url).await.ok().filter(|r| r.status().is_success()).map(|_| ())
        })
        .await;
        let p = blog.procs.get_mut(s).unwrap();
        assert!(p.exited().is_none(), "{s} exited while NATS was down:\n{}", p.log_tail());
    }
    nats.start().await;
    blog.wait_all_ready().await;

    let post = create_post(&blog.url("posts"), "through outages").await;
    create_comment(&blog.url("comments"), &post, "warm-up").await;
    let url = blog.url("comments");
    let p = post.clone();
    let load = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        for i in 0..100 {
            let content = if i % 5 == 0 { format!("n{i} orange") } else { format!("n{i}") };
            loop {
                assert!(tokio::time::Instant::now() < deadline, "comment {i} not accepted within 90 s");
                let r =
                    client.post(format!("{url}/posts/{p}/comments")).json(&json!({"content": content})).send().await;
                if r.is_ok_and(|r| r.status().as_u16() == 201) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    // Kill NATS while comments flow, then bring it back on the same port and storage.
    let comments_url = blog.url("comments");
    testkit::wait_until(T, "some load", || async {
        let n = get(&format!("{comments_url}/posts/{post}/comments")).await.as_array().map(|a| a.len()).unwrap_or(0);
        (n > 30).then_some(())
    })
    .await;
    nats.kill9();
    // Back on the same port and storage once the comments service has noticed the outage.
    let procs = &blog.procs;
    testkit::wait_until(T, "comments to notice NATS is gone", || async {
        procs["comments"].log().contains("disconnected from NATS").then_some(())
    })
    .await;
    nats.start().await;
    load.await.unwrap();

    let mut truth = vec![];
    for _ in 0..600 {
        truth = get(&format!("{}/posts/{post}/comments", blog.url("comments"))).await.as_array().unwrap().clone();
        if truth.len() == 101 && truth.iter().all(|c| c["status"] != "pending") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pending = truth.iter().filter(|c| c["status"] == "pending").count();
    if truth.len() != 101 || pending > 0 {
        for s in SERVICES {
            eprintln!("---- {s}\n{}", blog.procs[s].log_tail());
        }
        panic!("not converged after 60 s: {} comments, {pending} pending", truth.len());
    }
    let mut view = serde_json::Value::Null;
    for _ in 0..600 {
        view = get(&format!("{}/posts", blog.url("query"))).await;
        if view[&post]["comments"] == serde_json::Value::Array(truth.clone()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if view[&post]["comments"] != serde_json::Value::Array(truth.clone()) {
        eprintln!("---- query\n{}", blog.procs["query"].log());
        let n = view[&post]["comments"].as_array().map(|a| a.len()).unwrap_or(0);
        panic!("query not converged after 60 s: {n} comments");
    }
    for c in &truth {
        let want = if c["content"].as_str().unwrap().contains("orange") { "rejected" } else { "approved" };
        assert_eq!(c["status"], want);
    }

    let js = JetStream::connect(&nats.url(), &bus).await.unwrap();
    let mut moderated = vec![];
    let mut after = 0;
    loop {
        let page = js.replay(after, 500, &["CommentModerated"]).await.unwrap();
        moderated
            .extend(page.events.iter().map(|e| busbar::envelope::data::<blog_events::CommentModerated>(e).unwrap().id));
        after = page.next;
        if page.done {
            break;
        }
    }
    let total = moderated.len();
    moderated.sort();
    moderated.dedup();
    assert_eq!((total, moderated.len()), (101, 101), "each comment moderated exactly once");
    println!("checked: 101 comments, query identical, {total} CommentModerated events across a NATS kill -9");
    drop(view);

    // A dead letter: an event comments cannot read. `busbar status` shows it against
    // comments with its error, and comments counts it on its `/metrics`.
    let poison = uuid::Uuid::now_v7().to_string();
    let unreadable = json!({"specversion": "1.0", "id": poison, "source": "moderation", "type": "CommentModerated",
        "subject": "no-such-comment", "busbarversion": 1, "datacontenttype": "application/json",
        "data": {"verdict": 42}});
    js.publish(&[busbar::envelope::decode_one(&unreadable.to_string()).unwrap()]).await.unwrap();
    let nats_url = nats.url();
    let status = || async {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_busbar"))
            .args(["status", "--json", "--nats-url", &nats_url, "--bus", &bus])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "busbar status: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let rows = testkit::wait_until(T, "comments to dead-letter the event it cannot read", || async {
        let rows = status().await;
        let dead = rows.as_array()?.iter().any(|r| r["name"] == "comments" && r["deadLetters"] != 0);
        dead.then_some(rows)
    })
    .await;
    let comments = rows.as_array().unwrap().iter().find(|r| r["name"] == "comments").unwrap();
    assert_eq!(comments["deadLetters"], 1, "{rows}");
    let last_error = comments["lastError"].as_str().unwrap_or_default();
    assert!(last_error.contains(&poison) && last_error.contains("CommentModerated"), "{rows}");
    let metrics = reqwest::get(format!("{}/metrics", blog.url("comments"))).await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l == r#"busbar_events_dead_lettered_total{event_type="CommentModerated"} 1"#),
        "{metrics}"
    );
    nats.kill9();
}
