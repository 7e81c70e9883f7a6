//! `busbar-bench blog --target-url` against a blog it did not start: `busbar up` runs the
//! blog, as a user would, and the benchmark measures it through the blog's HTTP contract
//! alone. Asserts that figures were measured and that what needs the processes is said to
//! be not measured; never a speed.

use std::{collections::HashMap, path::PathBuf, process::Command, time::Duration};

use serde_json::Value;
use testkit::process::Proc;

const SERVICES: [&str; 4] = ["posts", "comments", "moderation", "query"];
const READY: Duration = Duration::from_secs(60);
/// The benchmark's whole run: smoke bounds, against an idle blog.
const BENCH_TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::test]
async fn measures_a_blog_started_by_busbar_up_through_its_urls_alone() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_busbar-bench"));
    let bin_dir = bench.parent().expect("busbar-bench is in a directory").to_path_buf();
    testkit::apps::build_programs(&bin_dir, &["busbar-cli", "posts", "comments", "moderation", "query"]);

    let dir = testkit::temp_dir();
    let ports: HashMap<&str, u16> =
        std::iter::once("event-bus").chain(SERVICES).map(|n| (n, testkit::free_port())).collect();
    std::fs::write(dir.path().join("servicebus.yaml"), testkit::apps::blog_spec(&ports)).unwrap();
    let mut up = Command::new(bin_dir.join("busbar"));
    up.arg("up").arg("-f").arg(dir.path().join("servicebus.yaml")).arg("--data-dir").arg(dir.path().join("data"));
    up.args(["--bus-port", &ports["event-bus"].to_string()]);
    let mut up = Proc::spawn("busbar up", up, &dir.path().join("up.log"));
    for name in SERVICES {
        up.wait_ready(&format!("http://127.0.0.1:{}/readyz", ports[name]), READY).await;
    }

    let url = |name: &str| format!("http://127.0.0.1:{}", ports[name]);
    let target = format!("posts={},comments={},query={}", url("posts"), url("comments"), url("query"));
    let mut cmd = tokio::process::Command::new(&bench);
    cmd.args(["--json", "blog", "--smoke", "--target-url", &target]).kill_on_drop(true);
    let out = tokio::time::timeout(BENCH_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("busbar-bench did not finish within {BENCH_TIMEOUT:?}"))
        .expect("busbar-bench runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "busbar-bench failed ({}):\n{stderr}\nbusbar up:\n{}", out.status, up.log_tail());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));

    assert_eq!(report["busbar_bin"], Value::Null, "it started no busbar of its own");
    assert_eq!(report["external"]["urls"]["query"], url("query"));
    let not_measured = report["external"]["not_measured"].as_array().expect("a list");
    assert!(not_measured.iter().any(|w| w.as_str().unwrap().contains("CPU per post")), "{not_measured:?}");
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "one stack, no backend or transport matrix");
    assert_eq!(runs[0]["backend"], "external");
    assert_eq!(runs[0]["procs"], Value::Array(vec![]), "no process figures for a stack it did not start");

    let flows = runs[0]["flows"].as_array().expect("flows");
    let shapes: Vec<(&str, &str, bool)> = flows
        .iter()
        .map(|f| (f["flow"].as_str().unwrap(), f["mode"].as_str().unwrap(), f["full_get"].as_bool().unwrap()))
        .collect();
    // The full-GET run first, on the fresh view; no paged runs (--rates): that read is
    // busbar's, not the contract's.
    assert_eq!(shapes, [("posts", "open", true), ("posts", "closed", false), ("comments", "open", true)]);
    assert!(flows[0]["load"].as_str().unwrap().ends_with("from 0 posts"), "{}", flows[0]["load"]);
    for f in flows {
        assert!(f["written"].as_u64().unwrap() > 0, "{f}");
        assert!(f["visible_per_s"].as_f64().unwrap() > 0.0, "{f}");
        assert_eq!(f["missing"], 0, "{f}");
        assert_eq!(f["errors"], 0, "{f}");
        if f["mode"] == "open" {
            assert!(f["latency"]["p99_ms"].as_f64().is_some(), "{f}");
        }
    }
    let reads = report["reads"][0]["rows"].as_array().expect("read rows");
    assert!(reads[0]["posts"].as_u64().unwrap() >= 1, "{reads:?}");
    assert!(reads[0]["latency"]["p50_ms"].as_f64().is_some(), "{reads:?}");
    assert_eq!(reads[0]["query_peak_rss_mib"], Value::Null);

    assert_eq!(up.terminate(Duration::from_secs(20)), Some(0), "busbar up stops cleanly:\n{}", up.log_tail());
}

#[test]
fn a_bad_target_url_is_refused_with_what_is_expected() {
    let out = Command::new(env!("CARGO_BIN_EXE_busbar-bench"))
        .args(["blog", "--target-url", "http://127.0.0.1:4000"])
        .output()
        .expect("busbar-bench runs");
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("names one port"), "{stderr}");
    assert!(stderr.contains("posts=URL,comments=URL,query=URL"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_busbar-bench"))
        .args(["blog", "--backends", "sqlite", "--target-url", "http://127.0.0.1"])
        .output()
        .expect("busbar-bench runs");
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}
