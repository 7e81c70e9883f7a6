//! Backfill: a service that starts on an empty database rebuilds its copy from the bus's
//! history, replaying exactly its effective subscription's replayable types
//! ([`crate::subscription::Subscription::backfill`]).
//!
//! Progress is durable: the position reached is written in the same transaction as the
//! events applied up to it (`busbar_backfill`), so a backfill killed halfway resumes there
//! after a restart, and the inbox makes any event applied twice a no-op. Events pushed
//! live meanwhile are handled as usual; those whose predecessors the backfill has not
//! reached yet are parked (and do not expire while the backfill runs).
//!
//! **A poison event in history does not stop it.** An event whose handler fails is
//! retried with backoff, its attempts counted in the subscriber's database
//! ([`crate::attempts`], the count live delivery shares). After `maxDeliver` attempts (at
//! once for an event whose data its handler cannot decode) it is recorded as a dead letter
//! on the transport and the backfill moves past it; the later versions of its aggregate
//! wait parked for it, as they would live. If live delivery gave up on it first, the
//! backfill just moves past it.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use cloudevents::AttributesReader;
use futures::future::BoxFuture;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::{
    Backoff,
    attempts::{self, Attempt, Claim},
    consumer::{ConsumeError, Consumer},
    db::{Db, DbError, now_millis},
    envelope::CloudEvent,
    receive::ReceiveStats,
    transport::Transport,
};

/// Events per replay request.
const REPLAY_PAGE: usize = 1000;
/// Events applied per transaction.
const CHUNK: usize = 256;
/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Where a backfill should start, if one is needed: resumes an unfinished one, starts one
/// on an empty database, and otherwise says none is needed.
pub async fn start_position(db: &Db) -> Result<Option<u64>, DbError> {
    let row = sqlx::query("SELECT position, done FROM busbar_backfill WHERE id = 1").fetch_optional(db.pool()).await?;
    if let Some(r) = row {
        let (position, done): (i64, i64) = (r.try_get(0)?, r.try_get(1)?);
        return Ok((done == 0).then_some(position as u64));
    }
    let inbox_empty =
        sqlx::query("SELECT event_id FROM busbar_inbox LIMIT 1").fetch_optional(db.pool()).await?.is_none();
    if !inbox_empty {
        // A database from before backfills kept progress, already filled.
        return Ok(None);
    }
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO busbar_backfill (id, position, done, started_at) VALUES (1, 0, 0, $1) ON CONFLICT (id) DO NOTHING",
    )
    .bind(now_millis())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(0))
}

pub struct Backfill {
    pub consumer: Consumer,
    pub transport: Arc<dyn Transport>,
    pub types: Vec<String>,
    /// The subscriber's name, for the dead letters it records.
    pub subscriber: String,
    /// Attempts at an event before it is dead-lettered.
    pub max_deliver: u32,
    pub stats: ReceiveStats,
    /// True while it runs: `/readyz` answers 503, and parked events do not expire.
    pub running: Arc<AtomicBool>,
    /// Events gone through so far, for `/readyz` to say how far it is.
    pub progress: Arc<AtomicU64>,
}

