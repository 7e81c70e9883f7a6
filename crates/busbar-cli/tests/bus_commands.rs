//! `busbar dlq`, `busbar status` and `busbar tail` as a user runs them: against a real
//! built-in bus whose subscriber fails, against JetStream, and against a stand-in bus that
//! checks the admin token.

use std::{
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    http::{HeaderMap, StatusCode},
    routing::{get, post},
};
use busbar::transport::jetstream::{JetStream, dlq};
use serde_json::{Value, json};
use testkit::process::Proc;

const T: Duration = Duration::from_secs(30);

/// Runs `busbar dlq <args>`; returns (success, stdout, stderr).
async fn dlq(args: &[&str]) -> (bool, String, String) {
    busbar(&[&["dlq"], args].concat()).await
}

/// Runs `busbar status <args> --json` and parses its rows.
async fn status_json(args: &[&str]) -> Value {
    let (ok, out, err) = busbar(&[&["status"], args, &["--json"]].concat()).await;
    assert!(ok, "busbar status {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Runs `busbar tail <args> --json` to its end (give it --count); returns the events.
async fn tail_json(args: &[&str]) -> Vec<Value> {
    let (ok, out, err) = busbar(&[&["tail"], args, &["--json"]].concat()).await;
    assert!(ok, "busbar tail {args:?} failed: {err}");
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

/// Starts `busbar tail <args>` following live and waits until it says from where.
async fn tail_live(args: &[&str]) -> tokio::process::Child {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_busbar"))
        .arg("tail")
        .args(args)
        .env_remove("BUSBAR_TOKEN")
        .env_remove("BUSBAR_BUS_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let first = tokio::time::timeout(T, lines.next_line()).await.expect("busbar tail starts").unwrap();
    assert!(first.as_deref().is_some_and(|l| l.contains("following events after sequence")), "{first:?}");
    child
}

/// Starts `busbar <args>` (a server that says `http://ADDR` on stderr when it listens) and
/// returns it with that URL.
async fn start_server(args: &[&str]) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_busbar"))
        .args(args)
        .env_remove("BUSBAR_TOKEN")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let first = tokio::time::timeout(T, lines.next_line()).await.expect("it starts").unwrap().unwrap_or_default();
    let url = first.split_whitespace().find(|w| w.starts_with("http://")).unwrap_or_else(|| panic!("{first}"));
    (child, url.to_owned())
}

/// Runs `busbar <args>`; returns (success, stdout, stderr).
async fn busbar(args: &[&str]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_busbar"));
    cmd.args(args).env_remove("BUSBAR_TOKEN").env_remove("BUSBAR_BUS_URL").kill_on_drop(true);
    let out = tokio::time::timeout(T, cmd.output()).await.expect("busbar dlq finishes").unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

async fn dlq_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, out, err) = dlq(&all).await;
    assert!(ok, "busbar dlq {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn event(id: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "producer", "type": "A", "subject": "agg-1",
        "datacontenttype": "application/json", "data": {"n": 1}})
}

/// A subscriber that refuses every event while `failing` is set.
async fn sink(failing: Arc<AtomicBool>) -> u16 {
    let app = Router::new().route(
        "/events",
        post(move || {
            let failing = failing.clone();
            async move {
                if failing.load(Ordering::SeqCst) {
                    (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": "sink is broken", "handled": 0})))
                } else {
                    (StatusCode::OK, Json(json!({})))
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

fn start_bus(dir: &Path, sink_port: u16, extra: &[&std::ffi::OsStr]) -> (Proc, String) {
    let routes = dir.join("servicebus.yaml");
    std::fs::write(
        &routes,
        format!(
            "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nmetadata: {{name: dlqtest}}\nspec:\n  delivery: {{maxDeliver: 2, backoff: [20ms], ackWait: 2s}}\n  services:\n  - name: producer\n    publishes: [A]\n  - name: sink\n    port: {sink_port}\n    subscribes: [{{type: A}}]\n"
        ),
    )
    .unwrap();
    let port = testkit::free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_busbar"));
    cmd.args(["__serve", "event-bus", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--database-url", &format!("sqlite://{}/bus.db", dir.display())])
        .arg("--routes")
        .arg(&routes)
        .args(["--endpoint-template", "http://127.0.0.1:{port}/events", "--reload-interval", "100ms"])
        .args(extra);
    (Proc::spawn("event-bus", cmd, &dir.join("bus.log")), format!("http://127.0.0.1:{port}"))
}

#[tokio::test]
async fn builtin_bus_list_then_redrive_after_the_fix() {
    let dir = testkit::temp_dir();
    let failing = Arc::new(AtomicBool::new(true));
    let sink_port = sink(failing.clone()).await;
    let (mut bus, url) = start_bus(dir.path(), sink_port, &[]);
    bus.wait_ready(&format!("{url}/readyz"), T).await;
    // An empty data dir: no admin token to send, and none needed by an open bus.
    let data_dir = dir.path().join("data").display().to_string();
    let target = ["--bus-url", url.as_str(), "--data-dir", data_dir.as_str()];

    let (ok, out, _) = dlq(&[&["list"], &target[..]].concat()).await;
    assert!(ok && out.contains("no dead letters"), "{out}");

    let ids = ["0190f0a0-0000-7000-8000-000000000001", "0190f0a0-0000-7000-8000-000000000002"];
    let r = reqwest::Client::new()
        .post(format!("{url}/events"))
        .json(&json!([event(ids[0]), event(ids[1])]))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let list = testkit::wait_until(T, "two dead letters", || async {
        let v = dlq_json(&[&["list", "--subscriber", "sink"], &target[..]].concat()).await;
        (v.as_array().unwrap().len() == 2).then_some(v)
    })
    .await;
    assert_eq!(list[0]["event_id"], ids[0]);
    assert_eq!(list[0]["attempts"], 2);
    assert!(list[0]["last_error"].as_str().unwrap().contains("sink is broken"), "{list}");
    let (first, second) = (list[0]["id"].as_u64().unwrap(), list[1]["id"].as_u64().unwrap());

    // `busbar status` sees the same: the sink was given both events and dead-lettered both.
    let rows = status_json(&target).await;
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    let sink_row = &rows[0];
    assert_eq!(
        (&sink_row["name"], &sink_row["position"], &sink_row["pending"], &sink_row["deadLetters"]),
        (&json!("sink"), &json!(2), &json!(0), &json!(2)),
        "{rows}"
    );
    let (ok, table, err) = busbar(&[&["status"], &target[..]].concat()).await;
    assert!(ok, "{err}");
    assert!(table.lines().next().unwrap().starts_with("SUBSCRIBER  DELIVERED  PENDING"), "{table}");
    assert!(table.contains("2 dead letter(s): `busbar dlq list` shows them"), "{table}");
    let (ok, _, err) = busbar(&[&["status", "--subscriber", "nobody"], &target[..]].concat()).await;
    assert!(!ok && err.contains("no subscriber nobody"), "{err}");

    let (ok, table, _) = dlq(&[&["list"], &target[..]].concat()).await;
    assert!(ok, "{table}");
    let header = table.lines().next().unwrap();
    for col in ["ID", "SUBSCRIBER", "EVENT", "TYPE", "ATTEMPTS", "DEAD AT", "STATE", "ERROR"] {
        assert!(header.contains(col), "{table}");
    }
    assert!(
        table.contains(ids[1]) && table.contains("sink is broken") && table.contains("2 dead letter(s)"),
        "{table}"
    );

    // Unknown ids and ids of another subscriber are refused by name; the rest go ahead.
    let (ok, _, err) = dlq(&[&["redrive", "999999"], &target[..]].concat()).await;
    assert!(!ok && err.contains("no dead letter 999999"), "{err}");
    let (ok, _, err) =
        dlq(&[&["redrive", &first.to_string(), "--subscriber", "someone-else"], &target[..]].concat()).await;
    assert!(!ok && err.contains(&format!("no dead letter {first} for subscriber someone-else")), "{err}");

    failing.store(false, Ordering::SeqCst);
    let (ok, out, err) = dlq(&[&["redrive", &first.to_string()], &target[..]].concat()).await;
    assert!(ok && out.contains(&format!("dead letter {first} handed back")), "{out}{err}");
    testkit::wait_until(T, "the first dead letter delivered", || async {
        let v = dlq_json(&[&["list"], &target[..]].concat()).await;
        (v.as_array().unwrap().len() == 1 && v[0]["id"] == second).then_some(())
    })
    .await;
    let (ok, out, err) = dlq(&[&["redrive", "--all", "--subscriber", "sink"], &target[..]].concat()).await;
    assert!(ok && out.contains("1 dead letter(s) handed back"), "{out}{err}");
    testkit::wait_until(T, "no dead letters", || async {
        dlq_json(&[&["list"], &target[..]].concat()).await.as_array().unwrap().is_empty().then_some(())
    })
    .await;

    // `busbar tail` shows the history, then follows what is published next.
    let seen = tail_json(&[&["--from-start", "--count", "2"], &target[..]].concat()).await;
    assert_eq!(seen.iter().map(|e| e["id"].clone()).collect::<Vec<_>>(), [json!(ids[0]), json!(ids[1])]);
    let live = tail_live(&[&["--subject", "agg-9", "--count", "1"], &target[..]].concat()).await;
    let mut other = event("0190f0a0-0000-7000-8000-000000000003");
    let mut wanted = event("0190f0a0-0000-7000-8000-000000000004");
    wanted["subject"] = json!("agg-9");
    wanted["traceparent"] = json!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    other["type"] = json!("A");
    let r = reqwest::Client::new().post(format!("{url}/events")).json(&json!([other, wanted])).send().await.unwrap();
    assert!(r.status().is_success());
    let out = tokio::time::timeout(T, live.wait_with_output()).await.expect("tail stops after one event").unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.lines().count(), 1, "only the event about agg-9: {text}");
    assert!(
        text.contains("A  from producer  agg-9") && text.contains("trace 4bf92f3577b34da6a3ce929d0e0e4736"),
        "{text}"
    );

    bus.kill9();
    let (ok, _, err) = dlq(&[&["list"], &target[..]].concat()).await;
    assert!(!ok && err.contains(&format!("cannot reach the bus at {url}")) && err.contains("--bus-url"), "{err}");
}

#[tokio::test]
async fn jetstream_list_then_redrive() {
    let bus = format!("dlqcli-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let js = JetStream::connect_now(&testkit::nats_url(), &bus).await.expect("NATS at testkit::nats_url()");
    js.ensure_streams().await.unwrap();
    let ctx = js.context().clone();
    // The streams go even if the scenario fails.
    let outcome = tokio::spawn(jetstream_scenario(ctx.clone(), bus.clone())).await;
    let _ = ctx.delete_stream(busbar::names::stream_name(&bus)).await;
    let _ = ctx.delete_stream(busbar::names::dead_letter_stream_name(&bus)).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn jetstream_scenario(ctx: async_nats::jetstream::Context, bus: String) {
    let nats = testkit::nats_url();
    // Two dead letters as a subscriber leaves them.
    let ids = [uuid::Uuid::now_v7().to_string(), uuid::Uuid::now_v7().to_string()];
    for (n, id) in ids.iter().enumerate() {
        let mut h = async_nats::HeaderMap::new();
        h.insert(dlq::ERROR_HEADER, format!("handler refused #{n}").as_str());
        h.insert(dlq::ATTEMPTS_HEADER, "3");
        h.insert(dlq::SUBJECT_HEADER, busbar::names::subject(&bus, "A").as_str());
        let subject = busbar::names::dead_letter_subject(&bus, if n == 0 { "query" } else { "comments" });
        ctx.publish_with_headers(subject, h, event(id).to_string().into()).await.unwrap().await.unwrap();
    }
    let target = ["--nats-url", nats.as_str(), "--bus", bus.as_str()];

    let list = dlq_json(&[&["list"], &target[..]].concat()).await;
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert_eq!(
        (&list[0]["subscriber"], &list[0]["event_id"], &list[0]["attempts"]),
        (&json!("query"), &json!(ids[0]), &json!(3))
    );
    assert_eq!(list[1]["last_error"], "handler refused #1");
    let only = dlq_json(&[&["list", "--subscriber", "comments"], &target[..]].concat()).await;
    assert_eq!(only.as_array().unwrap().len(), 1);
    let (ok, table, _) = dlq(&[&["list"], &target[..]].concat()).await;
    assert!(ok && table.contains("handler refused #0") && table.contains(&ids[1]), "{table}");

    let (ok, _, err) = dlq(&[&["redrive", "424242"], &target[..]].concat()).await;
    assert!(!ok && err.contains("no dead letter 424242"), "{err}");
    let first = list[0]["id"].as_u64().unwrap().to_string();
    let (ok, _, err) = dlq(&[&["redrive", &first, "--subscriber", "comments"], &target[..]].concat()).await;
    assert!(!ok && err.contains("for subscriber comments"), "{err}");
    let (ok, out, err) = dlq(&[&["redrive", "--all", "--subscriber", "query"], &target[..]].concat()).await;
    assert!(ok && out.contains("1 dead letter(s) redriven"), "{out}{err}");
    let left = dlq_json(&[&["list"], &target[..]].concat()).await;
    assert_eq!(left.as_array().unwrap().len(), 1, "only comments' is left: {left}");
    assert_eq!(left[0]["subscriber"], "comments");

    // The copy is in the bus's stream, addressed to query.
    let stream = ctx.get_stream(busbar::names::stream_name(&bus)).await.unwrap();
    let copy = stream.get_raw_message(1).await.unwrap();
    assert_eq!(copy.headers.get(dlq::REDRIVE_FOR_HEADER).map(|v| v.as_str()), Some("query"));
    assert_eq!(serde_json::from_slice::<Value>(&copy.payload).unwrap()["id"], ids[0]);

    // `busbar status`: a subscriber's durable that has not taken the redriven copy yet, and
    // one with a dead letter, whose error is its last.
    let subject = busbar::names::subject(&bus, "A");
    for durable in ["query", "comments"] {
        stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                durable_name: Some(durable.into()),
                filter_subject: subject.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let rows = status_json(&target).await;
    let row = |name: &str| {
        rows.as_array().unwrap().iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no {name}: {rows}"))
    };
    let query = row("query");
    assert_eq!((&query["pending"], &query["deadLetters"], &query["position"]), (&json!(1), &json!(0), &json!(0)));
    assert_eq!(query["types"], json!(["A"]), "{rows}");
    assert!(query["oldestPendingAgeMs"].as_u64().is_some(), "the copy waits: {rows}");
    assert!(query["lastError"].is_null(), "{rows}");
    let comments = row("comments");
    assert_eq!((&comments["deadLetters"], &comments["lastError"]), (&json!(1), &json!("handler refused #1")), "{rows}");
    let (ok, table, err) = busbar(&[&["status"], &target[..]].concat()).await;
    assert!(
        ok && table.lines().any(|l| l.starts_with("comments") && l.ends_with("handler refused #1")),
        "{table}{err}"
    );

    // `busbar tail` reads history without the redriven copy, then follows new events.
    let js = JetStream::connect_now(&nats, &bus).await.unwrap();
    let published: Vec<busbar::CloudEvent> = (0..2)
        .map(|_| busbar::envelope::decode_one(&event(&uuid::Uuid::now_v7().to_string()).to_string()).unwrap())
        .collect();
    js.publish(&published[..1]).await.unwrap();
    let seen = tail_json(&[&["--from-start", "--count", "1"], &target[..]].concat()).await;
    assert_eq!(seen[0]["id"], json!(busbar::AttributesReader::id(&published[0])), "{seen:?}");
    let live = tail_live(&[&["--count", "1", "--type", "A", "--json"], &target[..]].concat()).await;
    js.publish(&published[1..]).await.unwrap();
    let out = tokio::time::timeout(T, live.wait_with_output()).await.expect("tail stops after one event").unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(busbar::AttributesReader::id(&published[1])), "{text}");

    // `busbar dashboard` serves the page, the event graph of the manifest it is given, and
    // the bus API the page calls, from JetStream.
    let http = reqwest::Client::new();
    let (mut plain, url) = start_server(&[&["dashboard", "--listen", "127.0.0.1:0"], &target[..]].concat()).await;
    let graph = http.get(format!("{url}/graph.svg")).send().await.unwrap();
    assert_eq!(graph.status().as_u16(), 404, "no manifest was given, so no graph");
    plain.kill().await.unwrap();
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../k8s/base/servicebus.yaml");
    let dashboard =
        start_server(&[&["dashboard", "--listen", "127.0.0.1:0", "-f", manifest], &target[..]].concat()).await;
    let (mut child, url) = dashboard;
    let graph = http.get(format!("{url}/graph.svg")).send().await.unwrap();
    assert_eq!(graph.status().as_u16(), 200);
    assert_eq!(graph.headers()["content-type"], "image/svg+xml; charset=utf-8");
    let svg = graph.text().await.unwrap();
    assert!(svg.contains("<svg") && svg.contains("CommentModerated"), "{svg}");
    let page = http.get(format!("{url}/")).send().await.unwrap();
    assert!(page.status().is_success());
    assert!(page.text().await.unwrap().contains("<title>busbar</title>"));
    let subs: Value = http.get(format!("{url}/subscribers")).send().await.unwrap().json().await.unwrap();
    assert!(subs.as_array().unwrap().iter().any(|r| r["name"] == "query" && r["pending"].is_u64()), "{subs}");
    let letters: Value = http.get(format!("{url}/deadletters")).send().await.unwrap().json().await.unwrap();
    assert_eq!(letters.as_array().unwrap().len(), 1, "comments' letter: {letters}");
    let events = http.get(format!("{url}/events?after=0&limit=10")).send().await.unwrap();
    let head: u64 = events.headers()["x-busbar-head"].to_str().unwrap().parse().unwrap();
    assert!(head >= 3, "the stream holds the redriven copy and the two published events");
    let events: Value = events.json().await.unwrap();
    assert_eq!(events.as_array().unwrap().len(), 2, "replay leaves the redriven copy out: {events}");
    let id = letters[0]["id"].as_u64().unwrap();
    // Another site open in the user's browser cannot redrive through the dashboard: the
    // browser names that site as the Origin of its POST, and the dashboard refuses it.
    for path in [format!("/deadletters/{id}/redrive"), "/deadletters/redrive".to_owned()] {
        let r = http.post(format!("{url}{path}")).header("origin", "http://elsewhere.example").send().await.unwrap();
        assert_eq!(r.status().as_u16(), 403, "{path}");
        let answer: Value = r.json().await.unwrap();
        let message = answer["error"].as_str().unwrap_or_default();
        assert!(message.contains("from http://elsewhere.example") && message.contains("only its own page"), "{answer}");
    }
    let letters: Value = http.get(format!("{url}/deadletters")).send().await.unwrap().json().await.unwrap();
    assert_eq!(letters.as_array().unwrap().len(), 1, "still there: {letters}");
    // Its own page's button (same origin) redrives.
    let r = http.post(format!("{url}/deadletters/{id}/redrive")).header("origin", &url).send().await.unwrap();
    assert!(r.status().is_success());
    let letters: Value = http.get(format!("{url}/deadletters")).send().await.unwrap().json().await.unwrap();
    assert_eq!(letters, json!([]), "redriven from the page's button");
    let r = http.post(format!("{url}/deadletters/{id}/redrive")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    child.kill().await.unwrap();

    let (ok, _, err) = dlq(&["list", "--nats-url", &nats, "--bus", "no-such-bus-dlqcli"]).await;
    assert!(!ok && err.contains("has no dead-letter stream"), "{err}");
}

/// A stand-in for the built-in bus that wants `Authorization: Bearer secret`.
async fn guarded_bus() -> String {
    fn allowed(h: &HeaderMap) -> bool {
        h.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer secret")
    }
    let refuse = || (StatusCode::UNAUTHORIZED, Json(json!({"error": "missing or invalid bearer token"})));
    let app =
        Router::new()
            .route(
                "/deadletters",
                get(move |h: HeaderMap| async move {
                    if allowed(&h) { (StatusCode::OK, Json(json!([]))) } else { refuse() }
                }),
            )
            .route(
                "/deadletters/{id}/redrive",
                post(move |h: HeaderMap| async move {
                    if allowed(&h) {
                        (StatusCode::NOT_FOUND, Json(json!({"error": "no dead letter waiting"})))
                    } else {
                        refuse()
                    }
                }),
            );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn builtin_bus_admin_token_from_option_env_or_data_dir() {
    let url = guarded_bus().await;
    let dir = testkit::temp_dir();
    let data_dir = dir.path().display().to_string();

    let (ok, _, err) = dlq(&["list", "--bus-url", &url, "--data-dir", &data_dir]).await;
    assert!(!ok && err.contains("refused (401)") && err.contains("--token"), "{err}");

    let (ok, out, err) = dlq(&["list", "--bus-url", &url, "--token", "secret"]).await;
    assert!(ok && out.contains("no dead letters"), "{out}{err}");

    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_busbar"));
    cmd.args(["dlq", "list", "--bus-url", &url, "--data-dir", &data_dir]).env("BUSBAR_TOKEN", "secret");
    let out = tokio::time::timeout(T, cmd.output()).await.unwrap().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    std::fs::write(dir.path().join("admin.token"), "secret\n").unwrap();
    let (ok, out, err) = dlq(&["list", "--bus-url", &url, "--data-dir", &data_dir]).await;
    assert!(ok && out.contains("no dead letters"), "{out}{err}");
    let (ok, _, err) = dlq(&["redrive", "5", "--bus-url", &url, "--data-dir", &data_dir]).await;
    assert!(!ok && err.contains("no dead letter 5"), "{err}");

    let (ok, _, err) = dlq(&["list", "--bus-url", &url, "--data-dir", &data_dir, "--token", "wrong"]).await;
    assert!(!ok && err.contains("refused (401)") && err.contains("--token is not the bus's admin token"), "{err}");
}

#[tokio::test]
async fn builtin_bus_with_a_key_takes_the_admin_token_busbar_up_wrote() {
    let dir = testkit::temp_dir();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let auth = busbar_cli::credentials::ensure(&data_dir).unwrap();
    let sink_port = sink(Arc::new(AtomicBool::new(false))).await;
    let (mut bus, url) = start_bus(dir.path(), sink_port, &["--auth-key-file".as_ref(), auth.key_file.as_os_str()]);
    bus.wait_ready(&format!("{url}/readyz"), T).await;
    let data_dir = data_dir.display().to_string();
    let elsewhere = dir.path().join("elsewhere").display().to_string();

    let (ok, _, err) = dlq(&["list", "--bus-url", &url, "--data-dir", &elsewhere]).await;
    assert!(!ok && err.contains("refused (401)") && err.contains("admin.token"), "{err}");
    let (ok, out, err) = dlq(&["list", "--bus-url", &url, "--data-dir", &data_dir]).await;
    assert!(ok && out.contains("no dead letters"), "{out}{err}");
    let (ok, out, err) = dlq(&["redrive", "--all", "--bus-url", &url, "--data-dir", &data_dir]).await;
    assert!(ok && out.contains("no dead letters to redrive"), "{out}{err}");
    let (ok, _, err) = dlq(&["list", "--bus-url", &url, "--token", "not-the-admin"]).await;
    assert!(!ok && err.contains("refused (401)"), "{err}");
}
