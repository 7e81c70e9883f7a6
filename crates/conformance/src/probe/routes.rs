//! The probe's HTTP routes: emit, and read back what was emitted and applied.

use axum::{Json, Router, extract::State, routing::get, routing::post};
use busbar::{
    Db,
    web::{ApiError, JsonBody},
};

use std::sync::Arc;

use super::{
    handlers::Probe,
    store::{self, EmitError},
};
use crate::{
    events::TYPES,
    wire::{Applied, Cure, EmitRequest, Emitted, Stats},
};

/// Most events one `POST /emit` may ask for; a test wanting more sends several.
const MAX_EVENTS_PER_REQUEST: usize = 20_000;

pub fn router(db: Db, probe: Arc<Probe>) -> Router {
    let cure = Router::new().route("/cure", post(cure)).with_state(probe);
    Router::new()
        .route("/emit", post(emit))
        .route("/emitted", get(emitted))
        .route("/applied", get(applied))
        .route("/stats", get(stats))
        .with_state(db)
        .merge(cure)
}

async fn cure(State(probe): State<Arc<Probe>>, JsonBody(req): JsonBody<Cure>) -> Json<Cure> {
    probe.cured.lock().expect("cured lock").extend(req.aggregates.iter().cloned());
    Json(req)
}

async fn emit(State(db): State<Db>, JsonBody(req): JsonBody<EmitRequest>) -> Result<Json<Vec<Emitted>>, ApiError> {
    // Checked up front so that a bad item cannot leave earlier ones committed unreported.
    let mut total = 0usize;
    for item in &req.items {
        if !TYPES.contains(&item.ty.as_str()) {
            return Err(ApiError::bad_request(format!("unknown type `{}`; use one of {TYPES:?}", item.ty)));
        }
        if item.version.is_some_and(|v| v < 1) || (item.version.is_some() && item.count.unwrap_or(1) != 1) {
            return Err(ApiError::bad_request("`version` must be 1 or more, and only with `count` 1"));
        }
        total += item.count.unwrap_or(1);
    }
    if total > MAX_EVENTS_PER_REQUEST {
        return Err(ApiError::bad_request(format!("at most {MAX_EVENTS_PER_REQUEST} events per request")));
    }
    let done = store::emit(&db, &req.items, req.per_tx.unwrap_or(1)).await.map_err(|e| match e {
        EmitError::UnknownType(t) => ApiError::bad_request(format!("unknown type `{t}`")),
        EmitError::Db(e) => ApiError::internal(e.to_string()),
    })?;
    Ok(Json(done))
}

async fn emitted(State(db): State<Db>) -> Result<Json<Vec<Emitted>>, ApiError> {
    Ok(Json(store::emitted(&db).await.map_err(|e| ApiError::internal(e.to_string()))?))
}

async fn applied(State(db): State<Db>) -> Result<Json<Vec<Applied>>, ApiError> {
    Ok(Json(store::applied(&db).await.map_err(|e| ApiError::internal(e.to_string()))?))
}

async fn stats(State(db): State<Db>) -> Result<Json<Stats>, ApiError> {
    Ok(Json(store::stats(&db).await.map_err(|e| ApiError::internal(e.to_string()))?))
}
