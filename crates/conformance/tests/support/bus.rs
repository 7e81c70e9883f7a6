//! A built-in bus process (`probe-bus`, this package's copy of `event-bus`), with its log
//! in a database of its own, routes from the test's manifest and a bus key.

use std::{path::PathBuf, process::Command, time::Duration};

use testkit::process::Proc;

use super::STARTUP;

pub struct Bus {
    /// `bus-a`, `bus-b`: which process this is, in messages and log names.
    pub name: String,
    pub port: u16,
    pub url: String,
    args: Vec<String>,
    log: PathBuf,
    proc: Option<Proc>,
}

impl Bus {
    /// Starts a bus on a free port; returns once it serves `/healthz` (a standby may
    /// answer `/readyz` with 503).
    pub async fn start(
        name: &str,
        dir: &std::path::Path,
        db_url: &str,
        routes: &std::path::Path,
        key: &std::path::Path,
    ) -> Bus {
        let port = testkit::free_port();
        let args = vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--database-url".into(),
            db_url.to_owned(),
            "--routes".into(),
            routes.display().to_string(),
            "--auth-key-file".into(),
            key.display().to_string(),
            "--endpoint-template".into(),
            "http://127.0.0.1:{port}/events".into(),
            "--reload-interval".into(),
            "100ms".into(),
            // Survives SIGKILL of the bus (what these tests do); `full` adds an fsync per
            // commit for power loss, which they do not simulate.
            "--sqlite-sync".into(),
            "normal".into(),
        ];
        let mut bus = Bus {
            name: name.to_owned(),
            port,
            url: format!("http://127.0.0.1:{port}"),
            args,
            log: dir.join(format!("{name}.log")),
            proc: None,
        };
        bus.spawn().await;
        bus
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_probe-bus"));
        cmd.args(&self.args).env("RUST_LOG", "info");
        let mut proc = Proc::spawn(&self.name, cmd, &self.log);
        let client = reqwest::Client::new();
        let start = std::time::Instant::now();
        loop {
            if let Ok(r) = client.get(format!("{}/healthz", self.url)).timeout(Duration::from_millis(500)).send().await
                && r.status().is_success()
            {
                break;
            }
            if let Some(status) = proc.exited() {
                panic!("{} exited ({status}) before serving /healthz:\n{}", self.name, proc.log_tail());
            }
            assert!(
                start.elapsed() < STARTUP,
                "{} not serving /healthz after {STARTUP:?}:\n{}",
                self.name,
                proc.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.proc = Some(proc);
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// Starts it again on the same port and database.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// `/readyz`'s status, or `None` when it does not answer.
    pub async fn readyz(&self) -> Option<u16> {
        let r = reqwest::Client::new()
            .get(format!("{}/readyz", self.url))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        Some(r.status().as_u16())
    }

    pub async fn metrics(&self) -> String {
        match reqwest::get(format!("{}/metrics", self.url)).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!("--- {} log (last 40 lines) ---\n{}", self.name, lines[lines.len().saturating_sub(40)..].join("\n"))
    }
}
