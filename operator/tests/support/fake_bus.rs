//! A stand-in for the built-in bus's admin API: `GET /subscribers` answers what the test
//! says, and remembers the bearer token it was called with.

use std::sync::{Arc, Mutex};

use axum::{Json, Router, extract::State, http::HeaderMap, routing::get};
use busbar_protocol::bus_api::{Parked, SubscriberStatus};

#[derive(Clone, Default)]
struct Shared {
    rows: Arc<Mutex<Vec<SubscriberStatus>>>,
    bearer: Arc<Mutex<Option<String>>>,
}

pub struct FakeBus {
    url: String,
    shared: Shared,
}

impl FakeBus {
    pub async fn start() -> FakeBus {
        let shared = Shared::default();
        let app = Router::new().route("/subscribers", get(subscribers)).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeBus { url, shared }
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// From now on the bus reports `service` with these figures.
    pub fn report(&self, service: &str, lag: i64, dead_letters: i64, parked: Option<Parked>) {
        let mut rows = self.shared.rows.lock().unwrap();
        rows.retain(|r| r.name != service);
        rows.push(SubscriberStatus {
            name: service.into(),
            endpoint: format!("http://{service}:4000/events"),
            types: vec![],
            position: 0,
            lag,
            pending: lag,
            oldest_pending_age_ms: None,
            attempts: 0,
            last_error: None,
            dead_letters,
            parked,
        });
    }

    /// The bearer token of the last call.
    pub fn bearer(&self) -> Option<String> {
        self.shared.bearer.lock().unwrap().clone()
    }
}

async fn subscribers(State(s): State<Shared>, headers: HeaderMap) -> Json<Vec<SubscriberStatus>> {
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    *s.bearer.lock().unwrap() = bearer.map(str::to_owned);
    Json(s.rows.lock().unwrap().clone())
}
