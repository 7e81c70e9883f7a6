//! Parked events are bounded and visible.
//!
//! An event parks when an earlier event of its aggregate that this subscriber is meant to
//! receive has not been applied yet ([`crate::ordering`]). Usually that one arrives a
//! moment later and the parked event is applied with it. This sweeper handles the rest,
//! once a second:
//!
//! - **too long**: an event parked for longer than `delivery.maxParkedFor` is
//!   dead-lettered, with a reason naming the version it waited for. Not while a backfill
//!   is running: the history it waits for may still be on its way.
//! - **failing**: a parked event whose handler failed when its turn came is retried with
//!   the delivery backoff, and dead-lettered after `delivery.maxDeliver` attempts with its
//!   own error (the event that arrived and let it run is not blamed).
//! - **visible**: the count and the oldest one's age, for `/metrics`, and for `busbar
//!   status` and the ServiceBus status through the transport: the built-in bus reads them
//!   from each push's receipt; on JetStream the sweeper reports them
//!   ([`Transport::report_parked`]) when they change, and every [`HEARTBEAT`] regardless,
//!   so a report that stops coming expires to "unknown".
//!
//! A dead-lettered parked event also leaves the inbox, so that a redrive of it is
//! handled, not dropped as a duplicate. It is reported to the transport before it leaves
//! the database: a crash in between reports it twice, never zero times.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::{AssertSqlSafe, Row};
use tokio_util::sync::CancellationToken;

use crate::{
    Backoff,
    bus_api::Parked,
    consumer::{self, ConsumeError, Consumer},
    db::{Db, DbError, now_millis},
    envelope::{self, CloudEvent},
    transport::Transport,
};

/// How parked events are bounded, from the spec's delivery policy.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_parked_for: Duration,
    pub max_deliver: u32,
    pub backoff: Backoff,
}

/// What the service shows of its parked events; updated by the sweeper (`None` until it
/// has looked).
#[derive(Debug, Clone, Default)]
pub struct ParkedGauge(Arc<std::sync::Mutex<Option<Parked>>>);

impl ParkedGauge {
    pub fn get(&self) -> Option<Parked> {
        *self.0.lock().expect("parked gauge")
    }
    fn set(&self, p: Parked) {
        *self.0.lock().expect("parked gauge") = Some(p);
    }
}

pub struct Sweeper {
    pub consumer: Consumer,
    pub transport: Arc<dyn Transport>,
    /// This service's name: whose dead letters these are.
    pub subscriber: String,
    pub limits: Limits,
    /// Set while a backfill runs: nothing expires then.
    pub backfilling: Arc<AtomicBool>,
    pub gauge: ParkedGauge,
}

/// How often the sweeper looks.
const TICK: Duration = Duration::from_secs(1);
/// Most parked events handled per tick and kind; written into the SQL, not bound (SQLite
/// would plan the statement again on every bind of a `LIMIT`; see `outbox::pending_sql`).
const PER_TICK: i64 = 200;
/// Longest time between two reports of an unchanged figure to the transport.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// What is parked, as the sweeper compares it between ticks: the count and when the oldest
/// parked (its age grows every tick; that is not a change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Snapshot {
    count: u64,
    oldest_since: Option<i64>,
}

/// The last report to the transport that went through.
#[derive(Debug, Default)]
struct Reported(Option<(Snapshot, Instant)>);

impl Reported {
    fn due(&self, now: Snapshot) -> bool {
        match self.0 {
            Some((last, at)) => last != now || at.elapsed() >= HEARTBEAT,
            None => true,
        }
    }
}

