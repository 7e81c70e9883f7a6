//! A three-node JetStream cluster on loopback: three `nats-server` processes joined by
//! `cluster { routes }`, each with its own `jetstream { store_dir }`, each killable
//! (SIGKILL) and restartable on the same ports and storage. Needs `nats-server` 2.10+ on
//! PATH, like [`crate::Nats`].

use std::time::Duration;

use crate::{TempDir, free_port, process::Proc, temp_dir};

/// One server of the cluster.
pub struct Node {
    pub name: String,
    pub port: u16,
    pub cluster_port: u16,
    /// HTTP monitoring port: `/healthz` says when this server's JetStream is usable.
    pub monitor_port: u16,
    pub proc: Option<Proc>,
}

pub struct NatsCluster {
    pub name: String,
    pub nodes: Vec<Node>,
    pub dir: TempDir,
}

impl NatsCluster {
    /// Picks ports and storage for `size` nodes; call [`NatsCluster::start`] to run them.
    pub fn new(size: usize) -> NatsCluster {
        let nodes = (1..=size)
            .map(|i| Node {
                name: format!("n{i}"),
                port: free_port(),
                cluster_port: free_port(),
                monitor_port: free_port(),
                proc: None,
            })
            .collect();
        let name = format!("c{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        NatsCluster { name, nodes, dir: temp_dir() }
    }

    /// The first node's client URL. A client connected there learns the other nodes from
    /// the server (`connect_urls`) and fails over to them when that node dies.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[0].port)
    }

    /// Every node's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.port)).collect()
    }

    /// Starts every node and waits until each reports JetStream healthy (the cluster has
    /// formed and elected its meta leader).
    pub async fn start(&mut self) {
        crate::require_nats_server_2_10();
        for i in 0..self.nodes.len() {
            self.spawn(i);
        }
        for i in 0..self.nodes.len() {
            self.wait_healthy(i).await;
        }
    }

    /// SIGKILL node `i` (0-based).
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].proc.take() {
            p.kill9();
        }
    }

    /// Starts node `i` again on its ports and storage and waits until it is healthy.
    pub async fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_healthy(i).await;
    }

    /// The index of the node called `name` (as stream info names a leader).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    pub fn log_tail(&self, i: usize) -> String {
        self.nodes[i].proc.as_ref().map(Proc::log_tail).unwrap_or_else(|| {
            let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        })
    }

    fn log_path(&self, i: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("{}.log", self.nodes[i].name))
    }

    fn spawn(&mut self, i: usize) {
        let routes: Vec<String> =
            self.nodes.iter().map(|n| format!("nats-route://127.0.0.1:{}", n.cluster_port)).collect();
        let node = &self.nodes[i];
        let store = self.dir.path().join(&node.name);
        // `sync_interval: always`: a killed node loses nothing it acknowledged (see Nats).
        let conf = format!(
            "server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor}\n\
             jetstream {{\n  store_dir: \"{store}\"\n  sync_interval: always\n}}\n\
             cluster {{\n  name: {cluster}\n  listen: 127.0.0.1:{cport}\n  routes: [{routes}]\n}}\n",
            name = node.name,
            port = node.port,
            monitor = node.monitor_port,
            store = store.display(),
            cluster = self.name,
            cport = node.cluster_port,
            routes = routes.join(", "),
        );
        let conf_path = self.dir.path().join(format!("{}.conf", node.name));
        std::fs::write(&conf_path, conf).expect("write nats-server config");
        let mut cmd = std::process::Command::new("nats-server");
        cmd.arg("-c").arg(&conf_path);
        let proc = Proc::spawn(&format!("nats-server {}", node.name), cmd, &self.log_path(i));
        self.nodes[i].proc = Some(proc);
    }

    async fn wait_healthy(&mut self, i: usize) {
        let url = format!("http://127.0.0.1:{}/healthz", self.nodes[i].monitor_port);
        let client = reqwest::Client::new();
        let name = self.nodes[i].name.clone();
        let timeout = Duration::from_secs(30);
        let start = std::time::Instant::now();
        loop {
            if let Ok(r) = client.get(&url).timeout(Duration::from_millis(500)).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(status) = self.nodes[i].proc.as_mut().and_then(Proc::exited) {
                panic!("nats-server {name} exited ({status}) before becoming healthy:\n{}", self.log_tail(i));
            }
            if start.elapsed() > timeout {
                panic!("nats-server {name} not healthy at {url} after {timeout:?}:\n{}", self.log_tail(i));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
