//! The receiving side: an idempotent inbox plus per-aggregate ordering around a
//! service's event handler, all in the handler's own transaction.
//!
//! For each event, in one transaction:
//! 1. record its id in the inbox; if it was already there, it is a duplicate: stop;
//! 2. if it names an aggregate and a version, find its predecessor for this subscription
//!    ([`crate::ordering`]); apply it only if that predecessor has been applied, park it
//!    if not, ignore it if it is older than what was applied;
//! 3. after applying, apply the parked events that were waiting for it, each in a
//!    savepoint of its own: a parked event whose handler fails stays parked, with its own
//!    attempts and error, and the event that arrived is committed (it did nothing wrong).
//!
//! A handler that panics counts as a failed attempt, like one that returns an error.
//!
//! The caller acknowledges the event (e.g. answers 2xx) only after this commits. A batch
//! of events can share one transaction ([`Consumer::receive_all`]). Parked events that
//! wait too long, or that keep failing, are the [`crate::parking`] sweeper's.

use std::{collections::BTreeSet, panic::AssertUnwindSafe, sync::Arc};

use async_trait::async_trait;
use cloudevents::AttributesReader;
use futures::{FutureExt, future::BoxFuture};
use sqlx::Row;

use busbar_client::telemetry::{Kind, Span};

use crate::{
    db::{Backend, Db, DbError, Tx, now_millis},
    envelope::{self, CloudEvent},
    ordering::{self, Decision, Start},
    trace,
};

/// What a handler returns when it cannot apply an event. The transaction is rolled back
/// and the event will be delivered again.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// A service's reaction to the events it subscribes to.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Applies `event` using `tx`. Anything it writes, including events it emits, commits
    /// together with the inbox record.
    async fn handle(&self, tx: &mut Tx, event: &CloudEvent) -> Result<(), HandlerError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied, plus `drained` parked successors applied right after it.
    Applied { drained: usize },
    /// Already handled: no effect.
    Duplicate,
    /// Parked until version `waiting_for` of its aggregate has been applied.
    Deferred { waiting_for: i64 },
    /// Older than what was already applied: ignored.
    Stale,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("handling {event_id} ({event_type}) failed: {reason}")]
    Handler { event_id: String, event_type: String, reason: String },
    /// The handler refused the event's `data` as not what its type promises
    /// ([`envelope::data`] failed): a poison event, which no redelivery can fix.
    #[error("handling {event_id} ({event_type}) failed: {reason}")]
    Undecodable { event_id: String, event_type: String, reason: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for ConsumeError {
    fn from(e: sqlx::Error) -> Self {
        ConsumeError::Db(e.into())
    }
}

/// Which events this consumer's subscription takes, and where its history begins: what
/// ordering needs to tell a gap that is meant to be there from one that is not.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The types an event waits for. `None`: every type (a consumer fed only what it
    /// subscribes to).
    types: Option<Arc<BTreeSet<String>>>,
    /// Reactions: types it takes only as they happen, never from history
    /// ([`crate::handlers::Handlers::on_new`]). Nothing waits for them, and one that
    /// arrives after a later version was applied is still applied (once: the inbox).
    reactions: Arc<BTreeSet<String>>,
    start: Start,
}

impl Scope {
    /// Every type, from the beginning.
    pub fn all() -> Self {
        Self { types: None, reactions: Arc::default(), start: Start::Beginning }
    }

    pub fn new(types: impl IntoIterator<Item = impl Into<String>>, start: Start) -> Self {
        Self { types: Some(Arc::new(types.into_iter().map(Into::into).collect())), reactions: Arc::default(), start }
    }

    /// The same scope, also taking `reactions` (see the field).
    pub fn with_reactions(self, reactions: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self { reactions: Arc::new(reactions.into_iter().map(Into::into).collect()), ..self }
    }

    fn takes(&self, ty: &str) -> bool {
        self.types.as_ref().is_none_or(|t| t.contains(ty))
    }
}

#[derive(Clone)]
pub struct Consumer {
    db: Db,
    handler: Arc<dyn Handler>,
    scope: Scope,
}

/// A parked event, as [`take_ready`] finds it.
pub(crate) struct ParkedEvent {
    pub version: i64,
    pub event: Result<CloudEvent, String>,
    pub attempts: i64,
}

