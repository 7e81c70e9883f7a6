//! Prometheus metrics for `/metrics`.

use std::sync::{
    Arc,
    atomic::{AtomicI64, AtomicU64},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Sub {
    pub subscriber: String,
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub published: Counter,
    pub duplicates: Counter,
    pub rejected: Counter,
    pub denied: Counter,
    pub head: Gauge<i64, AtomicI64>,
    /// 1 while this process holds the log; 0 while it stands by.
    pub active: Gauge,
    pub delivered: Family<Sub, Counter>,
    pub failed_attempts: Family<Sub, Counter>,
    pub dead_lettered: Family<Sub, Counter>,
    pub lag: Family<Sub, Gauge<i64, AtomicI64>>,
    pub parked: Family<Sub, Gauge<i64, AtomicI64>>,
    pub oldest_parked: Family<Sub, Gauge<f64, AtomicU64>>,
    pub pending: Family<Sub, Gauge<i64, AtomicI64>>,
    pub oldest_pending: Family<Sub, Gauge<f64, AtomicU64>>,
}

impl Metrics {
    pub fn new() -> Self {
        // `busbar_bus_*` for the bus's own, and the names every busbar process shares
        // (`busbar_http_request_duration_seconds`) at the top.
        let mut top = Registry::with_prefix("busbar");
        busbar::metrics::register_http(&mut top);
        let r = top.sub_registry_with_prefix("bus");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            published: Counter::default(),
            duplicates: Counter::default(),
            rejected: Counter::default(),
            denied: Counter::default(),
            head: Gauge::default(),
            active: Gauge::default(),
            delivered: Family::default(),
            failed_attempts: Family::default(),
            dead_lettered: Family::default(),
            lag: Family::default(),
            parked: Family::default(),
            oldest_parked: Family::default(),
            pending: Family::default(),
            oldest_pending: Family::default(),
        };
        r.register("events_stored", "Events appended to the log", m.published.clone());
        r.register(
            "events_duplicate",
            "Published events dropped because their id was already in the log",
            m.duplicates.clone(),
        );
        r.register("requests_rejected", "Publish requests refused as invalid", m.rejected.clone());
        r.register(
            "requests_denied",
            "Requests refused for a missing, foreign or insufficient token",
            m.denied.clone(),
        );
        r.register("log_head_seq", "Highest sequence number in the log", m.head.clone());
        r.register(
            "active",
            "1 while this process holds the log; 0 while it stands by for another bus process on its database",
            m.active.clone(),
        );
        r.register("events_delivered", "Events acknowledged by a subscriber", m.delivered.clone());
        r.register("delivery_failures", "Failed delivery attempts", m.failed_attempts.clone());
        r.register("events_dead_lettered", "Events moved to the dead-letter store", m.dead_lettered.clone());
        r.register("subscriber_lag", "Log head minus the subscriber's cursor", m.lag.clone());
        r.register(
            "subscriber_parked",
            "Events the subscriber holds parked, waiting for an earlier version (as it last reported)",
            m.parked.clone(),
        );
        r.register_with_unit(
            "subscriber_oldest_parked",
            "How long the subscriber's oldest parked event has waited (as it last reported)",
            prometheus_client::registry::Unit::Seconds,
            m.oldest_parked.clone(),
        );
        r.register(
            "subscriber_pending",
            "Events of the subscriber's types it has not been given yet (read when scraped)",
            m.pending.clone(),
        );
        r.register_with_unit(
            "subscriber_oldest_pending",
            "How long the oldest of those has waited (read when scraped)",
            prometheus_client::registry::Unit::Seconds,
            m.oldest_pending.clone(),
        );
        Metrics { registry: Arc::new(top), ..m }
    }

    /// Shows each subscriber's counters from the start, at 0 until something happens (a
    /// standby, which delivers nothing, shows them too).
    pub fn init_subscribers<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            let sub = Self::sub(name);
            let _ = (self.delivered.get_or_create(&sub), self.failed_attempts.get_or_create(&sub));
            let _ = self.dead_lettered.get_or_create(&sub);
        }
    }

    pub fn sub(name: &str) -> Sub {
        Sub { subscriber: name.to_owned() }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
