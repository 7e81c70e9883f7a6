//! Prometheus metrics: reconciles started and finished, errors and duration.

use std::{sync::Mutex, time::Duration};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, histogram::Histogram},
    registry::Registry,
};

pub struct Metrics {
    registry: Mutex<Registry>,
    /// Reconciles started.
    pub reconciles: Counter,
    /// Reconciles finished, with or without an error: equal to `reconciles` when none is
    /// running (tests wait for that instead of sleeping).
    pub completed: Counter,
    pub errors: Counter,
    pub duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let reconciles = Counter::default();
        let completed = Counter::default();
        let errors = Counter::default();
        let duration = Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0]);
        let mut registry = Registry::with_prefix("busbar_operator");
        registry.register("reconciles", "ServiceBus reconciles started", reconciles.clone());
        registry.register("reconciles_completed", "ServiceBus reconciles finished", completed.clone());
        registry.register("reconcile_errors", "ServiceBus reconciles that failed", errors.clone());
        registry.register("reconcile_duration_seconds", "Time one reconcile took", duration.clone());
        Metrics { registry: Mutex::new(registry), reconciles, completed, errors, duration }
    }
}

impl Metrics {
    pub fn observe(&self, took: Duration, ok: bool) {
        self.duration.observe(took.as_secs_f64());
        self.completed.inc();
        if !ok {
            self.errors.inc();
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry.lock().unwrap()).expect("writing to a String cannot fail");
        out
    }
}
