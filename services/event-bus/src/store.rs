//! The bus's durable state: the event log, subscriber cursors and dead letters.

use busbar::{
    Db,
    bus_api::{DeadLetter, DeadLetterState},
    db::{DbError, now_millis, placeholders, row_placeholders},
};
use sqlx::{AssertSqlSafe, Row};

/// An event as stored in the log.
#[derive(Debug, Clone)]
pub struct Stored {
    pub seq: i64,
    pub event_id: String,
    pub ty: String,
    pub payload: String,
}

/// A subscriber's events not given to it yet.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub count: i64,
    /// When the oldest was received (Unix milliseconds).
    pub oldest_at: Option<i64>,
}

/// One event to append: its id and type (already validated) and its JSON text.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: String,
    pub ty: String,
    pub payload: String,
}

#[derive(Debug, Clone, Default)]
pub struct Cursor {
    pub position: i64,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// A dead letter as stored: what `GET /deadletters` shows ([`DeadLetter`]), and the
/// stored event to deliver again.
#[derive(Debug, Clone)]
pub struct StoredDeadLetter {
    pub letter: DeadLetter,
    pub event: Stored,
}

/// Rows per multi-row INSERT. Kept small: SQLite resolves each `$N` placeholder by name
/// with a scan of all of them, so a statement's cost grows with the square of its size.
const INSERT_CHUNK: usize = 32;

#[derive(Clone)]
pub struct Store {
    db: Db,
}

impl Store {
    pub async fn open(db: Db) -> Result<Self, DbError> {
        db.migrate(&sqlx::migrate!("./migrations/sqlite"), &sqlx::migrate!("./migrations/postgres")).await?;
        Ok(Self { db })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Appends events in one transaction, dropping any whose id is already in the log.
    /// Returns (number newly stored, head seq after commit).
    pub async fn append(&self, events: &[NewEvent]) -> Result<(u64, i64), DbError> {
        let mut tx = self.db.begin().await?;
        let now = now_millis();
        let mut stored = 0;
        for chunk in events.chunks(INSERT_CHUNK) {
            let sql = format!(
                "INSERT INTO bus_events (event_id, type, payload, received_at) VALUES {} ON CONFLICT (event_id) DO NOTHING",
                row_placeholders(1, chunk.len(), 4)
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for e in chunk {
                q = q.bind(e.event_id.clone()).bind(e.ty.clone()).bind(e.payload.clone()).bind(now);
            }
            stored += q.execute(&mut *tx).await?.rows_affected();
        }
        let head: Option<i64> = sqlx::query("SELECT MAX(seq) FROM bus_events").fetch_one(&mut *tx).await?.try_get(0)?;
        tx.commit().await?;
        Ok((stored, head.unwrap_or(0)))
    }

    pub async fn head(&self) -> Result<i64, DbError> {
        let head: Option<i64> =
            sqlx::query("SELECT MAX(seq) FROM bus_events").fetch_one(self.db.pool()).await?.try_get(0)?;
        Ok(head.unwrap_or(0))
    }

    /// Events with `after < seq <= upto`, of the given types (all types if `types` is
    /// empty), oldest first, at most `limit`.
    pub async fn read(&self, after: i64, upto: i64, types: &[String], limit: i64) -> Result<Vec<Stored>, DbError> {
        let mut q = sqlx::query(AssertSqlSafe(read_sql(types.len(), limit))).bind(after).bind(upto);
        for t in types {
            q = q.bind(t.clone());
        }
        let rows = q.fetch_all(self.db.pool()).await?;
        rows.into_iter()
            .map(|r| {
                Ok(Stored { seq: r.try_get(0)?, event_id: r.try_get(1)?, ty: r.try_get(2)?, payload: r.try_get(3)? })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// The subscriber's cursor, created at `initial` if it has none yet.
    pub async fn cursor(&self, subscriber: &str, initial: i64) -> Result<Cursor, DbError> {
        let mut tx = self.db.begin().await?;
        sqlx::query("INSERT INTO bus_cursors (subscriber, position, attempts) VALUES ($1, $2, 0) ON CONFLICT (subscriber) DO NOTHING")
            .bind(subscriber)
            .bind(initial)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let r = sqlx::query("SELECT position, attempts, last_error FROM bus_cursors WHERE subscriber = $1")
            .bind(subscriber)
            .fetch_one(self.db.pool())
            .await?;
        let attempts: i64 = r.try_get(1)?;
        Ok(Cursor { position: r.try_get(0)?, attempts: attempts as u32, last_error: r.try_get(2)? })
    }

    /// The subscriber's cursor, if it has one, without creating it.
    pub async fn peek_cursor(&self, subscriber: &str) -> Result<Option<Cursor>, DbError> {
        let r = sqlx::query("SELECT position, attempts, last_error FROM bus_cursors WHERE subscriber = $1")
            .bind(subscriber)
            .fetch_optional(self.db.pool())
            .await?;
        let Some(r) = r else { return Ok(None) };
        let attempts: i64 = r.try_get(1)?;
        Ok(Some(Cursor { position: r.try_get(0)?, attempts: attempts as u32, last_error: r.try_get(2)? }))
    }

    /// The events of `types` after `position`: how many, and when the oldest arrived.
    pub async fn pending(&self, position: i64, types: &[String]) -> Result<Pending, DbError> {
        if types.is_empty() {
            return Ok(Pending::default());
        }
        let sql = format!(
            "SELECT COUNT(*), MIN(received_at) FROM bus_events WHERE seq > $1 AND type IN ({})",
            placeholders(2, types.len())
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(position);
        for t in types {
            q = q.bind(t.as_str());
        }
        let r = q.fetch_one(self.db.pool()).await?;
        Ok(Pending { count: r.try_get(0)?, oldest_at: r.try_get(1)? })
    }

    /// One statement, atomic by itself: one round trip per save instead of three (begin,
    /// update, commit). Delivery saves at most every 200 ms while events stream, and as a
    /// worker stops (`delivery::Worker::save_throttled`).
    pub async fn save_cursor(&self, subscriber: &str, c: &Cursor) -> Result<(), DbError> {
        let update =
            sqlx::query("UPDATE bus_cursors SET position = $1, attempts = $2, last_error = $3 WHERE subscriber = $4")
                .bind(c.position)
                .bind(c.attempts as i64)
                .bind(c.last_error.clone())
                .bind(subscriber);
        self.db.execute_write(update).await?;
        Ok(())
    }

    /// Moves `event` to the dead-letter store and advances the cursor past it, atomically.
    pub async fn dead_letter(
        &self,
        subscriber: &str,
        event: &Stored,
        attempts: u32,
        error: &str,
    ) -> Result<(), DbError> {
        let mut tx = self.db.begin().await?;
        let letter = NewLetter {
            subscriber,
            seq: event.seq,
            event_id: &event.event_id,
            ty: &event.ty,
            payload: &event.payload,
            attempts,
            error,
        };
        record_dead_letter(&mut tx, letter).await?;
        sqlx::query("UPDATE bus_cursors SET position = $1, attempts = 0, last_error = NULL WHERE subscriber = $2")
            .bind(event.seq)
            .bind(subscriber)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    /// Records a dead letter a subscriber reports for an event it had already taken (its
    /// cursor is past it). Its sequence is the event's in the log, or 0 if the log does
    /// not have it. Returns the dead letter's id.
    pub async fn report_dead_letter(
        &self,
        subscriber: &str,
        event_id: &str,
        ty: &str,
        payload: &str,
        attempts: u32,
        error: &str,
    ) -> Result<i64, DbError> {
        let mut tx = self.db.begin().await?;
        let seq: Option<i64> = sqlx::query("SELECT seq FROM bus_events WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        let letter = NewLetter { subscriber, seq: seq.unwrap_or(0), event_id, ty, payload, attempts, error };
        let id = record_dead_letter(&mut tx, letter).await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn dead_letters(&self, subscriber: Option<&str>, limit: i64) -> Result<Vec<StoredDeadLetter>, DbError> {
        // `$1 IS NULL` keeps one statement for "all subscribers" and "this one"; the limit is
        // written into the text for the reason given at [`read_sql`].
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, subscriber, seq, event_id, type, attempts, last_error, dead_at, state, payload FROM bus_dead_letters \
             WHERE ($1 IS NULL OR subscriber = $1) ORDER BY id LIMIT {limit}"
        )))
        .bind(subscriber.map(str::to_owned))
        .fetch_all(self.db.pool())
        .await?;
        rows.into_iter().map(dead_letter_row).collect::<Result<_, sqlx::Error>>().map_err(Into::into)
    }

    /// Marks dead letters for redelivery; returns how many, and the subscribers affected.
    pub async fn request_redrive(
        &self,
        id: Option<i64>,
        subscriber: Option<&str>,
    ) -> Result<(usize, Vec<String>), DbError> {
        let mut tx = self.db.begin().await?;
        let rows = sqlx::query(
            "UPDATE bus_dead_letters SET state = 'redriving' \
             WHERE state = 'dead' AND ($1 IS NULL OR id = $1) AND ($2 IS NULL OR subscriber = $2) RETURNING subscriber",
        )
        .bind(id)
        .bind(subscriber.map(str::to_owned))
        .fetch_all(&mut *tx)
        .await?;
        let mut subs: Vec<String> = rows.into_iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?;
        let count = subs.len();
        subs.sort();
        subs.dedup();
        tx.commit().await?;
        Ok((count, subs))
    }

    pub async fn next_redrive(&self, subscriber: &str) -> Result<Option<StoredDeadLetter>, DbError> {
        let row = sqlx::query(
            "SELECT id, subscriber, seq, event_id, type, attempts, last_error, dead_at, state, payload FROM bus_dead_letters \
             WHERE subscriber = $1 AND state = 'redriving' ORDER BY id LIMIT 1",
        )
        .bind(subscriber)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(dead_letter_row).transpose()?)
    }

    pub async fn redrive_done(&self, id: i64) -> Result<(), DbError> {
        let mut tx = self.db.begin().await?;
        sqlx::query("DELETE FROM bus_dead_letters WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn redrive_failed(&self, id: i64, attempts: u32, error: &str) -> Result<(), DbError> {
        let mut tx = self.db.begin().await?;
        sqlx::query("UPDATE bus_dead_letters SET state = 'dead', attempts = attempts + $1, last_error = $2, dead_at = $3 WHERE id = $4")
            .bind(attempts as i64)
            .bind(error)
            .bind(now_millis())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// How many dead letters `subscriber` has, and the error of the newest.
    pub async fn dead_letter_summary(&self, subscriber: &str) -> Result<(i64, Option<String>), DbError> {
        let r = sqlx::query(
            "SELECT COUNT(*), (SELECT last_error FROM bus_dead_letters WHERE subscriber = $1 ORDER BY id DESC LIMIT 1) \
             FROM bus_dead_letters WHERE subscriber = $1",
        )
        .bind(subscriber)
        .fetch_one(self.db.pool())
        .await?;
        Ok((r.try_get(0)?, r.try_get(1)?))
    }
}

/// A dead letter about to be recorded.
struct NewLetter<'a> {
    subscriber: &'a str,
    seq: i64,
    event_id: &'a str,
    ty: &'a str,
    payload: &'a str,
    attempts: u32,
    error: &'a str,
}

/// Records `letter`, once per subscriber and event: if that subscriber's dead letter for
/// the event is already waiting (live delivery and the subscriber's backfill can both give
/// up on one event), it keeps its id and takes the newer attempts and error. Returns its id.
async fn record_dead_letter(tx: &mut busbar::db::Tx, letter: NewLetter<'_>) -> Result<i64, DbError> {
    let existing = sqlx::query(
        "UPDATE bus_dead_letters SET attempts = $1, last_error = $2, dead_at = $3 \
         WHERE subscriber = $4 AND event_id = $5 AND state = 'dead' RETURNING id",
    )
    .bind(letter.attempts as i64)
    .bind(letter.error)
    .bind(now_millis())
    .bind(letter.subscriber)
    .bind(letter.event_id)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(row) = existing {
        return Ok(row.try_get(0)?);
    }
    let id = sqlx::query(
        "INSERT INTO bus_dead_letters (subscriber, seq, event_id, type, payload, attempts, last_error, dead_at, state) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'dead') RETURNING id",
    )
    .bind(letter.subscriber)
    .bind(letter.seq)
    .bind(letter.event_id)
    .bind(letter.ty)
    .bind(letter.payload)
    .bind(letter.attempts as i64)
    .bind(letter.error)
    .bind(now_millis())
    .fetch_one(&mut **tx)
    .await?
    .try_get(0)?;
    Ok(id)
}

/// [`Store::read`]'s query for `types` event types (all if 0). Its `LIMIT` is written into
/// the text, not bound: SQLite plans with a bound `LIMIT`'s value, so each bind would expire
/// the cached statement and every read of the log would parse and plan it again. A push
/// reads with one of two limits (its batch, or 1 while isolating a failure).
fn read_sql(types: usize, limit: i64) -> String {
    let filter = if types == 0 { String::new() } else { format!(" AND type IN ({})", placeholders(3, types)) };
    format!(
        "SELECT seq, event_id, type, payload FROM bus_events WHERE seq > $1 AND seq <= $2{filter} ORDER BY seq LIMIT {limit}"
    )
}

fn dead_letter_row(r: sqlx::any::AnyRow) -> Result<StoredDeadLetter, sqlx::Error> {
    let (seq, event_id, ty, payload): (i64, String, String, String) =
        (r.try_get(2)?, r.try_get(3)?, r.try_get(4)?, r.try_get(9)?);
    let attempts: i64 = r.try_get(5)?;
    let id: i64 = r.try_get(0)?;
    let state: String = r.try_get(8)?;
    let letter = DeadLetter {
        id: id as u64,
        subscriber: r.try_get(1)?,
        seq: Some(seq as u64),
        event_id: Some(event_id.clone()),
        ty: Some(ty.clone()),
        attempts: attempts as u32,
        last_error: r.try_get(6)?,
        dead_at: r.try_get(7)?,
        state: if state == "redriving" { DeadLetterState::Redriving } else { DeadLetterState::Dead },
        event: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
    };
    Ok(StoredDeadLetter { letter, event: Stored { seq, event_id, ty, payload } })
}

#[cfg(test)]
mod tests {
    use sqlx::AssertSqlSafe;

    use super::*;

    /// Every push reads the log: SQLite must not parse and plan that query again each time.
    #[tokio::test]
    async fn the_read_of_the_log_is_prepared_once() {
        let mut conn = testkit::sqlite::memory(&sqlx::migrate!("./migrations/sqlite")).await;
        for (after, upto) in [(0, 10), (10, 20), (20, 25)] {
            for types in [vec![], vec!["PostCreated"]] {
                let mut q = sqlx::query(AssertSqlSafe(read_sql(types.len(), 500))).bind(after).bind(upto);
                for t in types {
                    q = q.bind(t);
                }
                q.fetch_all(&mut conn).await.unwrap();
            }
        }
        testkit::sqlite::assert_prepared_once(&mut conn, "FROM bus_events WHERE", 2).await;
    }
}
