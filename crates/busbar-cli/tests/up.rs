//! `busbar up` as a user runs it: the blog end to end across real processes, on SQLite
//! and on PostgreSQL; Ctrl-C stops everything and the data survives a restart.

mod common;

use std::process::Command;

use common::{T, blog_scenario, blog_spec, get, ports};
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
    let ports = ports();
    let spec = blog_spec(&ports).replace("metadata:\n  name: blog\n", &format!("metadata:\n  name: {bus}\n"));
    assert!(spec.contains(&format!("name: {bus}")));
    std::fs::write(dir.join("servicebus.yaml"), spec).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_busbar"));
    cmd.arg("up").arg("-f").arg(dir.join("servicebus.yaml")).arg("--data-dir").arg(dir.join("data"));
    cmd.args(["--bus-port", &ports["event-bus"].to_string()]).args(extra);
    let mut p = Proc::spawn("busbar up", cmd, &dir.join("up.log"));
    testkit::wait_until(T, "busbar up to print its table", || async { p.log().contains("All ready").then_some(()) })
        .await;
    p.wait_ready(&format!("http://127.0.0.1:{}/readyz", ports["query"]), T).await;
    (p, ports)
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
    use busbar::transport::jetstream::{JetStreamTransport, dead_letter_stream_name, stream_name};
    let dir = testkit::temp_dir();
    let bus = format!("blog-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let nats = testkit::nats_url();
    let (mut p, ports) =
        up_named(dir.path(), &["--transport".into(), "jetstream".into(), "--nats-url".into(), nats.clone()], &bus)
            .await;
    assert!(!p.log().contains("event-bus |"), "no built-in bus on JetStream");
    blog_scenario(&url(&ports, "posts"), &url(&ports, "comments"), &url(&ports, "query")).await;
    assert_eq!(p.terminate(std::time::Duration::from_secs(20)), Some(0), "{}", p.log_tail());

    let js = JetStreamTransport::connect(&nats, &bus).await.unwrap();
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