impl Consumer {
    /// A consumer of every type, from the beginning: each event's predecessor is the
    /// previous version of its aggregate of any type.
    pub fn new(db: Db, handler: Arc<dyn Handler>) -> Self {
        Self { db, handler, scope: Scope::all() }
    }

    /// A consumer for a subscription taking `scope`'s types.
    pub fn with_scope(db: Db, handler: Arc<dyn Handler>, scope: Scope) -> Self {
        Self { db, handler, scope }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Handles one event with inbox and ordering, in its own transaction; see the module
    /// docs.
    pub async fn receive(&self, event: &CloudEvent) -> Result<Outcome, ConsumeError> {
        let mut tx = self.db.begin().await?;
        let mut versions = Versions::default();
        let outcome = self.receive_in(&mut tx, event, false, &mut versions).await?;
        match outcome {
            // Nothing was written; releasing the transaction is all that is left.
            Outcome::Duplicate => tx.rollback().await?,
            _ => {
                versions.write(&mut tx).await?;
                tx.commit().await?
            }
        }
        Ok(outcome)
    }

    /// Handles `events` in order, in one transaction: one commit (and on SQLite one turn
    /// of the write lock) for the lot instead of one per event. `Ok` means every event is
    /// committed. If one fails, the events before it are still committed, exactly once, and
    /// the error comes with their outcomes (`handled` = its length); nothing from the
    /// failing event on is. Each handler runs once per call, as with [`Self::receive`].
    pub async fn receive_all(&self, events: &[CloudEvent]) -> Result<Vec<Outcome>, (Vec<Outcome>, ConsumeError)> {
        self.receive_all_then(events, |_| Box::pin(async { Ok(()) })).await
    }

    /// [`Self::receive_all`], and `finish` writes in the same transaction once every
    /// event is handled (a backfill records its progress so).
    pub async fn receive_all_then(
        &self,
        events: &[CloudEvent],
        finish: impl for<'a> FnOnce(&'a mut Tx) -> BoxFuture<'a, Result<(), DbError>>,
    ) -> Result<Vec<Outcome>, (Vec<Outcome>, ConsumeError)> {
        let mut tx = self.db.begin().await.map_err(|e| (vec![], e.into()))?;
        let mut outcomes = Vec::with_capacity(events.len());
        let mut versions = Versions::default();
        for (i, ev) in events.iter().enumerate() {
            // After the first event, a savepoint marks where this event's writes start, so
            // a failure undoes only them.
            let step = self.receive_in(&mut tx, ev, i > 0, &mut versions);
            match step.await {
                Ok(o) => outcomes.push(o),
                Err(e) if i == 0 => {
                    let _ = tx.rollback().await;
                    return Err((vec![], e));
                }
                Err(e) => {
                    let kept = async {
                        sqlx::query("ROLLBACK TO SAVEPOINT busbar_event").execute(&mut *tx).await?;
                        versions.write(&mut tx).await?;
                        tx.commit().await?;
                        Ok::<_, ConsumeError>(())
                    };
                    return match kept.await {
                        Ok(()) => Err((outcomes, e)),
                        // Nothing is committed; the transaction is dropped (rolled back).
                        Err(_) => Err((vec![], e)),
                    };
                }
            }
        }
        let done = async {
            versions.write(&mut tx).await?;
            finish(&mut tx).await.map_err(ConsumeError::from)?;
            tx.commit().await.map_err(ConsumeError::from)
        };
        match done.await {
            Ok(()) => Ok(outcomes),
            Err(e) => Err((vec![], e)),
        }
    }

