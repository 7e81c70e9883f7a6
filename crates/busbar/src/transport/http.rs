//! The http transport: publish to the built-in bus's `POST /events`; receive through the
//! router in [`crate::receive`].

use std::time::Duration;

use async_trait::async_trait;

use super::{ReplayPage, Transport, TransportError};
use crate::envelope::{self, CloudEvent};

#[derive(Clone, Debug)]
pub struct HttpTransport {
    client: reqwest::Client,
    publish_url: String,
    token: Option<String>,
}

impl HttpTransport {
    /// `bus_url` is the bus's base URL, e.g. `http://127.0.0.1:4005`.
    pub fn new(bus_url: &str, token: Option<String>) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .expect("a plain http client builds");
        Self { client, publish_url: format!("{}/events", bus_url.trim_end_matches('/')), token }
    }
}

#[async_trait]
impl Transport for HttpTransport {
    fn name(&self) -> &'static str {
        "http"
    }

    async fn publish(&self, events: &[CloudEvent]) -> Result<(), TransportError> {
        let mut req = self
            .client
            .post(&self.publish_url)
            .header("content-type", "application/cloudevents-batch+json")
            .body(envelope::encode_batch(events));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.map_err(|e| TransportError::Unavailable {
            transport: "http",
            reason: format!("POST {}: {e}", self.publish_url),
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = resp.text().await.unwrap_or_default();
        let reason = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or(body);
        if status.is_server_error() {
            Err(TransportError::Unavailable { transport: "http", reason: format!("{status}: {reason}") })
        } else {
            Err(TransportError::Rejected { transport: "http", status: status.as_u16(), reason })
        }
    }

    async fn replay(&self, after: u64, limit: usize, types: &[&str]) -> Result<ReplayPage, TransportError> {
        let unavailable = |reason: String| TransportError::Unavailable { transport: "http", reason };
        let mut req = self.client.get(&self.publish_url).query(&[
            ("after", after.to_string()),
            ("limit", limit.to_string()),
            ("type", types.join(",")),
        ]);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.map_err(|e| unavailable(format!("GET {}: {e}", self.publish_url)))?;
        let status = resp.status();
        if !status.is_success() {
            let reason = resp.text().await.unwrap_or_default();
            return Err(TransportError::Rejected { transport: "http", status: status.as_u16(), reason });
        }
        let next = resp
            .headers()
            .get("x-busbar-next-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| unavailable("the bus's replay answer lacks X-Busbar-Next-After".into()))?;
        let body = resp.bytes().await.map_err(|e| unavailable(e.to_string()))?;
        let events = envelope::decode_batch(&body).map_err(|e| unavailable(format!("bad replay page: {e}")))?;
        let done = events.len() < limit;
        Ok(ReplayPage { events, next, done })
    }
}