impl Sweeper {
    pub fn spawn(self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut reported = Reported::default();
            loop {
                match self.sweep_once().await {
                    Ok(now) => self.report(now, &mut reported).await,
                    Err(e) => tracing::warn!(error = %e, "checking parked events failed; will try again"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(TICK) => {}
                    _ = stop.cancelled() => return,
                }
            }
        })
    }

    /// One pass: retry what may run, expire what waited too long, update the gauge.
    pub async fn sweep(&self) -> Result<(), ConsumeError> {
        self.sweep_once().await.map(drop)
    }

    async fn sweep_once(&self) -> Result<Snapshot, ConsumeError> {
        self.retry_failed().await?;
        if !self.backfilling.load(Ordering::Relaxed) {
            self.expire().await?;
        }
        let now = snapshot(self.consumer.db()).await?;
        self.gauge.set(now.parked());
        Ok(now)
    }

    /// Tells the transport what a sweep found, when it changed since the last report or
    /// [`HEARTBEAT`] has passed. A failed report is tried again on the next tick.
    async fn report(&self, now: Snapshot, reported: &mut Reported) {
        if !reported.due(now) {
            return;
        }
        match self.transport.report_parked(&self.subscriber, now.parked()).await {
            Ok(()) => reported.0 = Some((now, Instant::now())),
            Err(e) => tracing::debug!(error = %e, "cannot report parked events yet; will try again"),
        }
    }

    async fn retry_failed(&self) -> Result<(), ConsumeError> {
        let db = self.consumer.db();
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT source, subject, version, attempts, retry_at, last_error, payload FROM busbar_deferred \
             WHERE retry_at IS NOT NULL ORDER BY retry_at LIMIT {PER_TICK}"
        )))
        .fetch_all(db.pool())
        .await?;
        let now = now_millis();
        for r in rows {
            let (source, subject, version): (String, String, i64) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            let (attempts, failed_at): (i64, i64) = (r.try_get(3)?, r.try_get(4)?);
            let error: Option<String> = r.try_get(5)?;
            if attempts >= self.limits.max_deliver as i64 {
                let payload: String = r.try_get(6)?;
                let reason = error.unwrap_or_else(|| "its handler kept failing".into());
                self.give_up(&source, &subject, version, &payload, attempts as u32, &reason).await?;
                continue;
            }
            if now - failed_at < self.limits.backoff.delay(attempts as u32).as_millis() as i64 {
                continue;
            }
            let mut tx = db.begin().await?;
            consumer::lock_aggregate(&mut tx, &source, &subject).await?;
            let Some(last) = consumer::last_applied(&mut tx, &source, &subject).await? else {
                tx.rollback().await?;
                continue;
            };
            let (applied, drained) = self.consumer.drain(&mut tx, &source, &subject, last).await?;
            if applied > last {
                consumer::set_last_applied(&mut tx, &source, &subject, applied).await?;
            }
            tx.commit().await?;
            if drained > 0 {
                tracing::info!(%source, %subject, version, drained, "a parked event that had failed is now applied");
            }
        }
        Ok(())
    }

    async fn expire(&self) -> Result<(), ConsumeError> {
        let cutoff = now_millis() - self.limits.max_parked_for.as_millis() as i64;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT source, subject, version, waiting_for, attempts, deferred_at, payload FROM busbar_deferred \
             WHERE deferred_at <= $1 ORDER BY deferred_at, version LIMIT {PER_TICK}"
        )))
        .bind(cutoff)
        .fetch_all(self.consumer.db().pool())
        .await?;
        for r in rows {
            let (source, subject, version, waiting_for): (String, String, i64, i64) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
            let (attempts, deferred_at, payload): (i64, i64, String) = (r.try_get(4)?, r.try_get(5)?, r.try_get(6)?);
            let waited = Duration::from_millis((now_millis() - deferred_at).max(0) as u64);
            let reason = format!(
                "parked for {}s waiting for version {waiting_for} of aggregate {subject} (from {source}), which never \
                 arrived; dead-lettered after delivery.maxParkedFor ({}s). Redrive it once version {waiting_for} is \
                 applied or redriven",
                waited.as_secs(),
                self.limits.max_parked_for.as_secs()
            );
            self.give_up(&source, &subject, version, &payload, attempts.max(1) as u32, &reason).await?;
        }
        Ok(())
    }

    /// Reports the parked event as a dead letter, then forgets it (and its inbox record,
    /// so a redrive is handled again).
    async fn give_up(
        &self,
        source: &str,
        subject: &str,
        version: i64,
        payload: &str,
        attempts: u32,
        reason: &str,
    ) -> Result<(), ConsumeError> {
        let event: CloudEvent = match envelope::decode_one(payload) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::error!(%source, %subject, version, error = %e, "a parked copy is not a CloudEvent; dropping it");
                return self.forget(source, subject, version, None).await;
            }
        };
        if let Err(e) = self.transport.dead_letter(&self.subscriber, &event, attempts, reason).await {
            // Kept parked: the next tick tries again.
            tracing::warn!(%source, %subject, version, error = %e, "cannot record a dead letter yet; the event stays parked");
            return Ok(());
        }
        crate::metrics::dead_lettered(cloudevents::AttributesReader::ty(&event));
        tracing::warn!(event_id = cloudevents::AttributesReader::id(&event), %source, %subject, version, %reason,
            "giving up on a parked event: dead-lettered");
        self.forget(source, subject, version, Some(cloudevents::AttributesReader::id(&event))).await
    }

    async fn forget(
        &self,
        source: &str,
        subject: &str,
        version: i64,
        event_id: Option<&str>,
    ) -> Result<(), ConsumeError> {
        let mut tx = self.consumer.db().begin().await?;
        consumer::forget_parked(&mut tx, source, subject, version).await?;
        if let Some(id) = event_id {
            sqlx::query("DELETE FROM busbar_inbox WHERE event_id = $1").bind(id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// How many events are parked, and how long the oldest has waited.
pub async fn summary(db: &Db) -> Result<Parked, DbError> {
    Ok(snapshot(db).await?.parked())
}

async fn snapshot(db: &Db) -> Result<Snapshot, DbError> {
    let row = sqlx::query("SELECT COUNT(*), MIN(deferred_at) FROM busbar_deferred").fetch_one(db.pool()).await?;
    let (count, oldest_since): (i64, Option<i64>) = (row.try_get(0)?, row.try_get(1)?);
    Ok(Snapshot { count: count as u64, oldest_since })
}

impl Snapshot {
    fn parked(self) -> Parked {
        let oldest_age_ms = self.oldest_since.map(|t| (now_millis() - t).max(0) as u64).unwrap_or(0);
        Parked { count: self.count, oldest_age_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_figure_is_reported_when_it_changes_and_as_a_heartbeat() {
        let one = Snapshot { count: 1, oldest_since: Some(1_000) };
        let mut r = Reported::default();
        assert!(r.due(one), "the first figure is reported");
        r.0 = Some((one, Instant::now()));
        assert!(!r.due(one), "unchanged (its age alone grows): not again yet");
        assert!(r.due(Snapshot { count: 2, ..one }), "a new count");
        assert!(r.due(Snapshot { count: 1, oldest_since: Some(2_000) }), "a new oldest");
        r.0 = Some((one, Instant::now() - HEARTBEAT));
        assert!(r.due(one), "unchanged, but the heartbeat is due");
    }
}
