//! The bus's HTTP API.
//!
//! - `POST /events`: publish one CloudEvent or an array; 200 once durable.
//! - `GET /events?after=<seq>&limit=<n>&type=<T>[,<T2>...]`: replay, oldest first. Plain
//!   `GET /events` returns the first page (1000 events). The response is a JSON array;
//!   `X-Busbar-Next-After` holds the sequence to pass as `after` for the next page, and
//!   `Link: <...>; rel="next"` is set while more may follow.
//! - `GET /deadletters[?subscriber=]`, `POST /deadletters/{id}/redrive`,
//!   `POST /deadletters/redrive[?subscriber=]`.
//! - `GET /subscribers`: each subscriber's cursor, lag, retry state and dead letters.
//! - `/healthz`, `/readyz`, `/metrics`.
//! - `GET /` and `GET /graph.svg`: the dashboard (`dashboard.rs`).
//!
//! With a bus key, all but health, metrics and the dashboard need `Authorization: Bearer
//! <token>`; see `access.rs` for who may do what. 401 means no valid token, 403 a valid
//! token asking for something its spec does not grant; either way nothing is stored.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Query, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use busbar::{
    AttributesReader,
    bus_api::{
        self, Accepted, DeadLetter, NewDeadLetter, RecordedDeadLetter, RedriveResult, ReplayQuery, SubscriberStatus,
    },
    envelope,
    telemetry::Kind,
    web::{self, ApiError, Body, PathParam},
};
use serde::Deserialize;
use tokio::sync::watch;

use crate::{
    access::{Access, Caller},
    dashboard::CurrentSpec,
    ingest::Ingest,
    metrics::Metrics,
    store::{NewEvent, Store},
    supervisor::Supervisor,
    traces,
};

pub const DEFAULT_PAGE: i64 = 1000;
pub const MAX_PAGE: i64 = 10_000;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub ingest: Ingest,
    pub head: watch::Receiver<i64>,
    pub supervisor: Arc<Supervisor>,
    pub metrics: Metrics,
    pub ready: Arc<AtomicBool>,
    pub access: Arc<std::sync::RwLock<Access>>,
    /// For the dashboard's graph.
    pub spec: CurrentSpec,
}

impl AppState {
    fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        self.counted(self.access.read().expect("access lock").caller(auth))
    }

    /// Counts a refusal in the `denied` metric.
    fn counted<T>(&self, decision: Result<T, ApiError>) -> Result<T, ApiError> {
        if decision.is_err() {
            self.metrics.denied.inc();
        }
        decision
    }

    fn admin_only(&self, headers: &HeaderMap, what: &str) -> Result<(), ApiError> {
        let caller = self.caller(headers)?;
        self.counted(self.access.read().expect("access lock").admin_only(&caller, what))
    }
}

pub fn router(state: AppState, max_body: usize) -> Router {
    Router::new()
        .route("/events", post(publish).get(replay))
        .route("/deadletters", get(list_dead_letters).post(report_dead_letter))
        .route("/deadletters/redrive", post(redrive_many))
        .route("/deadletters/{id}/redrive", post(redrive_one))
        .route("/subscribers", get(subscribers))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::dashboard::routes())
        .fallback(web::not_found)
        .method_not_allowed_fallback(|m: axum::http::Method, u: axum::http::Uri| async move {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{m} is not allowed on {}", u.path()))
        })
        .layer(DefaultBodyLimit::max(max_body))
        .route_layer(axum::middleware::from_fn(busbar::metrics::time_requests))
        .with_state(state)
}

