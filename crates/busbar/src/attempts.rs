//! Attempts at handling one event, kept in the subscriber's own database
//! (`busbar_attempts`), so that they survive a crash and count only against that event.
//!
//! Two paths may try the same event: live delivery on JetStream (for an event delivered
//! again) and a backfill replaying history. They share one count, and both may run out of
//! attempts at the same moment, so recording the dead letter is decided once:
//! 1. [`claim`]: exactly one caller gets [`Claim::Mine`];
//! 2. it stores the dead letter, then marks it done ([`dead_lettered`]), or, if it could
//!    not store it, lets go ([`release`]);
//! 3. the others move past the event ([`Claim::Done`]) or, while the claim is held
//!    ([`Claim::Taken`]), come back to it later.
//!
//! A claim whose holder died before finishing is taken over once it is [`STALE_CLAIM`] old,
//! so a crash at worst records a dead letter twice (redriving both applies the event once;
//! the inbox drops the copy), never loses one.

use std::time::Duration;

use sqlx::Row;

use crate::db::{Db, DbError, now_millis};

/// A claim this old is taken to be its holder's last act: anyone may take it over. Well
/// above the time to store one dead letter.
pub const STALE_CLAIM: Duration = Duration::from_secs(60);

/// `dead_lettered` once the dead letter is recorded (0: nobody gave up; 1: claimed, being
/// recorded since `claimed_at`).
const DONE: i64 = 2;

/// Who records the dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The caller: it records it, then calls [`dead_lettered`] (or [`release`]).
    Mine,
    /// Someone else is recording it right now.
    Taken,
    /// It is recorded already.
    Done,
}

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
           attempts = CASE WHEN busbar_attempts.dead_lettered = 2 THEN busbar_attempts.attempts \
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
    Ok(if dead == DONE { Attempt::DeadLettered } else { Attempt::Number(attempts) })
}

/// Claims the recording of `event_id`'s dead letter (see the module docs).
pub async fn claim(db: &Db, event_id: &str) -> Result<Claim, DbError> {
    claim_if_older(db, event_id, STALE_CLAIM).await
}

/// [`claim`], taking over a claim held for longer than `stale`.
pub async fn claim_if_older(db: &Db, event_id: &str, stale: Duration) -> Result<Claim, DbError> {
    let now = now_millis();
    let mut tx = db.begin().await?;
    let won = sqlx::query(
        "INSERT INTO busbar_attempts (event_id, attempts, updated_at, dead_lettered, claimed_at) VALUES ($1, 0, $2, 1, $2) \
         ON CONFLICT (event_id) DO UPDATE SET dead_lettered = 1, claimed_at = excluded.claimed_at \
         WHERE busbar_attempts.dead_lettered = 0 \
            OR (busbar_attempts.dead_lettered = 1 AND busbar_attempts.claimed_at <= $3) \
         RETURNING event_id",
    )
    .bind(event_id)
    .bind(now)
    .bind(now - stale.as_millis() as i64)
    .fetch_optional(&mut *tx)
    .await?
    .is_some();
    let claim = if won {
        Claim::Mine
    } else {
        let state: i64 = sqlx::query("SELECT dead_lettered FROM busbar_attempts WHERE event_id = $1")
            .bind(event_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if state == DONE { Claim::Done } else { Claim::Taken }
    };
    tx.commit().await?;
    Ok(claim)
}

/// Lets go of a claim whose dead letter could not be stored: the next to give up tries.
pub async fn release(db: &Db, event_id: &str) -> Result<(), DbError> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "UPDATE busbar_attempts SET dead_lettered = 0, claimed_at = NULL WHERE event_id = $1 AND dead_lettered = 1",
    )
    .bind(event_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Marks `event_id` as recorded in the dead letters: further attempts by either path see
/// [`Attempt::DeadLettered`] until [`clear`] (a redriven copy starts a new count).
pub async fn dead_lettered(db: &Db, event_id: &str) -> Result<(), DbError> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO busbar_attempts (event_id, attempts, updated_at, dead_lettered) VALUES ($1, 0, $2, 2) \
         ON CONFLICT (event_id) DO UPDATE SET dead_lettered = 2, updated_at = excluded.updated_at",
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