    /// Inbox, ordering and the handler for one event inside `tx`, which the caller
    /// commits after writing `versions`. A duplicate writes nothing. With `savepoint`, a
    /// savepoint is set first, where a failure of this event rolls back to; `versions`
    /// changes only when the event succeeds.
    async fn receive_in(
        &self,
        tx: &mut Tx,
        event: &CloudEvent,
        savepoint: bool,
        versions: &mut Versions,
    ) -> Result<Outcome, ConsumeError> {
        let source = event.source().to_string();
        let aggregate = event.subject().zip(envelope::aggregate_version(event));
        let Admission::Fresh(state) =
            admit(tx, event, aggregate.map(|(subject, _)| (source.as_str(), subject)), savepoint).await?
        else {
            crate::metrics::received(event.ty(), "duplicate");
            return Ok(Outcome::Duplicate);
        };
        let (Some((subject, version)), Some(AggregateState { last, any_parked })) = (aggregate, state) else {
            self.apply(tx, event).await?;
            return Ok(Outcome::Applied { drained: 0 });
        };
        // What an earlier event of this transaction applied is not written yet.
        let last = versions.get(&source, subject).or(last);
        let predecessor =
            ordering::predecessor(version, envelope::predecessors(event).as_ref(), |t| self.scope.takes(t));
        let decision = match ordering::decide(last, version, predecessor, self.scope.start) {
            // A reaction that a later version overtook (a backfill ran ahead of live
            // delivery): the inbox says it was never handled, and nothing waits for it.
            Decision::Stale if self.scope.reactions.contains(event.ty()) => Decision::Apply,
            d => d,
        };
        let outcome = match decision {
            Decision::Apply => {
                self.apply(tx, event).await?;
                let reached = last.map_or(version, |l| l.max(version));
                let (applied, drained) =
                    if any_parked { self.drain(tx, &source, subject, reached).await? } else { (reached, 0) };
                versions.set(&source, subject, applied);
                Outcome::Applied { drained }
            }
            Decision::Defer { waiting_for } => {
                sqlx::query(
                    "INSERT INTO busbar_deferred (source, subject, version, event_id, payload, deferred_at, waiting_for) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (source, subject, version) DO NOTHING",
                )
                .bind(&source)
                .bind(subject)
                .bind(version)
                .bind(event.id())
                .bind(serde_json::to_string(event).expect("CloudEvents serialize"))
                .bind(now_millis())
                .bind(waiting_for)
                .execute(&mut **tx)
                .await?;
                tracing::debug!(event_id = event.id(), %source, subject, version, waiting_for, "parked: waiting for an earlier version");
                crate::metrics::received(event.ty(), "parked");
                Outcome::Deferred { waiting_for }
            }
            Decision::Stale => {
                tracing::warn!(event_id = event.id(), %source, subject, version, ?last, "ignoring stale event: a newer version was already applied");
                crate::metrics::received(event.ty(), "stale");
                Outcome::Stale
            }
        };
        Ok(outcome)
    }

    /// Applies the parked events of an aggregate whose predecessor is now applied (up to
    /// `applied`), oldest first, each in a savepoint: one that fails stays parked with its
    /// error and stops the drain (later ones wait for it anyway). Returns the last version
    /// applied and how many were drained.
    pub(crate) async fn drain(
        &self,
        tx: &mut Tx,
        source: &str,
        subject: &str,
        mut applied: i64,
    ) -> Result<(i64, usize), ConsumeError> {
        let mut drained = 0;
        while let Some(next) = take_ready(tx, source, subject, applied).await? {
            if next.version <= applied {
                // Parked, then overtaken (e.g. by a redelivered copy): nothing to apply.
                forget_parked(tx, source, subject, next.version).await?;
                continue;
            }
            sqlx::query("SAVEPOINT busbar_drain").execute(&mut **tx).await?;
            let outcome = match &next.event {
                Ok(ev) => self.apply(tx, ev).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.clone()),
            };
            match outcome {
                Ok(()) => {
                    sqlx::query("RELEASE SAVEPOINT busbar_drain").execute(&mut **tx).await?;
                    forget_parked(tx, source, subject, next.version).await?;
                    applied = next.version;
                    drained += 1;
                }
                Err(error) => {
                    sqlx::query("ROLLBACK TO SAVEPOINT busbar_drain").execute(&mut **tx).await?;
                    tracing::warn!(%source, subject, version = next.version, attempts = next.attempts + 1, %error,
                        "a parked event failed when its turn came; it stays parked and will be retried");
                    sqlx::query(
                        "UPDATE busbar_deferred SET attempts = attempts + 1, last_error = $1, retry_at = $2 \
                         WHERE source = $3 AND subject = $4 AND version = $5",
                    )
                    .bind(crate::web::one_line(&error, 2000))
                    .bind(now_millis())
                    .bind(source)
                    .bind(subject)
                    .bind(next.version)
                    .execute(&mut **tx)
                    .await?;
                    break;
                }
            }
        }
        Ok((applied, drained))
    }

    async fn apply(&self, tx: &mut Tx, event: &CloudEvent) -> Result<(), ConsumeError> {
        // Handling continues the trace the event was emitted in (or starts one).
        let parent = envelope::trace(event);
        let ctx = parent.map(|p| p.child()).unwrap_or_else(trace::TraceContext::root);
        let mut span = Span::start(format!("handle {}", event.ty()), Kind::Consumer, ctx, parent.map(|p| p.span_id));
        span.attr("messaging.message.id", event.id().to_owned());
        let handling = async {
            tracing::debug!(event_id = %event.id(), event_type = %event.ty(), "handling");
            AssertUnwindSafe(self.handler.handle(tx, event)).catch_unwind().await
        };
        let started = std::time::Instant::now();
        let handled = trace::within(ctx, handling).await;
        let result = match handled {
            Ok(r) => r,
            Err(panic) => Err(format!("the handler panicked: {}", panic_text(&panic)).into()),
        };
        span.end(result.as_ref().err().map(|e| e.to_string()).as_deref());
        crate::metrics::handled(event.ty(), started.elapsed().as_secs_f64(), result.is_ok());
        result.map_err(|e| {
            let (event_id, event_type, reason) = (event.id().to_owned(), event.ty().to_owned(), e.to_string());
            match e.downcast_ref::<envelope::EnvelopeError>() {
                Some(envelope::EnvelopeError::Data { .. } | envelope::EnvelopeError::WrongType { .. }) => {
                    ConsumeError::Undecodable { event_id, event_type, reason }
                }
                _ => ConsumeError::Handler { event_id, event_type, reason },
            }
        })
    }
}

