//! `busbar up` runs any app, not just the blog: a service defined only in this test runs
//! from its local-run declaration; a program that is missing gets a clear error; a service
//! that dies is restarted with backoff (or, with --no-restart, everything stops); and a
//! service killed with SIGKILL during a load comes back, catches up and loses nothing.

mod common;

use std::{collections::HashMap, os::unix::fs::PermissionsExt, process::Command, time::Duration};

use common::{T, busbar_up, comment_load, create_comment, create_post, get, kill9, logged_pid};
use serde_json::Value;

/// A ServiceBus with one service, `ledger`, that exists only in this test.
fn ledger_spec(ports: &HashMap<&'static str, u16>) -> String {
    format!(
        "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nmetadata: {{name: ledgers}}\nspec:\n  services:\n    - {{name: ledger, port: {}}}\n",
        ports["ledger"]
    )
}

/// The test's own directory with `bin/ledger`, a script that runs the conformance probe
/// (any program serving busbar's /readyz would do), and a declaration that runs it.
fn ledger_app(dir: &std::path::Path) {
    let probe = common::build_programs(&["busbar-conformance"]).join("busbar-probe");
    assert!(probe.is_file(), "no {}", probe.display());
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    let script = dir.join("bin/ledger");
    std::fs::write(&script, format!("#!/bin/sh\n# The test's ledger service.\nexec '{}' \"$@\"\n", probe.display()))
        .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.join(busbar_cli::local::FILE),
        "services:\n  ledger:\n    command: [./bin/ledger]\n    env: {PROBE_REPLICA: ledger-from-the-declaration}\n",
    )
    .unwrap();
}

fn url(ports: &HashMap<&str, u16>, name: &str) -> String {
    format!("http://127.0.0.1:{}", ports[name])
}

/// Polls the log of `busbar up` until it contains `text`, within `T`.
async fn log_shows(p: &testkit::process::Proc, text: &str) {
    testkit::wait_until(T, text, || async { p.log().contains(text).then_some(()) }).await;
}

#[tokio::test]
async fn a_service_defined_only_in_the_test_runs_and_is_restarted_after_kill_9() {
    let dir = testkit::temp_dir();
    ledger_app(dir.path());
    let (mut p, ports) = busbar_up(dir.path(), &["ledger"], ledger_spec, &[]).await;
    let log = p.log();
    assert!(log.contains(&url(&ports, "ledger")), "the table lists ledger:\n{log}");
    assert!(log.contains("ledger | "), "ledger's logs are prefixed");
    assert!(log.contains("ledger-from-the-declaration"), "the declaration's env reached it:\n{log}");

    let first = logged_pid(&log, "ledger").expect("busbar logs the pid it started");
    kill9(first);
    log_shows(&p, "busbar: ledger exited (signal 9); restarting in 1s (restart 1)").await;
    log_shows(&p, "busbar: ledger is ready again (restart 1)").await;
    let second = logged_pid(&p.log(), "ledger").unwrap();
    assert_ne!(first, second, "a new process");
    assert_eq!(reqwest::get(format!("{}/readyz", url(&ports, "ledger"))).await.unwrap().status().as_u16(), 200);

    // A crash loop backs off further.
    kill9(second);
    log_shows(&p, "busbar: ledger exited (signal 9); restarting in 2s (restart 2)").await;
    log_shows(&p, "busbar: ledger is ready again (restart 2)").await;
    assert_eq!(p.terminate(Duration::from_secs(20)), Some(0), "a clean stop:\n{}", p.log_tail());
}

#[tokio::test]
async fn with_no_restart_a_dead_service_stops_everything() {
    let dir = testkit::temp_dir();
    ledger_app(dir.path());
    let (mut p, ports) = busbar_up(dir.path(), &["ledger"], ledger_spec, &["--no-restart".into()]).await;
    kill9(logged_pid(&p.log(), "ledger").unwrap());
    let deadline = std::time::Instant::now() + T;
    let status = loop {
        if let Some(status) = p.exited() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "busbar up still running:\n{}", p.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success(), "{}", p.log_tail());
    assert!(p.log().contains("ledger exited unexpectedly (signal 9); stopping everything"), "{}", p.log_tail());
    assert!(std::net::TcpStream::connect(("127.0.0.1", ports["event-bus"])).is_err(), "the bus stopped too");
}

#[test]
fn a_missing_program_is_named_with_what_to_do() {
    let dir = testkit::temp_dir();
    let spec = dir.path().join("servicebus.yaml");
    std::fs::write(
        &spec,
        "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nspec:\n  services:\n    - {name: no-such-service-anywhere, port: 5999}\n    - {name: declared, port: 5998}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join(busbar_cli::local::FILE),
        "services:\n  declared: {command: [./bin/declared]}\n  typo: {command: [x]}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_busbar"))
        .arg("up")
        .arg("-f")
        .arg(&spec)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("busbar.local.yaml declares service typo, which the manifest does not have"), "{err}");
    assert!(
        err.contains("no program for service no-such-service-anywhere: busbar up runs a program named `no-such-service-anywhere` next to busbar or on PATH"),
        "{err}"
    );
    assert!(err.contains("no program for service declared:") && err.contains("bin/declared does not exist"), "{err}");
}

/// The blog under `busbar up`: comments is killed with SIGKILL in the middle of a load;
/// busbar up starts it again, and every acknowledged comment is there, moderated,
/// and in query.
#[tokio::test]
async fn a_service_killed_during_a_load_comes_back_and_nothing_is_lost() {
    let dir = testkit::temp_dir();
    common::build_programs(&common::SERVICES);
    let (mut p, ports) = busbar_up(dir.path(), &common::SERVICES, |ports| common::blog_spec(ports), &[]).await;
    let (posts, comments, query) = (url(&ports, "posts"), url(&ports, "comments"), url(&ports, "query"));
    let post = create_post(&posts, "busy post").await;
    create_comment(&comments, &post, "warm-up").await;
    let load = comment_load(comments.clone(), post.clone(), 150);
    testkit::wait_until(T, "some load", || async {
        let n = get(&format!("{comments}/posts/{post}/comments")).await.as_array().map(|a| a.len()).unwrap_or(0);
        (n > 40).then_some(())
    })
    .await;
    kill9(logged_pid(&p.log(), "comments").unwrap());
    log_shows(&p, "busbar: comments exited (signal 9); restarting in 1s (restart 1)").await;
    let acknowledged = load.await.unwrap();
    log_shows(&p, "busbar: comments is ready again (restart 1)").await;

    let truth = testkit::wait_until(T, "every comment moderated", || async {
        let all = get(&format!("{comments}/posts/{post}/comments")).await.as_array()?.clone();
        (all.len() > 150 && all.iter().all(|c| c["status"] != "pending")).then_some(all)
    })
    .await;
    for content in &acknowledged {
        assert!(truth.iter().any(|c| &c["content"] == content), "acknowledged comment {content} is missing");
    }
    let view = testkit::wait_until(T, "query to converge", || async {
        let v = get(&format!("{query}/posts")).await;
        (v[&post]["comments"] == Value::Array(truth.clone())).then_some(v)
    })
    .await;
    assert_eq!(view[&post]["comments"].as_array().unwrap().len(), truth.len());
    assert_eq!(p.terminate(Duration::from_secs(20)), Some(0), "{}", p.log_tail());
    println!(
        "comments killed mid-load and restarted by busbar up: {} acknowledged, {} in query",
        acknowledged.len(),
        truth.len()
    );
}
