//! Push delivery: one worker per subscriber walks the log in order from its cursor and
//! POSTs batches to the subscriber's `/events`. A failure is retried (backoff + jitter)
//! from the first event the subscriber did not handle; after `maxDeliver` attempts that
//! event goes to the dead-letter store and the worker moves on.
//!
//! Redriven dead letters are delivered by a second task per subscriber, beside the first:
//! a redriven event that fails again waits out its backoff without holding up new events.
//! Order per aggregate still holds, because the subscriber parks later versions until the
//! redriven one is applied.

use std::{sync::Arc, time::Duration};

use busbar::{
    Backoff,
    bus_api::{Parked, PushFailure, Receipt},
    spec::StartFrom,
    telemetry::Kind,
};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::Metrics,
    routes::Route,
    store::{Cursor, Store, Stored},
    traces,
};

#[derive(Debug, Clone, Copy)]
pub struct PushMode {
    /// Most events per request.
    pub batch: usize,
    /// With `batch == 1`, send a bare CloudEvent object instead of a one-element array,
    /// for subscribers written against the course's single-event `POST /events`.
    pub bare_single: bool,
}

const CURSOR_SAVE_EVERY: Duration = Duration::from_millis(200);

/// Retries while a subscriber is down (connection refused): no attempts count, so the wait
/// grows to a cap instead of following the spec's backoff.
static UNREACHABLE_RETRY: std::sync::LazyLock<Backoff> =
    std::sync::LazyLock::new(|| Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5)));

/// Retries of the bus's own database (a locked or unreachable store): quick, then capped.
static STORE_RETRY: std::sync::LazyLock<Backoff> =
    std::sync::LazyLock::new(|| Backoff::exponential(Duration::from_millis(100), Duration::from_secs(30)));

#[derive(Clone)]
pub struct Worker {
    pub store: Store,
    pub route: Route,
    pub head: watch::Receiver<i64>,
    pub client: reqwest::Client,
    pub redrive: Arc<Notify>,
    pub stop: CancellationToken,
    pub metrics: Metrics,
    pub mode: PushMode,
    /// What each subscriber last said it holds parked (from its receipts).
    pub parked: ParkedReports,
}

/// The parked events each subscriber reported in its last receipt.
#[derive(Clone, Default)]
pub struct ParkedReports(Arc<std::sync::Mutex<std::collections::BTreeMap<String, Parked>>>);

impl ParkedReports {
    pub fn get(&self, subscriber: &str) -> Option<Parked> {
        self.0.lock().expect("parked reports").get(subscriber).copied()
    }
    fn set(&self, subscriber: &str, p: Parked) {
        self.0.lock().expect("parked reports").insert(subscriber.to_owned(), p);
    }
}

/// The outcome of one push.
#[derive(Debug, PartialEq)]
pub enum Pushed {
    /// All handled; the subscriber's receipt says what it holds parked, if it says.
    All(Option<Parked>),
    /// The first `handled` events were handled; the rest were not, because of `error`.
    Failed { handled: usize, error: String, blame: Blame },
}

/// Which event, if any, a failed push says is at fault: only that one's attempts count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The subscriber answered: the event after the `handled` ones failed.
    Event,
    /// Nothing took the connection: the subscriber is down. No event's fault, so no
    /// attempt counts and nothing is dead-lettered for it; delivery waits and retries.
    Nobody,
    /// The request broke, or got no answer in time, after it was sent: one of its events
    /// may have crashed or stalled the subscriber. Only a push of one event says which.
    Unknown,
}