impl Backfill {
    /// Replays from `from` to the end of history, retrying with backoff until it gets
    /// there or `stop`.
    pub async fn run(self, from: u64, stop: CancellationToken) {
        self.running.store(true, Ordering::Relaxed);
        let types: Vec<&str> = self.types.iter().map(String::as_str).collect();
        if from == 0 {
            tracing::info!(?types, "empty database: backfilling from history");
        } else {
            tracing::info!(?types, position = from, "resuming the backfill where it stopped");
        }
        let retry = Backoff::exponential(Duration::from_millis(200), Duration::from_secs(10));
        let (mut after, mut total, mut failures) = (from, 0usize, 0u32);
        // Events given up on (dead-lettered): left out when their page is applied again.
        let mut skipped = BTreeSet::new();
        // The event that failed last, whose attempts are cleared once it is applied.
        let mut failing: Option<String> = None;
        let mut last_log = Instant::now();
        loop {
            if stop.is_cancelled() {
                return;
            }
            let wait = match self.page(after, &types, &skipped).await {
                Ok((next, n, done)) => {
                    failures = 0;
                    if let Some(id) = failing.take()
                        && let Err(e) = attempts::clear(self.consumer.db(), &id).await
                    {
                        tracing::warn!(error = %e, event_id = %id, "cannot clear the attempts of an event now applied");
                    }
                    total += n;
                    self.progress.store(total as u64, Ordering::Relaxed);
                    after = next;
                    if done {
                        tracing::info!(events = total, position = after, skipped = skipped.len(), "backfill complete");
                        self.running.store(false, Ordering::Relaxed);
                        return;
                    }
                    if last_log.elapsed() >= PROGRESS_EVERY {
                        tracing::info!(events = total, position = after, "backfilling");
                        last_log = Instant::now();
                    }
                    continue;
                }
                Err(PageError::Event { event, error, undecodable }) => {
                    let id = event.id().to_string();
                    match self.give_up_or_retry(&event, &error, undecodable).await {
                        Ok(None) => {
                            skipped.insert(id);
                            failing = None;
                            continue;
                        }
                        Ok(Some(attempt)) => {
                            failing = Some(id);
                            retry.delay(attempt)
                        }
                        Err(e) => {
                            failures += 1;
                            tracing::warn!(error = %e, "backfill cannot record an attempt; retrying");
                            retry.delay(failures)
                        }
                    }
                }
                Err(PageError::Other(e)) => {
                    failures += 1;
                    let wait = retry.delay(failures);
                    tracing::warn!(error = %e, attempt = failures, retry_in_ms = wait.as_millis() as u64, "backfill step failed; retrying");
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Counts a failed attempt at `event`. `Ok(None)`: it is a dead letter now (or was
    /// already), move past it; `Ok(Some(n))`: it was attempt `n`, try again after a while.
    async fn give_up_or_retry(
        &self,
        event: &CloudEvent,
        error: &str,
        undecodable: bool,
    ) -> Result<Option<u32>, String> {
        let db = self.consumer.db();
        let n = match attempts::begin(db, event.id()).await.map_err(|e| e.to_string())? {
            Attempt::DeadLettered => {
                tracing::info!(event_id = %event.id(), event_type = %event.ty(), "backfill moves past an event already dead-lettered");
                return Ok(None);
            }
            Attempt::Number(n) => n.max(1) as u32,
        };
        if !undecodable && n < self.max_deliver.max(1) {
            tracing::warn!(event_id = %event.id(), event_type = %event.ty(), attempt = n, max_deliver = self.max_deliver,
                %error, "backfill: handling failed; will retry");
            return Ok(Some(n));
        }
        match attempts::claim(db, event.id()).await.map_err(|e| e.to_string())? {
            Claim::Mine => {
                if let Err(e) = self.transport.dead_letter(&self.subscriber, event, n, error).await {
                    let _ = attempts::release(db, event.id()).await;
                    return Err(e.to_string());
                }
                attempts::dead_lettered(db, event.id()).await.map_err(|e| e.to_string())?;
                crate::metrics::dead_lettered(event.ty());
                self.stats.failed.inc();
                tracing::warn!(event_id = %event.id(), event_type = %event.ty(), attempts = n, %error,
                    "backfill gave up on an event: recorded as a dead letter; later versions of its aggregate wait for it");
            }
            Claim::Done => {
                tracing::info!(event_id = %event.id(), event_type = %event.ty(), "backfill moves past an event live delivery dead-lettered");
            }
            // Live delivery is recording it right now: look again shortly (its claim is
            // taken over if its holder died before finishing).
            Claim::Taken => return Ok(Some(n)),
        }
        Ok(None)
    }

    /// Applies one page of history and records the position after it, in the
    /// transaction of its last chunk. Returns (next position, events, done).
    /// Events in `skipped` are left out.
    async fn page(
        &self,
        after: u64,
        types: &[&str],
        skipped: &BTreeSet<String>,
    ) -> Result<(u64, usize, bool), PageError> {
        let other = |e: &dyn std::fmt::Display| PageError::Other(e.to_string());
        let mut page = self.transport.replay(after, REPLAY_PAGE, types).await.map_err(|e| other(&e))?;
        if !skipped.is_empty() {
            page.events.retain(|e| !skipped.contains(e.id()));
        }
        let chunks: Vec<_> = page.events.chunks(CHUNK).collect();
        let (next, done) = (page.next as i64, page.done);
        let save = || record_position(next, done);
        if chunks.is_empty() {
            let mut tx = self.consumer.db().begin().await.map_err(|e| other(&e))?;
            save()(&mut tx).await.map_err(|e| other(&e))?;
            tx.commit().await.map_err(|e| other(&e))?;
        }
        for (i, chunk) in chunks.iter().enumerate() {
            let result = if i + 1 == chunks.len() {
                self.consumer.receive_all_then(chunk, save()).await
            } else {
                self.consumer.receive_all(chunk).await
            };
            let outcomes = result.map_err(|(done, e)| {
                for o in &done {
                    self.stats.record(o);
                }
                let event = &chunk[done.len()];
                match e {
                    ConsumeError::Handler { reason, .. } => {
                        PageError::Event { event: Box::new(event.clone()), error: reason, undecodable: false }
                    }
                    ConsumeError::Undecodable { reason, .. } => {
                        PageError::Event { event: Box::new(event.clone()), error: reason, undecodable: true }
                    }
                    ConsumeError::Db(e) => PageError::Other(format!("event {}: {e}", event.id())),
                }
            })?;
            for o in &outcomes {
                self.stats.record(o);
            }
        }
        Ok((page.next, page.events.len(), done))
    }
}

enum PageError {
    /// `event`'s handler failed: the event is at fault, not the backfill.
    Event { event: Box<CloudEvent>, error: String, undecodable: bool },
    /// Anything else (the transport, the database): retried as it is.
    Other(String),
}

/// Writes the position reached (and whether that is the end), in the transaction given.
fn record_position(
    next: i64,
    done: bool,
) -> impl for<'a> FnOnce(&'a mut crate::Tx) -> BoxFuture<'a, Result<(), DbError>> {
    move |tx| {
        Box::pin(async move {
            let finished = done.then(now_millis);
            sqlx::query("UPDATE busbar_backfill SET position = $1, done = $2, finished_at = $3 WHERE id = 1")
                .bind(next)
                .bind(done as i64)
                .bind(finished)
                .execute(&mut **tx)
                .await?;
            Ok(())
        })
    }
}
