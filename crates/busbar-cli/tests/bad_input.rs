//! Bad input at the blog's edges gets a 4xx JSON error naming the problem, and the
//! services keep serving.

mod common;

use common::{Backend, Blog, create_comment, create_post};

#[tokio::test]
async fn bad_requests_get_clear_json_errors() {
    let blog = Blog::start(Backend::Sqlite).await;
    let post = create_post(&blog.url("posts"), "p").await;
    create_comment(&blog.url("comments"), &post, "first").await;
    let posts = blog.url("posts");
    let comments = blog.url("comments");
    let huge = format!("{{\"title\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let cases: Vec<(String, &str, String, u16, &str)> = vec![
        (format!("{posts}/posts"), "POST", "{\"title\": ".into(), 400, "invalid JSON"),
        (format!("{posts}/posts"), "POST", "".into(), 400, "empty"),
        (format!("{posts}/posts"), "POST", "{\"title\": 5}".into(), 400, "invalid type"),
        (
            format!("{posts}/posts"),
            "POST",
            "{\"title\": \"t\", \"author\": \"me\"}".into(),
            400,
            "unknown field `author`",
        ),
        (format!("{posts}/posts"), "POST", "{}".into(), 400, "missing field `title`"),
        (format!("{posts}/posts"), "POST", "{\"title\": \"  \"}".into(), 400, "must not be empty"),
        (format!("{posts}/posts"), "POST", huge, 413, "larger than"),
        (format!("{posts}/nowhere"), "GET", "".into(), 404, "no route"),
        (
            format!("{comments}/posts/no-such-post/comments"),
            "POST",
            "{\"content\": \"x\"}".into(),
            404,
            "post no-such-post not found",
        ),
        (format!("{comments}/posts/no-such-post/comments"), "GET", "".into(), 404, "not found"),
        (format!("{comments}/posts/{post}/comments"), "POST", "[1,2]".into(), 400, "invalid type"),
        (format!("{comments}/posts/{post}/comments"), "POST", "{\"content\": null}".into(), 400, "invalid type"),
        (format!("{comments}/events"), "POST", "{\"specversion\": \"1.0\", \"id\": \"x\"}".into(), 400, "`source`"),
        (
            format!("{comments}/events"),
            "POST",
            "{\"specversion\": \"2.0\", \"id\": \"x\", \"source\": \"s\", \"type\": \"T\"}".into(),
            400,
            "specversion",
        ),
    ];
    for (url, method, body, want, msg) in cases {
        testkit::expect_json_error(method, &url, &body, want, msg).await;
    }
    // Still serving, nothing lost.
    let all = create_comment(&comments, &post, "second").await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    let listed = common::get(&format!("{posts}/posts")).await;
    assert_eq!(listed.as_object().unwrap().len(), 1);
}

/// Pushes straight to a service's `POST /events` (as the bus does) with broken CloudEvents:
/// each gets a 4xx JSON error naming the problem, nothing of it is applied, and the
/// service keeps serving the events that are fine.
#[tokio::test]
async fn a_service_refuses_broken_cloudevents_clearly_and_applies_nothing_of_them() {
    let blog = Blog::start(Backend::Sqlite).await;
    let comments = blog.url("comments");
    let query = blog.url("query");
    let ev = |id: &str, ty: &str, data: serde_json::Value| {
        serde_json::json!({"specversion": "1.0", "id": id, "source": "posts", "type": ty, "subject": "bad-post",
            "datacontenttype": "application/json", "data": data})
    };
    let post = |id: &str| serde_json::json!({"id": id, "title": "t"});
    let without = |attr: &str| {
        let mut v = ev("e-1", "PostCreated", post("bad-post"));
        v.as_object_mut().unwrap().remove(attr);
        v
    };
    let with = |attr: &str, x: serde_json::Value| {
        let mut v = ev("e-2", "PostCreated", post("bad-post"));
        v[attr] = x;
        v
    };
    let cases: Vec<(serde_json::Value, u16, &str)> = vec![
        (without("id"), 400, "missing required attribute `id`"),
        (without("source"), 400, "missing required attribute `source`"),
        (without("type"), 400, "missing required attribute `type`"),
        (without("specversion"), 400, "missing required attribute `specversion`"),
        (with("specversion", "0.3".into()), 400, "unsupported specversion \"0.3\""),
        (with("specversion", 1.into()), 400, "unsupported specversion 1"),
        (with("id", 7.into()), 400, "`id` must be a string"),
        (with("type", "".into()), 400, "`type` must not be empty"),
        (with("time", "yesterday".into()), 400, "invalid CloudEvent"),
        // A batch with one broken envelope is refused whole, before anything is applied.
        (serde_json::json!([ev("e-3", "PostCreated", post("bad-post")), without("source")]), 400, "at index 1"),
        // Well-formed envelopes whose data can never be a PostCreated.
        (ev("e-4", "PostCreated", serde_json::json!({"id": 5})), 422, "data does not match PostCreated"),
        (ev("e-5", "PostCreated", serde_json::json!("bad-post")), 422, "data does not match PostCreated"),
        (without("data"), 422, "has no data"),
    ];
    for base in [&comments, &query] {
        for (body, want, msg) in &cases {
            testkit::expect_json_error("POST", &format!("{base}/events"), &body.to_string(), *want, msg).await;
        }
    }
    // None of it was applied: neither service knows the post.
    testkit::expect_json_error("GET", &format!("{comments}/posts/bad-post/comments"), "", 404, "not found").await;
    testkit::expect_json_error("GET", &format!("{comments}/posts/5/comments"), "", 404, "not found").await;
    let listed = common::get(&format!("{query}/posts")).await;
    assert!(listed.get("bad-post").is_none() && listed.get("5").is_none(), "{listed}");

    // Still serving: a good push is applied, and the id of a refused event was not
    // recorded as handled (the inbox rolled back with it), so a corrected copy applies.
    let client = reqwest::Client::new();
    for base in [&comments, &query] {
        let r =
            client.post(format!("{base}/events")).json(&ev("e-4", "PostCreated", post("fixed"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    let r = client.get(format!("{comments}/posts/fixed/comments")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(common::get(&format!("{query}/posts")).await.get("fixed").is_some());
}
