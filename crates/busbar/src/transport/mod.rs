//! How events leave a service. The outbox relay publishes through a [`Transport`];
//! receiving is transport-specific (the http transport mounts `POST /events`).

pub mod http;
pub mod jetstream;

use async_trait::async_trait;

use crate::envelope::CloudEvent;

pub use busbar_client::{ReplayPage, TransportError};

#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// A short name for logs and metrics, e.g. `http`.
    fn name(&self) -> &'static str;

    /// Publishes `events` in order. Returns only once the bus holds them durably; an
    /// error means some or all may not be stored, and the caller publishes them again
    /// (the bus drops duplicates by event id).
    async fn publish(&self, events: &[CloudEvent]) -> Result<(), TransportError>;

    /// Reads history: up to `limit` events of `types` stored after position `after`, oldest
    /// first. A service on a fresh database backfills its copy with this.
    async fn replay(&self, after: u64, limit: usize, types: &[&str]) -> Result<ReplayPage, TransportError>;
}
