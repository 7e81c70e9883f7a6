//! `busbar up` as a user runs it: the blog end to end across real processes, on SQLite
//! and on PostgreSQL; Ctrl-C stops everything and the data survives a restart.

mod common;

use std::process::Command;

use common::{T, blog_scenario, blog_spec, busbar_up, get, ports};
use testkit::process::Proc;

async fn up(dir: &std::path::Path, extra: &[String]) -> (Proc, std::collections::HashMap<&'static str, u16>) {
    up_named(dir, extra, "blog").await
}

/// `busbar up` on the blog manifest renamed to `bus` (on JetStream the name picks the stream).
async fn up_named(
    dir: &std::path::Path,
    extra: &[String],
    bus: &str,
) -> (Proc, std::collections::HashMap<&'static str, u16>) {
    let spec = |ports: &_| {
        let spec = blog_spec(ports).replace("metadata:\n  name: blog\n", &format!("metadata:\n  name: {bus}\n"));
        assert!(spec.contains(&format!("name: {bus}")));
        spec
    };
    common::build_programs(&common::SERVICES);
    busbar_up(dir, &common::SERVICES, spec, extra).await
}

fn url(ports: &std::collections::HashMap<&str, u16>, name: &str) -> String {
    format!("http://127.0.0.1:{}", ports[name])
}

