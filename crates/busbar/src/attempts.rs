//! Attempts at handling one event, kept in the subscriber's own database
//! (`busbar_attempts`), so that they survive a crash and count only against that event.
//!
//! Two paths may try the same event: live delivery on JetStream (for an event delivered
//! again) and a backfill replaying history. They share one count, and once either has
//! recorded the event as a dead letter it marks the row: the other then moves past the
//! event instead of dead-lettering it again. The mark is written after the dead letter is
//! stored, never before, so a crash in between can at worst record a second dead letter
//! (redriving both applies the event once; the inbox drops the copy), never lose one.

use sqlx::Row;

use crate::db::{Db, DbError, now_millis};

/// One more attempt, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// This is attempt number `n` (1 for the first recorded).
    Number(i64),
    /// The event is already a dead letter (recorded by the other path): nothing to do.
    DeadLettered,
}

/// Records one more attempt at `event_id`.
pub async fn begin(db: &Db, event_id: &str) -> Result<Attempt, DbError> {
    begin_at_least(db, event_id, 1).await
}

/// Records an attempt numbered at least `n` (attempts made before any was recorded count
/// too).
pub async fn begin_at_least(db: &Db, event_id: &str, n: i64) -> Result<Attempt, DbError> {
    let mut tx = db.begin().await?;
    let row = sqlx::query(
        "INSERT INTO busbar_attempts (event_id, attempts, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (event_id) DO UPDATE SET \
           attempts = CASE WHEN busbar_attempts.dead_lettered <> 0 THEN busbar_attempts.attempts \
                           WHEN busbar_attempts.attempts + 1 > excluded.attempts THEN busbar_attempts.attempts + 1 \
                           ELSE excluded.attempts END, \
           updated_at = excluded.updated_at \
         RETURNING attempts, dead_lettered",
    )
    .bind(event_id)
    .bind(n)
    .bind(now_millis())
    .fetch_one(&mut *tx)
    .await?;
    let (attempts, dead): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
    tx.commit().await?;
    Ok(if dead != 0 { Attempt::DeadLettered } else { Attempt::Number(attempts) })
}

/// Marks `event_id` as recorded in the dead letters: further attempts by either path see
/// [`Attempt::DeadLettered`] until [`clear`] (a redriven copy starts a new count).
pub async fn dead_lettered(db: &Db, event_id: &str) -> Result<(), DbError> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO busbar_attempts (event_id, attempts, updated_at, dead_lettered) VALUES ($1, 0, $2, 1) \
         ON CONFLICT (event_id) DO UPDATE SET dead_lettered = 1, updated_at = excluded.updated_at",
    )
    .bind(event_id)
    .bind(now_millis())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Forgets `event_id`'s attempts: it was applied, or a redriven copy starts over.
pub async fn clear(db: &Db, event_id: &str) -> Result<(), DbError> {
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM busbar_attempts WHERE event_id = $1").bind(event_id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}
