//! Receiving on JetStream: the service's durable pull consumer, driven through its
//! [`Consumer`] (inbox and ordering), each message acknowledged only after its
//! transaction commits. Publishing, replay and dead letters are [`JetStream`]'s own.
//!
//! **Attempts survive crashes.** An event's attempts are JetStream's own delivery count
//! for the message (kept by the server, so it goes on counting when the subscriber's
//! process dies while handling it) plus the retries made in place since this delivery. A
//! message delivered more than `maxDeliver` times is dead-lettered on arrival, without
//! running the handler again: an event that crashes the process ends in the dead letters
//! instead of crashing it forever.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use async_nats::jetstream::{self, AckKind};
use async_trait::async_trait;
pub use busbar_client::jetstream::{JetStream, SubscribeOptions, dlq};
use cloudevents::AttributesReader;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::{PullLoop, Receiving, ReplayPage, Transport, TransportError};
use crate::{
    config::BusbarConfig,
    consumer::Consumer,
    envelope::{self, CloudEvent},
    names::stream_name,
    receive::ReceiveStats,
    subscription::Subscription,
};

/// Messages a subscriber asks the server for per pull request.
const PULL_BATCH: usize = 500;
/// Most messages applied in one transaction.
const APPLY_BATCH: usize = 256;

#[async_trait]
impl Transport for JetStream {
    fn name(&self) -> &'static str {
        "jetstream"
    }

    async fn publish(&self, events: &[CloudEvent]) -> Result<(), TransportError> {
        JetStream::publish(self, events).await
    }

    async fn replay(&self, after: u64, limit: usize, types: &[&str]) -> Result<ReplayPage, TransportError> {
        JetStream::replay(self, after, limit, types).await
    }

    async fn dead_letter(
        &self,
        subscriber: &str,
        event: &CloudEvent,
        attempts: u32,
        reason: &str,
    ) -> Result<(), TransportError> {
        self.record_dead_letter_event(subscriber, event, attempts, reason).await
    }

    fn receiving(&self, config: &BusbarConfig, subscription: &Subscription) -> Receiving {
        let opts = SubscribeOptions {
            durable: config.service.clone(),
            types: subscription.types.clone(),
            start_from: subscription.start_from,
            max_deliver: config.max_deliver,
            ack_wait: config.ack_wait,
            backoff: config.backoff.clone(),
        };
        Receiving::Pull(Arc::new(Pull { js: self.clone(), opts }))
    }
}

/// A durable subscription's receiving loop.
pub struct Pull {
    js: JetStream,
    opts: SubscribeOptions,
}

impl Pull {
    pub fn new(js: JetStream, opts: SubscribeOptions) -> Self {
        Self { js, opts }
    }
}

#[async_trait]
impl PullLoop for Pull {
    async fn run(&self, consumer: Consumer, stats: ReceiveStats, stop: CancellationToken) -> Result<(), String> {
        tokio::select! {
            r = subscribe_once(&self.js, &self.opts, &consumer, &stats, &stop) => r,
            _ = stop.cancelled() => Ok(()),
        }
    }
}

