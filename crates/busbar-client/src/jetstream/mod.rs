//! JetStream: the transport for users who outgrow one machine.
//!
//! - One stream per ServiceBus (`BUSBAR_<BUS>`), subjects `busbar.<bus>.<EventType>`
//!   (see [`busbar_domain::names`]).
//! - Publish sets `Nats-Msg-Id` to the event id, so JetStream drops duplicates within its
//!   duplicate window.
//! - Each subscribing service has one durable pull consumer, filtered to its event types,
//!   with explicit ack and `ack_wait` from the spec ([`SubscribeOptions`]). The SDK's
//!   runtime consumes it; the operator provisions it with the same settings.
//! - Each subscriber reports what it holds parked into the key-value bucket
//!   `BUSBAR_<BUS>_PARKED`, one key per durable ([`parked`]).
//! - When the last allowed delivery fails, the subscriber copies the event, with the
//!   error, to the dead-letter stream `BUSBAR_<BUS>_DLQ` and terminates it. [`dlq`]
//!   records, lists and redrives those dead letters.
//!
//! Here: connecting and the streams. Publishing and replay are in `publish`, a
//! subscriber's consumer settings in `consumer`, dead letters in [`dlq`], each subscriber's
//! figures in `status`.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, pull},
    stream,
};
use busbar_domain::names::{all_dead_letter_subjects, all_subjects, dead_letter_stream_name, stream_name};
use futures::StreamExt;

use crate::TransportError;

mod consumer;
pub mod dlq;
pub mod parked;
mod publish;
mod status;

pub use consumer::SubscribeOptions;

/// Publishes in flight per call, well under async-nats' limit of pending acks.
const PUBLISH_WINDOW: usize = 256;
/// Longest wait for one window's acknowledgements before the caller retries.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest one replay or dead-letter read waits for its messages.
const READ_EXPIRES: Duration = Duration::from_secs(5);

/// How long JetStream remembers message ids to drop duplicate publishes.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

pub(crate) fn unavailable(reason: impl std::fmt::Display) -> TransportError {
    TransportError::Unavailable { transport: "jetstream", reason: reason.to_string() }
}

#[derive(Clone, Debug)]
pub struct JetStream {
    /// Set once the streams are known to exist, so publishing checks only once.
    streams_ready: std::sync::Arc<tokio::sync::OnceCell<()>>,
    /// The parked-figures bucket, once this client has written to it.
    parked_store: std::sync::Arc<tokio::sync::OnceCell<jetstream::kv::Store>>,
    client: async_nats::Client,
    js: jetstream::Context,
    bus: String,
    replicas: usize,
}

impl JetStream {
    /// Connects to `url` and makes sure the bus's stream and dead-letter stream exist. If
    /// NATS is not reachable yet the client keeps retrying in the background, and calls
    /// fail (and are retried by their callers) until it is.
    pub async fn connect(url: &str, bus: &str) -> Result<Self, TransportError> {
        Self::connect_with(url, bus, true, None).await
    }

    /// Like [`Self::connect`], as NATS user `service` with its busbar token as password
    /// (see [`crate::nats_auth`] for the server side), replies on the service's own inbox.
    pub async fn connect_as(url: &str, bus: &str, service: &str, token: &str) -> Result<Self, TransportError> {
        Self::connect_with(url, bus, true, Some((service, token))).await
    }

    /// Like [`Self::connect`], but fails at once if NATS cannot be reached now, for a
    /// command that should say so instead of waiting (e.g. `busbar dlq`).
    pub async fn connect_now(url: &str, bus: &str) -> Result<Self, TransportError> {
        Self::connect_with(url, bus, false, None).await
    }

    /// [`Self::connect_now`] as a NATS user (see [`Self::connect_as`]).
    pub async fn connect_now_as(url: &str, bus: &str, user: &str, token: &str) -> Result<Self, TransportError> {
        Self::connect_with(url, bus, false, Some((user, token))).await
    }

