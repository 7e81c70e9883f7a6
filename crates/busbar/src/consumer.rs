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
//! of events shares one transaction ([`Consumer::receive_all`]), and steps 1 and 2's reads
//! are made for the whole batch at once (`admit`): one round trip on SQLite, two on
//! PostgreSQL, whatever the batch's size. Parked events that wait too long, or that keep
//! failing, are the [`crate::parking`] sweeper's.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    panic::AssertUnwindSafe,
    sync::Arc,
};

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

    /// Applies `events`, consecutive in a delivered batch and each admitted, in order, as
    /// [`Self::handle`] would one after another. Called only on a [`Self::transactional`]
    /// handler: when it fails, its writes are rolled back with the batch's, which is then
    /// handled again one event per call, so that the error names the event. The default
    /// handles each in turn; [`crate::Handlers`] gives a run of one type to a function
    /// registered with [`crate::Handlers::on_many`] whole.
    async fn handle_run(&self, tx: &mut Tx, events: &[&CloudEvent]) -> Result<(), HandlerError> {
        for event in events {
            self.handle(tx, event).await?;
        }
        Ok(())
    }

    /// Whether a run of the handler whose transaction rolls back leaves no trace: its only
    /// effects are its writes through the transaction, what it emits included. Then the
    /// events of a batch share their transaction without a savepoint each (a round trip
    /// each, and on PostgreSQL a subtransaction), and when one fails, the batch is rolled
    /// back and the events before it are handled again. `false` unless the service says so
    /// ([`crate::Handlers::transactional`]).
    fn transactional(&self) -> bool {
        false
    }
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
        match self.receive_all(std::slice::from_ref(event)).await {
            Ok(mut outcomes) => Ok(outcomes.pop().expect("one outcome per event")),
            Err((_, e)) => Err(e),
        }
    }

    /// Handles `events` in order, in one transaction: one commit (and on SQLite one turn
    /// of the write lock) for the lot instead of one per event. `Ok` means every event is
    /// committed. If one fails, the events before it are still committed, exactly once, and
    /// the error comes with their outcomes (`handled` = its length); nothing from the
    /// failing event on is. Each handler runs once per call, as with [`Self::receive`],
    /// unless the handler is [`Handler::transactional`]: then the events before a failing
    /// one are handled again after a rollback (up to three times: in a run, one per call,
    /// and once more to commit them).
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
        let mut mode = if self.handler.transactional() { Mode::Runs } else { Mode::Savepoints };
        let (mut events, mut finish, mut failure) = (events, Some(finish), None);
        // Each failure shortens the prefix tried next, or leaves runs for good, so this ends.
        loop {
            match self.batch(events, &mut finish, mode).await {
                Ok(outcomes) => {
                    return match failure {
                        None => Ok(outcomes),
                        Some(e) => Err((outcomes, e)),
                    };
                }
                Err(Failed::Kept(outcomes, e)) => return Err((outcomes, e)),
                Err(Failed::InRun(e)) => {
                    tracing::debug!(error = %e, "a run of events failed; handling the batch again one event at a time");
                    mode = Mode::Each;
                }
                Err(Failed::At(at, e)) if at > 0 => {
                    tracing::debug!(at, error = %e, "an event of a batch failed; handling the events before it again");
                    events = &events[..at];
                    failure.get_or_insert(e);
                    // Not every event is handled: what `finish` records (a backfill's
                    // position) must not commit with the events before the failing one.
                    finish = None;
                }
                Err(Failed::At(_, e) | Failed::Whole(e)) => return Err((vec![], failure.unwrap_or(e))),
            }
        }
    }

    /// One transaction over `events`, `finish` (taken only when every event is handled)
    /// writing last. In [`Mode::Savepoints`] each event after the first has a savepoint,
    /// and a failing event's is rolled back and the events before it committed
    /// ([`Failed::Kept`]); otherwise a failure rolls back the lot ([`Failed::At`], or
    /// [`Failed::InRun`] when collecting runs, since the event being received then need
    /// not be the one that failed).
    async fn batch<F>(&self, events: &[CloudEvent], finish: &mut Option<F>, mode: Mode) -> Result<Vec<Outcome>, Failed>
    where
        F: for<'a> FnOnce(&'a mut Tx) -> BoxFuture<'a, Result<(), DbError>>,
    {
        let mut tx = self.db.begin().await.map_err(|e| Failed::Whole(e.into()))?;
        let mut state = match admit(&mut tx, events).await {
            Ok(state) => state,
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(Failed::Whole(e));
            }
        };
        let mut outcomes = Vec::with_capacity(events.len());
        let mut run = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            // After the first event, a savepoint marks where this event's writes start, so
            // a failure undoes only them. One is open at a time: the previous event's is
            // released as this one's opens, in one round trip (a query of two statements
            // needs PostgreSQL's simple protocol: `raw_sql`). Left open, savepoints nest, and
            // SQLite keeps a copy of every page each of them writes until the commit (its
            // statement journal, which spills to a temporary file past 64 KiB): a batch
            // wrote, and then deleted, a file of megabytes.
            let savepoint = match i {
                _ if i == 0 || mode != Mode::Savepoints => Ok(()),
                1 => sqlx::query("SAVEPOINT busbar_event").execute(&mut *tx).await.map(drop),
                _ => sqlx::raw_sql("RELEASE SAVEPOINT busbar_event; SAVEPOINT busbar_event")
                    .execute(&mut *tx)
                    .await
                    .map(drop),
            };
            if let Err(e) = savepoint {
                let _ = tx.rollback().await;
                return Err(Failed::Whole(e.into()));
            }
            let fresh = state.fresh.contains(ev.id());
            // What this event emits is written at commit; a rollback to its savepoint must
            // take that back too.
            let emitted = tx.emitted_mark();
            let collecting = (mode == Mode::Runs).then_some(&mut run);
            match self.receive_in(&mut tx, ev, &mut state, collecting).await {
                Ok(o) => outcomes.push(o),
                Err(e) if mode == Mode::Runs => {
                    let _ = tx.rollback().await;
                    return Err(Failed::InRun(e));
                }
                Err(e) if i == 0 || mode == Mode::Each => {
                    let _ = tx.rollback().await;
                    return Err(Failed::At(i, e));
                }
                Err(e) => {
                    // Admission recorded the failing event and those after it in the inbox:
                    // they are not handled, so a redelivery must find them new.
                    let unhandled = state.fresh.iter().map(String::as_str).chain(fresh.then_some(ev.id()));
                    let unhandled = serde_json::to_string(&unhandled.collect::<Vec<_>>()).expect("strings serialise");
                    let kept = async {
                        sqlx::query("ROLLBACK TO SAVEPOINT busbar_event").execute(&mut *tx).await?;
                        tx.forget_emitted_since(emitted);
                        let forget = match tx.backend() {
                            Backend::Sqlite => {
                                "DELETE FROM busbar_inbox WHERE event_id IN (SELECT value FROM json_each($1))"
                            }
                            Backend::Postgres => {
                                "DELETE FROM busbar_inbox WHERE event_id IN \
                                 (SELECT json_array_elements_text(CAST($1 AS json)))"
                            }
                        };
                        sqlx::query(forget).bind(unhandled).execute(&mut *tx).await?;
                        state.versions.write(&mut tx).await?;
                        tx.commit().await?;
                        Ok::<_, ConsumeError>(())
                    };
                    return match kept.await {
                        Ok(()) => Err(Failed::Kept(outcomes, e)),
                        // Nothing is committed; the transaction is dropped (rolled back).
                        Err(_) => Err(Failed::Whole(e)),
                    };
                }
            }
        }
        if let Err(e) = self.apply_run(&mut tx, &mut run).await {
            let _ = tx.rollback().await;
            return Err(Failed::InRun(e));
        }
        let done = async {
            state.versions.write(&mut tx).await?;
            if let Some(finish) = finish.take() {
                finish(&mut tx).await.map_err(ConsumeError::from)?;
            }
            tx.commit().await.map_err(ConsumeError::from)
        };
        done.await.map(|()| outcomes).map_err(Failed::Whole)
    }

    /// Ordering and the handler for one event already admitted into `tx` (see [`admit`]),
    /// which the caller commits after writing `state.versions`. A duplicate writes nothing.
    /// With `run`, an event to apply is added to it rather than applied, and the run is
    /// applied ([`Self::apply_run`]) before anything that must see its writes: a drain of
    /// parked events. The caller applies what is left in it before committing.
    async fn receive_in<'e>(
        &self,
        tx: &mut Tx,
        event: &'e CloudEvent,
        state: &mut Admitted,
        mut run: Option<&mut Vec<&'e CloudEvent>>,
    ) -> Result<Outcome, ConsumeError> {
        if !state.fresh.remove(event.id()) {
            crate::metrics::received(event.ty(), "duplicate");
            return Ok(Outcome::Duplicate);
        }
        let Some((key, version)) = aggregate_of(event) else {
            match run {
                Some(run) => run.push(event),
                None => self.apply(tx, event).await?,
            }
            return Ok(Outcome::Applied { drained: 0 });
        };
        let known = state.aggregates.get(&key).copied().unwrap_or_default();
        let (source, subject) = (key.0.as_str(), key.1.as_str());
        // What an earlier event of this transaction applied is not written yet.
        let last = state.versions.get(source, subject).or(known.last);
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
                match &mut run {
                    Some(run) if !known.any_parked => run.push(event),
                    Some(run) => {
                        run.push(event);
                        self.apply_run(tx, run).await?;
                    }
                    None => self.apply(tx, event).await?,
                }
                let reached = last.map_or(version, |l| l.max(version));
                let (applied, drained) =
                    if known.any_parked { self.drain(tx, source, subject, reached).await? } else { (reached, 0) };
                state.versions.set(source, subject, applied);
                Outcome::Applied { drained }
            }
            Decision::Defer { waiting_for } => {
                sqlx::query(
                    "INSERT INTO busbar_deferred (source, subject, version, event_id, payload, deferred_at, waiting_for) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (source, subject, version) DO NOTHING",
                )
                .bind(source)
                .bind(subject)
                .bind(version)
                .bind(event.id())
                .bind(serde_json::to_string(event).expect("CloudEvents serialize"))
                .bind(now_millis())
                .bind(waiting_for)
                .execute(&mut **tx)
                .await?;
                // A later event of this aggregate in the same transaction has it to drain.
                state.aggregates.insert(key.clone(), AggregateState { any_parked: true, ..known });
                tracing::debug!(
                    event_id = event.id(),
                    source,
                    subject,
                    version,
                    waiting_for,
                    "parked: waiting for an earlier version"
                );
                crate::metrics::received(event.ty(), "parked");
                Outcome::Deferred { waiting_for }
            }
            Decision::Stale => {
                tracing::warn!(
                    event_id = event.id(),
                    source,
                    subject,
                    version,
                    ?last,
                    "ignoring stale event: a newer version was already applied"
                );
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
            let emitted = tx.emitted_mark();
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
                    tx.forget_emitted_since(emitted);
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
        self.apply_events(tx, &[event]).await
    }

    /// Applies the events collected in `run`, leaving it empty.
    async fn apply_run(&self, tx: &mut Tx, run: &mut Vec<&CloudEvent>) -> Result<(), ConsumeError> {
        let applied = match run.as_slice() {
            [] => Ok(()),
            events => self.apply_events(tx, events).await,
        };
        run.clear();
        applied
    }

    /// The handler for one event, or for a run of them ([`Handler::handle_run`]). Each
    /// event gets its span, which continues the trace it was emitted in (or starts one);
    /// what a run emits continues its first event's.
    async fn apply_events(&self, tx: &mut Tx, events: &[&CloudEvent]) -> Result<(), ConsumeError> {
        let first = events[0];
        let spans: Vec<_> = events
            .iter()
            .map(|event| {
                let parent = envelope::trace(event);
                let ctx = parent.map(|p| p.child()).unwrap_or_else(trace::TraceContext::root);
                let mut span =
                    Span::start(format!("handle {}", event.ty()), Kind::Consumer, ctx, parent.map(|p| p.span_id));
                span.attr("messaging.message.id", event.id().to_owned());
                (ctx, span)
            })
            .collect();
        let handling = async {
            tracing::debug!(event_id = %first.id(), event_type = %first.ty(), events = events.len(), "handling");
            match events {
                [one] => AssertUnwindSafe(self.handler.handle(tx, one)).catch_unwind().await,
                run => AssertUnwindSafe(self.handler.handle_run(tx, run)).catch_unwind().await,
            }
        };
        let started = std::time::Instant::now();
        let handled = match events {
            [_] => trace::within(spans[0].0, handling).await,
            // A run is handled as its first event's span, each event's own kept for what
            // is emitted for it (`Received::traced`).
            run => {
                let each = run.iter().zip(&spans).map(|(e, (ctx, _))| (e.id().to_owned(), *ctx)).collect();
                trace::within_run(each, spans[0].0, handling).await
            }
        };
        let result = match handled {
            Ok(r) => r,
            Err(panic) => Err(format!("the handler panicked: {}", panic_text(&panic)).into()),
        };
        let error = match (&result, events.len()) {
            (Ok(()), _) => None,
            (Err(e), 1) => Some(e.to_string()),
            // Which event failed is found when the batch is handled again one at a time;
            // that pass records each event's outcome, so the run's count no failure.
            (Err(e), n) => Some(format!("a run of {n} events failed ({e}); handled again one event at a time")),
        };
        let each = started.elapsed().as_secs_f64() / events.len() as f64;
        for (event, (_, span)) in events.iter().zip(spans) {
            span.end(error.as_deref());
            if result.is_ok() || events.len() == 1 {
                crate::metrics::handled(event.ty(), each, result.is_ok());
            }
        }
        result.map_err(|e| {
            // In a run, the first event stands for the run: the batch is handled again one
            // event at a time, which names the one at fault.
            let (event_id, event_type, reason) = (first.id().to_owned(), first.ty().to_owned(), e.to_string());
            match e.downcast_ref::<envelope::EnvelopeError>() {
                Some(envelope::EnvelopeError::Data { .. } | envelope::EnvelopeError::WrongType { .. }) => {
                    ConsumeError::Undecodable { event_id, event_type, reason }
                }
                _ => ConsumeError::Handler { event_id, event_type, reason },
            }
        })
    }
}

