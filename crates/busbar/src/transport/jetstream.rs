//! Receiving on JetStream: the service's durable pull consumer, driven through its
//! [`Consumer`] (inbox and ordering), each message acknowledged only after its
//! transaction commits. Publishing and replay are [`JetStream`]'s own.

use std::{collections::VecDeque, time::Duration};

use async_nats::jetstream::{self, AckKind};
use async_trait::async_trait;
pub use busbar_client::jetstream::{JetStream, SubscribeOptions, dlq};
use cloudevents::AttributesReader;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::{ReplayPage, Transport, TransportError};
use crate::{
    consumer::Consumer,
    envelope::{self, CloudEvent},
    names::stream_name,
    receive::ReceiveStats,
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
}

/// Runs a durable subscription until `stop`: each message goes through `consumer` (inbox
/// and ordering) and is acknowledged only after its transaction commits. NATS outages are
/// logged and retried with backoff; nothing is acknowledged that was not applied.
pub async fn run_subscriber(t: JetStream, opts: SubscribeOptions, consumer: Consumer, stop: CancellationToken) {
    run_subscriber_with_stats(t, opts, consumer, ReceiveStats::default(), stop).await
}

/// [`run_subscriber`], counting every outcome in `stats` (the service's `/metrics`), as
/// the http transport's receiver does.
pub async fn run_subscriber_with_stats(
    t: JetStream,
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
    t: &JetStream,
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
            t.record_dead_letter(durable, msg, attempts as u32, &error).await.map_err(|e| e.to_string())?;
            return Ok(true);
        }
        let delay = opts.backoff().delay(attempts as u32);
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