    async fn connect_with(
        url: &str,
        bus: &str,
        wait_for_server: bool,
        user: Option<(&str, &str)>,
    ) -> Result<Self, TransportError> {
        let mut options = async_nats::ConnectOptions::new().name(format!("busbar {bus}"));
        if let Some((service, token)) = user {
            options = options
                .user_and_password(service.to_owned(), token.to_owned())
                .custom_inbox_prefix(busbar_domain::names::inbox_prefix(service));
        }
        if wait_for_server {
            options = options.retry_on_initial_connect();
        } else {
            options = options.connection_timeout(Duration::from_secs(5));
        }
        let client = options
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("connected to NATS"),
                    async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
                    // e.g. "Permissions Violation for Publish to ...": say it loudly.
                    async_nats::Event::ServerError(e) => tracing::error!(error = %e, "NATS refused a request"),
                    other => tracing::debug!(event = %other, "NATS client event"),
                }
            })
            // A comma-separated list names several servers of one cluster: the client tries
            // them all, and fails over between them.
            .connect(url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect::<Vec<_>>().as_slice())
            .await
            .map_err(|e| unavailable(format!("cannot connect to {url}: {e}")))?;
        let t = JetStream {
            streams_ready: Default::default(),
            parked_store: Default::default(),
            js: jetstream::new(client.clone()),
            client,
            bus: bus.to_owned(),
            replicas: 1,
        };
        Ok(t)
    }

    /// Whether the server filters a consumer on several subjects (NATS 2.10 and later).
    pub fn multi_filter(&self) -> bool {
        let version = self.client.server_info().version;
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (2, 10)
    }

    /// The NATS server's version, as it announced itself.
    pub fn server_version(&self) -> String {
        self.client.server_info().version
    }

    pub fn bus(&self) -> &str {
        &self.bus
    }

    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    /// Streams this client creates get `n` replicas (a NATS cluster keeps `n` copies of
    /// each message; 1 by default). Existing streams keep theirs.
    pub fn with_replicas(mut self, n: usize) -> Self {
        self.replicas = n.max(1);
        self
    }

    /// Creates the event stream and the dead-letter stream if they do not exist.
    pub async fn ensure_streams(&self) -> Result<(), TransportError> {
        self.js
            .get_or_create_stream(stream::Config {
                name: stream_name(&self.bus),
                subjects: vec![all_subjects(&self.bus)],
                storage: stream::StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(format!("cannot create stream {}: {e}", stream_name(&self.bus))))?;
        self.js
            .get_or_create_stream(stream::Config {
                name: dead_letter_stream_name(&self.bus),
                subjects: vec![all_dead_letter_subjects(&self.bus)],
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(format!("cannot create stream {}: {e}", dead_letter_stream_name(&self.bus))))?;
        Ok(())
    }

    /// Reads up to `limit` messages from `stream` through a short-lived consumer built from
    /// `config` (no acks), then deletes the consumer so listings stay clean. Also returns
    /// how many messages the consumer had pending when it was created.
    pub(crate) async fn read_once(
        &self,
        stream: &str,
        config: pull::Config,
        limit: usize,
    ) -> Result<(Vec<jetstream::Message>, u64), TransportError> {
        let stream = self.js.get_stream(stream).await.map_err(unavailable)?;
        let config =
            pull::Config { ack_policy: AckPolicy::None, inactive_threshold: Duration::from_secs(30), ..config };
        let consumer = stream.create_consumer(config).await.map_err(unavailable)?;
        let pending = consumer.cached_info().num_pending;
        // Asking for no more than is there means the fetch ends when they have arrived,
        // instead of waiting out its expiry (e.g. a service starting on an empty stream).
        let want = limit.min(pending as usize);
        let mut out = Vec::with_capacity(want);
        if want > 0 {
            let mut batch =
                consumer.fetch().max_messages(want).expires(READ_EXPIRES).messages().await.map_err(unavailable)?;
            while let Some(msg) = batch.next().await {
                out.push(msg.map_err(unavailable)?);
            }
        }
        let _ = stream.delete_consumer(&consumer.cached_info().name).await;
        Ok((out, pending))
    }
}
