use std::collections::{HashMap, HashSet};

use blog_events::{CommentCreated, CommentStatus, CommentUpdated};
use busbar::{
    Db, Tx,
    db::{Backend, DbError},
    trace::{self, TraceContext},
};
use sqlx::{AnyConnection, Row, any::AnyRow};

use crate::doc::{self, Comment};

/// Comments per segment of a post's array: a write rewrites at most this many entries,
/// whatever the post holds.
const SEGMENT: i64 = 100;

/// Remembers that these posts exist, in one statement whatever their number (one JSON
/// array argument, expanded by the database). A post already known stays as it is.
pub async fn remember_posts(tx: &mut Tx, post_ids: &[&str]) -> Result<(), DbError> {
    let sql = match tx.backend() {
        // `WHERE true`: SQLite's grammar needs it between a SELECT and its ON CONFLICT.
        Backend::Sqlite => {
            "INSERT INTO known_posts (id, last_seg, last_entries) SELECT value, 0, 0 FROM json_each($1) WHERE true \
             ON CONFLICT (id) DO NOTHING"
        }
        Backend::Postgres => {
            "INSERT INTO known_posts (id, last_seg, last_entries) \
             SELECT json_array_elements_text(CAST($1 AS json)), 0, 0 ON CONFLICT (id) DO NOTHING"
        }
    };
    sqlx::query(sql).bind(serde_json::to_string(post_ids).expect("strings serialise")).execute(&mut **tx).await?;
    Ok(())
}

/// The JSON array of a known post's comments, oldest first; `None` for an unknown post.
/// One round trip: the post's row with its segments, in order (see [`doc::array_of`]).
pub async fn array(conn: &mut AnyConnection, post_id: &str) -> Result<Option<String>, DbError> {
    let rows = sqlx::query(
        "SELECT k.last_seg, s.doc FROM known_posts k LEFT JOIN comment_segments s ON s.post_id = k.id \
         WHERE k.id = $1 ORDER BY s.seg",
    )
    .bind(post_id)
    .fetch_all(&mut *conn)
    .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let last_seg: Option<i64> = first.try_get(0)?;
    if last_seg.is_none() {
        // A post from before segments, not written since: its rows, as they are.
        let entries = entries(conn, post_id).await?;
        return Ok(Some(doc::array_of(entries.iter().map(|(_, entry)| entry.as_str()))));
    }
    Ok(Some(segments_array(&rows, 1)?))
}

/// The array made of column `col` of `rows`, a post's segments in order (NULL for a post
/// with none).
fn segments_array(rows: &[AnyRow], col: usize) -> Result<String, DbError> {
    let docs = rows.iter().map(|r| r.try_get::<Option<&str>, _>(col)).collect::<Result<Vec<_>, _>>()?;
    Ok(doc::array_of(docs.into_iter().flatten()))
}

/// A post's comments as array entries, oldest first (UUIDv7 ids sort by creation time),
/// with their ids.
async fn entries(conn: &mut AnyConnection, post_id: &str) -> Result<Vec<(String, String)>, DbError> {
    let rows = sqlx::query("SELECT id, content, status FROM comments WHERE post_id = $1 ORDER BY id")
        .bind(post_id)
        .fetch_all(conn)
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let id: String = r.get(0);
            let entry = doc::entry(&Comment { id: &id, content: r.get(1), status: r.get(2) });
            (id, entry)
        })
        .collect())
}

/// Where a post's array ends: its last segment and how many comments that holds.
#[derive(Debug, Clone, Copy)]
struct Tail {
    seg: i64,
    entries: i64,
}

/// A post's tail and its greatest comment id (`None` without comments).
struct End {
    tail: Tail,
    last_id: Option<String>,
}