/// How the events of a batch reach the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One call per event, each after the first in a savepoint of its own.
    Savepoints,
    /// One call per event, without savepoints ([`Handler::transactional`]).
    Each,
    /// Consecutive events to apply in one call ([`Handler::handle_run`]); a transactional
    /// handler's first try of a batch.
    Runs,
}

/// How a batch's transaction failed.
enum Failed {
    /// The events before the failing one are committed, with these outcomes.
    Kept(Vec<Outcome>, ConsumeError),
    /// Handling the event at this index failed; nothing is committed.
    At(usize, ConsumeError),
    /// The transaction itself failed (begin, admission, the last writes, commit); nothing
    /// is committed.
    Whole(ConsumeError),
    /// Handling failed while events were collected in runs; nothing is committed.
    InRun(ConsumeError),
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
            .bind(lock_key(source, subject))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// What admission learned of a batch, and what its events have done since.
#[derive(Default)]
struct Admitted {
    /// The ids the inbox had not seen; an event taken off is no longer fresh, so the second
    /// copy of an event in one batch is a duplicate.
    fresh: HashSet<String>,
    /// What ordering needs to know of each aggregate a fresh event names.
    aggregates: HashMap<(String, String), AggregateState>,
    /// The versions applied by this batch, not written yet.
    versions: Versions,
}

/// What ordering needs to know of an aggregate (the default: nothing applied or parked).
#[derive(Debug, Clone, Copy, Default)]
struct AggregateState {
    /// The last version this subscriber applied.
    last: Option<i64>,
    /// Whether any of its events is parked here; when none is, applying an event has
    /// nothing to drain.
    any_parked: bool,
}

/// The aggregate an event names (its source and subject) and its version there, when it
/// carries both.
fn aggregate_of(event: &CloudEvent) -> Option<((String, String), i64)> {
    let (subject, version) = event.subject().zip(envelope::aggregate_version(event))?;
    Some(((event.source().to_string(), subject.to_owned()), version))
}

/// The key of an aggregate's advisory lock on PostgreSQL ([`lock_aggregate`]).
fn lock_key(source: &str, subject: &str) -> String {
    format!("{source}\u{1f}{subject}")
}

/// The state of each aggregate of a JSON array of `[source, subject]` pairs (`$list`: the
/// set-returning expression, `$v`: its element), one row each: source, subject, last
/// applied version, whether anything is parked.
macro_rules! aggregate_states_select {
    ($list:literal, $v:literal) => {
        concat!(
            "SELECT ",
            $v,
            " ->> 0, ",
            $v,
            " ->> 1, ",
            "(SELECT version FROM busbar_aggregate_versions WHERE source = ",
            $v,
            " ->> 0 AND subject = ",
            $v,
            " ->> 1), ",
            "CAST(CASE WHEN EXISTS (SELECT 1 FROM busbar_deferred WHERE source = ",
            $v,
            " ->> 0 AND subject = ",
            $v,
            " ->> 1) THEN 1 ELSE 0 END AS BIGINT) FROM ",
            $list
        )
    };
}

/// Records every event of a batch in the inbox and reads what ordering needs to know of
/// the aggregates the new ones name, taking their locks first on PostgreSQL (in one order,
/// sorted, so two batches cannot each hold a lock the other waits for). Per batch rather
/// than per event: round trips (hand-offs to SQLite's worker thread, trips to PostgreSQL)
/// are most of what receiving costs. One round trip on SQLite, whose queries may hold
/// several statements; two on PostgreSQL, whose second statement reads under a snapshot
/// taken after the locks, so it sees what their previous holders committed.
async fn admit(tx: &mut Tx, events: &[CloudEvent]) -> Result<Admitted, ConsumeError> {
    let mut admitted = Admitted::default();
    if events.is_empty() {
        return Ok(admitted);
    }
    let aggregates: Vec<Option<(String, String)>> = events.iter().map(|e| aggregate_of(e).map(|(a, _)| a)).collect();
    let entries: Vec<(&str, Option<String>)> =
        events.iter().zip(&aggregates).map(|(e, a)| (e.id(), a.as_ref().map(|(so, su)| lock_key(so, su)))).collect();
    let entries = serde_json::to_string(&entries).expect("strings serialise");
    let distinct = |only: &dyn Fn(usize) -> bool| {
        let set: BTreeSet<&(String, String)> =
            aggregates.iter().enumerate().filter(|(i, _)| only(*i)).filter_map(|(_, a)| a.as_ref()).collect();
        serde_json::to_string(&set.into_iter().map(|(so, su)| [so, su]).collect::<Vec<_>>()).expect("strings serialise")
    };
    let states = match tx.backend() {
        Backend::Sqlite => {
            // Every aggregate of the batch: no locks to take, and duplicates are rare.
            let rows = sqlx::query(concat!(
                "INSERT INTO busbar_inbox (event_id, handled_at) SELECT value ->> 0, $2 FROM json_each($1) WHERE true \
                 ON CONFLICT (event_id) DO NOTHING RETURNING event_id; ",
                aggregate_states_select!("json_each($3)", "value")
            ))
            .bind(&entries)
            .bind(now_millis())
            .bind(distinct(&|_| true))
            .fetch_all(&mut **tx)
            .await?;
            let (ids, states): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.len() == 1);
            for r in ids {
                admitted.fresh.insert(r.try_get(0)?);
            }
            states
        }
        Backend::Postgres => {
            // Inbox records and locks are both taken in sorted order: a replica taking an
            // overlapping batch in another order waits for this one instead of deadlocking
            // with it. The locks' subquery reads every row the insert returned before its
            // first lock (it sorts them), so each lock is taken only for a fresh event.
            let rows = sqlx::query(
                "WITH ev AS (SELECT e ->> 0 AS id, e ->> 1 AS k FROM json_array_elements(CAST($1 AS json)) e), \
                 fresh AS (INSERT INTO busbar_inbox (event_id, handled_at) SELECT id, $2 FROM ev ORDER BY id \
                   ON CONFLICT (event_id) DO NOTHING RETURNING event_id), \
                 locked AS (SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM \
                   (SELECT DISTINCT ev.k FROM ev JOIN fresh ON fresh.event_id = ev.id WHERE ev.k IS NOT NULL ORDER BY ev.k) keys) \
                 SELECT event_id, (SELECT COUNT(*) FROM locked) FROM fresh",
            )
            .bind(&entries)
            .bind(now_millis())
            .fetch_all(&mut **tx)
            .await?;
            for r in rows {
                admitted.fresh.insert(r.try_get(0)?);
            }
            let fresh = &admitted.fresh;
            let list = distinct(&|i| fresh.contains(events[i].id()));
            if list == "[]" {
                vec![]
            } else {
                sqlx::query(aggregate_states_select!("json_array_elements(CAST($1 AS json)) e", "e"))
                    .bind(list)
                    .fetch_all(&mut **tx)
                    .await?
            }
        }
    };
    for r in states {
        let key: (String, String) = (r.try_get(0)?, r.try_get(1)?);
        let state = AggregateState { last: r.try_get(2)?, any_parked: r.try_get::<i64, _>(3)? == 1 };
        admitted.aggregates.insert(key, state);
    }
    Ok(admitted)
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
