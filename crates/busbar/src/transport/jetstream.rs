//! The JetStream transport: the same SDK on NATS JetStream, for users who outgrow one
//! machine.
//!
//! - One stream per ServiceBus (`BUSBAR_<BUS>`), subjects `busbar.<bus>.<EventType>`.
//! - Publish sets `Nats-Msg-Id` to the event id, so JetStream drops duplicates within its
//!   duplicate window.
//! - Each subscribing service has one durable pull consumer, filtered to its event types,
//!   with explicit ack, `ack_wait`, `max_deliver` and backoff from the spec.
//! - When the last allowed delivery fails, the subscriber copies the event, with the
//!   error, to the dead-letter stream `BUSBAR_<BUS>_DLQ` and terminates it. [`dlq`]
//!   lists those dead letters and redrives them.

use std::{collections::VecDeque, time::Duration};

use async_nats::{
    HeaderMap,
    jetstream::{
        self, AckKind,
        consumer::{AckPolicy, DeliverPolicy, pull},
        stream,
    },
};
use async_trait::async_trait;
use cloudevents::AttributesReader;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::{ReplayPage, Transport, TransportError};
use crate::{
    consumer::Consumer,
    envelope::{self, CloudEvent},
    receive::ReceiveStats,
    spec::StartFrom,
};

pub mod dlq;

/// Publishes in flight per call, well under async-nats' limit of pending acks.
const PUBLISH_WINDOW: usize = 256;
/// Longest wait for one window's acknowledgements before the caller retries.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest one replay or dead-letter read waits for its messages.
const READ_EXPIRES: Duration = Duration::from_secs(5);
/// Messages a subscriber asks the server for per pull request.
const PULL_BATCH: usize = 500;
/// Most messages applied in one transaction.
const APPLY_BATCH: usize = 256;

/// How long JetStream remembers message ids to drop duplicate publishes.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

pub fn stream_name(bus: &str) -> String {
    format!("BUSBAR_{}", token(bus).to_uppercase())
}

pub fn dead_letter_stream_name(bus: &str) -> String {
    format!("{}_DLQ", stream_name(bus))
}

pub fn subject(bus: &str, event_type: &str) -> String {
    format!("busbar.{}.{event_type}", token(bus))
}

pub fn dead_letter_subject(bus: &str, durable: &str) -> String {
    format!("busbar-dlq.{}.{}", token(bus), token(durable))
}

