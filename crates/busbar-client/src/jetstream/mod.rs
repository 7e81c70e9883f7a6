//! JetStream: the transport for users who outgrow one machine.
//!
//! - One stream per ServiceBus (`BUSBAR_<BUS>`), subjects `busbar.<bus>.<EventType>`
//!   (see [`busbar_domain::names`]).
//! - Publish sets `Nats-Msg-Id` to the event id, so JetStream drops duplicates within its
//!   duplicate window.
//! - Each subscribing service has one durable pull consumer, filtered to its event types,
//!   with explicit ack and `ack_wait` from the spec ([`SubscribeOptions`]). The SDK's
//!   runtime consumes it; the operator provisions it with the same settings.
//! - When the last allowed delivery fails, the subscriber copies the event, with the
//!   error, to the dead-letter stream `BUSBAR_<BUS>_DLQ` and terminates it. [`dlq`]
//!   records, lists and redrives those dead letters.

use std::time::Duration;

use async_nats::{
    HeaderMap,
    jetstream::{
        self,
        consumer::{AckPolicy, DeliverPolicy, pull},
        stream,
    },
};
use busbar_domain::{
    Backoff,
    names::{all_dead_letter_subjects, all_subjects, dead_letter_stream_name, durable, stream_name, subject},
    spec::StartFrom,
};
use busbar_protocol::{
    AttributesReader,
    envelope::{self, CloudEvent},
};
use futures::StreamExt;

use crate::{ReplayPage, TransportError};

pub mod dlq;

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

impl JetStream {
    /// Publishes `events` in order; `Ok` only once JetStream has stored every one.
    pub async fn publish(&self, events: &[CloudEvent]) -> Result<(), TransportError> {
        self.streams_ready.get_or_try_init(|| self.ensure_streams()).await?;
        // Pipelined in windows: send a window, then wait for its acknowledgements. async-nats
        // admits a bounded number of publishes awaiting acks (5000) and waits for a free slot
        // without a time limit, so unbounded batches from concurrent callers could deadlock.
        for window in events.chunks(PUBLISH_WINDOW) {
            let step = async {
                let mut acks = Vec::with_capacity(window.len());
                for ev in window {
                    let mut headers = HeaderMap::new();
                    headers.insert("Nats-Msg-Id", ev.id());
                    let payload = serde_json::to_vec(ev).expect("CloudEvents serialize");
                    let ack = self
                        .js
                        .publish_with_headers(subject(&self.bus, ev.ty()), headers, payload.into())
                        .await
                        .map_err(|e| unavailable(format!("publish {}: {e}", ev.id())))?;
                    acks.push(ack);
                }
                for ack in acks {
                    ack.await.map_err(|e| unavailable(format!("JetStream did not store the event: {e}")))?;
                }
                Ok::<_, TransportError>(())
            };
            tokio::time::timeout(PUBLISH_TIMEOUT, step)
                .await
                .map_err(|_| unavailable(format!("JetStream did not acknowledge within {PUBLISH_TIMEOUT:?}")))??;
        }
        Ok(())
    }

    /// Up to `limit` events of `types` (all if empty) stored after stream sequence `after`.
    pub async fn replay(&self, after: u64, limit: usize, types: &[&str]) -> Result<ReplayPage, TransportError> {
        let subjects: Vec<String> = types.iter().map(|t| subject(&self.bus, t)).collect();
        let (filter_subject, filter_subjects) = match subjects.as_slice() {
            [one] => (one.clone(), vec![]),
            _ if self.multi_filter() => (String::new(), subjects),
            _ => (String::new(), vec![]),
        };
        let config = pull::Config {
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
            filter_subject,
            filter_subjects,
            ..Default::default()
        };
        let (messages, pending) = self.read_once(&stream_name(&self.bus), config, limit).await?;
        // Judged by what was pending, not by a short page: a fetch that ran out of time
        // early must not end a backfill.
        let done = messages.len() as u64 >= pending;
        let (mut events, mut next) = (vec![], after);
        for msg in messages {
            next = msg.info().map_err(unavailable)?.stream_sequence;
            if dlq::is_redrive(&msg) {
                // A copy of an earlier event put back for one subscriber: not history.
                continue;
            }
            let text = std::str::from_utf8(&msg.payload).map_err(unavailable)?;
            let ev = envelope::decode_one(text).map_err(unavailable)?;
            // Servers before 2.10 cannot filter on several subjects: filter here too.
            if types.is_empty() || types.contains(&ev.ty()) {
                events.push(ev);
            }
        }
        Ok(ReplayPage { events, next, done })
    }
}

