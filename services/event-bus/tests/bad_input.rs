//! Bad input gets a 4xx JSON error with a message, and the bus keeps serving without
//! losing what it had accepted.

mod common;

use std::time::Duration;

use common::{Bus, FAST, event, ns, routes_yaml};
use serde_json::json;
use testkit::subscriber::Subscriber;

#[tokio::test]
async fn bad_requests_are_refused_clearly_and_nothing_is_lost() {
    let dir = testkit::temp_dir();
    let sub = Subscriber::start().await;
    let bus =
        Bus::start(dir.path(), &routes_yaml(&[("s", sub.port(), &["A"])], FAST), None, &["--max-body-bytes", "4096"])
            .await;
    assert_eq!(bus.publish(&event("A", 0)).await.0, 200);

    let missing_type = json!({"specversion": "1.0", "id": "x1", "source": "p"});
    let missing_id = json!({"specversion": "1.0", "type": "A", "source": "p"});
    let wrong_spec = json!({"specversion": "0.3", "id": "x2", "type": "A", "source": "p"});
    let huge = json!({"specversion": "1.0", "id": "x3", "type": "A", "source": "p", "data": "x".repeat(10_000)});
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("POST", "/events", "{not json".into(), 400, "invalid JSON"),
        ("POST", "/events", "".into(), 400, "invalid JSON"),
        ("POST", "/events", missing_type.to_string(), 400, "`type`"),
        ("POST", "/events", missing_id.to_string(), 400, "`id`"),
        ("POST", "/events", wrong_spec.to_string(), 400, "specversion"),
        ("POST", "/events", "[]".into(), 400, "empty"),
        ("POST", "/events", "42".into(), 400, "got a number"),
        ("POST", "/events", json!([event("A", 9), missing_id]).to_string(), 400, "at index 1"),
        ("POST", "/events", huge.to_string(), 413, "larger than"),
        ("GET", "/nope", "".into(), 404, "no route"),
        ("DELETE", "/events", "".into(), 405, "not allowed"),
        ("POST", "/deadletters/abc/redrive", "".into(), 400, "not a dead-letter id"),
    ];
    for (method, path, body, want_status, want_msg) in cases {
        testkit::expect_json_error(method, &format!("{}{path}", bus.url), &body, want_status, want_msg).await;
    }

    // The partially valid batch stored nothing; the bus still serves and delivers.
    assert_eq!(bus.publish(&event("A", 1)).await.0, 200);
    let got = sub.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(ns(&got), vec![0, 1]);
    let (_, _, log) = bus.get("/events").await;
    assert_eq!(ns(log.as_array().unwrap()), vec![0, 1], "rejected requests stored nothing");
    assert_eq!(bus.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn a_bad_routes_file_stops_startup_with_a_clear_message() {
    let dir = testkit::temp_dir();
    let routes = dir.path().join("bad.yaml");
    std::fs::write(
        &routes,
        "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nspec: {services: [{name: a}, {name: a}]}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_event-bus"))
        .args(["--listen", "127.0.0.1:0", "--database-url", &format!("sqlite://{}/b.db", dir.path().display())])
        .arg("--routes")
        .arg(&routes)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("duplicate service name `a`") && err.contains("bad.yaml"), "{err}");
}

/// Every container image starts its program as `/usr/local/bin/service` (one Dockerfile
/// for all), so the help must not take its name from the path it was started by.
#[test]
fn help_names_the_bus_whatever_path_started_it() {
    let dir = testkit::temp_dir();
    let link = dir.path().join("service");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_event-bus"), &link).unwrap();
    let out = std::process::Command::new(&link).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Usage: event-bus [OPTIONS]"), "{help}");
}
