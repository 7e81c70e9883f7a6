//! Trace context end to end: one comment on a post, made with a W3C `traceparent`, is one
//! trace across every process it reaches (comments → bus → moderation → bus → comments →
//! bus → query), exported over OTLP/HTTP to a collector stand-in in this test, each span
//! linked to its parent, and the trace id is in every process's logs. The same run checks
//! that every process shows the shared metrics under the same names.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
};

use axum::{Json, Router, body::Bytes, extract::State, routing::post};
use busbar::trace::TraceContext;
use common::{SERVICES, T, blog_spec, build_programs, busbar_up_with_env, create_post};
use serde_json::{Value, json};

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Seen {
    service: String,
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
}

/// An OTLP/HTTP (JSON) trace receiver on loopback, keeping every span it is sent.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Seen>>>,
}

impl Collector {
    async fn start() -> Collector {
        let spans: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let app = Router::new().route("/v1/traces", post(receive)).with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Collector { url, spans }
    }

    fn of_trace(&self, trace_id: &str) -> Vec<Seen> {
        self.spans.lock().unwrap().iter().filter(|s| s.trace_id == trace_id).cloned().collect()
    }
}

async fn receive(State(spans): State<Arc<Mutex<Vec<Seen>>>>, body: Bytes) -> Json<Value> {
    let v: Value = serde_json::from_slice(&body).expect("OTLP JSON");
    let mut got = spans.lock().unwrap();
    for rs in v["resourceSpans"].as_array().into_iter().flatten() {
        let service = rs["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.name")
            .and_then(|a| a["value"]["stringValue"].as_str())
            .unwrap_or_default()
            .to_owned();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for s in ss["spans"].as_array().into_iter().flatten() {
                let text = |k: &str| s[k].as_str().unwrap_or_default().to_ascii_lowercase();
                got.push(Seen {
                    service: service.clone(),
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent: text("parentSpanId"),
                    name: text("name"),
                });
            }
        }
    }
    Json(json!({}))
}

