//! The outbox relay: publishes committed outbox rows in order and marks them sent.
//!
//! It wakes as soon as a transaction that emitted commits ([`crate::db::Tx::commit`]),
//! and also polls at a slow interval so rows left by a crashed process, or written by
//! another replica, still go out. Of several replicas on one database, only the leader
//! ([`crate::leader`]) publishes; the others stand by.

use std::{sync::Arc, time::Duration};

use prometheus_client::metrics::gauge::Gauge;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::{
    Backoff,
    db::{Backend, Db, DbError, now_millis},
    envelope::{self, CloudEvent},
    leader,
    transport::Transport,
};

#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Most rows published in one call to the transport.
    pub batch: i64,
    /// Safety-net poll for rows nobody woke us for.
    pub idle_poll: Duration,
    /// Published rows are kept this long (for inspection), then deleted.
    pub retain_published: Duration,
    pub max_backoff: Duration,
    /// 1 while this process's relay leads (`busbar_outbox_relay_leader`), 0 standing by.
    pub leading: Gauge,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch: 500,
            idle_poll: Duration::from_secs(1),
            retain_published: Duration::from_secs(3600),
            max_backoff: Duration::from_secs(5),
            leading: Gauge::default(),
        }
    }
}

/// Starts the relay. It runs until `stop` is cancelled, finishing the batch in hand.
pub fn spawn_relay(
    db: Db,
    transport: Arc<dyn Transport>,
    opts: RelayOptions,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { run(db, transport, opts, stop).await })
}

async fn run(db: Db, transport: Arc<dyn Transport>, opts: RelayOptions, stop: CancellationToken) {
    while let Some(mut lead) = leader::acquire(&db, "outbox relay", &stop).await {
        opts.leading.set(1);
        lead_relay(&db, transport.as_ref(), &opts, &stop, &mut lead).await;
        opts.leading.set(0);
        if stop.is_cancelled() {
            return;
        }
        tracing::warn!("the relay lost its lock (its database connection broke); standing by until it can lead again");
    }
}

/// Publishes while this replica leads; returns when `stop` is cancelled or the lead is lost.
async fn lead_relay(
    db: &Db,
    transport: &dyn Transport,
    opts: &RelayOptions,
    stop: &CancellationToken,
    lead: &mut leader::Lead,
) {
    let wake = db.relay_wake();
    let backoff = Backoff::exponential(Duration::from_millis(100), opts.max_backoff);
    let mut failures: u32 = 0;
    let mut last_prune = tokio::time::Instant::now();
    let mut marks = Marks::new(db.backend());
    loop {
        if stop.is_cancelled() {
            marks.flush(db).await;
            return;
        }
        let step = async {
            let rows = match lead.connection() {
                // Read through the lock's connection: a read that succeeds there shows that
                // this relay still leads (a broken connection has released the lock).
                Some(lock) => pending(lock, opts.batch, marks.published_through).await.map_err(|e| {
                    tracing::debug!(error = %e, "the relay's read on its lock connection failed");
                    RelayError::LostLead
                })?,
                None => pending(db.pool(), opts.batch, marks.published_through).await?,
            };
            let batch = decode(rows)?;
            if batch.is_empty() {
                return Ok::<_, RelayError>(0);
            }
            let events: Vec<CloudEvent> = batch.iter().map(|(_, ev)| ev.clone()).collect();
            transport.publish(&events).await.map_err(|e| RelayError::Publish(e.to_string()))?;
            marks.published(db, &batch.iter().map(|(seq, _)| *seq).collect::<Vec<_>>()).await?;
            Ok(batch.len())
        };
        match step.await {
            Ok(0) => {
                failures = 0;
                if last_prune.elapsed() > Duration::from_secs(60) {
                    last_prune = tokio::time::Instant::now();
                    if let Err(e) = prune(db, opts.retain_published).await {
                        tracing::warn!(error = %e, "pruning published outbox rows failed");
                    }
                }
                let mark_at = marks.due();
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(opts.idle_poll) => {}
                    _ = tokio::time::sleep_until(mark_at.unwrap_or_else(tokio::time::Instant::now)), if mark_at.is_some() => {
                        marks.flush(db).await;
                    }
                    _ = stop.cancelled() => {
                        marks.flush(db).await;
                        return;
                    }
                }
            }
            Ok(n) => {
                if failures > 0 {
                    tracing::info!(after_failures = failures, "outbox relay publishing again");
                }
                failures = 0;
                tracing::debug!(count = n, "published outbox events");
            }
            // Another replica leads now; it publishes what this one did not mark again,
            // which the bus's deduplication absorbs.
            Err(RelayError::LostLead) => return,
            Err(e) => {
                failures += 1;
                let delay = backoff.delay(failures);
                // Log the first failure and then every tenth, so an outage is visible but
                // does not flood the log.
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(error = %e, attempt = failures, retry_in_ms = delay.as_millis() as u64,
                        "outbox relay cannot publish; events stay in the outbox and will be retried");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0}")]
    Publish(String),
    #[error("this replica no longer leads the relay")]
    LostLead,
}

impl From<sqlx::Error> for RelayError {
    fn from(e: sqlx::Error) -> Self {
        RelayError::Db(e.into())
    }
}

/// The relay's read, its `LIMIT` written into the text rather than bound: SQLite plans with
/// a bound `LIMIT`'s value, so each bind would expire the cached statement and every read
/// would parse and plan it again (docs/performance-notes.md, "Statements prepared once").
fn pending_sql(limit: i64) -> String {
    format!("SELECT seq, payload FROM busbar_outbox WHERE published_at IS NULL AND seq > $1 ORDER BY seq LIMIT {limit}")
}

/// Unpublished rows after seq `after` (rows up to it were published but may not be marked
/// yet), oldest first: seq and payload.
async fn pending<'c>(
    on: impl sqlx::Executor<'c, Database = sqlx::Any>,
    limit: i64,
    after: i64,
) -> Result<Vec<(i64, String)>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(pending_sql(limit))).bind(after).fetch_all(on).await
}