async fn publish(State(s): State<AppState>, headers: HeaderMap, Body(body): Body) -> Result<Json<Accepted>, ApiError> {
    // Authentication first: an unknown caller learns nothing about what it sent.
    let caller = s.caller(&headers)?;
    let events = envelope::decode_batch(&body).map_err(|e| {
        s.metrics.rejected.inc();
        ApiError::bad_request(e.to_string())
    })?;
    if events.is_empty() {
        s.metrics.rejected.inc();
        return Err(ApiError::bad_request("the batch is empty; send at least one CloudEvent"));
    }
    {
        let access = s.access.read().expect("access lock");
        for ev in &events {
            s.counted(access.may_publish(&caller, ev.ty(), ev.source().as_str()))?;
        }
    }
    let n = events.len();
    let rows = events
        .iter()
        .map(|ev| NewEvent {
            event_id: ev.id().to_owned(),
            ty: ev.ty().to_owned(),
            payload: serde_json::to_string(ev).expect("CloudEvents serialize"),
        })
        .collect();
    let spans = traces::spans(&events, Kind::Consumer, |ev| format!("bus store {}", ev.ty()));
    let stored = s.ingest.append(rows).await;
    traces::end(spans, stored.as_ref().err().map(String::as_str));
    stored.map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    Ok(Json(Accepted { accepted: n }))
}

async fn replay(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ReplayQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = s.caller(&headers)?;
    let Query(q) = q.map_err(|e| {
        ApiError::bad_request(format!("{}; use ?after=<seq>&limit=<1..{MAX_PAGE}>&type=<EventType>", e.body_text()))
    })?;
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::bad_request("`after` must be 0 or more"));
    }
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!("`limit` must be between 1 and {MAX_PAGE}")));
    }
    // `type=A,B` selects several types (a comma cannot occur in an event type).
    let requested: Vec<String> =
        q.ty.iter().flat_map(|t| t.split(',')).map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect();
    let types = s.counted(s.access.read().expect("access lock").readable(&caller, &requested))?.unwrap_or_default();
    let head = *s.head.borrow();
    let rows = s.store.read(after, head, &types, limit).await.map_err(|e| ApiError::internal(e.to_string()))?;
    let next = if (rows.len() as i64) < limit { head.max(after) } else { rows.last().map(|r| r.seq).unwrap_or(after) };
    let mut body = String::with_capacity(rows.iter().map(|r| r.payload.len() + 1).sum::<usize>() + 2);
    body.push('[');
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&r.payload);
    }
    body.push(']');
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(bus_api::NEXT_AFTER_HEADER, HeaderValue::from(next));
    headers.insert(bus_api::HEAD_HEADER, HeaderValue::from(head));
    if rows.len() as i64 == limit {
        let link = format!("</events?after={next}&limit={limit}>; rel=\"next\"");
        headers.insert(header::LINK, HeaderValue::from_str(&link).expect("ASCII"));
    }
    Ok((headers, body).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLetterQuery {
    subscriber: Option<String>,
    limit: Option<i64>,
}

async fn list_dead_letters(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<DeadLetterQuery>, QueryRejection>,
) -> Result<Json<Vec<DeadLetter>>, ApiError> {
    s.admin_only(&headers, "listing dead letters")?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let rows =
        s.store.dead_letters(q.subscriber.as_deref(), limit).await.map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(rows.into_iter().map(|d| d.letter).collect()))
}

