//! The metrics every busbar process shows under the same names, wherever they apply (the
//! README's "Metrics" lists them all): HTTP requests on the services and the bus, and
//! event handling on every service. Each is one process-wide family, registered into the
//! process's `/metrics` registry, so the code that measures needs no handle passed down.

use std::{sync::LazyLock, time::Instant};

use axum::{
    extract::{MatchedPath, Request},
    middleware::Next,
    response::Response,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// The route as declared (`/posts/{id}/comments`), so ids do not multiply series.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerLabels {
    pub event_type: String,
    /// `ok` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceivedLabels {
    pub event_type: String,
    /// `applied`, `duplicate`, `parked`, `stale` or `failed`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub event_type: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// 0.5 ms to about 4 s, doubling.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

static HTTP: LazyLock<Histograms<HttpLabels>> = LazyLock::new(|| Family::new_with_constructor(latency));
static HANDLER: LazyLock<Histograms<HandlerLabels>> = LazyLock::new(|| Family::new_with_constructor(latency));
static RECEIVED: LazyLock<Family<ReceivedLabels, Counter>> = LazyLock::new(Family::default);
static DEAD_LETTERED: LazyLock<Family<TypeLabels, Counter>> = LazyLock::new(Family::default);

/// Registers the HTTP request histogram (`busbar_http_request_duration_seconds` in a
/// registry prefixed `busbar`).
pub fn register_http(r: &mut Registry) {
    r.register_with_unit(
        "http_request_duration",
        "HTTP requests served, by method, declared route and status",
        Unit::Seconds,
        HTTP.clone(),
    );
}

/// Registers the event-handling metrics (`busbar_handler_duration_seconds`,
/// `busbar_events_received_total`, `busbar_events_dead_lettered_total`).
pub fn register_events(r: &mut Registry) {
    r.register_with_unit(
        "handler_duration",
        "Time the service's handler took per event, by type and result",
        Unit::Seconds,
        HANDLER.clone(),
    );
    r.register(
        "events_received",
        "Events received, by type and what became of them (applied, duplicate, parked, stale, failed); \
         counted when decided, so an attempt whose transaction is rolled back and retried counts again",
        RECEIVED.clone(),
    );
    r.register(
        "events_dead_lettered",
        "Events this service gave up on and recorded as dead letters, by type (on the built-in bus, those the \
         bus gives up on after failed pushes are the bus's busbar_bus_events_dead_lettered_total)",
        DEAD_LETTERED.clone(),
    );
}

/// Middleware: times every request into the HTTP histogram.
pub async fn time_requests(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let response = next.run(req).await;
    let labels = HttpLabels {
        method,
        // Unknown paths are one series, however many are tried.
        route: route.unwrap_or_else(|| "unmatched".into()),
        status: response.status().as_u16(),
    };
    HTTP.get_or_create(&labels).observe(start.elapsed().as_secs_f64());
    response
}

/// Records one run of the handler.
pub fn handled(event_type: &str, seconds: f64, ok: bool) {
    let result = if ok { "ok" } else { "error" };
    HANDLER.get_or_create(&HandlerLabels { event_type: event_type.to_owned(), result }).observe(seconds);
    received(event_type, if ok { "applied" } else { "failed" });
}

/// Counts an event's outcome.
pub fn received(event_type: &str, outcome: &'static str) {
    RECEIVED.get_or_create(&ReceivedLabels { event_type: event_type.to_owned(), outcome }).inc();
}

/// Counts a dead letter this service recorded.
pub fn dead_lettered(event_type: &str) {
    DEAD_LETTERED.get_or_create(&TypeLabels { event_type: event_type.to_owned() }).inc();
}
