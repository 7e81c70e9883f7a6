//! The built-in bus's HTTP API as a client: what the SDK publishes and replays with, and
//! what `busbar dlq`, `busbar status` and the operator read. Request and answer bodies
//! are the types of [`busbar_protocol::bus_api`].

use std::time::Duration;

use busbar_protocol::{
    CloudEvent,
    bus_api::{self, DeadLetter, ErrorBody, RedriveResult, SubscriberStatus},
    envelope,
};

use crate::{ReplayPage, TransportError, error_chain, one_line};

/// What a call to the bus's admin API can come to.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot reach the bus at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// 401 or 403: no valid token, or one that may not do this.
    #[error("the bus refused ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("{message}")]
    NotFound { message: String },
    #[error("the bus at {url} answered {status}: {message}")]
    Failed { url: String, status: u16, message: String },
}

#[derive(Clone, Debug)]
pub struct BusClient {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl BusClient {
    /// `base_url` is the bus's base URL, e.g. `http://127.0.0.1:4005`; `token` is sent as
    /// `Authorization: Bearer` when the bus requires one.
    pub fn new(base_url: &str, token: Option<String>) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .expect("a plain http client builds");
        Self { client, base: base_url.trim_end_matches('/').to_owned(), token }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Publishes `events` in order; `Ok` only once the bus holds them durably.
    pub async fn publish(&self, events: &[CloudEvent]) -> Result<(), TransportError> {
        let url = format!("{}/events", self.base);
        let resp = self
            .request(reqwest::Method::POST, "/events")
            .header("content-type", bus_api::BATCH_CONTENT_TYPE)
            .body(envelope::encode_batch(events))
            .send()
            .await
            .map_err(|e| TransportError::Unavailable { transport: "http", reason: format!("POST {url}: {e}") })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let reason = error_text(&resp.text().await.unwrap_or_default());
        if status.is_server_error() {
            Err(TransportError::Unavailable { transport: "http", reason: format!("{status}: {reason}") })
        } else {
            Err(TransportError::Rejected { transport: "http", status: status.as_u16(), reason })
        }
    }

    /// Up to `limit` events of `types` (all if empty) stored after `after`, oldest first.
    pub async fn replay(&self, after: u64, limit: usize, types: &[&str]) -> Result<ReplayPage, TransportError> {
        let query = bus_api::ReplayQuery {
            after: Some(after as i64),
            limit: Some(limit as i64),
            ty: (!types.is_empty()).then(|| types.join(",")),
        };
        let resp = self.get_events(&query).await?;
        let next = number_header(&resp, bus_api::NEXT_AFTER_HEADER)?;
        let body = resp.bytes().await.map_err(|e| http_unavailable(e.to_string()))?;
        let events = envelope::decode_batch(&body).map_err(|e| http_unavailable(format!("bad replay page: {e}")))?;
        let done = events.len() < limit;
        Ok(ReplayPage { events, next, done })
    }

    /// The log's last sequence now (the [`bus_api::HEAD_HEADER`] of a one-event replay).
    pub async fn head(&self) -> Result<u64, TransportError> {
        let query = bus_api::ReplayQuery { after: None, limit: Some(1), ty: None };
        number_header(&self.get_events(&query).await?, bus_api::HEAD_HEADER)
    }

    /// `GET /events` (replay); a refusal is [`TransportError::Rejected`] with the bus's reason.
    async fn get_events(&self, query: &bus_api::ReplayQuery) -> Result<reqwest::Response, TransportError> {
        let resp = self
            .request(reqwest::Method::GET, "/events")
            .query(query)
            .send()
            .await
            .map_err(|e| http_unavailable(format!("GET {}/events: {e}", self.base)))?;
        let status = resp.status();
        if !status.is_success() {
            let reason = error_text(&resp.text().await.unwrap_or_default());
            return Err(TransportError::Rejected { transport: "http", status: status.as_u16(), reason });
        }
        Ok(resp)
    }

