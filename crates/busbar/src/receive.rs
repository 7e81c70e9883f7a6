//! `POST /events` for services on the http transport: the bus pushes one CloudEvent or a
//! batch; the batch is handled through the [`Consumer`] in order, in one transaction, and
//! the answer is 2xx only after it has committed.
//!
//! On a failure the answer is 500 with `handled`, the number of leading events that did
//! commit, so the bus can resume from the first one that did not. An event whose `data`
//! can never be what its type says gets 422 instead, the same body naming the problem:
//! the fault is in the event, not in this service.
//!
//! A service that has a token (`BUSBAR_TOKEN`) accepts pushes only from a caller that
//! presents that same token: the bus derives it from its key, nobody else knows it. So
//! nothing but the bus can feed events into the service's copy.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    routing::post,
};
use cloudevents::AttributesReader;
use prometheus_client::{metrics::counter::Counter, registry::Registry};

pub use crate::bus_api::Receipt;
use crate::{
    bus_api::PushFailure,
    consumer::{ConsumeError, Consumer, Outcome},
    envelope,
    parking::ParkedGauge,
    web::{ApiError, Body},
};

/// Counts of received events by outcome, for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct ReceiveStats {
    pub applied: Counter,
    pub duplicates: Counter,
    pub deferred: Counter,
    pub stale: Counter,
    pub failed: Counter,
}

impl ReceiveStats {
    pub fn register(&self, r: &mut Registry) {
        r.register("events_applied", "Events applied by this service's handler", self.applied.clone());
        r.register(
            "events_duplicate",
            "Redelivered events recognised by the inbox and ignored",
            self.duplicates.clone(),
        );
        r.register("events_deferred", "Events parked until a missing earlier version arrives", self.deferred.clone());
        r.register("events_stale", "Events older than the version already applied, ignored", self.stale.clone());
        r.register("events_failed", "Events whose handler failed (they are redelivered)", self.failed.clone());
    }

    pub fn record(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Applied { drained } => self.applied.inc_by(1 + *drained as u64),
            Outcome::Duplicate => self.duplicates.inc(),
            Outcome::Deferred { .. } => self.deferred.inc(),
            Outcome::Stale => self.stale.inc(),
        };
    }
}

pub fn router(consumer: Consumer) -> Router {
    router_with(consumer, ReceiveStats::default(), None, ParkedGauge::default())
}

/// `POST /events`; with `token`, only callers presenting it get in. Receipts carry what is
/// parked after the push (what `parked` last showed if that cannot be read), so the bus
/// knows what each subscriber holds back.
pub fn router_with(consumer: Consumer, stats: ReceiveStats, token: Option<String>, parked: ParkedGauge) -> Router {
    Router::new().route("/events", post(receive)).with_state(Receiver {
        consumer,
        stats,
        token: token.map(Arc::from),
        parked,
    })
}

#[derive(Clone)]
struct Receiver {
    consumer: Consumer,
    stats: ReceiveStats,
    token: Option<Arc<str>>,
    parked: ParkedGauge,
}

async fn receive(
    State(Receiver { consumer, stats, token, parked }): State<Receiver>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Json<Receipt>, axum::response::Response> {
    use axum::response::IntoResponse;
    if let Some(expected) = &token {
        let presented = crate::credentials::bearer(headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()));
        if !presented.is_some_and(|p| crate::credentials::token_matches(p, expected)) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "only the event bus may push events here: it presents this service's token",
            )
            .into_response());
        }
    }
    let events = envelope::decode_batch(&body).map_err(|e| ApiError::bad_request(e.to_string()).into_response())?;
    let mut receipt = Receipt::default();
    let mut drained_any = false;
    let (outcomes, failure) = match consumer.receive_all(&events).await {
        Ok(outcomes) => (outcomes, None),
        Err((outcomes, e)) => (outcomes, Some(e)),
    };
    for outcome in outcomes {
        stats.record(&outcome);
        receipt.handled += 1;
        match outcome {
            Outcome::Applied { drained } => {
                receipt.applied += 1 + drained;
                drained_any |= drained > 0;
            }
            Outcome::Duplicate => receipt.duplicates += 1,
            Outcome::Deferred { .. } => receipt.deferred += 1,
            Outcome::Stale => receipt.stale += 1,
        }
    }
    if let Some(e) = failure {
        let ev = &events[receipt.handled];
        stats.failed.inc();
        tracing::warn!(event_id = ev.id(), event_type = ev.ty(), error = %e, "event handling failed; the bus will redeliver");
        let body = PushFailure { error: e.to_string(), handled: receipt.handled, event_id: Some(ev.id().to_owned()) };
        let status = match e {
            ConsumeError::Undecodable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        return Err((status, Json(body)).into_response());
    }
    // As of now, this push included: the sweeper's figure may be a second old, and the bus
    // keeps what the last receipt said until the next push. Read only when something may be
    // parked (this push parked or drained, or the sweeper last saw some): a push that
    // changed nothing there, the usual one, costs no extra statement.
    let maybe_parked = receipt.deferred > 0 || drained_any || parked.get().is_none_or(|p| p.count > 0);
    receipt.parked = if maybe_parked {
        crate::parking::summary(consumer.db()).await.ok().or_else(|| parked.get())
    } else {
        parked.get()
    };
    Ok(Json(receipt))
}
