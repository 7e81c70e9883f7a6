//! A real HTTP subscriber on 127.0.0.1 that records every CloudEvent pushed to its
//! `POST /events` (a bare object or an array), and can be told to misbehave.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, body::Bytes, extract::State, http::StatusCode, routing::post};
use serde_json::Value;

/// How the subscriber answers.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Answer the next `n` requests with 500.
    pub fail_next: usize,
    /// Sleep this long before answering the next `n` requests.
    pub stall_next: Option<(usize, Duration)>,
    /// Refuse (500, with this message) any event whose id is listed; events before it in
    /// the batch are recorded and reported as handled.
    pub poison_ids: Vec<String>,
}

#[derive(Default)]
struct Inner {
    events: Vec<Value>,
    requests: usize,
    behaviour: Behaviour,
}

#[derive(Clone)]
pub struct Subscriber {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Subscriber {
    pub async fn start() -> Subscriber {
        Self::start_on(0).await
    }

    pub async fn start_on(port: u16) -> Subscriber {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new().route("/events", post(receive)).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind subscriber");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Subscriber { addr, inner, task: Arc::new(task) }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.inner.lock().unwrap().behaviour);
    }

    /// Every event received and accepted, in arrival order (duplicates included).
    pub fn events(&self) -> Vec<Value> {
        self.inner.lock().unwrap().events.clone()
    }

    pub fn ids(&self) -> Vec<String> {
        self.events().iter().map(|e| e["id"].as_str().unwrap_or_default().to_owned()).collect()
    }

    pub fn requests(&self) -> usize {
        self.inner.lock().unwrap().requests
    }

    /// Waits until at least `n` events arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Value> {
        crate::wait_until(timeout, &format!("{n} events at subscriber :{}", self.port()), || async {
            let ev = self.events();
            (ev.len() >= n).then_some(ev)
        })
        .await
    }
}

impl Subscriber {
    /// Waits until at least `n` distinct events (by id) arrived: after a redelivery,
    /// [`Self::wait_for`] counts copies and may return before every event came.
    pub async fn wait_for_distinct(&self, n: usize, timeout: Duration) -> Vec<Value> {
        crate::wait_until(timeout, &format!("{n} distinct events at subscriber :{}", self.port()), || async {
            let ev = self.events();
            let distinct: std::collections::HashSet<&str> = ev.iter().filter_map(|e| e["id"].as_str()).collect();
            (distinct.len() >= n).then_some(ev.clone())
        })
        .await
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

async fn receive(State(inner): State<Arc<Mutex<Inner>>>, body: Bytes) -> (StatusCode, Json<Value>) {
    let stall = {
        let mut g = inner.lock().unwrap();
        g.requests += 1;
        match &mut g.behaviour.stall_next {
            Some((n, d)) if *n > 0 => {
                *n -= 1;
                Some(*d)
            }
            _ => None,
        }
    };
    if let Some(d) = stall {
        tokio::time::sleep(d).await;
        return (StatusCode::OK, Json(serde_json::json!({})));
    }
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, Json(serde_json::json!({"error": e.to_string()}))),
    };
    let batch = match parsed {
        Value::Array(a) => a,
        v => vec![v],
    };
    let mut g = inner.lock().unwrap();
    if g.behaviour.fail_next > 0 {
        g.behaviour.fail_next -= 1;
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(serde_json::json!({"error": "subscriber told to fail"})));
    }
    for (i, ev) in batch.into_iter().enumerate() {
        let id = ev["id"].as_str().unwrap_or_default().to_owned();
        if g.behaviour.poison_ids.contains(&id) {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(serde_json::json!({"error": format!("poison event {id} rejected"), "handled": i})),
            );
        }
        g.events.push(ev);
    }
    (StatusCode::OK, Json(serde_json::json!({})))
}