    /// Records that `subscriber` gives up on `event` (`POST /deadletters`).
    pub async fn record_dead_letter(
        &self,
        subscriber: &str,
        event: &CloudEvent,
        attempts: u32,
        reason: &str,
    ) -> Result<(), TransportError> {
        let body = bus_api::NewDeadLetter {
            subscriber: subscriber.to_owned(),
            event: serde_json::to_value(event).expect("CloudEvents serialize"),
            attempts,
            error: reason.to_owned(),
        };
        let url = format!("{}/deadletters", self.base);
        let resp = self
            .request(reqwest::Method::POST, "/deadletters")
            .json(&body)
            .send()
            .await
            .map_err(|e| TransportError::Unavailable { transport: "http", reason: format!("POST {url}: {e}") })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let reason = error_text(&resp.text().await.unwrap_or_default());
        Err(TransportError::Rejected { transport: "http", status: status.as_u16(), reason })
    }

    /// `GET /subscribers` (admin).
    pub async fn subscribers(&self) -> Result<Vec<SubscriberStatus>, BusError> {
        self.call(reqwest::Method::GET, "/subscribers", &[]).await
    }

    /// `GET /deadletters` (admin): up to `limit`, oldest first, only `subscriber`'s if given.
    pub async fn dead_letters(&self, subscriber: Option<&str>, limit: u64) -> Result<Vec<DeadLetter>, BusError> {
        let mut q = vec![("limit", limit.to_string())];
        if let Some(s) = subscriber {
            q.push(("subscriber", s.to_owned()));
        }
        self.call(reqwest::Method::GET, "/deadletters", &q).await
    }

    /// Redrives one dead letter (admin). [`BusError::NotFound`] when no such dead letter waits.
    pub async fn redrive(&self, id: u64) -> Result<RedriveResult, BusError> {
        self.call(reqwest::Method::POST, &format!("/deadletters/{id}/redrive"), &[]).await
    }

    /// Redrives every dead letter, or only `subscriber`'s (admin).
    pub async fn redrive_all(&self, subscriber: Option<&str>) -> Result<RedriveResult, BusError> {
        let q: Vec<(&str, String)> = subscriber.iter().map(|s| ("subscriber", s.to_string())).collect();
        self.call(reqwest::Method::POST, "/deadletters/redrive", &q).await
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, BusError> {
        let resp = self
            .request(method, path)
            .query(query)
            .send()
            .await
            .map_err(|e| BusError::Unreachable { url: self.base.clone(), reason: error_chain(&e) })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        match status {
            200..=299 => serde_json::from_str(&text).map_err(|e| BusError::Failed {
                url: self.base.clone(),
                status,
                message: format!("unexpected answer to {path}: {e}"),
            }),
            401 | 403 => Err(BusError::Refused { status, message: error_text(&text) }),
            404 => Err(BusError::NotFound { message: error_text(&text) }),
            _ => Err(BusError::Failed { url: self.base.clone(), status, message: error_text(&text) }),
        }
    }
}

/// The `error` of an [`ErrorBody`], or the start of whatever else the body was.
fn error_text(body: &str) -> String {
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(e) => e.error,
        Err(_) => one_line(body, 300),
    }
}

fn http_unavailable(reason: String) -> TransportError {
    TransportError::Unavailable { transport: "http", reason }
}

/// A numeric header of a replay answer.
fn number_header(resp: &reqwest::Response, name: &str) -> Result<u64, TransportError> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| http_unavailable(format!("the bus's replay answer lacks {name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_reads_the_error_body_or_shows_the_start() {
        assert_eq!(error_text(r#"{"error":"no"}"#), "no");
        assert_eq!(error_text("plain\ntext"), "plain text");
    }

    #[tokio::test]
    async fn admin_calls_read_typed_answers_and_refusals() {
        let app = axum::Router::new()
            .route(
                "/subscribers",
                axum::routing::get(|| async {
                    axum::Json(serde_json::json!([{"name": "query", "endpoint": "http://q/events", "types": ["A"],
                        "position": 3, "lag": 1, "attempts": 0, "lastError": null, "deadLetters": 0}]))
                }),
            )
            .route(
                "/deadletters",
                axum::routing::get(|| async {
                    (axum::http::StatusCode::FORBIDDEN, axum::Json(serde_json::json!({"error": "admin only"})))
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let bus = BusClient::new(&url, Some("t".into()));
        let subs = bus.subscribers().await.unwrap();
        assert_eq!((subs[0].name.as_str(), subs[0].lag), ("query", 1));
        match bus.dead_letters(None, 10).await {
            Err(BusError::Refused { status: 403, message }) => assert_eq!(message, "admin only"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        match bus.redrive(1).await {
            Err(BusError::NotFound { .. }) => {}
            other => panic!("expected 404, got {other:?}"),
        }
    }
}