#[tokio::test]
async fn one_comment_is_one_trace_across_every_service() {
    let collector = Collector::start().await;
    let dir = testkit::temp_dir();
    build_programs(&SERVICES);
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("RUST_LOG", "info,busbar=debug,event_bus=debug"),
    ];
    let (mut up, ports) = busbar_up_with_env(dir.path(), &SERVICES, blog_spec, &[], &env).await;
    let url = |name: &str| format!("http://127.0.0.1:{}", ports[name]);
    let post_id = create_post(&url("posts"), "traced").await;
    testkit::wait_until(T, "comments to know the post", || async {
        let r = reqwest::get(format!("{}/posts/{post_id}/comments", url("comments"))).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    // The client's span: the comment request continues it.
    let client = TraceContext::root();
    let r = reqwest::Client::new()
        .post(format!("{}/posts/{post_id}/comments", url("comments")))
        .header("traceparent", client.header())
        .json(&json!({"content": "orange is a colour"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let trace_id = client.trace_id_hex();

    // Every hop, down to query applying the moderated comment.
    let wanted = [
        ("comments", "post /posts/{id}/comments"),
        ("event-bus", "bus store commentcreated"),
        ("event-bus", "bus deliver commentcreated to moderation"),
        ("moderation", "handle commentcreated"),
        ("event-bus", "bus store commentmoderated"),
        ("comments", "handle commentmoderated"),
        ("event-bus", "bus deliver commentupdated to query"),
        ("query", "handle commentupdated"),
    ];
    let deadline = std::time::Instant::now() + T;
    let spans = loop {
        let spans = collector.of_trace(&trace_id);
        if wanted.iter().all(|(svc, name)| spans.iter().any(|s| s.service == *svc && s.name == *name)) {
            break spans;
        }
        if std::time::Instant::now() > deadline {
            let all = collector.spans.lock().unwrap().clone();
            let missing: Vec<_> = wanted
                .iter()
                .filter(|(svc, name)| !spans.iter().any(|s| s.service == *svc && s.name == *name))
                .collect();
            panic!(
                "after {T:?}, trace {trace_id} lacks {missing:?}; it has {spans:#?}\n{} spans in all, e.g. {:#?}\n{}",
                all.len(),
                all.iter().take(5).collect::<Vec<_>>(),
                up.log_tail()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };

    // One tree: each span's parent is in the trace, except the first, whose parent is the
    // client's span.
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(ids.len(), spans.len(), "span ids are unique: {spans:#?}");
    let client_span = client.span_id_hex();
    for s in &spans {
        assert!(
            s.parent == client_span || ids.contains(s.parent.as_str()),
            "{} ({}) has parent {} outside the trace: {spans:#?}",
            s.name,
            s.service,
            s.parent
        );
    }
    let roots: Vec<&Seen> = spans.iter().filter(|s| s.parent == client_span).collect();
    assert_eq!(roots.len(), 1, "{roots:#?}");
    assert_eq!((roots[0].service.as_str(), roots[0].name.as_str()), ("comments", "post /posts/{id}/comments"));
    // The chain: query's handling descends from moderation's, which descends from the request.
    let by_id: BTreeMap<&str, &Seen> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let ancestry = |s: &Seen| {
        let mut chain = vec![format!("{}: {}", s.service, s.name)];
        let mut at = s.parent.as_str();
        while let Some(p) = by_id.get(at) {
            chain.push(format!("{}: {}", p.service, p.name));
            at = p.parent.as_str();
        }
        chain
    };
    let query = spans.iter().find(|s| s.service == "query" && s.name == "handle commentupdated").unwrap();
    assert_eq!(
        ancestry(query),
        [
            "query: handle commentupdated",
            "comments: handle commentmoderated",
            "moderation: handle commentcreated",
            "comments: post /posts/{id}/comments"
        ],
        "{spans:#?}"
    );

    // The same trace id in each process's logs.
    let log = up.log();
    for name in ["comments", "moderation", "query", "event-bus"] {
        assert!(
            log.lines().any(|l| l.trim_start().starts_with(&format!("{name} |")) && l.contains(&trace_id)),
            "{name}'s logs do not mention trace {trace_id}:\n{}",
            up.log_tail()
        );
    }

    // `busbar status` and `busbar tail` against the running blog (the admin token is the
    // one `busbar up` wrote in the data directory): the subscribers, and the moderation
    // event with this trace's id.
    let data_dir = dir.path().join("data");
    let target = ["--bus-url", &url("event-bus"), "--data-dir", data_dir.to_str().unwrap()].map(str::to_owned);
    let cli = |args: Vec<String>| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_busbar")).args(&args).args(&target).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "busbar {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        text
    };
    let rows: Value = serde_json::from_str(&cli(vec!["status".into(), "--json".into()])).unwrap();
    let names: BTreeSet<&str> = rows.as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, BTreeSet::from(["comments", "moderation", "query"]), "{rows}");
    assert!(rows.as_array().unwrap().iter().all(|r| r["deadLetters"] == 0), "{rows}");
    let tailed =
        cli(["tail", "--from-start", "--type", "CommentModerated", "--count", "1"].map(str::to_owned).to_vec());
    assert!(
        tailed.contains("CommentModerated  from moderation") && tailed.contains(&format!("trace {trace_id}")),
        "{tailed}"
    );

    // A dead letter: an event comments cannot read, published as moderation's with the
    // admin token. `busbar status` shows it against comments, with its error.
    let admin = std::fs::read_to_string(data_dir.join("admin.token")).unwrap().trim().to_owned();
    let poison = uuid::Uuid::now_v7().to_string();
    let unreadable = json!({"specversion": "1.0", "id": poison, "source": "moderation", "type": "CommentModerated",
        "subject": "no-such-comment", "busbarversion": 1, "datacontenttype": "application/json",
        "data": {"verdict": 42}});
    let r = reqwest::Client::new()
        .post(format!("{}/events", url("event-bus")))
        .bearer_auth(&admin)
        .json(&unreadable)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let rows = testkit::wait_until(T, "comments to dead-letter the event it cannot read", || async {
        let rows: Value = serde_json::from_str(&cli(vec!["status".into(), "--json".into()])).unwrap();
        let dead = rows.as_array()?.iter().any(|r| r["name"] == "comments" && r["deadLetters"] == 1);
        dead.then_some(rows)
    })
    .await;
    let comments = rows.as_array().unwrap().iter().find(|r| r["name"] == "comments").unwrap();
    let last_error = comments["lastError"].as_str().unwrap_or_default();
    assert!(last_error.contains(&poison) && last_error.contains("CommentModerated"), "{rows}");
    assert!(rows.as_array().unwrap().iter().all(|r| r["name"] == "comments" || r["deadLetters"] == 0), "{rows}");

    // The same metric names on every process, with what this comment did in them.
    let metrics = |name: &str| {
        let url = format!("{}/metrics", url(name));
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    };
    let comments = metrics("comments").await;
    assert!(
        sample(
            &comments,
            r#"busbar_http_request_duration_seconds_count{method="POST",route="/posts/{id}/comments",status="201"}"#
        ) >= Some(1.0),
        "{comments}"
    );
    assert!(sample(&comments, "busbar_outbox_oldest_seconds").is_some(), "{comments}");
    let moderation = metrics("moderation").await;
    assert!(
        sample(&moderation, r#"busbar_handler_duration_seconds_count{event_type="CommentCreated",result="ok"}"#)
            >= Some(1.0),
        "{moderation}"
    );
    let query = metrics("query").await;
    assert!(
        sample(&query, r#"busbar_events_received_total{event_type="CommentUpdated",outcome="applied"}"#) >= Some(1.0),
        "{query}"
    );
    let bus = metrics("event-bus").await;
    assert!(
        sample(&bus, r#"busbar_http_request_duration_seconds_count{method="POST",route="/events",status="200"}"#)
            >= Some(1.0),
        "{bus}"
    );
    // (Its value lags by the bus's cursor-save interval, so only its presence is checked.)
    assert!(sample(&bus, r#"busbar_bus_subscriber_pending{subscriber="query"}"#).is_some(), "{bus}");
    assert_eq!(up.terminate(std::time::Duration::from_secs(20)), Some(0));
}

/// The value of the sample named exactly `series` (name and labels) in Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}
