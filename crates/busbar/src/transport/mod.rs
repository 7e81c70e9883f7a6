//! How events travel: one [`Transport`] trait, implemented for the built-in bus
//! ([`http`]) and JetStream ([`jetstream`]). The outbox relay publishes through it, backfill
//! replays through it, the parking sweeper records dead letters and reports what is parked
//! through it, and the runtime asks it how the subscription's events arrive
//! ([`Receiving`]): pushed to the service's `POST /events`, or pulled by a loop the runtime
//! runs and restarts.

pub mod http;
pub mod jetstream;

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::{
    bus_api::Parked, config::BusbarConfig, consumer::Consumer, envelope::CloudEvent, receive::ReceiveStats,
    subscription::Subscription,
};

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

    /// Records that `subscriber` gives up on `event` after `attempts` attempts, with
    /// `reason`: it joins the bus's dead letters, where `busbar dlq` lists and redrives it.
    /// For events the subscriber already took from the transport (e.g. parked ones).
    async fn dead_letter(
        &self,
        subscriber: &str,
        event: &CloudEvent,
        attempts: u32,
        reason: &str,
    ) -> Result<(), TransportError>;

    /// Records what `subscriber` holds parked now, for `busbar status` and the operator.
    /// The parking sweeper calls it when the figure changes and as a heartbeat. A no-op
    /// where the bus learns it otherwise (the built-in bus reads it from push receipts).
    async fn report_parked(&self, subscriber: &str, parked: Parked) -> Result<(), TransportError> {
        let _ = (subscriber, parked);
        Ok(())
    }

    /// How `subscription`'s events reach this service.
    fn receiving(&self, config: &BusbarConfig, subscription: &Subscription) -> Receiving;
}

/// How a subscription's events reach the service.
pub enum Receiving {
    /// The bus pushes them to `POST /events`, which the runtime always mounts.
    Push,
    /// The runtime runs this loop, and restarts it when it stops or panics.
    Pull(Arc<dyn PullLoop>),
}

/// A transport's receiving loop, for transports the service pulls from.
#[async_trait]
pub trait PullLoop: Send + Sync + 'static {
    /// Feeds the subscription's events through `consumer` until `stop`. Returns early
    /// (with why) when the subscription breaks; the runtime then restarts it.
    async fn run(&self, consumer: Consumer, stats: ReceiveStats, stop: CancellationToken) -> Result<(), String>;
}
