//! A busbar-probe process: started with its wiring, driven over HTTP, killed with
//! SIGKILL and started again on the same port and database.

use std::{path::PathBuf, process::Command, time::Duration};

use busbar_conformance::wire::{Applied, Cure, EmitItem, EmitRequest, Emitted, Stats};
use testkit::process::Proc;

use super::STARTUP;

pub struct Probe {
    /// The service's name in the ServiceBus.
    pub service: String,
    /// This process's name (replicas of one service differ here).
    pub replica: String,
    pub port: u16,
    pub url: String,
    env: Vec<(String, String)>,
    log: PathBuf,
    proc: Option<Proc>,
    http: reqwest::Client,
    /// How many times it was started.
    pub starts: u32,
}

impl Probe {
    /// Starts the probe with `env` (its wiring plus `DATABASE_URL`) on `port`; returns
    /// once it serves `/healthz` (`/readyz` may still say it is backfilling).
    pub async fn start(service: &str, replica: &str, port: u16, env: Vec<(String, String)>, log: PathBuf) -> Probe {
        let mut p = Probe {
            service: service.to_owned(),
            replica: replica.to_owned(),
            port,
            url: format!("http://127.0.0.1:{port}"),
            env,
            log,
            proc: None,
            // Generous: emitting a long history on a busy machine (CI builds beside it) takes a while.
            http: reqwest::Client::builder().timeout(Duration::from_secs(240)).build().unwrap(),
            starts: 0,
        };
        p.spawn().await;
        p
    }

    async fn spawn(&mut self) {
        self.starts += 1;
        // One log per replica across restarts, with a line marking each start.
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("open probe log");
        std::io::Write::write_all(
            &mut f,
            format!("===== harness: start #{} of {} =====\n", self.starts, self.replica).as_bytes(),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_busbar-probe"));
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PORT", self.port.to_string())
            .env("HOST", "127.0.0.1")
            .env("PROBE_REPLICA", &self.replica)
            .env("RUST_LOG", "info");
        self.proc = Some(Proc::spawn(&self.replica, cmd, &self.log));
        self.wait_healthy().await;
    }

    async fn wait_healthy(&mut self) {
        let url = format!("{}/healthz", self.url);
        let start = std::time::Instant::now();
        loop {
            if let Ok(r) = self.http.get(&url).timeout(Duration::from_millis(500)).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(status) = self.exited() {
                panic!("{} exited ({status}) before serving /healthz:\n{}", self.replica, self.log_tail());
            }
            if start.elapsed() > STARTUP {
                panic!("{} not serving {url} after {STARTUP:?}:\n{}", self.replica, self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let start = std::time::Instant::now();
        while self.readyz().await != Some(200) {
            if let Some(status) = self.exited() {
                panic!("{} exited ({status}) before becoming ready:\n{}", self.replica, self.log_tail());
            }
            assert!(start.elapsed() < timeout, "{} not ready after {timeout:?}:\n{}", self.replica, self.log_tail());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// Starts it again, same port, database and wiring.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// The exit status once the process has died on its own; it stays dead until restarted.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.as_mut().and_then(Proc::exited)
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_some() && self.exited().is_none()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        format!("--- {} log (last 40 lines) ---\n{}", self.replica, lines[lines.len().saturating_sub(40)..].join("\n"))
    }

    /// `POST /emit`; the events are committed when it returns `Ok`.
    pub async fn try_emit(&self, req: &EmitRequest) -> Result<Vec<Emitted>, String> {
        let r = self.http.post(format!("{}/emit", self.url)).json(req).send().await.map_err(|e| e.to_string())?;
        let status = r.status();
        if !status.is_success() {
            return Err(format!("{status}: {}", r.text().await.unwrap_or_default()));
        }
        r.json().await.map_err(|e| e.to_string())
    }

    /// Emits `items`, each event in its own transaction; fails the test if it cannot.
    pub async fn emit(&self, items: Vec<EmitItem>) -> Vec<Emitted> {
        self.emit_req(&EmitRequest { items, per_tx: None }).await
    }

    pub async fn emit_req(&self, req: &EmitRequest) -> Vec<Emitted> {
        self.try_emit(req)
            .await
            .unwrap_or_else(|e| panic!("{} refused to emit: {e}\n{}", self.replica, self.log_tail()))
    }

    /// Tells the subscriber that `fail` poison on `aggregates` passes from now on.
    pub async fn cure(&self, aggregates: &[&str]) {
        let body = Cure { aggregates: aggregates.iter().map(|a| a.to_string()).collect() };
        let r = self.http.post(format!("{}/cure", self.url)).json(&body).send().await;
        assert!(r.is_ok_and(|r| r.status().is_success()), "{}: POST /cure failed\n{}", self.replica, self.log_tail());
    }

    /// Waits until the relay has handed every committed event to the transport.
    pub async fn wait_published(&self) {
        let start = std::time::Instant::now();
        while self.metric("busbar_outbox_backlog_events").await != Some(0.0) {
            assert!(start.elapsed() < STARTUP, "the outbox of {} did not drain:\n{}", self.replica, self.log_tail());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `/stats` shows at least `n` parked events.
    pub async fn wait_parked(&self, n: i64) {
        let start = std::time::Instant::now();
        loop {
            if self.try_stats().await.is_ok_and(|s| s.parked >= n) {
                return;
            }
            assert!(start.elapsed() < STARTUP, "{} never parked {n} events:\n{}", self.replica, self.log_tail());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        let r = self.http.get(format!("{}{path}", self.url)).send().await.map_err(|e| e.to_string())?;
        let status = r.status();
        if !status.is_success() {
            return Err(format!("GET {path}: {status}: {}", r.text().await.unwrap_or_default()));
        }
        r.json().await.map_err(|e| format!("GET {path}: {e}"))
    }

    /// Every application so far, in application order.
    pub async fn applied(&self) -> Vec<Applied> {
        self.get_json("/applied").await.unwrap_or_else(|e| panic!("{}: {e}\n{}", self.replica, self.log_tail()))
    }

    /// Everything this service's database emitted (committed).
    pub async fn emitted(&self) -> Vec<Emitted> {
        self.get_json("/emitted").await.unwrap_or_else(|e| panic!("{}: {e}\n{}", self.replica, self.log_tail()))
    }

    pub async fn try_stats(&self) -> Result<Stats, String> {
        self.get_json("/stats").await
    }

    /// `/readyz`'s status, or `None` when it does not answer.
    pub async fn readyz(&self) -> Option<u16> {
        let r = self.http.get(format!("{}/readyz", self.url)).timeout(Duration::from_secs(2)).send().await.ok()?;
        Some(r.status().as_u16())
    }

    /// What `/readyz` says, when it answers.
    pub async fn readyz_text(&self) -> Option<String> {
        let r = self.http.get(format!("{}/readyz", self.url)).timeout(Duration::from_secs(2)).send().await.ok()?;
        r.text().await.ok()
    }

    pub async fn metrics(&self) -> Option<String> {
        let r = self.http.get(format!("{}/metrics", self.url)).timeout(Duration::from_secs(2)).send().await.ok()?;
        r.text().await.ok()
    }

    /// The value of the metric line that starts with `name` (with or without labels).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.metrics().await?;
        metric_value(&text, name)
    }
}

/// The sum of every line of metric `name` (all its label sets), or `None` if it is absent.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key.split('{').next()? == name).then(|| value.parse().ok()).flatten()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        let bare = key.split('{').next()?;
        (bare == name).then(|| value.parse().ok()).flatten()
    })
}