/// A subscriber gives up on an event it had already taken (see `bus_api::NewDeadLetter`).
async fn report_dead_letter(
    State(s): State<AppState>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Json<RecordedDeadLetter>, ApiError> {
    let caller = s.caller(&headers)?;
    let report: NewDeadLetter = web::parse_json(&body)?;
    let event = envelope::decode_one(&report.event.to_string())
        .map_err(|e| ApiError::bad_request(format!("`event` is not a CloudEvent: {e}")))?;
    s.counted(s.access.read().expect("access lock").may_dead_letter(&caller, &report.subscriber, event.ty()))?;
    let payload = serde_json::to_string(&event).expect("CloudEvents serialize");
    let id = s
        .store
        .report_dead_letter(&report.subscriber, event.id(), event.ty(), &payload, report.attempts, &report.error)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    s.metrics.dead_lettered.get_or_create(&Metrics::sub(&report.subscriber)).inc();
    tracing::warn!(subscriber = %report.subscriber, event_id = event.id(), error = %report.error, "a subscriber gave up on an event it had taken: dead-lettered");
    Ok(Json(RecordedDeadLetter { id: id as u64 }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedriveQuery {
    subscriber: Option<String>,
}

async fn redrive_many(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<RedriveQuery>, QueryRejection>,
) -> Result<Json<RedriveResult>, ApiError> {
    s.admin_only(&headers, "redriving dead letters")?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    redrive(&s, None, q.subscriber.as_deref()).await
}

async fn redrive_one(
    State(s): State<AppState>,
    headers: HeaderMap,
    PathParam(id): PathParam<String>,
) -> Result<Json<RedriveResult>, ApiError> {
    s.admin_only(&headers, "redriving dead letters")?;
    let id: i64 =
        id.parse().map_err(|_| ApiError::bad_request(format!("`{id}` is not a dead-letter id (a number)")))?;
    let out = redrive(&s, Some(id), None).await?;
    if out.0.redriving == 0 {
        return Err(ApiError::not_found(format!("no dead letter {id} waiting for redrive")));
    }
    Ok(out)
}

async fn redrive(s: &AppState, id: Option<i64>, subscriber: Option<&str>) -> Result<Json<RedriveResult>, ApiError> {
    let (count, subs) = s.store.request_redrive(id, subscriber).await.map_err(|e| ApiError::internal(e.to_string()))?;
    s.supervisor.notify_redrive(&subs).await;
    Ok(Json(RedriveResult { redriving: count as u64, subscribers: subs }))
}

async fn subscribers(State(s): State<AppState>, headers: HeaderMap) -> Result<Json<Vec<SubscriberStatus>>, ApiError> {
    s.admin_only(&headers, "reading subscriber state")?;
    let head = *s.head.borrow();
    let mut out = vec![];
    for r in s.supervisor.routes().await {
        let c = s
            .store
            .peek_cursor(&r.subscriber)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .unwrap_or_default();
        let (dead, dead_error) =
            s.store.dead_letter_summary(&r.subscriber).await.map_err(|e| ApiError::internal(e.to_string()))?;
        let waiting = s.store.pending(c.position, &r.types).await.map_err(|e| ApiError::internal(e.to_string()))?;
        let parked = s.supervisor.parked.get(&r.subscriber);
        out.push(SubscriberStatus {
            name: r.subscriber,
            endpoint: r.endpoint,
            types: r.types,
            position: c.position,
            lag: head - c.position,
            pending: waiting.count,
            oldest_pending_age_ms: waiting.oldest_at.map(|at| (busbar::db::now_millis() - at).max(0) as u64),
            attempts: c.attempts,
            // The event it is failing on now, else the last it gave up on.
            last_error: c.last_error.or(dead_error),
            dead_letters: dead,
            parked,
        });
    }
    Ok(Json(out))
}

async fn readyz(State(s): State<AppState>) -> Result<&'static str, ApiError> {
    if !s.ready.load(Ordering::Relaxed) {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "starting"));
    }
    sqlx::query("SELECT 1")
        .execute(s.store.db().pool())
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("database unavailable: {e}")))?;
    Ok("ready")
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    // Pending per subscriber is read now: a count per subscriber, cheap at scrape rates.
    for r in s.supervisor.routes().await {
        let position = match s.store.peek_cursor(&r.subscriber).await {
            Ok(c) => c.unwrap_or_default().position,
            Err(_) => continue,
        };
        if let Ok(p) = s.store.pending(position, &r.types).await {
            let sub = Metrics::sub(&r.subscriber);
            s.metrics.pending.get_or_create(&sub).set(p.count);
            let age = p.oldest_at.map_or(0.0, |at| (busbar::db::now_millis() - at).max(0) as f64 / 1000.0);
            s.metrics.oldest_pending.get_or_create(&sub).set(age);
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render())
}
