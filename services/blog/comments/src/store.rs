use blog_events::{CommentCreated, CommentStatus, CommentUpdated};
use busbar::{
    Db, Tx,
    db::{Backend, DbError},
};
use sqlx::{AnyConnection, Row};

use crate::doc::{self, Comment};

/// Comments per segment of a post's array: a write rewrites at most this many entries,
/// whatever the post holds.
const SEGMENT: i64 = 100;

pub async fn remember_post(tx: &mut Tx, post_id: &str) -> Result<(), DbError> {
    sqlx::query("INSERT INTO known_posts (id, last_seg, last_entries) VALUES ($1, 0, 0) ON CONFLICT (id) DO NOTHING")
        .bind(post_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The JSON array of a known post's comments, oldest first; `None` for an unknown post.
/// One round trip: the segments joined by the database.
pub async fn array(conn: &mut AnyConnection, backend: Backend, post_id: &str) -> Result<Option<String>, DbError> {
    let sql = match backend {
        Backend::Postgres => {
            "SELECT k.last_seg, (SELECT string_agg(doc, ',' ORDER BY seg) FROM comment_segments WHERE post_id = k.id) \
             FROM known_posts k WHERE k.id = $1"
        }
        Backend::Sqlite => {
            "SELECT k.last_seg, (SELECT group_concat(doc, ',' ORDER BY seg) FROM comment_segments WHERE post_id = k.id) \
             FROM known_posts k WHERE k.id = $1"
        }
    };
    let Some(row) = sqlx::query(sql).bind(post_id).fetch_optional(&mut *conn).await? else {
        return Ok(None);
    };
    let (last_seg, joined): (Option<i64>, Option<String>) = (row.try_get(0)?, row.try_get(1)?);
    let members = match last_seg {
        Some(_) => joined.unwrap_or_default(),
        // A post from before segments, not written since: its rows, as they are.
        None => entries(conn, post_id).await?.into_iter().map(|(_, entry)| entry).collect::<Vec<_>>().join(","),
    };
    Ok(Some(format!("[{members}]")))
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

/// The post's tail, its row locked for this transaction on PostgreSQL (two comments on one
/// post at once must not both append to the same segment as if it were theirs; SQLite's
/// writers already take turns). A post from before segments gets them built first from its
/// rows. `None` for an unknown post.
async fn tail_for_update(tx: &mut Tx, post_id: &str) -> Result<Option<Tail>, DbError> {
    let sql = match tx.backend() {
        Backend::Postgres => "SELECT last_seg, last_entries FROM known_posts WHERE id = $1 FOR UPDATE",
        Backend::Sqlite => "SELECT last_seg, last_entries FROM known_posts WHERE id = $1",
    };
    let Some(row) = sqlx::query(sql).bind(post_id).fetch_optional(&mut **tx).await? else {
        return Ok(None);
    };
    let (seg, entries): (Option<i64>, Option<i64>) = (row.try_get(0)?, row.try_get(1)?);
    match seg.zip(entries) {
        Some((seg, entries)) => Ok(Some(Tail { seg, entries })),
        None => Ok(Some(build_segments(tx, post_id).await?)),
    }
}

/// Splits the rows of a post from before segments into segments, oldest first.
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
    tracing::info!(post = post_id, comments = all.len(), segments = tail.seg, "split a post's comments into segments");
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
    let c = CommentCreated {
        id: uuid::Uuid::now_v7().to_string(),
        content: content.to_owned(),
        post_id: post_id.to_owned(),
        status: CommentStatus::Pending,
    };
    db.write(move |tx| {
        let c = c.clone();
        Box::pin(async move { create_in(tx, &c).await })
    })
    .await
}

async fn create_in(tx: &mut Tx, c: &CommentCreated) -> Result<Option<String>, DbError> {
    let post_id = c.post_id.as_str();
    let Some(tail) = tail_for_update(tx, post_id).await? else {
        return Ok(None);
    };
    let entry = doc::entry(&Comment { id: &c.id, content: &c.content, status: c.status.as_str() });
    // Appended to the last segment while it has room, else a new one.
    let tail = if tail.seg > 0 && tail.entries < SEGMENT {
        sqlx::query("UPDATE comment_segments SET doc = doc || ',' || $1 WHERE post_id = $2 AND seg = $3")
            .bind(&entry)
            .bind(post_id)
            .bind(tail.seg)
            .execute(&mut **tx)
            .await?;
        Tail { seg: tail.seg, entries: tail.entries + 1 }
    } else {
        sqlx::query("INSERT INTO comment_segments (post_id, seg, doc) VALUES ($1, $2, $3)")
            .bind(post_id)
            .bind(tail.seg + 1)
            .bind(&entry)
            .execute(&mut **tx)
            .await?;
        Tail { seg: tail.seg + 1, entries: 1 }
    };
    set_tail(tx, post_id, tail).await?;
    sqlx::query("INSERT INTO comments (id, post_id, content, status, version, seg) VALUES ($1, $2, $3, $4, 1, $5)")
        .bind(&c.id)
        .bind(&c.post_id)
        .bind(&c.content)
        .bind(c.status.as_str())
        .bind(tail.seg)
        .execute(&mut **tx)
        .await?;
    tx.emit(c, 1).await?;
    let backend = tx.backend();
    array(tx, backend, post_id).await
}

/// Sets a comment's moderation status and emits `CommentUpdated` with the next version.
/// A decision for a comment that is no longer pending changes nothing.
pub async fn moderate(tx: &mut Tx, comment_id: &str, status: CommentStatus) -> Result<Option<CommentUpdated>, DbError> {
    let Some(row) = sqlx::query("SELECT post_id, content, status, version, seg FROM comments WHERE id = $1")
        .bind(comment_id)
        .fetch_optional(&mut **tx)
        .await?
    else {
        return Err(DbError::Sql(sqlx::Error::RowNotFound));
    };
    let (post_id, content, current, version, seg): (String, String, String, i64, Option<i64>) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    if current != CommentStatus::Pending.as_str() {
        return Ok(None);
    }
    let next = version + 1;
    sqlx::query("UPDATE comments SET status = $1, version = $2 WHERE id = $3")
        .bind(status.as_str())
        .bind(next)
        .bind(comment_id)
        .execute(&mut **tx)
        .await?;
    let seg = match seg {
        Some(seg) => Some(seg),
        // A comment from before segments: its post's are built (or were, just now, by
        // another transaction), and say where it is.
        None => match tail_for_update(tx, &post_id).await? {
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
        set_status_in_segment(tx, &post_id, seg, comment_id, status).await?;
    }
    let updated = CommentUpdated { id: comment_id.to_owned(), status, post_id, content };
    tx.emit(&updated, next).await?;
    Ok(Some(updated))
}

/// Edits one comment's status in its segment, the segment's row locked on PostgreSQL while
/// it is read and written back (two decisions on one segment must not undo each other).
async fn set_status_in_segment(
    tx: &mut Tx,
    post_id: &str,
    seg: i64,
    comment_id: &str,
    status: CommentStatus,
) -> Result<(), DbError> {
    let sql = match tx.backend() {
        Backend::Postgres => "SELECT doc FROM comment_segments WHERE post_id = $1 AND seg = $2 FOR UPDATE",
        Backend::Sqlite => "SELECT doc FROM comment_segments WHERE post_id = $1 AND seg = $2",
    };
    let mut doc: String =
        sqlx::query_scalar(sql).bind(post_id).bind(seg).fetch_optional(&mut **tx).await?.unwrap_or_default();
    if !doc::set_status(&mut doc, comment_id, status.as_str()) {
        // Segments are written by this service alone, inside the transactions that write
        // the comments: a comment missing from its segment is a bug, not bad input.
        return Err(DbError::Sql(sqlx::Error::Protocol(format!(
            "comment {comment_id} is missing from segment {seg} of post {post_id}'s comment array"
        ))));
    }
    sqlx::query("UPDATE comment_segments SET doc = $1 WHERE post_id = $2 AND seg = $3")
        .bind(doc)
        .bind(post_id)
        .bind(seg)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