impl Worker {
    pub async fn run(mut self) {
        let name = self.route.subscriber.clone();
        let initial = match self.route.start_from {
            StartFrom::Beginning => 0,
            StartFrom::Now => *self.head.borrow(),
        };
        let Some(mut cur) = self.retry_store("reading the cursor", || self.store.cursor(&name, initial)).await else {
            return;
        };
        tracing::info!(subscriber = %name, endpoint = %self.route.endpoint, types = ?self.route.types, position = cur.position, "delivery started");
        let (mut last_save, mut dirty) = (tokio::time::Instant::now(), false);
        let (mut isolate_until, mut unreachable) = (0i64, 0u32);
        let lag = self.metrics.lag.get_or_create(&Metrics::sub(&name)).clone();
        loop {
            if self.stop.is_cancelled() {
                break;
            }
            let upto = *self.head.borrow_and_update();
            lag.set(upto - cur.position);
            if cur.position >= upto {
                // Caught up. The position is stored once the throttle allows, unless more
                // events come first: saving it here at once cost a commit (an fsync under
                // `full`) per push at moderate rates, each holding the log's write lock
                // that publishes wait for. A bus killed before the save sends those events
                // again, which subscribers' inboxes absorb.
                let save_at = last_save + CURSOR_SAVE_EVERY;
                tokio::select! {
                    r = self.head.changed() => if r.is_err() { break },
                    _ = tokio::time::sleep_until(save_at), if dirty => {
                        self.save(&cur).await;
                        last_save = tokio::time::Instant::now();
                        dirty = false;
                    }
                    _ = self.stop.cancelled() => break,
                }
                continue;
            }
            // After a push whose failure could not be blamed on one event, events go one at
            // a time until past that batch, so the one at fault is found and only it is
            // charged with attempts.
            let limit = if cur.position < isolate_until { 1 } else { self.mode.batch as i64 };
            let types = self.route.types.clone();
            let Some(batch) =
                self.retry_store("reading the log", || self.store.read(cur.position, upto, &types, limit)).await
            else {
                break;
            };
            let Some(last) = batch.last() else {
                // Nothing for this subscriber up to `upto`: skip the whole range at once.
                cur.position = upto;
                self.save_throttled(&cur, &mut last_save, &mut dirty).await;
                continue;
            };
            let full = batch.len() as i64 == limit;
            let last_seq = last.seq;
            match self.push(&batch).await {
                Pushed::All(parked) => {
                    unreachable = 0;
                    self.note_parked(parked);
                    self.metrics.delivered.get_or_create(&Metrics::sub(&name)).inc_by(batch.len() as u64);
                    cur.position = if full { last_seq } else { upto };
                    cur.attempts = 0;
                    cur.last_error = None;
                    self.save_throttled(&cur, &mut last_save, &mut dirty).await;
                }
                Pushed::Failed { handled, error, blame } => {
                    self.metrics.delivered.get_or_create(&Metrics::sub(&name)).inc_by(handled as u64);
                    self.metrics.failed_attempts.get_or_create(&Metrics::sub(&name)).inc();
                    if handled > 0 {
                        cur.position = batch[handled - 1].seq;
                        cur.attempts = 0;
                    }
                    if blame == Blame::Unknown && batch.len() - handled > 1 {
                        isolate_until = last_seq;
                        tracing::info!(subscriber = %name, %error,
                            "a push of several events broke without an answer; delivering them one at a time to find the one at fault");
                        continue;
                    }
                    if blame == Blame::Nobody {
                        unreachable += 1;
                        cur.last_error = Some(error.clone());
                        let wait = UNREACHABLE_RETRY.random_jittered(unreachable);
                        if unreachable == 1 || unreachable.is_multiple_of(20) {
                            tracing::warn!(subscriber = %name, %error, retry_in_ms = wait.as_millis() as u64,
                                "subscriber unreachable; its events wait (no attempt counts while it is down)");
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = self.stop.cancelled() => break,
                        }
                        continue;
                    }
                    unreachable = 0;
                    let failing = &batch[handled];
                    cur.attempts += 1;
                    cur.last_error = Some(error.clone());
                    if cur.attempts >= self.route.policy.max_deliver {
                        tracing::warn!(subscriber = %name, event_id = %failing.event_id, seq = failing.seq, attempts = cur.attempts, %error,
                            "giving up on event: moved to the dead-letter store");
                        let (attempts, err) = (cur.attempts, error.clone());
                        if self
                            .retry_store("dead-lettering", || self.store.dead_letter(&name, failing, attempts, &err))
                            .await
                            .is_none()
                        {
                            break;
                        }
                        self.metrics.dead_lettered.get_or_create(&Metrics::sub(&name)).inc();
                        cur = Cursor { position: failing.seq, attempts: 0, last_error: None };
                        continue;
                    }
                    self.save(&cur).await;
                    let wait = self.route.policy.backoff.random_jittered(cur.attempts);
                    tracing::info!(subscriber = %name, event_id = %failing.event_id, attempt = cur.attempts,
                        max_deliver = self.route.policy.max_deliver, retry_in_ms = wait.as_millis() as u64, %error, "delivery failed; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.stop.cancelled() => break,
                    }
                }
            }
        }
        if dirty {
            self.save(&cur).await;
        }
        tracing::info!(subscriber = %name, position = cur.position, "delivery stopped");
    }

