//! One bus process writes the log. A second process on the same database stands by: it
//! answers `/healthz` (it is alive) and `/metrics` (`busbar_bus_active` 0, nothing
//! delivered) but `/readyz` and every API call with 503, saying it is a standby, until the
//! first one dies and it takes the log over. Then the same listener serves the real API.

use std::sync::{Arc, OnceLock};

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode},
    response::{IntoResponse, Response},
};
use busbar::web::ApiError;
use tower::ServiceExt;

use crate::metrics::Metrics;

/// The API, once this process holds the log.
#[derive(Clone, Default)]
pub struct Active(Arc<OnceLock<Router>>);

impl Active {
    pub fn set(&self, app: Router) {
        let _ = self.0.set(app);
    }
}

pub fn router(active: Active, metrics: Metrics) -> Router {
    Router::new().fallback(move |req: Request<Body>| {
        let (active, metrics) = (active.clone(), metrics.clone());
        async move {
            match active.0.get() {
                Some(app) => app.clone().oneshot(req).await.into_response(),
                None => standby(req.uri().path(), &metrics),
            }
        }
    })
}

fn standby(path: &str, metrics: &Metrics) -> Response {
    if path == "/healthz" {
        return (StatusCode::OK, "ok (standby)").into_response();
    }
    if path == "/metrics" {
        let text = metrics.render();
        return ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
            .into_response();
    }
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "this event-bus is a standby: another event-bus process holds the log on this database; it takes over \
         when that one stops",
    )
    .into_response()
}
