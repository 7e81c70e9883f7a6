use blog_events::{CommentCreated, CommentStatus, CommentUpdated};
use busbar::{Db, Tx, db::DbError};
use serde::Serialize;
use sqlx::{AnyConnection, Row};

#[derive(Debug, Serialize)]
pub struct Comment {
    pub id: String,
    pub content: String,
    pub status: String,
}

pub async fn post_exists(conn: &mut AnyConnection, post_id: &str) -> Result<bool, DbError> {
    Ok(sqlx::query("SELECT 1 FROM known_posts WHERE id = $1").bind(post_id).fetch_optional(conn).await?.is_some())
}

pub async fn remember_post(tx: &mut Tx, post_id: &str) -> Result<(), DbError> {
    sqlx::query("INSERT INTO known_posts (id) VALUES ($1) ON CONFLICT (id) DO NOTHING")
        .bind(post_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Comments of a post, oldest first (UUIDv7 ids sort by creation time).
pub async fn for_post(conn: &mut AnyConnection, post_id: &str) -> Result<Vec<Comment>, DbError> {
    let rows = sqlx::query("SELECT id, content, status FROM comments WHERE post_id = $1 ORDER BY id")
        .bind(post_id)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(|r| Comment { id: r.get(0), content: r.get(1), status: r.get(2) }).collect())
}

/// Creates a pending comment on a known post and emits `CommentCreated`, atomically.
/// Returns `None` if the post is unknown here.
pub async fn create(db: &Db, post_id: &str, content: &str) -> Result<Option<Vec<Comment>>, DbError> {
    let mut tx = db.begin().await?;
    if !post_exists(&mut tx, post_id).await? {
        tx.rollback().await?;
        return Ok(None);
    }
    let c = CommentCreated {
        id: uuid::Uuid::now_v7().to_string(),
        content: content.to_owned(),
        post_id: post_id.to_owned(),
        status: CommentStatus::Pending,
    };
    sqlx::query("INSERT INTO comments (id, post_id, content, status, version) VALUES ($1, $2, $3, $4, 1)")
        .bind(&c.id)
        .bind(&c.post_id)
        .bind(&c.content)
        .bind(c.status.as_str())
        .execute(&mut *tx)
        .await?;
    tx.emit(&c, 1).await?;
    let all = for_post(&mut tx, post_id).await?;
    tx.commit().await?;
    Ok(Some(all))
}

/// Sets a comment's moderation status and emits `CommentUpdated` with the next version.
/// A decision for a comment that is no longer pending changes nothing.
pub async fn moderate(tx: &mut Tx, comment_id: &str, status: CommentStatus) -> Result<Option<CommentUpdated>, DbError> {
    let Some(row) = sqlx::query("SELECT post_id, content, status, version FROM comments WHERE id = $1")
        .bind(comment_id)
        .fetch_optional(&mut **tx)
        .await?
    else {
        return Err(DbError::Sql(sqlx::Error::RowNotFound));
    };
    let (post_id, content, current, version): (String, String, String, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
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
    let updated = CommentUpdated { id: comment_id.to_owned(), status, post_id, content };
    tx.emit(&updated, next).await?;
    Ok(Some(updated))
}
