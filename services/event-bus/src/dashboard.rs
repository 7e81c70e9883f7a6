//! The dashboard: `GET /` serves one self-contained page (no CDN, no build step; the HTML,
//! CSS and JS are in `dashboard/index.html`, compiled into the binary), and `GET /graph.svg`
//! draws the event graph of the bus's current ServiceBus spec.
//!
//! Neither needs a token, even on a bus with a key. The page is static: everything it
//! shows beyond the graph it fetches from the API with the token the user types in, so
//! the API's checks (`access.rs`) still decide who sees subscriber state, dead letters
//! and events. The graph reveals only which services exist and which event types go
//! where: the spec, which every service's operator already holds and which carries no
//! events, payloads or tokens.

use std::sync::{Arc, RwLock};

use axum::{
    Router,
    extract::State,
    http::{HeaderValue, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use busbar::{graph, spec::ServiceBus, web::ApiError};

use crate::api::AppState;

/// The ServiceBus the bus runs by: parsed from `--routes` at start and replaced on each
/// valid reload; `None` without `--routes`.
pub type CurrentSpec = Arc<RwLock<Option<ServiceBus>>>;

const PAGE: &str = include_str!("dashboard/index.html");

pub fn routes() -> Router<AppState> {
    Router::new().route("/", get(page)).route("/graph.svg", get(graph_svg))
}

pub async fn page() -> Response {
    let mut r = Html(PAGE).into_response();
    // The page loads nothing from anywhere but this bus; say so to the browser too.
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
        ),
    );
    // A bus upgraded in place serves its own page on the next load, not a cached one.
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn graph_svg(State(s): State<AppState>) -> Result<Response, ApiError> {
    let svg = svg_of(s.spec.read().expect("spec lock").as_ref())?;
    let headers = [(header::CONTENT_TYPE, "image/svg+xml; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")];
    Ok((headers, svg).into_response())
}

pub fn svg_of(bus: Option<&ServiceBus>) -> Result<String, ApiError> {
    let bus = bus.ok_or_else(|| {
        ApiError::not_found("this bus runs without a ServiceBus manifest (--routes), so it has no event graph")
    })?;
    let g = graph::analyze(&bus.spec);
    Ok(graph::render::svg(&graph::render::Drawing::new(&bus.name, &bus.spec, &g)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_graph_is_the_specs_svg_and_a_bus_without_a_spec_says_why_it_has_none() {
        let bus = busbar::spec::parse_manifest(include_str!("../../../k8s/base/servicebus.yaml")).unwrap();
        let svg = svg_of(Some(&bus)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("moderation"), "{svg:.200}");
        let e = svg_of(None).unwrap_err();
        assert!(e.message.contains("--routes"), "{}", e.message);
        assert!(PAGE.contains("<title>busbar</title>"));
    }
}
