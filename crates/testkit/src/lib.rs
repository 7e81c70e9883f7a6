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