/// Runs a durable subscription through `consumer` until `stop`, resubscribing after a
/// failure (for code that drives a consumer itself; services get this from the runtime).
pub async fn run_subscriber(js: JetStream, opts: SubscribeOptions, consumer: Consumer, stop: CancellationToken) {
    let pull = Pull::new(js, opts);
    let backoff = crate::Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5));
    let mut failures = 0;
    while !stop.is_cancelled() {
        if let Err(e) = pull.run(consumer.clone(), ReceiveStats::default(), stop.clone()).await {
            tracing::warn!(error = %e, "JetStream subscription failed; retrying");
        }
        failures += 1;
        tokio::select! {
            _ = tokio::time::sleep(backoff.delay(failures)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn subscribe_once(
    t: &JetStream,
    opts: &SubscribeOptions,
    consumer: &Consumer,
    stats: &ReceiveStats,
    stop: &CancellationToken,
) -> Result<(), String> {
    t.ensure_streams().await.map_err(|e| e.to_string())?;
    let stream = t.context().get_stream(stream_name(t.bus())).await.map_err(|e| e.to_string())?;
    let multi = t.multi_filter();
    if !multi && opts.types.len() > 1 {
        tracing::warn!(server = %t.server_version(),
            "this NATS server filters consumers on one subject only (2.10+ filters on several); subscribing to the whole bus and skipping other event types");
    }
    let config = opts.consumer_config(t.bus(), multi);
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
            // Delivered more often than allowed: earlier deliveries died with the process
            // (or timed out). Running the handler again would likely kill it again.
            let delivered = delivery_count(&msg);
            if delivered > opts.max_deliver as i64 {
                let error = format!(
                    "delivered {delivered} times without being acknowledged: the subscriber crashed or timed out \
                     while handling it (last error unknown)"
                );
                stats.failed.inc();
                t.record_dead_letter(&durable, &msg, (delivered - 1) as u32, &error)
                    .await
                    .map_err(|e| e.to_string())?;
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
                stats.failed.inc();
                let error = decoded.as_ref().err().cloned().unwrap_or_default();
                if !retry_in_place(t, opts, consumer, stats, &durable, &msg, &decoded, error, stop).await? {
                    return Ok(());
                }
                continue;
            }
            let events: Vec<CloudEvent> =
                batch.iter().take(run).filter_map(|(_, d)| d.as_ref().ok().cloned()).collect();
            let (outcomes, error) = match consumer.receive_all(&events).await {
                Ok(outcomes) => (outcomes, String::new()),
                Err((done, e)) => (done, e.to_string()),
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
                stats.failed.inc();
                if !retry_in_place(t, opts, consumer, stats, &durable, &msg, &decoded, error, stop).await? {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// JetStream's count of deliveries of `msg`, this one included (1 when unknown).
fn delivery_count(msg: &jetstream::Message) -> i64 {
    msg.info().map(|i| i.delivered).unwrap_or(1).max(1)
}

/// Retries one message that just failed, in place, with the spec's backoff, until it
/// commits or runs out of attempts (then it is dead-lettered). Returns `false` when `stop`
/// interrupted it (the message is left unacknowledged).
#[allow(clippy::too_many_arguments)]
async fn retry_in_place(
    t: &JetStream,
    opts: &SubscribeOptions,
    consumer: &Consumer,
    stats: &ReceiveStats,
    durable: &str,
    msg: &jetstream::Message,
    decoded: &Result<CloudEvent, String>,
    mut error: String,
    stop: &CancellationToken,
) -> Result<bool, String> {
    // Failures are retried here, holding this subscriber's stream, rather than NAKed: a
    // NAK lets later messages overtake the failed one. JetStream's own redelivery (after
    // ack_wait) covers a subscriber that dies, and its delivery count says how often.
    let mut attempts = delivery_count(msg);
    loop {
        if attempts >= opts.max_deliver.max(1) as i64 || decoded.is_err() {
            t.record_dead_letter(durable, msg, attempts as u32, &error).await.map_err(|e| e.to_string())?;
            return Ok(true);
        }
        let delay = opts.backoff().random_jittered(attempts as u32);
        tracing::info!(%durable, attempt = attempts, max_deliver = opts.max_deliver, retry_in_ms = delay.as_millis() as u64,
            %error, "handling failed; will retry");
        // Keeps the message ours while we wait.
        let _ = msg.ack_with(AckKind::Progress).await;
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return Ok(false),
        }
        attempts += 1;
        let ev = decoded.as_ref().expect("undecodable messages are dead-lettered at once");
        match consumer.receive(ev).await {
            Ok(o) => {
                stats.record(&o);
                msg.ack().await.map_err(|e| format!("ack failed: {e}"))?;
                return Ok(true);
            }
            Err(e) => {
                stats.failed.inc();
                error = e.to_string();
            }
        }
    }
}
