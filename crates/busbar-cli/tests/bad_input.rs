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