    /// Delivers redriven dead letters, beside [`Self::run`], whenever some are marked (at
    /// start, and each time the API wakes it), until `stop`.
    pub async fn run_redrives(self) {
        loop {
            self.redrive_all().await;
            tokio::select! {
                _ = self.redrive.notified() => {}
                _ = self.stop.cancelled() => return,
            }
        }
    }

    fn note_parked(&self, parked: Option<Parked>) {
        if let Some(p) = parked {
            let sub = Metrics::sub(&self.route.subscriber);
            self.metrics.parked.get_or_create(&sub).set(p.count as i64);
            self.metrics.oldest_parked.get_or_create(&sub).set(p.oldest_age_ms as f64 / 1000.0);
            self.parked.set(&self.route.subscriber, p);
        }
    }

    /// Delivers every dead letter marked for redrive, one at a time, with the same retry
    /// policy; one that fails again returns to the store with its new error.
    async fn redrive_all(&self) {
        let name = self.route.subscriber.clone();
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let Some(Some(dl)) = self.retry_store("reading redrives", || self.store.next_redrive(&name)).await else {
                return;
            };
            let (ev, id) = (dl.event, dl.letter.id as i64);
            let mut attempts = 0;
            loop {
                match self.push(std::slice::from_ref(&ev)).await {
                    Pushed::All(parked) => {
                        self.note_parked(parked);
                        tracing::info!(subscriber = %name, event_id = %ev.event_id, "redriven event delivered");
                        self.metrics.delivered.get_or_create(&Metrics::sub(&name)).inc();
                        self.retry_store("finishing a redrive", || self.store.redrive_done(id)).await;
                        break;
                    }
                    Pushed::Failed { error, .. } => {
                        attempts += 1;
                        self.metrics.failed_attempts.get_or_create(&Metrics::sub(&name)).inc();
                        if attempts >= self.route.policy.max_deliver {
                            tracing::warn!(subscriber = %name, event_id = %ev.event_id, %error, "redriven event failed again; back in the dead-letter store");
                            self.retry_store("recording a failed redrive", || {
                                self.store.redrive_failed(id, attempts, &error)
                            })
                            .await;
                            break;
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(self.route.policy.backoff.random_jittered(attempts)) => {}
                            _ = self.stop.cancelled() => return,
                        }
                    }
                }
            }
        }
    }

    async fn push(&self, batch: &[Stored]) -> Pushed {
        let token = self.route.token.as_ref().map(|t| t.0.as_str());
        let sub = &self.route.subscriber;
        let spans = traces::spans_of_stored(batch.iter().map(|e| e.payload.as_str()), Kind::Producer, |ev| {
            format!("bus deliver {} to {sub}", busbar::AttributesReader::ty(ev))
        });
        let pushed =
            push(&self.client, &self.route.endpoint, token, batch, self.mode, self.route.policy.ack_wait).await;
        let error = match &pushed {
            Pushed::All(_) => None,
            Pushed::Failed { error, .. } => Some(error.as_str()),
        };
        traces::end(spans, error);
        pushed
    }

    /// Saves the cursor at most every [`CURSOR_SAVE_EVERY`] while events stream. Each save
    /// is a write that contends with ingest for SQLite's single write lock; after a crash,
    /// the events since the last save are delivered again, and the subscriber's inbox
    /// absorbs them.
    async fn save_throttled(&self, cur: &Cursor, last_save: &mut tokio::time::Instant, dirty: &mut bool) {
        if last_save.elapsed() >= CURSOR_SAVE_EVERY {
            self.save(cur).await;
            *last_save = tokio::time::Instant::now();
            *dirty = false;
        } else {
            *dirty = true;
        }
    }

    async fn save(&self, cur: &Cursor) {
        let name = self.route.subscriber.clone();
        self.retry_store("saving the cursor", || self.store.save_cursor(&name, cur)).await;
    }

    /// Runs a store operation until it succeeds or the worker stops. Store errors (a
    /// locked or unreachable database) are transient for a worker: it must not skip events.
    async fn retry_store<T, F, Fut>(&self, what: &str, mut op: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, busbar::db::DbError>>,
    {
        let mut failures = 0u32;
        loop {
            match op().await {
                Ok(v) => return Some(v),
                Err(e) => {
                    failures += 1;
                    tracing::warn!(subscriber = %self.route.subscriber, error = %e, attempt = failures, "{what} failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(STORE_RETRY.random_jittered(failures)) => {}
                        _ = self.stop.cancelled() => return None,
                    }
                }
            }
        }
    }
}

