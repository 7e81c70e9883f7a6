//! The bus's spans in each event's trace (exported only when OpenTelemetry export is on):
//! storing it, and delivering it to each subscriber. They sit beside the subscriber's own
//! handling span, under the span that emitted the event: a push carries events of many
//! traces, so the bus passes each event's `traceparent` on untouched rather than rewrite
//! stored events per subscriber.

use busbar::{
    CloudEvent, envelope,
    telemetry::{self, Kind, Span},
};

/// One span per event that carries a trace; none when export is off. At debug level each
/// is also logged with its trace id.
pub fn spans<'a>(
    events: impl IntoIterator<Item = &'a CloudEvent>,
    kind: Kind,
    name: impl Fn(&CloudEvent) -> String,
) -> Vec<Span> {
    if !wanted() {
        return vec![];
    }
    events
        .into_iter()
        .filter_map(|ev| {
            let parent = envelope::trace(ev)?;
            let name = name(ev);
            tracing::debug!(trace_id = %parent.trace_id_hex(), event_id = busbar::AttributesReader::id(ev), "{name}");
            let mut span = Span::start(name, kind, parent.child(), Some(parent.span_id));
            span.attr("messaging.message.id", busbar::AttributesReader::id(ev).to_owned());
            Some(span)
        })
        .collect()
}

/// [`spans`] for stored events, read back from their JSON (only when export is on).
pub fn spans_of_stored<'a>(
    payloads: impl IntoIterator<Item = &'a str>,
    kind: Kind,
    name: impl Fn(&CloudEvent) -> String,
) -> Vec<Span> {
    if !wanted() {
        return vec![];
    }
    let events: Vec<CloudEvent> = payloads.into_iter().filter_map(|p| envelope::decode_one(p).ok()).collect();
    spans(&events, kind, name)
}

/// Whether anyone would see the spans: export is on, or debug logging is.
fn wanted() -> bool {
    telemetry::exporting() || tracing::enabled!(tracing::Level::DEBUG)
}

/// Ends every span, failed with `error` if given.
pub fn end(spans: Vec<Span>, error: Option<&str>) {
    for s in spans {
        s.end(error);
    }
}