/// The events of outbox rows, with their seq.
fn decode(rows: Vec<(i64, String)>) -> Result<Vec<(i64, CloudEvent)>, RelayError> {
    rows.into_iter()
        .map(|(seq, payload)| match envelope::decode_one(&payload) {
            Ok(ev) => Ok((seq, ev)),
            // Only this SDK writes the outbox, so this means a corrupted row. Publishing
            // later rows past it would break per-aggregate order, so stop and say so.
            Err(e) => Err(RelayError::Publish(format!("outbox row {seq} is not a valid CloudEvent: {e}"))),
        })
        .collect()
}

/// How often, at most, published rows are marked on SQLite while events flow.
const MARK_EVERY: Duration = Duration::from_millis(200);

/// Marking published rows. A mark is a write of its own, and on SQLite every write takes
/// the database's one write lock, which the service's own writes then wait for: marked at
/// once, a relay publishing small batches (moderate rates, one event each) made one such
/// write per batch. On SQLite rows commit in seq order (see [`mark_published`]), so the
/// relay skips what it published by seq alone and marks at most every [`MARK_EVERY`], when
/// it goes idle and before it stops. A process killed in between publishes those rows
/// again after its restart: at least once, as always, and the bus (and JetStream, by
/// message id) drops the copies. On PostgreSQL rows can commit out of seq order, so each
/// batch is marked as it goes, without waiting for its commit to be flushed.
struct Marks {
    lazy: bool,
    /// Every row up to this seq was published (0: none yet by this relay).
    published_through: i64,
    /// Published, not yet marked: the first and last seq.
    unmarked: Option<(i64, i64)>,
    last_mark: tokio::time::Instant,
}

impl Marks {
    fn new(backend: Backend) -> Marks {
        Marks {
            lazy: backend == Backend::Sqlite,
            published_through: 0,
            unmarked: None,
            last_mark: tokio::time::Instant::now(),
        }
    }

    async fn published(&mut self, db: &Db, seqs: &[i64]) -> Result<(), RelayError> {
        if !self.lazy {
            return mark_published(db, seqs).await;
        }
        let (Some(&first), Some(&last)) = (seqs.iter().min(), seqs.iter().max()) else { return Ok(()) };
        self.published_through = last;
        self.unmarked = Some(self.unmarked.map_or((first, last), |(f, _)| (f, last)));
        if self.last_mark.elapsed() >= MARK_EVERY {
            self.try_flush(db).await?;
        }
        Ok(())
    }