#[tokio::test]
async fn blog_end_to_end_on_sqlite_and_data_survives_restart() {
    let dir = testkit::temp_dir();
    let (mut p, ports) = up(dir.path(), &[]).await;
    blog_scenario(&url(&ports, "posts"), &url(&ports, "comments"), &url(&ports, "query")).await;
    let before = get(&format!("{}/posts", url(&ports, "query"))).await;

    let log = p.log();
    for name in ["event-bus", "posts", "comments", "moderation", "query"] {
        assert!(log.contains(&format!("http://127.0.0.1:{}", ports[name])), "the table lists {name}");
        assert!(log.contains(&format!("{name} | ")), "{name}'s logs are prefixed");
    }
    assert_eq!(p.terminate(std::time::Duration::from_secs(20)), Some(0), "clean stop:\n{}", p.log_tail());
    assert!(p.log().contains("stopped; data is kept"));
    for name in ["posts", "comments", "query"] {
        assert!(std::net::TcpStream::connect(("127.0.0.1", ports[name])).is_err(), "{name} stopped");
    }

    // Same data directory, same spec: the view is back.
    let spec = std::fs::read_to_string(dir.path().join("servicebus.yaml")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_busbar"));
    cmd.arg("up").arg("-f").arg(dir.path().join("servicebus.yaml")).arg("--data-dir").arg(dir.path().join("data"));
    cmd.args(["--bus-port", &ports["event-bus"].to_string()]);
    assert!(spec.contains(&ports["query"].to_string()));
    let mut again = Proc::spawn("busbar up (again)", cmd, &dir.path().join("up2.log"));
    again.wait_ready(&format!("{}/readyz", url(&ports, "query")), T).await;
    assert_eq!(get(&format!("{}/posts", url(&ports, "query"))).await, before);
    again.terminate(std::time::Duration::from_secs(20));
}

#[tokio::test]
async fn blog_end_to_end_on_postgres() {
    let dir = testkit::temp_dir();
    // One database per process; the template's {name} picks it.
    let prefix = format!("busbar_test_{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let mut dbs = vec![];
    for name in ["event_bus", "posts", "comments", "moderation", "query"] {
        dbs.push(testkit::pg::TempDb::create_named(&format!("{prefix}_{name}")).await);
    }
    let template = format!("{}/{prefix}_{{name}}", testkit::pg::server_url());
    let (mut p, ports) = up(dir.path(), &["--database-url-template".into(), template]).await;
    blog_scenario(&url(&ports, "posts"), &url(&ports, "comments"), &url(&ports, "query")).await;
    assert!(!dir.path().join("data/posts.db").exists(), "no SQLite file when PostgreSQL is used");
    p.terminate(std::time::Duration::from_secs(20));
}

#[tokio::test]
async fn blog_end_to_end_on_jetstream() {
    use busbar::{
        names::{dead_letter_stream_name, stream_name},
        transport::jetstream::JetStream,
    };
    let dir = testkit::temp_dir();
    let bus = format!("blog-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let nats = testkit::nats_url();
    let (mut p, ports) =
        up_named(dir.path(), &["--transport".into(), "jetstream".into(), "--nats-url".into(), nats.clone()], &bus)
            .await;
    assert!(!p.log().contains("event-bus |"), "no built-in bus on JetStream");
    blog_scenario(&url(&ports, "posts"), &url(&ports, "comments"), &url(&ports, "query")).await;
    assert_eq!(p.terminate(std::time::Duration::from_secs(20)), Some(0), "{}", p.log_tail());

    let js = JetStream::connect(&nats, &bus).await.unwrap();
    let stream = js.context().get_stream(stream_name(&bus)).await.expect("the bus's stream exists");
    let consumers: Vec<String> = {
        use futures::StreamExt;
        stream.consumer_names().collect::<Vec<_>>().await.into_iter().map(|n| n.unwrap()).collect()
    };
    let mut consumers = consumers;
    consumers.sort();
    assert_eq!(consumers, ["comments", "moderation", "query"], "one durable consumer per subscriber");
    js.context().delete_stream(stream_name(&bus)).await.unwrap();
    js.context().delete_stream(dead_letter_stream_name(&bus)).await.unwrap();
}

/// The blog on a nats-server that admits only the users `busbar nats-auth` prints: each
/// service connects as itself with its token and has exactly the permissions it needs
/// (streams, its durable, backfill, acks); the scenario completes and nothing was refused.
#[tokio::test]
async fn blog_on_jetstream_with_per_service_nats_users() {
    let dir = testkit::temp_dir();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let spec = busbar::spec::parse_manifest(include_str!("../../../k8s/base/servicebus.yaml")).unwrap().spec;
    let auth = busbar_cli::credentials::ensure(&data).unwrap();
    let mut nats = testkit::Nats::new();
    nats.extra_conf = busbar::nats_auth::authorization_block("blog", &spec, &auth.key);
    nats.start().await;
    let (mut p, ports) =
        up_named(dir.path(), &["--transport".into(), "jetstream".into(), "--nats-url".into(), nats.url()], "blog")
            .await;
    blog_scenario(&url(&ports, "posts"), &url(&ports, "comments"), &url(&ports, "query")).await;
    assert_eq!(p.terminate(std::time::Duration::from_secs(20)), Some(0), "{}", p.log_tail());
    let log = p.log();
    assert!(!log.contains("Permissions Violation"), "a service lacked a permission:\n{log}");
    let server_log = nats.proc.as_ref().unwrap().log();
    assert!(!server_log.contains("Permissions Violation"), "{server_log}");
    assert!(!server_log.contains("Authorization Violation"), "{server_log}");
}

#[test]
fn a_bad_spec_or_busy_port_gets_a_clear_message() {
    let dir = testkit::temp_dir();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nspec: {services: [{name: billing}]}\n")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_busbar"))
        .arg("up")
        .arg("-f")
        .arg(&bad)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("billing has no `port`"), "{err}");

    let missing =
        Command::new(env!("CARGO_BIN_EXE_busbar")).args(["up", "-f", "/nonexistent/sb.yaml"]).output().unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read /nonexistent/sb.yaml"));

    let ports = ports();
    common::build_programs(&common::SERVICES);
    std::fs::write(dir.path().join("sb.yaml"), blog_spec(&ports)).unwrap();
    let _busy = std::net::TcpListener::bind(("127.0.0.1", ports["comments"])).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_busbar"))
        .arg("up")
        .arg("-f")
        .arg(dir.path().join("sb.yaml"))
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .args(["--bus-port", &ports["event-bus"].to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("port {} for comments is already in use", ports["comments"])), "{err}");

    let help = Command::new(env!("CARGO_BIN_EXE_busbar")).args(["up", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--data-dir") && help.contains("Ctrl-C"), "{help}");
}

/// Every service holds its own token: the bus refuses a missing or foreign token, an
/// undeclared type and a spoofed source, and stores none of them; a service refuses
/// pushes from anyone but the bus; replay and dead letters follow the spec too.
#[tokio::test]
async fn tokens_keep_each_service_to_its_spec() {
    use busbar::credentials::{ADMIN, BusKey};
    use serde_json::{Value, json};

    let dir = testkit::temp_dir();
    let (mut p, ports) = up(dir.path(), &[]).await;
    let data = dir.path().join("data");
    let key = BusKey::from_hex(&std::fs::read_to_string(data.join("bus.key")).unwrap()).unwrap();
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_owned();
    assert_eq!(key.verify(&admin).as_deref(), Some(ADMIN));
    let bus = url(&ports, "event-bus");
    let client = reqwest::Client::new();
    let event = |ty: &str, source: &str| {
        json!({"specversion": "1.0", "id": uuid::Uuid::now_v7().to_string(), "source": source, "type": ty,
               "subject": uuid::Uuid::now_v7().to_string(), "busbarversion": 1,
               "data": {"id": "p-forged", "title": "forged", "postId": "p-forged", "content": "x", "status": "approved"}})
    };
    let send = |method: reqwest::Method, url: String, token: Option<String>, body: Option<Value>| {
        let mut r = client.request(method, url);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let post = reqwest::Method::POST;
    let posts_token = key.token("posts");
    let foreign = BusKey::generate().token("posts");

    let refused = [
        (None, event("PostCreated", "posts"), 401, "requires a token"),
        (Some(foreign.clone()), event("PostCreated", "posts"), 401, "not issued by this bus"),
        (Some(posts_token.clone()), event("CommentModerated", "posts"), 403, "may not publish CommentModerated"),
        (Some(posts_token.clone()), event("PostCreated", "comments"), 403, "only as itself"),
        (Some(key.token("query")), event("PostCreated", "query"), 403, "may not publish PostCreated"),
        // One undeclared event refuses the whole batch.
        (
            Some(posts_token.clone()),
            json!([event("PostCreated", "posts"), event("CommentCreated", "posts")]),
            403,
            "CommentCreated",
        ),
    ];
    let mut refused_ids = vec![];
    for (token, body, status, msg) in refused {
        let ids: Vec<String> = match &body {
            Value::Array(a) => a.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect(),
            e => vec![e["id"].as_str().unwrap().to_owned()],
        };
        let (got, answer) = send(post.clone(), format!("{bus}/events"), token, Some(body)).await;
        assert_eq!(got, status, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains(msg), "{answer}");
        refused_ids.extend(ids);
    }

    // A service accepts pushes only with its own token: the forged post never lands.
    let forged = event("PostCreated", "posts");
    for token in [None, Some(posts_token.clone()), Some(foreign)] {
        let (got, answer) =
            send(post.clone(), format!("{}/events", url(&ports, "comments")), token, Some(forged.clone())).await;
        assert_eq!(got, 401, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains("only the event bus"), "{answer}");
    }
    let (got, _) = send(
        post.clone(),
        format!("{}/posts/p-forged/comments", url(&ports, "comments")),
        None,
        Some(json!({"content": "hi"})),
    )
    .await;
    assert_eq!(got, 404, "comments never learned of the forged post");

    // Replay: a service reads only what it subscribes to; dead letters are the admin's.
    let get = reqwest::Method::GET;
    let (got, answer) =
        send(get.clone(), format!("{bus}/events?type=CommentModerated"), Some(key.token("query")), None).await;
    assert_eq!(got, 403, "{answer}");
    assert_eq!(send(get.clone(), format!("{bus}/deadletters"), Some(posts_token.clone()), None).await.0, 403);
    assert_eq!(send(get.clone(), format!("{bus}/deadletters"), Some(admin.clone()), None).await.0, 200);
    assert_eq!(send(get.clone(), format!("{bus}/subscribers"), None, None).await.0, 401);

    // The real flow still works: pushes carry each subscriber's token.
    blog_scenario(&url(&ports, "posts"), &url(&ports, "comments"), &url(&ports, "query")).await;
    let (_, stored) = send(get.clone(), format!("{bus}/events"), Some(admin), None).await;
    let stored: Vec<&str> = stored.as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(
        stored.len(),
        7,
        "the scenario's 7 events (a post, 2 comments, 2 moderations, 2 updates), nothing refused: {stored:?}"
    );
    assert!(refused_ids.iter().all(|id| !stored.contains(&id.as_str())));
    let (_, query_view) = send(get, format!("{bus}/events"), Some(key.token("query")), None).await;
    let types: std::collections::BTreeSet<&str> =
        query_view.as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["CommentCreated", "CommentUpdated", "PostCreated"].into(), "query replays only its types");
    println!("refused {} forged publishes and 3 forged pushes; stored 7 real events", refused_ids.len());
    p.terminate(std::time::Duration::from_secs(20));
}
