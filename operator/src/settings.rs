//! Operator-wide settings, from its flags: what the objects it creates look like, whether
//! and where it reads the built-in bus's figures, and when lag is worth an Event. Plain
//! data, read by observe and by plan.

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Image of the built-in event bus.
    pub bus_image: String,
    pub bus_port: u16,
    /// Size of the bus's log volume.
    pub bus_storage: String,
    pub bus_storage_class: Option<String>,
    /// Read per-subscriber figures from the bus's `/subscribers` (off in tests without a bus).
    pub bus_stats: bool,
    /// Where to read a built-in bus's figures instead of its in-cluster Service address, with
    /// `{bus}` and `{namespace}` replaced: for an operator outside the cluster (which cannot
    /// resolve `*.svc` names), and for tests that serve the figures themselves.
    pub bus_stats_url: Option<String>,
    /// A subscriber with more events pending than this is reported with a Warning Event when
    /// it crosses the line (and a Normal one when it is back under).
    pub lag_warning: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bus_image: "ghcr.io/busbar-dev/event-bus:latest".into(),
            bus_port: 4005,
            bus_storage: "1Gi".into(),
            bus_storage_class: None,
            bus_stats: true,
            bus_stats_url: None,
            lag_warning: 1000,
        }
    }
}
