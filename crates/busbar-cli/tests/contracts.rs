//! `busbar contract`, end to end: the contracts the services print are the committed lock
//! (a golden test per app), and a change to an event type in a test copy is caught or
//! passed exactly as the rules say, naming the publisher, the type, the field and the
//! reader. At run time, events carry their writer schema's digest, and an event a reader
//! cannot read is dead-lettered with the schema's error and that digest.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use busbar::contracts::{Lock, TypeSchema};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn busbar(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_busbar")).args(args).output().expect("busbar runs")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The contracts `manifest`'s services print now are exactly the committed `lock`: a
/// change to an event type, a handler or a declaration changes the lock in the same commit.
fn assert_lock_is_current(manifest: &str, lock: &str) {
    let dir = testkit::temp_dir();
    let fresh = dir.path().join("contracts.lock.json");
    let path = repo().join(manifest);
    let out = busbar(&["contract", "lock", "-f", path.to_str().unwrap(), "-o", fresh.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let committed = std::fs::read_to_string(repo().join(lock)).unwrap_or_default();
    let generated = std::fs::read_to_string(&fresh).unwrap();
    if committed != generated {
        let (old, new) = (Lock::parse(&committed).ok(), Lock::parse(&generated).unwrap());
        let changed: Vec<String> = new
            .services
            .iter()
            .filter(|(name, c)| old.as_ref().and_then(|o| o.services.get(*name)) != Some(c))
            .map(|(name, _)| name.clone())
            .collect();
        panic!(
            "{lock} is not what the services print now (changed: {changed:?}). If the change is meant, check it \
             with `busbar contract check -f {manifest} --against {lock}` and regenerate the lock with `busbar \
             contract lock -f {manifest} -o {lock}`"
        );
    }
}

#[test]
fn the_blog_contracts_are_the_committed_lock() {
    common::build_programs(&common::SERVICES);
    assert_lock_is_current("k8s/base/servicebus.yaml", "k8s/base/contracts.lock.json");
}

#[test]
fn the_shop_contracts_are_the_committed_lock() {
    common::build_programs(&common::SHOP);
    assert_lock_is_current("k8s/shop/servicebus.yaml", "k8s/shop/contracts.lock.json");
}

/// A chart cannot read files outside its directory, so the app chart carries a copy of each
/// example app's lock for its contracts ConfigMap; the copies must not drift from the locks.
#[test]
fn the_app_chart_carries_the_same_locks() {
    let read = |p: &str| std::fs::read_to_string(repo().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    for (copy, lock) in [
        ("helm/busbar-app/files/blog-contracts.lock.json", "k8s/base/contracts.lock.json"),
        ("helm/busbar-app/files/shop-contracts.lock.json", "k8s/shop/contracts.lock.json"),
    ] {
        assert!(read(copy) == read(lock), "{copy} differs from {lock}: copy the lock into the chart");
    }
}

const BLOG: &str = "k8s/base/servicebus.yaml";
const BLOG_LOCK: &str = "k8s/base/contracts.lock.json";

/// A test copy of the blog's lock in which posts publishes `E` as its `PostCreated`.
fn blog_with_post_created<E: JsonSchema>(dir: &Path) -> PathBuf {
    let mut lock = Lock::parse(&std::fs::read_to_string(repo().join(BLOG_LOCK)).unwrap()).unwrap();
    let posts = lock.services.get_mut("posts").unwrap();
    posts.publishes.insert("PostCreated".into(), TypeSchema::new(busbar::contract::writer_schema::<E>()));
    let path = dir.join("changed.lock.json");
    std::fs::write(&path, lock.to_pretty_json()).unwrap();
    path
}

/// `title` renamed.
#[derive(Serialize, JsonSchema)]
#[allow(dead_code)]
struct Renamed {
    id: String,
    headline: String,
}

/// An optional field added.
#[derive(Serialize, JsonSchema)]
#[allow(dead_code)]
struct Extended {
    id: String,
    title: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    subtitle: Option<String>,
}

fn check(args: &[&str]) -> (Option<i32>, String) {
    common::build_programs(&common::SERVICES);
    let manifest = repo().join(BLOG);
    let mut all = vec!["contract", "check", "-f", manifest.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = busbar(&all);
    (out.status.code(), text(&out))
}

#[test]
fn the_blog_as_built_passes() {
    let (code, out) = check(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("edges: 6 in all, 6 fit, 0 break"), "{out}");
}

#[test]
fn renaming_title_breaks_query_which_reads_it_and_not_comments_which_needs_only_the_id() {
    let dir = testkit::temp_dir();
    let copy = blog_with_post_created::<Renamed>(dir.path());
    let lock = repo().join(BLOG_LOCK);
    let (code, out) = check(&["--contracts", copy.to_str().unwrap(), "--against", lock.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    let breaks: Vec<&str> = out.lines().filter(|l| l.starts_with("break: ")).collect();
    assert_eq!(breaks, ["break: PostCreated.title: posts → query: query requires it; posts does not send it"]);
    assert!(!out.lines().any(|l| l.contains("→ comments")), "comments reads only the id: {out}");
    assert!(
        out.contains(
            "breaking  posts publishes PostCreated: changed (added required field `headline`; removed field `title`)"
        ),
        "{out}"
    );

    let (code, json) = check(&["--contracts", copy.to_str().unwrap(), "--json"]);
    assert_eq!(code, Some(1), "{json}");
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["passes"], false);
    let b = &v["breaks"][0];
    assert_eq!(
        (&b["publisher"], &b["type"], &b["field"], &b["subscriber"]),
        (&Value::from("posts"), &Value::from("PostCreated"), &Value::from("title"), &Value::from("query"))
    );
    assert_eq!(v["breaks"].as_array().unwrap().len(), 1);
    let comments =
        v["edges"].as_array().unwrap().iter().find(|e| e["subscriber"] == "comments" && e["type"] == "PostCreated");
    assert_eq!(comments.unwrap()["verdict"], "fits");
}

#[test]
fn adding_an_optional_field_passes_and_is_a_safe_change() {
    let dir = testkit::temp_dir();
    let copy = blog_with_post_created::<Extended>(dir.path());
    let lock = repo().join(BLOG_LOCK);
    let (code, out) = check(&["--contracts", copy.to_str().unwrap(), "--against", lock.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("changes against"), "{out}");
    assert!(out.contains("safe      posts publishes PostCreated: changed (added optional field `subtitle`)"), "{out}");
}

#[test]
fn a_check_that_cannot_run_says_why_and_exits_2() {
    let dir = testkit::temp_dir();
    let missing = dir.path().join("nowhere.lock.json");
    let (code, out) = check(&["--contracts", missing.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("cannot read") && out.contains("nowhere.lock.json"), "{out}");
    std::fs::write(&missing, "{\"format\": \"something/else\", \"services\": {}}").unwrap();
    let (code, out) = check(&["--contracts", missing.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("is not a contracts lock: lock format `something/else`"), "{out}");
}

#[test]
fn each_service_prints_its_contract_without_a_database_or_a_bus() {
    // No DATABASE_URL, no bus: --contract reads nothing and opens nothing.
    let out = Command::new(common::build_programs(&common::SERVICES).join("comments"))
        .arg("--contract")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("PORT", "not a port")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let printed = busbar::contracts::PrintedContract::parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(printed.service, "comments");
    assert_eq!(printed.publishes.keys().collect::<Vec<_>>(), ["CommentCreated", "CommentUpdated"]);
    assert_eq!(printed.subscribes.keys().collect::<Vec<_>>(), ["CommentModerated", "PostCreated"]);
    assert_eq!(
        printed.subscribes["PostCreated"].schema["required"],
        serde_json::json!(["id"]),
        "comments needs only the id"
    );
}

/// The blog running: what posts emits carries the digest the lock holds for its writer
/// schema; a `PostCreated` without a title is dead-lettered by query (which reads the title)
/// with its reader schema's error and the event's dataschema, and applied by comments
/// (which reads only the id).
#[tokio::test]
async fn at_run_time_events_carry_their_schema_and_a_reader_that_cannot_read_one_says_why() {
    let blog = common::Blog::start(common::Backend::Sqlite).await;
    let lock = Lock::parse(&std::fs::read_to_string(repo().join(BLOG_LOCK)).unwrap()).unwrap();
    let digest = &lock.services["posts"].publishes["PostCreated"].digest;
    let dataschema = format!("urn:busbar:schema:PostCreated:{digest}");

    common::create_post(&blog.url("posts"), "hello").await;
    let bus = blog.url("event-bus");
    let logged = testkit::wait_until(common::T, "posts' event in the bus's log", || async {
        let events = common::get(&format!("{bus}/events?after=0&type=PostCreated")).await;
        events.as_array().and_then(|a| a.first().cloned())
    })
    .await;
    assert_eq!(logged["dataschema"], dataschema.as_str());

    let bad = json!({"specversion": "1.0", "id": "0190c0de-0000-7000-8000-000000000001", "source": "posts",
        "type": "PostCreated", "subject": "no-title", "datacontenttype": "application/json",
        "dataschema": dataschema, "aggversion": 1, "data": {"id": "no-title"}});
    let r = reqwest::Client::new().post(format!("{bus}/events")).json(&bad).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let dead = testkit::wait_until(common::T, "query dead-letters the event", || async {
        let dead = common::get(&format!("{bus}/deadletters?subscriber=query")).await;
        dead.as_array().and_then(|a| a.iter().find(|d| d["event_id"] == bad["id"]).cloned())
    })
    .await;
    let error = dead["last_error"].as_str().unwrap();
    assert!(error.contains("the reader schema rejects it: at /: \"title\" is a required property"), "{error}");
    assert!(error.contains(&format!("its dataschema: {dataschema}")), "{error}");
    // comments needs only the id: it knows the post.
    testkit::wait_until(common::T, "comments applies the event", || async {
        let r = reqwest::get(format!("{}/posts/no-title/comments", blog.url("comments"))).await.unwrap();
        (r.status() == 200).then_some(())
    })
    .await;
    let comments_dead = common::get(&format!("{bus}/deadletters?subscriber=comments")).await;
    assert_eq!(comments_dead, json!([]));
}
