//! The trace of the work in hand. An HTTP request continues the caller's `traceparent`
//! (or starts a trace); handling an event continues the trace it was emitted in; every
//! event emitted meanwhile carries the current span as its parent
//! ([`crate::db::Tx::emit`]). So one request's trace runs through every service its events
//! reach. Log lines written meanwhile carry `trace_id`, and spans are exported when
//! OpenTelemetry export is on ([`busbar_client::telemetry`]).

use std::{collections::HashMap, future::Future};

use axum::{extract::Request, http::StatusCode, middleware::Next, response::Response};
use busbar_client::telemetry::{Kind, Span};
pub use busbar_protocol::trace::TraceContext;
use tracing::Instrument;

tokio::task_local! {
    static CURRENT: TraceContext;
    /// While a run of events is handled: each event's span, by event id.
    static RUN: HashMap<String, TraceContext>;
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

/// Runs `work` as span `ctx` if there is one, else as it is.
pub async fn continuing<F: Future>(ctx: Option<TraceContext>, work: F) -> F::Output {
    match ctx {
        Some(ctx) => within(ctx, work).await,
        None => work.await,
    }
}

/// Runs `work`, the handling of a run of events, as span `first` (the run's first event's),
/// with each event's own span found by its id ([`of_event`]): what a handler emits for one
/// event of the run can then continue that event's trace ([`crate::Received::traced`]).
pub(crate) async fn within_run<F: Future>(
    spans: HashMap<String, TraceContext>,
    first: TraceContext,
    work: F,
) -> F::Output {
    RUN.scope(spans, within(first, work)).await
}

/// The span event `id` is handled as: its own in a run ([`within_run`]), else the current.
pub(crate) fn of_event(id: &str) -> Option<TraceContext> {
    RUN.try_with(|run| run.get(id).copied()).ok().flatten().or_else(current)
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
