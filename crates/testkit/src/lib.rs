//! Helpers for busbar's integration tests. Everything here talks to loopback only.
//!
//! - [`pg`]: a throwaway PostgreSQL database per test, dropped afterwards;
//! - [`subscriber`]: a real HTTP subscriber on 127.0.0.1 that records what it receives
//!   and can be told to fail or stall;
//! - [`process`]: child processes started, waited for and killed (SIGTERM or SIGKILL);
//! - [`wait_until`]: bounded polling.

pub mod pg;
pub mod process;
pub mod subscriber;

use std::time::{Duration, Instant};

/// Polls `check` every 20 ms until it returns `Some`, or fails after `timeout` with `what`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A unique temporary directory, removed when dropped.
pub use tempfile::TempDir;

pub fn temp_dir() -> TempDir {
    tempfile::Builder::new().prefix("busbar-test-").tempdir().expect("create a temp dir")
}

/// Sends `body` as JSON with `method` to `url` and asserts a `want_status` answer whose
/// JSON `error` message contains `want_msg`. Uses a fresh connection: a server may close
/// the connection after refusing an oversize body.
pub async fn expect_json_error(method: &str, url: &str, body: &str, want_status: u16, want_msg: &str) {
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let r = client
        .request(method.parse().unwrap(), url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = r.status().as_u16();
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap_or_default().to_owned()).unwrap_or_default();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    assert_eq!(status, want_status, "{method} {url} {body:.60}: {v}");
    assert!(ct.starts_with("application/json"), "{method} {url}: content-type {ct}");
    let msg = v["error"].as_str().unwrap_or_else(|| panic!("{method} {url}: no error message in {v}"));
    assert!(msg.contains(want_msg), "{method} {url}: {msg:?} lacks {want_msg:?}");
}

/// The NATS server for tests: `BUSBAR_TEST_NATS_URL`, default `nats://127.0.0.1:4222`
/// (`cargo xtask test` starts one if none is running).
pub fn nats_url() -> String {
    std::env::var("BUSBAR_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}
