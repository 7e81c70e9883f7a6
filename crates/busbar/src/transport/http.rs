//! The http transport: publish to, replay from and record dead letters on the built-in
//! bus through its HTTP API ([`BusClient`]). The bus pushes events to the service's
//! `POST /events` ([`crate::receive`]).

use async_trait::async_trait;
use busbar_client::bus::BusClient;

use super::{Receiving, ReplayPage, Transport, TransportError};
use crate::{config::BusbarConfig, envelope::CloudEvent, subscription::Subscription};

#[derive(Clone, Debug)]
pub struct HttpTransport {
    bus: BusClient,
}

impl HttpTransport {
    /// `bus_url` is the bus's base URL, e.g. `http://127.0.0.1:4005`.
    pub fn new(bus_url: &str, token: Option<String>) -> Self {
        Self { bus: BusClient::new(bus_url, token) }
    }
}

#[async_trait]
impl Transport for HttpTransport {
    fn name(&self) -> &'static str {
        "http"
    }

    async fn publish(&self, events: &[CloudEvent]) -> Result<(), TransportError> {
        self.bus.publish(events).await
    }

    async fn replay(&self, after: u64, limit: usize, types: &[&str]) -> Result<ReplayPage, TransportError> {
        self.bus.replay(after, limit, types).await
    }

    async fn dead_letter(
        &self,
        subscriber: &str,
        event: &CloudEvent,
        attempts: u32,
        reason: &str,
    ) -> Result<(), TransportError> {
        self.bus.record_dead_letter(subscriber, event, attempts, reason).await
    }

    fn receiving(&self, _: &BusbarConfig, _: &Subscription) -> Receiving {
        Receiving::Push
    }
}