/// A durable subscription's settings, from the spec.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// The consumer's durable name: the subscribing service.
    pub durable: String,
    pub types: Vec<String>,
    pub start_from: StartFrom,
    pub max_deliver: u32,
    pub ack_wait: Duration,
    pub backoff: Vec<Duration>,
}

impl SubscribeOptions {
    /// The consumer configuration. `max_deliver` and the backoff are applied by the
    /// subscriber (which retries in place and dead-letters with the reason), not by the
    /// server: a server that reaches its own max_deliver drops the message with only an
    /// advisory, and deliveries to pull requests left over from a lost connection count
    /// towards it, so messages were lost across NATS restarts. The server redelivers an
    /// unacknowledged message after `ack_wait`, without limit. Several event types need a server
    /// that filters on several subjects (NATS 2.10+); on older servers the consumer takes
    /// the whole bus and the subscriber skips other types (`multi_filter = false`).
    pub fn consumer_config(&self, bus: &str, multi_filter: bool) -> pull::Config {
        pull::Config {
            durable_name: Some(durable(&self.durable)),
            deliver_policy: match self.start_from {
                StartFrom::Beginning => DeliverPolicy::All,
                StartFrom::Now => DeliverPolicy::New,
            },
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: -1,
            filter_subject: match self.types.as_slice() {
                [one] => subject(bus, one),
                _ if multi_filter => String::new(),
                _ => all_subjects(bus),
            },
            filter_subjects: if self.types.len() > 1 && multi_filter {
                self.types.iter().map(|t| subject(bus, t)).collect()
            } else {
                vec![]
            },
            ..Default::default()
        }
    }

    /// The spec's `delivery.backoff` as a schedule.
    pub fn backoff(&self) -> Backoff {
        Backoff::schedule(self.backoff.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_config_follows_the_spec_and_fits_jetstream_rules() {
        let o = SubscribeOptions {
            durable: "query".into(),
            types: vec!["A".into(), "B".into()],
            start_from: StartFrom::Now,
            max_deliver: 3,
            ack_wait: Duration::from_secs(30),
            backoff: vec![Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(30)],
        };
        let c = o.consumer_config("blog", true);
        assert_eq!(c.durable_name.as_deref(), Some("query"));
        assert_eq!(c.filter_subjects, ["busbar.blog.A", "busbar.blog.B"]);
        let old_server = o.consumer_config("blog", false);
        assert_eq!((old_server.filter_subject.as_str(), old_server.filter_subjects.len()), ("busbar.blog.>", 0));
        let one = SubscribeOptions { types: vec!["A".into()], ..o.clone() }.consumer_config("blog", false);
        assert_eq!(one.filter_subject, "busbar.blog.A");
        assert_eq!(c.deliver_policy, DeliverPolicy::New);
        assert_eq!(c.max_deliver, -1, "the subscriber enforces max_deliver, so the server never drops silently");
        assert!(c.backoff.is_empty());
        assert_eq!(c.ack_wait, Duration::from_secs(30));
        assert_eq!(o.backoff().delay(1), Duration::from_secs(1));
        assert_eq!(o.backoff().delay(9), Duration::from_secs(30));
    }
}