/// What a panic said, when it said it with a string.
fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// The last version applied of each aggregate an event of this transaction applied,
/// written in one statement before the transaction commits instead of one per event (a
/// round trip each). Reads of an aggregate's state within the transaction consult it
/// first.
#[derive(Debug, Default)]
struct Versions(std::collections::BTreeMap<(String, String), i64>);

impl Versions {
    fn get(&self, source: &str, subject: &str) -> Option<i64> {
        self.0.get(&(source.to_owned(), subject.to_owned())).copied()
    }

    fn set(&mut self, source: &str, subject: &str, version: i64) {
        self.0.insert((source.to_owned(), subject.to_owned()), version);
    }

    /// Writes what was set, leaving nothing to write: one statement whatever the number,
    /// its rows passed as one JSON array argument and expanded by the database. (One
    /// argument per value made sqlx's SQLite driver look up every `$N` by name, a cost
    /// that grows with the square of their number: 2 to 4 % of a consumer's time.)
    async fn write(&mut self, tx: &mut Tx) -> Result<(), ConsumeError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let rows: Vec<(&str, &str, i64)> = self.0.iter().map(|((so, su), v)| (so.as_str(), su.as_str(), *v)).collect();
        let rows = serde_json::to_string(&rows).expect("strings and numbers serialise");
        let sql = match tx.backend() {
            // `WHERE true`: SQLite's grammar needs it between a SELECT and its ON CONFLICT.
            Backend::Sqlite => {
                "INSERT INTO busbar_aggregate_versions (source, subject, version) \
                 SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each($1) WHERE true \
                 ON CONFLICT (source, subject) DO UPDATE SET version = excluded.version"
            }
            Backend::Postgres => {
                "INSERT INTO busbar_aggregate_versions (source, subject, version) \
                 SELECT e ->> 0, e ->> 1, CAST(e ->> 2 AS BIGINT) FROM json_array_elements(CAST($1 AS json)) e \
                 ON CONFLICT (source, subject) DO UPDATE SET version = excluded.version"
            }
        };
        sqlx::query(sql).bind(rows).execute(&mut **tx).await?;
        self.0.clear();
        Ok(())
    }
}

/// Serialises consumers of one aggregate across connections and replicas on PostgreSQL,
/// so two of them cannot both see "not applied yet" and park what the other applies.
/// SQLite needs nothing: `BEGIN IMMEDIATE` already serialises writers.
pub(crate) async fn lock_aggregate(tx: &mut Tx, source: &str, subject: &str) -> Result<(), ConsumeError> {
    if tx.backend() == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("{source}\u{1f}{subject}"))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Whether an event is new here, and if so what ordering needs to know of its aggregate.
