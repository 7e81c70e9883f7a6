//! Shared by the bus integration tests: start the real `event-bus` binary on loopback
//! against a routes file, and build CloudEvents.

#![allow(dead_code)]

use std::{path::PathBuf, process::Command, time::Duration};

use serde_json::{Value, json};
use testkit::process::Proc;

pub struct Bus {
    pub proc: Proc,
    pub url: String,
    pub port: u16,
    pub routes: PathBuf,
    dir: PathBuf,
    db_url: String,
    extra: Vec<String>,
}

/// `subscribers`: (name, port, types).
pub fn routes_yaml(subscribers: &[(&str, u16, &[&str])], delivery: &str) -> String {
    let mut s = format!(
        "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nmetadata: {{name: test}}\nspec:\n  delivery: {delivery}\n  services:\n  - name: producer\n    publishes: [A, B]\n"
    );
    for (name, port, types) in subscribers {
        let subs: Vec<String> = types.iter().map(|t| format!("{{type: {t}}}")).collect();
        s.push_str(&format!("  - name: {name}\n    port: {port}\n    subscribes: [{}]\n", subs.join(", ")));
    }
    s
}

pub const FAST: &str = "{maxDeliver: 3, backoff: [20ms, 40ms], ackWait: 1s}";

impl Bus {
    /// Starts a bus whose log lives in `dir` (SQLite) or at `db_url`.
    pub async fn start(dir: &std::path::Path, routes: &str, db_url: Option<&str>, extra: &[&str]) -> Bus {
        let routes_path = dir.join("servicebus.yaml");
        std::fs::write(&routes_path, routes).unwrap();
        let db_url = db_url.map(str::to_owned).unwrap_or_else(|| format!("sqlite://{}/bus.db", dir.display()));
        let mut bus = Bus {
            proc: spawn(dir, 0, &db_url, &routes_path, extra),
            url: String::new(),
            port: 0,
            routes: routes_path,
            dir: dir.to_owned(),
            db_url,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        bus.restart_on_new_port().await;
        bus
    }

    async fn restart_on_new_port(&mut self) {
        self.proc.kill9();
        self.port = testkit::free_port();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        self.proc = spawn(&self.dir, self.port, &self.db_url, &self.routes, &extra);
        self.url = format!("http://127.0.0.1:{}", self.port);
        self.proc.wait_ready(&format!("{}/readyz", self.url), Duration::from_secs(20)).await;
    }

    /// Kills the bus with SIGKILL and starts it again on the same port and data.
    pub async fn kill9_and_restart(&mut self) {
        self.proc.kill9();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        self.proc = spawn(&self.dir, self.port, &self.db_url, &self.routes, &extra);
        self.proc.wait_ready(&format!("{}/readyz", self.url), Duration::from_secs(20)).await;
    }

    pub async fn publish(&self, body: &Value) -> (u16, Value) {
        let r = reqwest::Client::new().post(format!("{}/events", self.url)).json(body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = reqwest::get(format!("{}{path}", self.url)).await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = reqwest::Client::new().post(format!("{}{path}", self.url)).json(body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str) -> (u16, Value) {
        let r = reqwest::Client::new().post(format!("{}{path}", self.url)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

fn spawn(dir: &std::path::Path, port: u16, db_url: &str, routes: &std::path::Path, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_event-bus"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--database-url", db_url])
        .arg("--routes")
        .arg(routes)
        .args(["--endpoint-template", "http://127.0.0.1:{port}/events", "--reload-interval", "100ms"])
        .args(extra)
        .env("RUST_LOG", "info,event_bus=debug");
    Proc::spawn("event-bus", cmd, &dir.join("bus.log"))
}

/// A CloudEvent of type `ty` whose data carries `n`, for order checks.
pub fn event(ty: &str, n: u64) -> Value {
    json!({
        "specversion": "1.0", "id": uuid::Uuid::now_v7().to_string(), "source": "producer",
        "type": ty, "subject": format!("agg-{}", n % 7), "datacontenttype": "application/json", "data": {"n": n}
    })
}

pub fn ns(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["data"]["n"].as_u64().unwrap()).collect()
}