    /// When the rows published so far are due to be marked, if any wait.
    fn due(&self) -> Option<tokio::time::Instant> {
        self.unmarked.map(|_| self.last_mark + MARK_EVERY)
    }

    async fn try_flush(&mut self, db: &Db) -> Result<(), RelayError> {
        if let Some((first, last)) = self.unmarked {
            mark_published(db, &[first, last]).await?;
            self.unmarked = None;
        }
        self.last_mark = tokio::time::Instant::now();
        Ok(())
    }

    /// Marks what waits; a failure is logged, and the rows go out again later at worst.
    async fn flush(&mut self, db: &Db) {
        if let Err(e) = self.try_flush(db).await {
            tracing::warn!(error = %e, "marking published outbox rows failed; they will be published again");
        }
    }
}

async fn mark_published(db: &Db, seqs: &[i64]) -> Result<(), RelayError> {
    let (Some(first), Some(last)) = (seqs.iter().min(), seqs.iter().max()) else { return Ok(()) };
    // One statement, atomic by itself: no transaction around it.
    match db.backend() {
        // SQLite writers take turns and each row gets seq = max + 1, so rows commit in seq
        // order: every unpublished row between the batch's first and last seq is in the
        // batch. A range also spares SQLite a statement with hundreds of `$N`
        // placeholders, which it resolves by name at a cost that grows with their square.
        Backend::Sqlite => {
            db.execute_write(
                sqlx::query(
                    "UPDATE busbar_outbox SET published_at = $1 WHERE seq >= $2 AND seq <= $3 AND published_at IS NULL",
                )
                .bind(now_millis())
                .bind(first)
                .bind(last),
            )
            .await?;
        }
        // On PostgreSQL a row with a lower seq can commit after one with a higher seq, so
        // only the rows actually published are marked.
        // A lost mark only means the rows are published again (the bus drops the copies),
        // so its commit does not wait for the WAL flush: one fsync fewer per batch. The
        // values are integers this function formats itself, so the statement can go in
        // one simple-protocol round trip with the transaction around it.
        Backend::Postgres => {
            let list = seqs.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
            let sql = format!(
                "BEGIN; SET LOCAL synchronous_commit = off; \
                 UPDATE busbar_outbox SET published_at = {} WHERE seq IN ({list}); COMMIT",
                now_millis()
            );
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(db.pool()).await?;
        }
    }
    Ok(())
}

async fn prune(db: &Db, retain: Duration) -> Result<(), RelayError> {
    let cutoff = now_millis() - retain.as_millis() as i64;
    db.execute_write(
        sqlx::query("DELETE FROM busbar_outbox WHERE published_at IS NOT NULL AND published_at < $1").bind(cutoff),
    )
    .await?;
    Ok(())
}

/// Counts rows not yet published: the relay's backlog.
pub async fn backlog(db: &Db) -> Result<i64, DbError> {
    Ok(backlog_and_age(db).await?.0)
}

/// The backlog, and how long its oldest event has waited in milliseconds (0 when empty).
pub async fn backlog_and_age(db: &Db) -> Result<(i64, i64), DbError> {
    let row = sqlx::query("SELECT COUNT(*), MIN(created_at) FROM busbar_outbox WHERE published_at IS NULL")
        .fetch_one(db.pool())
        .await?;
    let oldest: Option<i64> = row.try_get(1)?;
    Ok((row.try_get(0)?, oldest.map_or(0, |at| (now_millis() - at).max(0))))
}

#[cfg(test)]
mod tests {
    use sqlx::AssertSqlSafe;

    use super::*;

    /// The relay reads once per batch, the hottest statement of a quiet service: SQLite must
    /// not parse and plan it again each time.
    #[tokio::test]
    async fn the_relays_read_is_prepared_once() {
        let mut conn = testkit::sqlite::memory(&sqlx::migrate!("./migrations/sqlite")).await;
        for after in [0, 5, 9] {
            sqlx::query(AssertSqlSafe(pending_sql(500))).bind(after).fetch_all(&mut conn).await.unwrap();
        }
        testkit::sqlite::assert_prepared_once(&mut conn, "FROM busbar_outbox", 1).await;
    }
}
