//! Trace export: standard OpenTelemetry over OTLP/HTTP, off by default. It is on when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set;
//! `OTEL_EXPORTER_OTLP_PROTOCOL` picks `http/protobuf` (the default) or `http/json`,
//! `OTEL_SERVICE_NAME` the service's name (default: busbar's name for it), and the SDK's
//! `OTEL_BSP_*` variables the batching.
//!
//! busbar keeps its own trace context ([`TraceContext`]): it must travel with every event
//! through databases and the bus, whether or not anything is exported. So busbar makes its
//! spans' ids itself and hands each finished span to the OpenTelemetry SDK's batch
//! processor, which exports it with the OTLP exporter; nothing here decides ids twice.

use std::{borrow::Cow, sync::OnceLock, time::SystemTime};

use busbar_protocol::trace::TraceContext;
use opentelemetry::{
    InstrumentationScope, KeyValue,
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    trace::{BatchSpanProcessor, SpanData, SpanEvents, SpanLinks, SpanProcessor},
};

static EXPORT: OnceLock<Option<BatchSpanProcessor>> = OnceLock::new();

/// Turns export on if the environment asks for it; `service` names this process unless
/// `OTEL_SERVICE_NAME` does. Only the first call counts. A bad setting is logged and export
/// stays off: a service should not refuse to start over its traces.
pub fn init(service: &str) {
    EXPORT.get_or_init(|| {
        let endpoint = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))?;
        let name = std::env::var("OTEL_SERVICE_NAME").ok().filter(|n| !n.is_empty()).unwrap_or_else(|| service.into());
        let protocol = protocol();
        // The exporter's blocking HTTP client must not be made (or dropped) on an async
        // runtime's thread: build it on a thread of its own.
        let built = std::thread::spawn(move || {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(protocol)
                .build()
                .map_err(|e| e.to_string())?;
            let mut processor = BatchSpanProcessor::builder(exporter).build();
            processor.set_resource(&Resource::builder().with_service_name(name).build());
            Ok::<_, String>(processor)
        })
        .join();
        match built {
            Ok(Ok(p)) => {
                tracing::info!(%endpoint, ?protocol, "exporting traces with OpenTelemetry (OTLP)");
                Some(p)
            }
            Ok(Err(e)) => {
                tracing::warn!(%endpoint, error = %e, "cannot export traces; continuing without");
                None
            }
            Err(_) => None,
        }
    });
}

/// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or `OTEL_EXPORTER_OTLP_PROTOCOL`.
fn protocol() -> Protocol {
    let asked = ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"]
        .iter()
        .find_map(|k| std::env::var(k).ok())
        .unwrap_or_default();
    match asked.trim() {
        "http/json" => Protocol::HttpJson,
        "" | "http/protobuf" => Protocol::HttpBinary,
        other => {
            tracing::warn!(protocol = other, "busbar exports traces over OTLP/HTTP only; using http/protobuf");
            Protocol::HttpBinary
        }
    }
}

/// Whether spans are exported.
pub fn exporting() -> bool {
    matches!(EXPORT.get(), Some(Some(_)))
}

/// Exports what is still buffered; call once before the process exits.
pub fn shutdown() {
    if let Some(Some(p)) = EXPORT.get() {
        let _ = p.shutdown();
    }
}

/// What a span stands for, as OpenTelemetry classifies it.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Handling a request that came in.
    Server,
    /// Handling an event that arrived.
    Consumer,
    /// Handing events on (the bus delivering them).
    Producer,
    Internal,
}

/// A span being timed: exported when it ends, if export is on (otherwise nearly free).
pub struct Span {
    live: Option<Box<Live>>,
}

struct Live {
    name: Cow<'static, str>,
    kind: Kind,
    ctx: TraceContext,
    parent: Option<[u8; 8]>,
    start: SystemTime,
    attributes: Vec<KeyValue>,
}

impl Span {
    /// Starts span `ctx` (its own id), a child of span `parent` when it has one.
    pub fn start(name: impl Into<Cow<'static, str>>, kind: Kind, ctx: TraceContext, parent: Option<[u8; 8]>) -> Span {
        let live = exporting().then(|| {
            Box::new(Live { name: name.into(), kind, ctx, parent, start: SystemTime::now(), attributes: vec![] })
        });
        Span { live }
    }

    pub fn attr(&mut self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        if let Some(l) = &mut self.live {
            l.attributes.push(KeyValue::new(key, value));
        }
    }

    /// Ends it, failed with `error` if given.
    pub fn end(self, error: Option<&str>) {
        let (Some(l), Some(Some(p))) = (self.live, EXPORT.get()) else { return };
        let flags = if l.ctx.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        p.on_end(SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(l.ctx.trace_id),
                SpanId::from_bytes(l.ctx.span_id),
                flags,
                false,
                TraceState::default(),
            ),
            parent_span_id: l.parent.map(SpanId::from_bytes).unwrap_or(SpanId::INVALID),
            parent_span_is_remote: l.parent.is_some(),
            span_kind: match l.kind {
                Kind::Server => SpanKind::Server,
                Kind::Consumer => SpanKind::Consumer,
                Kind::Producer => SpanKind::Producer,
                Kind::Internal => SpanKind::Internal,
            },
            name: l.name,
            start_time: l.start,
            end_time: SystemTime::now(),
            attributes: l.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: error.map(|e| Status::error(e.to_owned())).unwrap_or(Status::Unset),
            instrumentation_scope: InstrumentationScope::builder("busbar").build(),
        });
    }
}
