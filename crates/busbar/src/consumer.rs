//! The receiving side: an idempotent inbox plus per-aggregate ordering around a
//! service's event handler, all in the handler's own transaction.
//!
//! For each event, in one transaction:
//! 1. record its id in the inbox; if it was already there, it is a duplicate: stop;
//! 2. if it carries an aggregate version, apply it only if it is the next one; park it
//!    if a version in between is missing; ignore it if it is older than what was applied;
//! 3. after applying, apply any parked successors that are now next in line.
//!
//! The caller acknowledges the event (e.g. answers 2xx) only after this commits. A batch
//! of events can share one transaction ([`Consumer::receive_all`]).

use std::sync::Arc;

use async_trait::async_trait;
use cloudevents::AttributesReader;
use sqlx::Row;

use crate::{
    db::{Backend, Db, DbError, Tx, now_millis},
    envelope::{self, CloudEvent},
    ordering::{self, Decision},
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

#[derive(Clone)]
pub struct Consumer {
    db: Db,
    handler: Arc<dyn Handler>,
}

impl Consumer {
    pub fn new(db: Db, handler: Arc<dyn Handler>) -> Self {
        Self { db, handler }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Handles one event with inbox and ordering, in its own transaction; see the module
    /// docs.
    pub async fn receive(&self, event: &CloudEvent) -> Result<Outcome, ConsumeError> {
        let mut tx = self.db.begin().await?;
        let outcome = self.receive_in(&mut tx, event).await?;
        match outcome {
            // Nothing was written; releasing the transaction is all that is left.
            Outcome::Duplicate => tx.rollback().await?,
            _ => tx.commit().await?,
        }
        Ok(outcome)
    }

    /// Handles `events` in order, in one transaction: one commit (and on SQLite one turn
    /// of the write lock) for the lot instead of one per event. `Ok` means every event is
    /// committed. If one fails, the events before it are still committed, exactly once, and
    /// the error comes with their outcomes (`handled` = its length); nothing from the
    /// failing event on is. Each handler runs once per call, as with [`Self::receive`].
    pub async fn receive_all(&self, events: &[CloudEvent]) -> Result<Vec<Outcome>, (Vec<Outcome>, ConsumeError)> {
        if let [one] = events {
            return self.receive(one).await.map(|o| vec![o]).map_err(|e| (vec![], e));
        }
        let mut tx = self.db.begin().await.map_err(|e| (vec![], e.into()))?;
        let mut outcomes = Vec::with_capacity(events.len());
        for (i, ev) in events.iter().enumerate() {
            let step = async {
                if i > 0 {
                    // Marks where this event's writes start, so a failure undoes only them.
                    sqlx::query("SAVEPOINT busbar_event").execute(&mut *tx).await?;
                }
                self.receive_in(&mut tx, ev).await
            };
            match step.await {
                Ok(o) => outcomes.push(o),
                Err(e) if i == 0 => {
                    let _ = tx.rollback().await;
                    return Err((vec![], e));
                }
                Err(e) => {
                    let kept = async {
                        sqlx::query("ROLLBACK TO SAVEPOINT busbar_event").execute(&mut *tx).await?;
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
        match tx.commit().await {
            Ok(()) => Ok(outcomes),
            Err(e) => Err((vec![], e.into())),
        }
    }

    /// Inbox, ordering and the handler for one event inside `tx`, which the caller
    /// commits. A duplicate writes nothing.
    async fn receive_in(&self, tx: &mut Tx, event: &CloudEvent) -> Result<Outcome, ConsumeError> {
        let fresh = sqlx::query(
            "INSERT INTO busbar_inbox (event_id, handled_at) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(event.id())
        .bind(now_millis())
        .execute(&mut **tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            return Ok(Outcome::Duplicate);
        }

        let (Some(subject), Some(version)) = (event.subject(), envelope::aggregate_version(event)) else {
            self.apply(tx, event).await?;
            return Ok(Outcome::Applied { drained: 0 });
        };
        let source = event.source().to_string();
        if tx.backend() == Backend::Postgres {
            // Serialises consumers of one aggregate across connections and replicas, so two
            // of them cannot both see "no version yet" and park what the other applies.
            // SQLite needs nothing: BEGIN IMMEDIATE already serialises writers.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(format!("{source}\u{1f}{subject}"))
                .execute(&mut **tx)
                .await?;
        }
        let last: Option<i64> =
            sqlx::query("SELECT version FROM busbar_aggregate_versions WHERE source = $1 AND subject = $2")
                .bind(&source)
                .bind(subject)
                .fetch_optional(&mut **tx)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;

        let outcome = match ordering::decide(last, version) {
            Decision::Apply => {
                self.apply(tx, event).await?;
                let mut applied = version;
                let mut drained = 0;
                while let Some(next) = take_parked(tx, &source, subject, applied + 1).await? {
                    self.apply(tx, &next).await?;
                    applied += 1;
                    drained += 1;
                }
                sqlx::query(
                    "INSERT INTO busbar_aggregate_versions (source, subject, version) VALUES ($1, $2, $3) \
                     ON CONFLICT (source, subject) DO UPDATE SET version = excluded.version",
                )
                .bind(&source)
                .bind(subject)
                .bind(applied)
                .execute(&mut **tx)
                .await?;
                Outcome::Applied { drained }
            }
            Decision::Defer { waiting_for } => {
                sqlx::query(
                    "INSERT INTO busbar_deferred (source, subject, version, event_id, payload, deferred_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (source, subject, version) DO NOTHING",
                )
                .bind(&source)
                .bind(subject)
                .bind(version)
                .bind(event.id())
                .bind(serde_json::to_string(event).expect("CloudEvents serialize"))
                .bind(now_millis())
                .execute(&mut **tx)
                .await?;
                tracing::debug!(event_id = event.id(), %source, subject, version, waiting_for, "deferred out-of-order event");
                Outcome::Deferred { waiting_for }
            }
            Decision::Stale => {
                tracing::warn!(event_id = event.id(), %source, subject, version, ?last, "ignoring stale event: a newer version was already applied");
                Outcome::Stale
            }
        };
        Ok(outcome)
    }

    async fn apply(&self, tx: &mut Tx, event: &CloudEvent) -> Result<(), ConsumeError> {
        self.handler.handle(tx, event).await.map_err(|e| {
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

async fn take_parked(
    tx: &mut Tx,
    source: &str,
    subject: &str,
    version: i64,
) -> Result<Option<CloudEvent>, ConsumeError> {
    let row = sqlx::query("SELECT payload FROM busbar_deferred WHERE source = $1 AND subject = $2 AND version = $3")
        .bind(source)
        .bind(subject)
        .bind(version)
        .fetch_optional(&mut **tx)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let payload: String = row.try_get(0)?;
    sqlx::query("DELETE FROM busbar_deferred WHERE source = $1 AND subject = $2 AND version = $3")
        .bind(source)
        .bind(subject)
        .bind(version)
        .execute(&mut **tx)
        .await?;
    let ev = envelope::decode_one(&payload).map_err(|e| ConsumeError::Handler {
        event_id: format!("parked {source}/{subject} v{version}"),
        event_type: "?".into(),
        reason: e.to_string(),
    })?;
    Ok(Some(ev))
}

/// Number of events parked waiting for a missing predecessor.
pub async fn deferred_count(db: &Db) -> Result<i64, DbError> {
    let row = sqlx::query("SELECT COUNT(*) FROM busbar_deferred").fetch_one(db.pool()).await?;
    Ok(row.try_get(0)?)
}