/// The post's tail, its row locked for this transaction on PostgreSQL (two comments on one
/// post at once must not both append to the same segment as if it were theirs; SQLite's
/// writers already take turns). The columns are the locked row's, so on PostgreSQL they hold
/// what a transaction this one waited for wrote. A post from before segments gets them built
/// first from its rows. `None` for an unknown post.
async fn end_for_update(tx: &mut Tx, post_id: &str) -> Result<Option<End>, DbError> {
    let sql = match tx.backend() {
        Backend::Postgres => "SELECT last_seg, last_entries, last_id FROM known_posts WHERE id = $1 FOR UPDATE",
        Backend::Sqlite => "SELECT last_seg, last_entries, last_id FROM known_posts WHERE id = $1",
    };
    let Some(row) = sqlx::query(sql).bind(post_id).fetch_optional(&mut **tx).await? else {
        return Ok(None);
    };
    let (seg, entries, last_id): (Option<i64>, Option<i64>, Option<String>) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    let tail = match seg.zip(entries) {
        Some((seg, entries)) => Tail { seg, entries },
        None => {
            let tail = build_segments(tx, post_id).await?;
            tracing::info!(post = post_id, segments = tail.seg, "split a post's comments into segments");
            tail
        }
    };
    Ok(Some(End { tail, last_id }))
}

/// (Re)writes a post's segments from its rows, in id order, and says where they end. The
/// post must have no segments yet (from before segments, or just deleted).
async fn build_segments(tx: &mut Tx, post_id: &str) -> Result<Tail, DbError> {
    let all = entries(tx, post_id).await?;
    let mut tail = Tail { seg: 0, entries: 0 };
    for part in all.chunks(SEGMENT as usize) {
        tail = Tail { seg: tail.seg + 1, entries: part.len() as i64 };
        let doc = part.iter().map(|(_, e)| e.as_str()).collect::<Vec<_>>().join(",");
        sqlx::query("INSERT INTO comment_segments (post_id, seg, doc) VALUES ($1, $2, $3)")
            .bind(post_id)
            .bind(tail.seg)
            .bind(doc)
            .execute(&mut **tx)
            .await?;
        sqlx::query("UPDATE comments SET seg = $1 WHERE post_id = $2 AND id >= $3 AND id <= $4")
            .bind(tail.seg)
            .bind(post_id)
            .bind(&part[0].0)
            .bind(&part[part.len() - 1].0)
            .execute(&mut **tx)
            .await?;
    }
    set_tail(tx, post_id, tail).await?;
    Ok(tail)
}

