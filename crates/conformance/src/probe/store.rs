//! The probe's SQL: emitting with per-aggregate versions, and recording applications.

use std::collections::{BTreeMap, HashMap};

use busbar::{
    Db, Tx,
    db::{DbError, now_millis, row_placeholders},
};
use sqlx::Row;

use crate::{
    events::{ItemAdded, ItemEvent, ItemPriced, ItemRemoved, ItemRenamed, Poison},
    wire::{Applied, EmitItem, Emitted, Stats},
};

#[derive(Debug)]
pub enum EmitError {
    UnknownType(String),
    Db(DbError),
}

impl From<DbError> for EmitError {
    fn from(e: DbError) -> Self {
        EmitError::Db(e)
    }
}

impl From<sqlx::Error> for EmitError {
    fn from(e: sqlx::Error) -> Self {
        EmitError::Db(e.into())
    }
}

/// Emits `items` in order, `per_tx` events per transaction, and returns what committed.
pub async fn emit(db: &Db, items: &[EmitItem], per_tx: usize) -> Result<Vec<Emitted>, EmitError> {
    let singles: Vec<&EmitItem> =
        items.iter().flat_map(|item| std::iter::repeat_n(item, item.count.unwrap_or(1))).collect();
    let mut out = Vec::with_capacity(singles.len());
    for chunk in singles.chunks(per_tx.max(1)) {
        let mut tx = db.begin().await?;
        let mut next = reserve_versions(&mut tx, chunk).await?;
        let mut done = Vec::with_capacity(chunk.len());
        for item in chunk {
            let version = match item.version {
                Some(v) => pin_version(&mut tx, &item.aggregate, v).await?,
                None => {
                    let n = next.get_mut(item.aggregate.as_str()).expect("reserved");
                    *n += 1;
                    *n - 1
                }
            };
            done.push(emit_one(&mut tx, item, version).await?);
        }
        record_emitted(&mut tx, &done).await?;
        tx.commit().await?;
        out.extend(done);
    }
    Ok(out)
}

/// Reserves the next versions of each aggregate for the events of `chunk` that take the
/// next one: one upsert per aggregate, adding how many it needs. Returns the first version
/// reserved per aggregate. The upsert's row lock holds other emitters of the aggregate
/// (other replicas, on PostgreSQL) until this transaction commits, so versions commit in
/// order; aggregates are taken in sorted order so that two emitters cannot deadlock.
async fn reserve_versions<'a>(tx: &mut Tx, chunk: &[&'a EmitItem]) -> Result<HashMap<&'a str, i64>, EmitError> {
    let mut need: BTreeMap<&str, i64> = BTreeMap::new();
    for item in chunk.iter().filter(|i| i.version.is_none()) {
        *need.entry(item.aggregate.as_str()).or_default() += 1;
    }
    let mut first = HashMap::with_capacity(need.len());
    for (aggregate, n) in need {
        let last: i64 = sqlx::query(
            "INSERT INTO probe_versions (aggregate, version) VALUES ($1, $2) \
             ON CONFLICT (aggregate) DO UPDATE SET version = probe_versions.version + excluded.version RETURNING version",
        )
        .bind(aggregate)
        .bind(n)
        .fetch_one(&mut **tx)
        .await?
        .try_get(0)?;
        first.insert(aggregate, last - n + 1);
    }
    Ok(first)
}

/// An explicitly chosen version: the aggregate's counter moves up to it if it is behind.
async fn pin_version(tx: &mut Tx, aggregate: &str, v: i64) -> Result<i64, EmitError> {
    sqlx::query(
        "INSERT INTO probe_versions (aggregate, version) VALUES ($1, $2) ON CONFLICT (aggregate) DO UPDATE \
         SET version = CASE WHEN probe_versions.version > excluded.version THEN probe_versions.version \
         ELSE excluded.version END",
    )
    .bind(aggregate)
    .bind(v)
    .execute(&mut **tx)
    .await?;
    Ok(v)
}

async fn emit_one(tx: &mut Tx, item: &EmitItem, version: i64) -> Result<Emitted, EmitError> {
    let (id, poison) = (item.aggregate.clone(), item.poison.clone());
    Ok(match item.ty.as_str() {
        "ItemAdded" => emit_typed::<ItemAdded>(tx, id, poison, version).await?,
        "ItemRenamed" => emit_typed::<ItemRenamed>(tx, id, poison, version).await?,
        "ItemPriced" => emit_typed::<ItemPriced>(tx, id, poison, version).await?,
        "ItemRemoved" => emit_typed::<ItemRemoved>(tx, id, poison, version).await?,
        other => return Err(EmitError::UnknownType(other.to_owned())),
    })
}

/// Rows per multi-row INSERT: SQLite resolves `$N` placeholders at a cost that grows with
/// the square of their number, so statements stay small.
const INSERT_CHUNK: usize = 32;

async fn record_emitted(tx: &mut Tx, done: &[Emitted]) -> Result<(), EmitError> {
    let now = now_millis();
    for rows in done.chunks(INSERT_CHUNK) {
        let sql = format!(
            "INSERT INTO probe_emitted (event_id, type, aggregate, version, emitted_at) VALUES {}",
            row_placeholders(1, rows.len(), 5)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for e in rows {
            q = q.bind(e.id.clone()).bind(e.ty.clone()).bind(e.aggregate.clone()).bind(e.version).bind(now);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

async fn emit_typed<E: ItemEvent>(
    tx: &mut Tx,
    id: String,
    poison: Option<Poison>,
    version: i64,
) -> Result<Emitted, DbError> {
    use busbar::AttributesReader;
    let aggregate = id.clone();
    let ev = tx.emit(&E::new(id, poison), version).await?;
    Ok(Emitted { id: ev.id().to_owned(), ty: E::TYPE.to_owned(), aggregate, version })
}

pub async fn record_applied(
    tx: &mut Tx,
    id: &str,
    ty: &str,
    aggregate: &str,
    version: Option<i64>,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO probe_applied (event_id, type, aggregate, version, applied_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(ty)
    .bind(aggregate)
    .bind(version)
    .bind(now_millis())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn applied(db: &Db) -> Result<Vec<Applied>, DbError> {
    let rows =
        sqlx::query("SELECT seq, event_id, type, aggregate, version, applied_at FROM probe_applied ORDER BY seq")
            .fetch_all(db.pool())
            .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Applied {
                seq: r.try_get(0)?,
                id: r.try_get(1)?,
                ty: r.try_get(2)?,
                aggregate: r.try_get(3)?,
                version: r.try_get(4)?,
                at: r.try_get(5)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

pub async fn emitted(db: &Db) -> Result<Vec<Emitted>, DbError> {
    let rows = sqlx::query("SELECT event_id, type, aggregate, version FROM probe_emitted ORDER BY aggregate, version")
        .fetch_all(db.pool())
        .await?;
    rows.into_iter()
        .map(|r| Ok(Emitted { id: r.try_get(0)?, ty: r.try_get(1)?, aggregate: r.try_get(2)?, version: r.try_get(3)? }))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

pub async fn stats(db: &Db) -> Result<Stats, DbError> {
    let count = |table: &'static str| async move {
        let row =
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}"))).fetch_one(db.pool()).await?;
        Ok::<i64, DbError>(row.try_get(0)?)
    };
    Ok(Stats {
        applied: count("probe_applied").await?,
        emitted: count("probe_emitted").await?,
        parked: busbar::consumer::deferred_count(db).await?,
    })
}