enum Admission {
    Duplicate,
    /// Recorded in the inbox; the aggregate's state when the event names one.
    Fresh(Option<AggregateState>),
}

/// What ordering needs to know of an aggregate.
struct AggregateState {
    /// The last version this subscriber applied.
    last: Option<i64>,
    /// Whether any of its events is parked here; when none is, applying an event has
    /// nothing to drain.
    any_parked: bool,
}

/// The inbox record (`$1` the event's id, `$2` the time), in every statement that makes it.
macro_rules! inbox_insert {
    () => {
        "INSERT INTO busbar_inbox (event_id, handled_at) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING"
    };
}

/// What ordering needs to know of an aggregate, in one row: its last applied version and
/// whether anything of it is parked (`$s` and `$j` the placeholders of source and subject).
macro_rules! aggregate_state_select {
    ($s:literal, $j:literal) => {
        concat!(
            "SELECT (SELECT version FROM busbar_aggregate_versions WHERE source = ",
            $s,
            " AND subject = ",
            $j,
            "), ",
            "CAST(CASE WHEN EXISTS (SELECT 1 FROM busbar_deferred WHERE source = ",
            $s,
            " AND subject = ",
            $j,
            ") THEN 1 ELSE 0 END AS BIGINT)"
        )
    };
}

/// Sets the savepoint (with `savepoint`), records `event` in the inbox, and for an event of
/// an aggregate (`source`, `subject`) reads that aggregate's state, taking its lock first on
/// PostgreSQL ([`lock_aggregate`]). Round trips (hand-offs to SQLite's worker thread, or
/// trips to PostgreSQL) are most of an event's cost, so this is one on SQLite, whose
/// queries may hold several statements, and two on PostgreSQL.
async fn admit(
    tx: &mut Tx,
    event: &CloudEvent,
    aggregate: Option<(&str, &str)>,
    savepoint: bool,
) -> Result<Admission, ConsumeError> {
    match tx.backend() {
        Backend::Sqlite => admit_sqlite(tx, event, aggregate, savepoint).await,
        Backend::Postgres => {
            if savepoint {
                sqlx::query("SAVEPOINT busbar_event").execute(&mut **tx).await?;
            }
            if !record_in_inbox_pg(tx, event, aggregate).await? {
                return Ok(Admission::Duplicate);
            }
            Ok(Admission::Fresh(match aggregate {
                Some((source, subject)) => Some(aggregate_state(tx, source, subject).await?),
                None => None,
            }))
        }
    }
}

/// The inbox record answers a row only when it is new (`RETURNING`: SQLite's count of
/// changed rows is the last *changing* statement's, so it cannot be read after a
/// savepoint), and the aggregate's state is the one row of two columns.
async fn admit_sqlite(
    tx: &mut Tx,
    event: &CloudEvent,
    aggregate: Option<(&str, &str)>,
    savepoint: bool,
) -> Result<Admission, ConsumeError> {
    let sql = match (savepoint, aggregate.is_some()) {
        (false, false) => concat!(inbox_insert!(), " RETURNING 1"),
        (false, true) => concat!(inbox_insert!(), " RETURNING 1; ", aggregate_state_select!("$3", "$4")),
        (true, false) => concat!("SAVEPOINT busbar_event; ", inbox_insert!(), " RETURNING 1"),
        (true, true) => {
            concat!("SAVEPOINT busbar_event; ", inbox_insert!(), " RETURNING 1; ", aggregate_state_select!("$3", "$4"))
        }
    };
    let mut query = sqlx::query(sql).bind(event.id()).bind(now_millis());
    if let Some((source, subject)) = aggregate {
        query = query.bind(source).bind(subject);
    }
    let rows = query.fetch_all(&mut **tx).await?;
    let fresh = rows.iter().any(|r| r.len() == 1);
    if !fresh {
        return Ok(Admission::Duplicate);
    }
    let state = match rows.iter().find(|r| r.len() == 2) {
        Some(r) => Some(AggregateState { last: r.try_get(0)?, any_parked: r.try_get::<i64, _>(1)? == 1 }),
        None if aggregate.is_some() => {
            return Err(ConsumeError::Db(DbError::Sql(sqlx::Error::Protocol(
                "the aggregate's state query answered no row".into(),
            ))));
        }
        None => None,
    };
    Ok(Admission::Fresh(state))
}