async fn set_tail(tx: &mut Tx, post_id: &str, tail: Tail) -> Result<(), DbError> {
    sqlx::query("UPDATE known_posts SET last_seg = $1, last_entries = $2 WHERE id = $3")
        .bind(tail.seg)
        .bind(tail.entries)
        .bind(post_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Creates a pending comment on a known post and emits `CommentCreated`, atomically, in a
/// transaction shared with the comments created at the same moment ([`Db::write`]).
/// Returns the post's comment array with it, or `None` if the post is unknown here.
pub async fn create(db: &Db, post_id: &str, content: &str) -> Result<Option<String>, DbError> {
    let (post_id, content) = (post_id.to_owned(), content.to_owned());
    // The id is taken in the writer's turn rather than before queueing: one process's
    // comments then commit in id order (UUIDv7s of one process rise) and append, which
    // leaves the rebuild of `create_out_of_order` to replicas whose clocks differ.
    write(db, move || CommentCreated {
        id: uuid::Uuid::now_v7().to_string(),
        content: content.clone(),
        post_id: post_id.clone(),
        status: CommentStatus::Pending,
    })
    .await
}

/// [`create`] with the comment as given, its id included.
pub async fn insert(db: &Db, c: CommentCreated) -> Result<Option<String>, DbError> {
    write(db, move || c.clone()).await
}

/// Creates the comment `comment` makes, each time the write runs (a shared write that
/// fails runs again alone).
async fn write(
    db: &Db,
    comment: impl Fn() -> CommentCreated + Send + Sync + 'static,
) -> Result<Option<String>, DbError> {
    db.write(move |tx| {
        let c = comment();
        Box::pin(async move { create_in(tx, &c).await })
    })
    .await
}

/// Two round trips: the post's tail (locked on PostgreSQL), then one query that appends
/// the entry, moves the tail, stores the row and reads the array back.
async fn create_in(tx: &mut Tx, c: &CommentCreated) -> Result<Option<String>, DbError> {
    let post_id = c.post_id.as_str();
    let Some(End { tail, last_id }) = end_for_update(tx, post_id).await? else {
        return Ok(None);
    };
    if last_id.as_deref().is_some_and(|last| c.id.as_str() < last) {
        return create_out_of_order(tx, c).await.map(Some);
    }
    let entry = doc::entry(&Comment { id: &c.id, content: &c.content, status: c.status.as_str() });
    // Appended to the last segment while it has room, else a new one.
    let append = tail.seg > 0 && tail.entries < SEGMENT;
    let tail =
        if append { Tail { seg: tail.seg, entries: tail.entries + 1 } } else { Tail { seg: tail.seg + 1, entries: 1 } };
    // $1 post, $2 segment, $3 entry, $4 entries in the segment, $5 comment id, $6 content,
    // $7 status.
    macro_rules! segment_write {
        (append) => {
            "UPDATE comment_segments SET doc = doc || ',' || $3 WHERE post_id = $1 AND seg = $2"
        };
        (new) => {
            "INSERT INTO comment_segments (post_id, seg, doc) VALUES ($1, $2, $3)"
        };
    }
    macro_rules! sqlite {
        ($write:tt) => {
            concat!(
                segment_write!($write),
                "; UPDATE known_posts SET last_seg = $2, last_entries = $4, last_id = $5 WHERE id = $1; \
                 INSERT INTO comments (id, post_id, content, status, version, seg) VALUES ($5, $1, $6, $7, 1, $2); \
                 SELECT doc FROM comment_segments WHERE post_id = $1 ORDER BY seg"
            )
        };
    }
    // One statement sees one snapshot, which does not hold what its own CTEs write: the
    // array is read from the other segments plus the one just written.
    macro_rules! postgres {
        ($write:tt) => {
            concat!(
                "WITH written AS (",
                segment_write!($write),
                " RETURNING seg, doc), \
                 tail AS (UPDATE known_posts SET last_seg = $2, last_entries = $4, last_id = $5 WHERE id = $1), \
                 stored AS (INSERT INTO comments (id, post_id, content, status, version, seg) VALUES ($5, $1, $6, $7, 1, $2)) \
                 SELECT string_agg(doc, ',' ORDER BY seg) FROM \
                   (SELECT seg, doc FROM comment_segments WHERE post_id = $1 AND seg <> $2 \
                    UNION ALL SELECT seg, doc FROM written) segments"
            )
        };
    }
    let sql = match (tx.backend(), append) {
        (Backend::Sqlite, true) => sqlite!(append),
        (Backend::Sqlite, false) => sqlite!(new),
        (Backend::Postgres, true) => postgres!(append),
        (Backend::Postgres, false) => postgres!(new),
    };
    // fetch_all: SQLite answers a query's rows statement by statement, and fetch_one would
    // stop at the first statement, which has none.
    let rows = sqlx::query(sql)
        .bind(post_id)
        .bind(tail.seg)
        .bind(&entry)
        .bind(tail.entries)
        .bind(&c.id)
        .bind(&c.content)
        .bind(c.status.as_str())
        .fetch_all(&mut **tx)
        .await?;
    let array = match tx.backend() {
        // The last statement's rows, the segments; the others have none.
        Backend::Sqlite => segments_array(&rows, 0)?,
        Backend::Postgres => {
            let members: Option<String> = rows.last().ok_or(sqlx::Error::RowNotFound)?.try_get(0)?;
            doc::array(members.unwrap_or_default())
        }
    };
    tx.emit(c, 1).await?;
    Ok(Some(array))
}

/// Creates a comment whose id sorts before the post's greatest, which appending would put
/// out of id order (the order of a rebuild, and of query's view): the post's segments are
/// written again from its rows. Rare: two comments on one post created at once whose
/// transactions committed in the other order than their ids were taken.
async fn create_out_of_order(tx: &mut Tx, c: &CommentCreated) -> Result<String, DbError> {
    let post_id = c.post_id.as_str();
    sqlx::query("INSERT INTO comments (id, post_id, content, status, version) VALUES ($1, $2, $3, $4, 1)")
        .bind(&c.id)
        .bind(post_id)
        .bind(&c.content)
        .bind(c.status.as_str())
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM comment_segments WHERE post_id = $1").bind(post_id).execute(&mut **tx).await?;
    let tail = build_segments(tx, post_id).await?;
    tracing::debug!(post = post_id, comment = %c.id, segments = tail.seg, "a comment sorted before the post's last; its array rebuilt in id order");
    tx.emit(c, 1).await?;
    array(tx, post_id).await?.ok_or(DbError::Sql(sqlx::Error::RowNotFound))
}

/// What a run of decisions did: the comments it moderated (each emitted as
/// `CommentUpdated`), in the run's order, and the ids of those no longer pending, which it
/// left as they were.
#[derive(Debug, Default)]
pub struct Moderated {
    pub updated: Vec<CommentUpdated>,
    pub unchanged: Vec<String>,
}

/// A moderation decision on one of this service's comments.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'a> {
    pub comment_id: &'a str,
    pub status: CommentStatus,
    /// The trace it came in: the comment's `CommentUpdated` continues it, as when the
    /// decision is applied alone.
    pub trace: Option<TraceContext>,
}

/// Sets the moderation status of a run of comments and emits `CommentUpdated` for each with
/// its next version, as deciding them one at a time in order would: a decision for a
/// comment that is no longer pending (decided before, or earlier in the run) changes
/// nothing; one for a comment this service does not hold fails the run with `RowNotFound`.
/// One statement decides the whole run, then one per comment writes its entry in the
/// post's array.
pub async fn moderate(tx: &mut Tx, decisions: &[Decision<'_>]) -> Result<Moderated, DbError> {
    // Deciding and writing in one statement: of two decisions at once on PostgreSQL, the
    // second waits for the first's row lock, then finds the comment no longer pending.
    let sql = match tx.backend() {
        Backend::Sqlite => {
            "UPDATE comments SET status = d.status, version = version + 1 \
             FROM (SELECT value ->> 0 AS id, value ->> 1 AS status FROM json_each($1)) AS d \
             WHERE comments.id = d.id AND comments.status = $2 \
             RETURNING id, post_id, content, version, seg"
        }
        Backend::Postgres => {
            "UPDATE comments SET status = d.status, version = comments.version + 1 \
             FROM (SELECT e ->> 0 AS id, e ->> 1 AS status FROM json_array_elements(CAST($1 AS json)) AS e) AS d \
             WHERE comments.id = d.id AND comments.status = $2 \
             RETURNING comments.id, comments.post_id, comments.content, comments.version, comments.seg"
        }
    };
    // Of an id decided twice, the first decision counts (the second finds it decided).
    let mut seen = HashSet::new();
    let (firsts, again): (Vec<Decision>, Vec<Decision>) = decisions.iter().partition(|d| seen.insert(d.comment_id));
    let run: Vec<(&str, &str)> = firsts.iter().map(|d| (d.comment_id, d.status.as_str())).collect();
    let rows = sqlx::query(sql)
        .bind(serde_json::to_string(&run).expect("strings serialise"))
        .bind(CommentStatus::Pending.as_str())
        .fetch_all(&mut **tx)
        .await?;
    let mut changed: HashMap<String, AnyRow> = rows.into_iter().map(|r| (r.get::<String, _>(0), r)).collect();
    let mut done = Moderated::default();
    let mut unchanged = Vec::new();
    for d in firsts {
        match changed.remove(d.comment_id) {
            Some(row) => done.updated.push(trace::continuing(d.trace, place(tx, d.comment_id, d.status, &row)).await?),
            None => unchanged.push(d.comment_id),
        }
    }
    if !unchanged.is_empty() {
        let held: Vec<(String,)> = sqlx::query_as(match tx.backend() {
            Backend::Sqlite => "SELECT id FROM comments WHERE id IN (SELECT value FROM json_each($1))",
            Backend::Postgres => {
                "SELECT id FROM comments WHERE id IN (SELECT json_array_elements_text(CAST($1 AS json)))"
            }
        })
        .bind(serde_json::to_string(&unchanged).expect("strings serialise"))
        .fetch_all(&mut **tx)
        .await?;
        if held.len() < unchanged.len() {
            return Err(DbError::Sql(sqlx::Error::RowNotFound));
        }
    }
    // A comment decided twice in the run is unchanged the second time, as one at a time.
    done.unchanged = unchanged.into_iter().chain(again.iter().map(|d| d.comment_id)).map(str::to_owned).collect();
    Ok(done)
}

/// Writes a comment just moderated (`row`, as the decision returned it: post, content, new
/// version, segment) into its post's array and emits `CommentUpdated`.
async fn place(tx: &mut Tx, comment_id: &str, status: CommentStatus, row: &AnyRow) -> Result<CommentUpdated, DbError> {
    let (post_id, content, next, seg): (String, String, i64, Option<i64>) =
        (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?, row.try_get(4)?);
    let seg = match seg {
        Some(seg) => Some(seg),
        // A comment from before segments: its post's are built (or were, just now, by
        // another transaction or for a comment before it in the run), and say where it is.
        None => match end_for_update(tx, &post_id).await? {
            Some(_) => {
                sqlx::query_scalar::<_, Option<i64>>("SELECT seg FROM comments WHERE id = $1")
                    .bind(comment_id)
                    .fetch_one(&mut **tx)
                    .await?
            }
            None => None,
        },
    };
    if let Some(seg) = seg {
        let entry =
            |status: CommentStatus| doc::entry(&Comment { id: comment_id, content: &content, status: status.as_str() });
        set_entry(tx, &post_id, seg, comment_id, &entry(CommentStatus::Pending), &entry(status)).await?;
    }
    let updated = CommentUpdated { id: comment_id.to_owned(), status, post_id, content };
    tx.emit(&updated, next).await?;
    Ok(updated)
}

/// Replaces comment `id`'s entry in its segment, `old` by `new`, in one statement that reads
/// and writes the row (under its row lock on PostgreSQL, so two decisions on one segment
/// cannot undo each other). The segment may already hold `new`: segments built from the
/// rows in this transaction were built after the row changed. Holding neither is a bug.
async fn set_entry(tx: &mut Tx, post_id: &str, seg: i64, id: &str, old: &str, new: &str) -> Result<(), DbError> {
    let sql = match tx.backend() {
        Backend::Postgres => {
            "UPDATE comment_segments SET doc = replace(doc, $1, $2) \
             WHERE post_id = $3 AND seg = $4 AND (strpos(doc, $1) > 0 OR strpos(doc, $2) > 0)"
        }
        Backend::Sqlite => {
            "UPDATE comment_segments SET doc = replace(doc, $1, $2) \
             WHERE post_id = $3 AND seg = $4 AND (instr(doc, $1) > 0 OR instr(doc, $2) > 0)"
        }
    };
    let changed = sqlx::query(sql).bind(old).bind(new).bind(post_id).bind(seg).execute(&mut **tx).await?;
    if changed.rows_affected() == 0 {
        // Segments are written by this service alone, inside the transactions that write
        // the comments: a comment missing from its segment is a bug, not bad input.
        return Err(DbError::Sql(sqlx::Error::Protocol(format!(
            "comment {id} is missing from segment {seg} of post {post_id}'s comment array"
        ))));
    }
    Ok(())
}
