//! Receiving on JetStream: the service's durable pull consumer, driven through its
//! [`Consumer`] (inbox and ordering), each message acknowledged only after its
//! transaction commits. Publishing, replay and dead letters are [`JetStream`]'s own.
//!
//! **Attempts survive crashes, and count only against the event at fault.** A message
//! delivered for the first time goes through the fast path, in a batch. A message
//! delivered again (the subscriber died, or did not acknowledge in time, while it was in
//! flight) is handled on its own, and its attempt is written to the database *before*
//! the handler runs (`busbar_attempts`): if the process dies again while handling it,
//! that attempt counts, and only against it, not against the other messages that were in
//! flight with it. Once its recorded attempts exceed `maxDeliver` it is dead-lettered
//! without running the handler again, so an event that crashes the process ends in the
//! dead letters instead of crashing it forever.
//!
//! **Redriven copies do not hold the stream.** A failing event is normally retried in
//! place, holding this subscriber's stream, because letting later events pass would break
//! order. A redriven dead letter that fails again is instead handed back to JetStream with
//! a delay (NAK): new events keep flowing, and order still holds because the subscriber
//! parks the later versions of its aggregate until it is applied.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use async_nats::jetstream::{self, AckKind};
use async_trait::async_trait;
pub use busbar_client::jetstream::{JetStream, SubscribeOptions, dlq};
use cloudevents::AttributesReader;
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::{PullLoop, Receiving, ReplayPage, Transport, TransportError};
use crate::{
    attempts::{self, Attempt, Claim},
    bus_api::Parked,
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

    async fn report_parked(&self, subscriber: &str, parked: Parked) -> Result<(), TransportError> {
        JetStream::report_parked(self, subscriber, parked).await
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
        // Missed heartbeats are how a dead server (e.g. a cluster node) is noticed: two of
        // them end the stream and the runtime resubscribes, through another node.
        .heartbeat(Duration::from_secs(5))
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
            // A message delivered again, or a redriven copy, is handled on its own.
            if let Some((msg, Ok(ev))) = batch.front()
                && (delivery_count(msg) > 1 || dlq::is_redrive(msg))
            {
                let (msg, ev) = (msg.clone(), ev.clone());
                batch.pop_front();
                if !handle_alone(t, opts, consumer, stats, &durable, &msg, &ev, stop).await? {
                    return Ok(());
                }
                continue;
            }
            // The run of first deliveries at the front goes through one transaction.
            let run =
                batch.iter().take_while(|(m, d)| d.is_ok() && delivery_count(m) == 1 && !dlq::is_redrive(m)).count();
            if run == 0 {
                let (msg, decoded) = batch.pop_front().expect("not empty");
                stats.failed.inc();
                let error = decoded.as_ref().err().cloned().unwrap_or_default();
                if !retry_in_place(t, opts, consumer, stats, &durable, &msg, &decoded, 1, error, stop).await? {
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
                if !retry_in_place(t, opts, consumer, stats, &durable, &msg, &decoded, 1, error, stop).await? {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Handles a message delivered again, or a redriven copy, on its own (see the module docs).
/// Returns `false` when `stop` interrupted it.
#[allow(clippy::too_many_arguments)]
async fn handle_alone(
    t: &JetStream,
    opts: &SubscribeOptions,
    consumer: &Consumer,
    stats: &ReceiveStats,
    durable: &str,
    msg: &jetstream::Message,
    ev: &CloudEvent,
    stop: &CancellationToken,
) -> Result<bool, String> {
    let db = consumer.db();
    if dlq::is_redrive(msg) && delivery_count(msg) == 1 {
        // A redriven copy starts a new count, whatever was recorded before it died.
        attempts::clear(db, ev.id()).await.map_err(|e| e.to_string())?;
    }
    let attempts = match attempts::begin(db, ev.id()).await.map_err(|e| e.to_string())? {
        Attempt::Number(n) => n,
        Attempt::DeadLettered => return already_dead_lettered(durable, msg).await,
    };
    if attempts > opts.max_deliver as i64 {
        let error = format!(
            "{} attempts did not finish: the subscriber crashed or timed out while handling it each time",
            attempts - 1
        );
        stats.failed.inc();
        return give_up(t, db, durable, msg, ev, (attempts - 1) as u32, &error).await;
    }
    match consumer.receive(ev).await {
        Ok(o) => {
            stats.record(&o);
            msg.ack().await.map_err(|e| format!("ack failed: {e}"))?;
            attempts::clear(db, ev.id()).await.map_err(|e| e.to_string())?;
            Ok(true)
        }
        Err(e) if dlq::is_redrive(msg) => {
            stats.failed.inc();
            if attempts >= opts.max_deliver.max(1) as i64 {
                return give_up(t, db, durable, msg, ev, attempts as u32, &e.to_string()).await;
            } else {
                // Back to JetStream for later: new events pass it meanwhile.
                let delay = opts.backoff().random_jittered(attempts as u32);
                tracing::info!(%durable, attempt = attempts, retry_in_ms = delay.as_millis() as u64, error = %e,
                    "a redriven event failed again; it will be retried without holding up new events");
                msg.ack_with(AckKind::Nak(Some(delay))).await.map_err(|e| format!("nak failed: {e}"))?;
            }
            Ok(true)
        }
        Err(e) => {
            stats.failed.inc();
            retry_in_place(t, opts, consumer, stats, durable, msg, &Ok(ev.clone()), attempts, e.to_string(), stop).await
        }
    }
}

/// `msg`'s event was already recorded as a dead letter (by a backfill that gave up on it
/// too): JetStream stops delivering it, and no second dead letter is written.
async fn already_dead_lettered(durable: &str, msg: &jetstream::Message) -> Result<bool, String> {
    tracing::info!(%durable, "event already dead-lettered by this subscriber's backfill; moving past it");
    msg.ack_with(AckKind::Term).await.map_err(|e| format!("term failed: {e}"))?;
    Ok(true)
}

/// Gives up on `msg` after `attempts`: records it as a dead letter unless the backfill (or
/// another replica) is doing so or has done so ([`attempts::claim`]).
async fn give_up(
    t: &JetStream,
    db: &crate::Db,
    durable: &str,
    msg: &jetstream::Message,
    ev: &CloudEvent,
    attempts: u32,
    error: &str,
) -> Result<bool, String> {
    match attempts::claim(db, ev.id()).await.map_err(|e| e.to_string())? {
        Claim::Mine => {
            if let Err(e) = t.record_dead_letter(durable, msg, attempts, error).await {
                let _ = attempts::release(db, ev.id()).await;
                return Err(e.to_string());
            }
            attempts::dead_lettered(db, ev.id()).await.map_err(|e| e.to_string())?;
            crate::metrics::dead_lettered(ev.ty());
            Ok(true)
        }
        Claim::Done => already_dead_lettered(durable, msg).await,
        Claim::Taken => {
            // Being recorded right now by the backfill: look again later, in case its
            // holder dies before it has (the claim is then taken over).
            tracing::info!(%durable, event_id = ev.id(), "another path is dead-lettering this event; looking again later");
            msg.ack_with(AckKind::Nak(Some(CLAIM_RECHECK))).await.map_err(|e| format!("nak failed: {e}"))?;
            Ok(true)
        }
    }
}

/// When a message whose dead letter someone else is recording comes back.
const CLAIM_RECHECK: Duration = Duration::from_secs(5);

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
    mut attempts: i64,
    mut error: String,
    stop: &CancellationToken,
) -> Result<bool, String> {
    // Failures are retried here, holding this subscriber's stream, rather than NAKed: a
    // NAK lets later messages overtake the failed one. JetStream's own redelivery (after
    // ack_wait) covers a subscriber that dies; each retry is recorded before it runs, so
    // a crash during one counts.
    let ev = match decoded {
        Ok(ev) => ev,
        Err(_) => {
            t.record_dead_letter(durable, msg, attempts as u32, &error).await.map_err(|e| e.to_string())?;
            // Not a CloudEvent: its type is the last token of its subject.
            crate::metrics::dead_lettered(msg.subject.rsplit('.').next().unwrap_or_default());
            return Ok(true);
        }
    };
    let db = consumer.db();
    loop {
        if attempts >= opts.max_deliver.max(1) as i64 {
            return give_up(t, db, durable, msg, ev, attempts as u32, &error).await;
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
        attempts = match attempts::begin_at_least(db, ev.id(), attempts + 1).await.map_err(|e| e.to_string())? {
            Attempt::Number(n) => n,
            Attempt::DeadLettered => return already_dead_lettered(durable, msg).await,
        };
        match consumer.receive(ev).await {
            Ok(o) => {
                stats.record(&o);
                msg.ack().await.map_err(|e| format!("ack failed: {e}"))?;
                attempts::clear(db, ev.id()).await.map_err(|e| e.to_string())?;
                return Ok(true);
            }
            Err(e) => {
                stats.failed.inc();
                error = e.to_string();
            }
        }
    }
}
