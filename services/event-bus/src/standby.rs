//! One bus process writes the log. A second process on the same database stands by: it
//! answers `/healthz` (it is alive) but `/readyz` and every API call with 503, saying it
//! is a standby, until the first one dies and it takes the log over. Then the same
//! listener serves the real API.

use std::sync::{Arc, OnceLock};

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode},
    response::{IntoResponse, Response},
};
use busbar::web::ApiError;
use tower::ServiceExt;

/// The API, once this process holds the log.
#[derive(Clone, Default)]
pub struct Active(Arc<OnceLock<Router>>);

impl Active {
    pub fn set(&self, app: Router) {
        let _ = self.0.set(app);
    }
}

pub fn router(active: Active) -> Router {
    Router::new().fallback(move |req: Request<Body>| {
        let active = active.clone();
        async move {
            match active.0.get() {
                Some(app) => app.clone().oneshot(req).await.into_response(),
                None => standby(req.uri().path()),
            }
        }
    })
}

fn standby(path: &str) -> Response {
    if path == "/healthz" {
        return (StatusCode::OK, "ok (standby)").into_response();
    }
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "this event-bus is a standby: another event-bus process holds the log on this database; it takes over \
         when that one stops",
    )
    .into_response()
}