/// Records `event` in the inbox on PostgreSQL; false if it was already there (a
/// duplicate). For an event of an aggregate, also takes that aggregate's lock in the same
/// round trip, when the event is fresh.
async fn record_in_inbox_pg(
    tx: &mut Tx,
    event: &CloudEvent,
    aggregate: Option<(&str, &str)>,
) -> Result<bool, ConsumeError> {
    match aggregate {
        Some((source, subject)) => {
            // The CTE's insert runs once whatever the SELECT does; the lock is taken only
            // for a fresh event. The next statement reads under a new snapshot (READ
            // COMMITTED), so it sees what the lock's previous holder committed.
            let row = sqlx::query(concat!(
                "WITH fresh AS (",
                inbox_insert!(),
                " RETURNING 1) SELECT CASE WHEN EXISTS (SELECT 1 FROM fresh) \
                     THEN (SELECT 1 FROM pg_advisory_xact_lock(hashtextextended($3, 0))) ELSE 0 END"
            ))
            .bind(event.id())
            .bind(now_millis())
            .bind(format!("{source}\u{1f}{subject}"))
            .fetch_one(&mut **tx)
            .await?;
            Ok(row.try_get::<i32, _>(0)? == 1)
        }
        None => Ok(sqlx::query(inbox_insert!())
            .bind(event.id())
            .bind(now_millis())
            .execute(&mut **tx)
            .await?
            .rows_affected()
            == 1),
    }
}

async fn aggregate_state(tx: &mut Tx, source: &str, subject: &str) -> Result<AggregateState, ConsumeError> {
    let row = sqlx::query(aggregate_state_select!("$1", "$2")).bind(source).bind(subject).fetch_one(&mut **tx).await?;
    Ok(AggregateState { last: row.try_get(0)?, any_parked: row.try_get::<i64, _>(1)? == 1 })
}

pub(crate) async fn last_applied(tx: &mut Tx, source: &str, subject: &str) -> Result<Option<i64>, ConsumeError> {
    Ok(sqlx::query("SELECT version FROM busbar_aggregate_versions WHERE source = $1 AND subject = $2")
        .bind(source)
        .bind(subject)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?)
}

pub(crate) async fn set_last_applied(
    tx: &mut Tx,
    source: &str,
    subject: &str,
    version: i64,
) -> Result<(), ConsumeError> {
    sqlx::query(
        "INSERT INTO busbar_aggregate_versions (source, subject, version) VALUES ($1, $2, $3) \
         ON CONFLICT (source, subject) DO UPDATE SET version = excluded.version",
    )
    .bind(source)
    .bind(subject)
    .bind(version)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The oldest parked event of the aggregate whose predecessor is applied (at or below
/// `applied`), left in place; the caller forgets it once handled.
async fn take_ready(
    tx: &mut Tx,
    source: &str,
    subject: &str,
    applied: i64,
) -> Result<Option<ParkedEvent>, ConsumeError> {
    let row = sqlx::query(
        "SELECT version, payload, attempts FROM busbar_deferred \
         WHERE source = $1 AND subject = $2 AND waiting_for <= $3 ORDER BY version LIMIT 1",
    )
    .bind(source)
    .bind(subject)
    .bind(applied)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let (version, payload, attempts): (i64, String, i64) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    let event = envelope::decode_one(&payload).map_err(|e| format!("the parked copy is not a CloudEvent: {e}"));
    Ok(Some(ParkedEvent { version, event, attempts }))
}

pub(crate) async fn forget_parked(tx: &mut Tx, source: &str, subject: &str, version: i64) -> Result<(), ConsumeError> {
    sqlx::query("DELETE FROM busbar_deferred WHERE source = $1 AND subject = $2 AND version = $3")
        .bind(source)
        .bind(subject)
        .bind(version)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Number of events parked waiting for a missing predecessor.
pub async fn deferred_count(db: &Db) -> Result<i64, DbError> {
    let row = sqlx::query("SELECT COUNT(*) FROM busbar_deferred").fetch_one(db.pool()).await?;
    Ok(row.try_get(0)?)
}
