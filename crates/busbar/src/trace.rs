//! The trace of the work in hand. An HTTP request continues the caller's `traceparent`
//! (or starts a trace); handling an event continues the trace it was emitted in; every
//! event emitted meanwhile carries the current span as its parent
//! ([`crate::db::Tx::emit`]). So one request's trace runs through every service its events
//! reach. Log lines written meanwhile carry `trace_id`, and spans are exported when
//! OpenTelemetry export is on ([`busbar_client::telemetry`]).

use std::future::Future;

use axum::{extract::Request, http::StatusCode, middleware::Next, response::Response};
use busbar_client::telemetry::{Kind, Span};
pub use busbar_protocol::trace::TraceContext;
use tracing::Instrument;

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// The span the current task works in, if any.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|c| *c).ok()
}

/// Runs `work` as span `ctx`: what it emits names `ctx` as parent, and what it logs
/// carries the trace id.
pub async fn within<F: Future>(ctx: TraceContext, work: F) -> F::Output {
    let log = tracing::info_span!("trace", trace_id = %ctx.trace_id_hex());
    CURRENT.scope(ctx, work).instrument(log).await
}

/// Middleware: each API request is a span of the caller's trace (`traceparent` header) or
/// of a new one. Probes, metrics and the bus's pushes are not: a push carries many events
/// of many traces, and each event's handling is its own span ([`crate::consumer`]).
pub async fn http_span(req: Request, next: Next) -> Response {
    if matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics" | "/events") {
        return next.run(req).await;
    }
    let parent = req.headers().get("traceparent").and_then(|v| v.to_str().ok()).and_then(TraceContext::parse);
    let ctx = parent.map(|p| p.child()).unwrap_or_else(TraceContext::root);
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| req.uri().path().to_owned());
    let mut span = Span::start(format!("{} {route}", req.method()), Kind::Server, ctx, parent.map(|p| p.span_id));
    span.attr("http.request.method", req.method().to_string());
    span.attr("http.route", route);
    let response = within(ctx, next.run(req)).await;
    let status = response.status();
    span.attr("http.response.status_code", i64::from(status.as_u16()));
    span.end((status >= StatusCode::INTERNAL_SERVER_ERROR).then_some(status.as_str()));
    response
}
