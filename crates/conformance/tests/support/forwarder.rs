//! A loopback TCP forwarder standing in for a Kubernetes Service in front of two bus
//! replicas: it probes each backend's `/readyz` every 50 ms and sends each new connection
//! to a backend that is ready, as a Service only routes to ready pods. Services are given
//! its address as their one bus URL, so when the active bus dies and the standby becomes
//! ready they reach the standby by retrying, with nothing reconfigured. A connection that
//! arrives while no backend is ready is closed at once (the client retries).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::net::{TcpListener, TcpStream};

pub struct Forwarder {
    pub port: u16,
    active: Arc<Mutex<Option<SocketAddr>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Forwarder {
    pub async fn start(backends: Vec<SocketAddr>) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the forwarder");
        let port = listener.local_addr().unwrap().port();
        let active = Arc::new(Mutex::new(None));
        let probe = tokio::spawn(probe_backends(backends, active.clone()));
        let a = active.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let target = *a.lock().unwrap();
                let Some(target) = target else { continue }; // dropped: closed at once
                tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let mut client = client;
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Forwarder { port, active, tasks: vec![probe, accept] }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The backend new connections go to now.
    pub fn active(&self) -> Option<SocketAddr> {
        *self.active.lock().unwrap()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Keeps `active` on a ready backend: the current one while it stays ready, else the
/// first ready one, else none.
async fn probe_backends(backends: Vec<SocketAddr>, active: Arc<Mutex<Option<SocketAddr>>>) {
    let client = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    loop {
        let mut ready = vec![];
        for b in &backends {
            if let Ok(r) = client.get(format!("http://{b}/readyz")).send().await
                && r.status().is_success()
            {
                ready.push(*b);
            }
        }
        {
            let mut a = active.lock().unwrap();
            if !a.is_some_and(|cur| ready.contains(&cur)) {
                *a = ready.first().copied();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
