//! `POST /events` for services on the http transport: the bus pushes one CloudEvent or a
//! batch; each is handled through the [`Consumer`] in order, and the answer is 2xx only
//! after every handler transaction has committed.
//!
//! On a failure the answer is 500 with `handled`, the number of leading events that did
//! commit, so the bus can resume from the first one that did not.

use axum::{Json, Router, extract::State, routing::post};
use cloudevents::AttributesReader;
use serde::Serialize;

use crate::{
    consumer::{Consumer, Outcome},
    envelope,
    web::{ApiError, Body},
};

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Receipt {
    pub handled: usize,
    pub applied: usize,
    pub duplicates: usize,
    pub deferred: usize,
    pub stale: usize,
}

pub fn router(consumer: Consumer) -> Router {
    Router::new().route("/events", post(receive)).with_state(consumer)
}

async fn receive(
    State(consumer): State<Consumer>,
    Body(body): Body,
) -> Result<Json<Receipt>, axum::response::Response> {
    use axum::response::IntoResponse;
    let events = envelope::decode_batch(&body).map_err(|e| ApiError::bad_request(e.to_string()).into_response())?;
    let mut receipt = Receipt::default();
    for ev in &events {
        match consumer.receive(ev).await {
            Ok(outcome) => {
                receipt.handled += 1;
                match outcome {
                    Outcome::Applied { drained } => receipt.applied += 1 + drained,
                    Outcome::Duplicate => receipt.duplicates += 1,
                    Outcome::Deferred { .. } => receipt.deferred += 1,
                    Outcome::Stale => receipt.stale += 1,
                }
            }
            Err(e) => {
                tracing::warn!(event_id = ev.id(), event_type = ev.ty(), error = %e, "event handling failed; the bus will redeliver");
                let body =
                    serde_json::json!({ "error": e.to_string(), "handled": receipt.handled, "event_id": ev.id() });
                return Err((axum::http::StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response());
            }
        }
    }
    Ok(Json(receipt))
}