/// POSTs `batch` to `endpoint` and interprets the answer. A 2xx means all handled. Any
/// other answer may carry `{"error": "...", "handled": n}` (the SDK's receiver sends it).
pub async fn push(
    client: &reqwest::Client,
    endpoint: &str,
    token: Option<&str>,
    batch: &[Stored],
    mode: PushMode,
    timeout: Duration,
) -> Pushed {
    let body = if mode.bare_single && batch.len() == 1 {
        batch[0].payload.clone()
    } else {
        let mut s = String::with_capacity(batch.iter().map(|e| e.payload.len() + 1).sum::<usize>() + 2);
        s.push('[');
        for (i, e) in batch.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&e.payload);
        }
        s.push(']');
        s
    };
    let content_type = if mode.bare_single && batch.len() == 1 {
        "application/cloudevents+json"
    } else {
        "application/cloudevents-batch+json"
    };
    let mut req = client.post(endpoint).header("content-type", content_type).timeout(timeout).body(body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return Pushed::Failed {
                handled: 0,
                error: format!("no answer from {endpoint} within ackWait ({timeout:?})"),
                blame: Blame::Unknown,
            };
        }
        Err(e) => {
            let blame = if e.is_connect() { Blame::Nobody } else { Blame::Unknown };
            return Pushed::Failed {
                handled: 0,
                error: format!("cannot reach {endpoint}: {}", busbar::web::error_chain(&e)),
                blame,
            };
        }
    };
    let status = resp.status();
    if status.is_success() {
        // The SDK's receiver answers with a Receipt; other subscribers may answer anything.
        let parked = resp.json::<Receipt>().await.ok().and_then(|r| r.parked);
        return Pushed::All(parked);
    }
    let text = resp.text().await.unwrap_or_default();
    // The SDK's receiver answers a failure with a PushFailure; anything else is shown as text.
    let (handled, reason) = match serde_json::from_str::<PushFailure>(&text) {
        Ok(f) => (f.handled.min(batch.len().saturating_sub(1)), f.error),
        Err(_) => (0, busbar::web::one_line(&text, 500)),
    };
    Pushed::Failed { handled, error: format!("HTTP {}: {reason}", status.as_u16()), blame: Blame::Event }
}