/// Stream names and subject tokens allow no `.`, `*`, `>` or spaces.
fn token(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

fn unavailable(reason: impl std::fmt::Display) -> TransportError {
    TransportError::Unavailable { transport: "jetstream", reason: reason.to_string() }
}

#[derive(Clone, Debug)]
pub struct JetStreamTransport {
    /// Set once the streams are known to exist, so publishing checks only once.
    streams_ready: std::sync::Arc<tokio::sync::OnceCell<()>>,
    client: async_nats::Client,
    js: jetstream::Context,
    bus: String,
}

impl JetStreamTransport {
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
                .custom_inbox_prefix(crate::nats_auth::inbox_prefix(service));
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
            .connect(url)
            .await
            .map_err(|e| unavailable(format!("cannot connect to {url}: {e}")))?;
        let t = JetStreamTransport {
            streams_ready: Default::default(),
            js: jetstream::new(client.clone()),
            client,
            bus: bus.to_owned(),
        };
        Ok(t)
    }

    /// Whether the server filters a consumer on several subjects (NATS 2.10 and later).
    pub fn multi_filter(&self) -> bool {
        let version = self.client.server_info().version;
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (2, 10)
    }

    pub fn bus(&self) -> &str {
        &self.bus
    }

    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    /// Creates the event stream and the dead-letter stream if they do not exist.
    pub async fn ensure_streams(&self) -> Result<(), TransportError> {
        self.js
            .get_or_create_stream(stream::Config {
                name: stream_name(&self.bus),
                subjects: vec![format!("busbar.{}.>", token(&self.bus))],
                storage: stream::StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(format!("cannot create stream {}: {e}", stream_name(&self.bus))))?;
        self.js
            .get_or_create_stream(stream::Config {
                name: dead_letter_stream_name(&self.bus),
                subjects: vec![format!("busbar-dlq.{}.>", token(&self.bus))],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(format!("cannot create stream {}: {e}", dead_letter_stream_name(&self.bus))))?;
        Ok(())
    }

    /// Dead letters recorded for `durable`: the event and the last error, oldest first.
    pub async fn dead_letters(&self, durable: &str, limit: usize) -> Result<Vec<(CloudEvent, String)>, TransportError> {
        let config = pull::Config { filter_subject: dead_letter_subject(&self.bus, durable), ..Default::default() };
        let mut out = vec![];
        for msg in self.read_once(&dead_letter_stream_name(&self.bus), config, limit).await?.0 {
            let reason =
                msg.headers.as_ref().and_then(|h| h.get(dlq::ERROR_HEADER)).map(|v| v.to_string()).unwrap_or_default();
            let ev =
                envelope::decode_one(std::str::from_utf8(&msg.payload).unwrap_or_default()).map_err(unavailable)?;
            out.push((ev, reason));
        }
        Ok(out)
    }

    /// Reads up to `limit` messages from `stream` through a short-lived consumer built from
    /// `config` (no acks), then deletes the consumer so listings stay clean. Also returns
    /// how many messages the consumer had pending when it was created.
    async fn read_once(
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

#[async_trait]
impl Transport for JetStreamTransport {
    fn name(&self) -> &'static str {
        "jetstream"
    }

    async fn publish(&self, events: &[CloudEvent]) -> Result<(), TransportError> {
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

    async fn replay(&self, after: u64, limit: usize, types: &[&str]) -> Result<ReplayPage, TransportError> {
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
            durable_name: Some(token(&self.durable)),
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
                _ => format!("busbar.{}.>", token(bus)),
            },
            filter_subjects: if self.types.len() > 1 && multi_filter {
                self.types.iter().map(|t| subject(bus, t)).collect()
            } else {
                vec![]
            },
            ..Default::default()
        }
    }

    fn retry_delay(&self, delivered: i64) -> Duration {
        let i = (delivered.max(1) as usize - 1).min(self.backoff.len().saturating_sub(1));
        self.backoff.get(i).copied().unwrap_or(Duration::from_secs(1))
    }
}

/// Runs a durable subscription until `stop`: each message goes through `consumer` (inbox
/// and ordering) and is acknowledged only after its transaction commits. NATS outages are
/// logged and retried with backoff; nothing is acknowledged that was not applied.
pub async fn run_subscriber(
    t: JetStreamTransport,
    opts: SubscribeOptions,
    consumer: Consumer,
    stop: CancellationToken,
) {
    run_subscriber_with_stats(t, opts, consumer, ReceiveStats::default(), stop).await
}

/// [`run_subscriber`], counting every outcome in `stats` (the service's `/metrics`), as
/// the http transport's receiver does.
pub async fn run_subscriber_with_stats(
    t: JetStreamTransport,
    opts: SubscribeOptions,
    consumer: Consumer,
    stats: ReceiveStats,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let result = tokio::select! {
            r = subscribe_once(&t, &opts, &consumer, &stats, &stop) => r,
            _ = stop.cancelled() => return,
        };
        if stop.is_cancelled() {
            return;
        }
        failures += 1;
        let wait = Duration::from_millis(100).saturating_mul(1 << failures.min(6)).min(Duration::from_secs(5));
        match result {
            Ok(()) => tracing::warn!(durable = %opts.durable, "JetStream message stream ended; resubscribing"),
            Err(e) => tracing::warn!(durable = %opts.durable, error = %e, retry_in_ms = wait.as_millis() as u64,
                "JetStream subscription failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn subscribe_once(
    t: &JetStreamTransport,
    opts: &SubscribeOptions,
    consumer: &Consumer,
    stats: &ReceiveStats,
    stop: &CancellationToken,
) -> Result<(), String> {
    t.ensure_streams().await.map_err(|e| e.to_string())?;
    let stream = t.js.get_stream(stream_name(&t.bus)).await.map_err(|e| e.to_string())?;
    let multi = t.multi_filter();
    if !multi && opts.types.len() > 1 {
        tracing::warn!(server = %t.client.server_info().version,
            "this NATS server filters consumers on one subject only (2.10+ filters on several); subscribing to the whole bus and skipping other event types");
    }
    let config = opts.consumer_config(&t.bus, multi);
    let durable = config.durable_name.clone().unwrap_or_default();
    // create_consumer creates the durable, or updates it when only updatable fields changed.
    let js_consumer =
        stream.create_consumer(config).await.map_err(|e| format!("cannot create or update consumer {durable}: {e}"))?;
    let mut messages = js_consumer
        .stream()
        .max_messages_per_batch(PULL_BATCH)
        .heartbeat(Duration::from_secs(15))
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(%durable, types = ?opts.types, "JetStream subscription active");
    while let Some(first) = messages.next().await {
        if stop.is_cancelled() {
            return Ok(());
        }
        // Whatever else has already arrived joins this batch; nothing waits for more.
        let mut batch = vec![first.map_err(|e| e.to_string())?];
        while batch.len() < APPLY_BATCH {
            match messages.next().now_or_never() {
                Some(Some(msg)) => batch.push(msg.map_err(|e| e.to_string())?),
                _ => break,
            }
        }
        let mut queue: VecDeque<(jetstream::Message, Result<CloudEvent, String>)> =
            VecDeque::with_capacity(batch.len());
        for msg in batch {
            let decoded = std::str::from_utf8(&msg.payload)
                .map_err(|e| e.to_string())
                .and_then(|text| envelope::decode_one(text).map_err(|e| format!("not a valid CloudEvent: {e}")));
            let other_type = decoded.as_ref().is_ok_and(|ev| !opts.types.iter().any(|t| t == ev.ty()));
            // Other types reach us only on servers that cannot filter on several subjects.
            if other_type || !dlq::is_for(&msg, &durable) {
                msg.ack().await.map_err(|e| format!("ack failed: {e}"))?;
                continue;
            }
            queue.push_back((msg, decoded));
        }
        let mut batch = queue;
        while !batch.is_empty() {
            // The run of decodable events at the front goes through one transaction.
            let run = batch.iter().take_while(|(_, d)| d.is_ok()).count();
            if run == 0 {
                let (msg, decoded) = batch.pop_front().expect("not empty");
                if !handle_one(t, opts, consumer, stats, &durable, &msg, &decoded, stop).await? {
                    return Ok(());
                }
                continue;
            }
            let events: Vec<CloudEvent> =
                batch.iter().take(run).filter_map(|(_, d)| d.as_ref().ok().cloned()).collect();
            let outcomes = match consumer.receive_all(&events).await {
                Ok(outcomes) => outcomes,
                Err((done, _)) => done,
            };
            for o in &outcomes {
                stats.record(o);
            }
            let handled = outcomes.len();
            // Acknowledged only now that their transaction has committed. A plain ack is a
            // fire-and-forget publish, so a batch costs no round trips; if one is lost the
            // server redelivers after ack_wait and the inbox drops the duplicate.
            for (msg, _) in batch.drain(..handled) {
                msg.ack().await.map_err(|e| format!("ack failed: {e}"))?;
            }
            if handled < run {
                let (msg, decoded) = batch.pop_front().expect("the failing message");
                if !handle_one(t, opts, consumer, stats, &durable, &msg, &decoded, stop).await? {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Handles one message on its own, retrying in place with the spec's backoff until it
/// commits or runs out of attempts (then it is dead-lettered). Returns `false` when
/// `stop` interrupted it (the message is left unacknowledged).
#[allow(clippy::too_many_arguments)]
async fn handle_one(
    t: &JetStreamTransport,
    opts: &SubscribeOptions,
    consumer: &Consumer,
    stats: &ReceiveStats,
    durable: &str,
    msg: &jetstream::Message,
    decoded: &Result<CloudEvent, String>,
    stop: &CancellationToken,
) -> Result<bool, String> {
    // Failures are retried here, holding this subscriber's stream, rather than NAKed:
    // a NAK lets later messages overtake the failed one. JetStream's own redelivery
    // (after ack_wait) still covers a subscriber that dies. Counted per receipt:
    // redeliveries after a lost connection say nothing about whether the handler can
    // apply the event.
    let mut attempts: i64 = 1;
    loop {
        let outcome = match decoded {
            Ok(ev) => consumer.receive(ev).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.clone()),
        };
        let error = match outcome {
            Ok(o) => {
                stats.record(&o);
                msg.ack().await.map_err(|e| format!("ack failed: {e}"))?;
                return Ok(true);
            }
            Err(error) => {
                stats.failed.inc();
                error
            }
        };
        if attempts >= opts.max_deliver.max(1) as i64 || decoded.is_err() {
            dead_letter(t, durable, msg, attempts, &error).await?;
            return Ok(true);
        }
        let delay = opts.retry_delay(attempts);
        tracing::info!(%durable, attempt = attempts, max_deliver = opts.max_deliver, retry_in_ms = delay.as_millis() as u64,
            %error, "handling failed; will retry");
        // Keeps the message ours while we wait.
        let _ = msg.ack_with(AckKind::Progress).await;
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return Ok(false),
        }
        attempts += 1;
    }
}

/// Copies the message, with the error, to the dead-letter stream, then terminates it.
async fn dead_letter(
    t: &JetStreamTransport,
    durable: &str,
    msg: &jetstream::Message,
    attempts: i64,
    error: &str,
) -> Result<(), String> {
    let mut headers = HeaderMap::new();
    headers.insert(dlq::ERROR_HEADER, dlq::header_text(error).as_str());
    headers.insert(dlq::ATTEMPTS_HEADER, attempts.to_string().as_str());
    headers.insert(dlq::SUBJECT_HEADER, msg.subject.as_str());
    if let Ok(info) = msg.info() {
        headers.insert(dlq::SEQUENCE_HEADER, info.stream_sequence.to_string().as_str());
    }
    t.js.publish_with_headers(dead_letter_subject(&t.bus, durable), headers, msg.payload.clone())
        .await
        .map_err(|e| format!("dead-letter publish failed: {e}"))?
        .await
        .map_err(|e| format!("dead-letter store failed: {e}"))?;
    tracing::warn!(%durable, attempts, %error, "giving up on event: moved to the dead-letter stream");
    msg.ack_with(AckKind::Term).await.map_err(|e| format!("term failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_nats_tokens() {
        assert_eq!(stream_name("blog"), "BUSBAR_BLOG");
        assert_eq!(stream_name("my.bus"), "BUSBAR_MY_BUS");
        assert_eq!(subject("blog", "PostCreated"), "busbar.blog.PostCreated");
        assert_eq!(dead_letter_stream_name("blog"), "BUSBAR_BLOG_DLQ");
    }

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
        assert_eq!(o.retry_delay(1), Duration::from_secs(1));
        assert_eq!(o.retry_delay(9), Duration::from_secs(30));
    }
}
