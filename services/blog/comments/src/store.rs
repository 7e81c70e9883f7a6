use blog_events::{CommentCreated, CommentStatus, CommentUpdated};
use busbar::{
    Db, Tx,
    db::{Backend, DbError},
};
use sqlx::{AnyConnection, Row};

use crate::doc::{self, Comment};

pub async fn remember_post(tx: &mut Tx, post_id: &str) -> Result<(), DbError> {
    sqlx::query("INSERT INTO known_posts (id) VALUES ($1) ON CONFLICT (id) DO NOTHING")
        .bind(post_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The JSON array of a known post's comments, oldest first; `None` for an unknown post.
pub async fn array(conn: &mut AnyConnection, post_id: &str) -> Result<Option<String>, DbError> {
    let Some(stored) = sqlx::query_scalar::<_, Option<String>>("SELECT comments_doc FROM known_posts WHERE id = $1")
        .bind(post_id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    match stored {
        Some(doc) => Ok(Some(doc)),
        None => Ok(Some(render(conn, post_id).await?)),
    }
}

/// A post's array from its rows (UUIDv7 ids sort by creation time), for a post stored
/// before arrays were kept.
async fn render(conn: &mut AnyConnection, post_id: &str) -> Result<String, DbError> {
    let rows = sqlx::query("SELECT id, content, status FROM comments WHERE post_id = $1 ORDER BY id")
        .bind(post_id)
        .fetch_all(conn)
        .await?;
    Ok(rows.iter().fold("[]".to_owned(), |doc, r| {
        doc::append(&doc, &doc::entry(&Comment { id: r.get(0), content: r.get(1), status: r.get(2) }))
    }))
}

/// The post's array, locked for this transaction's update (PostgreSQL: two comments on one
/// post at once must not both append to the same old array; SQLite's writers already take
/// turns). `None` for an unknown post.
async fn array_for_update(tx: &mut Tx, post_id: &str) -> Result<Option<String>, DbError> {
    if tx.backend() == Backend::Postgres {
        let locked = sqlx::query("SELECT 1 FROM known_posts WHERE id = $1 FOR UPDATE")
            .bind(post_id)
            .fetch_optional(&mut **tx)
            .await?;
        if locked.is_none() {
            return Ok(None);
        }
    }
    array(tx, post_id).await
}

async fn store_array(tx: &mut Tx, post_id: &str, doc: &str) -> Result<(), DbError> {
    sqlx::query("UPDATE known_posts SET comments_doc = $1 WHERE id = $2")
        .bind(doc)
        .bind(post_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Creates a pending comment on a known post and emits `CommentCreated`, atomically.
/// Returns the post's comment array with it, or `None` if the post is unknown here.
pub async fn create(db: &Db, post_id: &str, content: &str) -> Result<Option<String>, DbError> {
    let mut tx = db.begin().await?;
    let Some(before) = array_for_update(&mut tx, post_id).await? else {
        tx.rollback().await?;
        return Ok(None);
    };
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
    let after =
        doc::append(&before, &doc::entry(&Comment { id: &c.id, content: &c.content, status: c.status.as_str() }));
    store_array(&mut tx, post_id, &after).await?;
    tx.commit().await?;
    Ok(Some(after))
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
    if let Some(mut array) = array_for_update(tx, &post_id).await? {
        if !doc::set_status(&mut array, comment_id, status.as_str()) {
            // The array was rendered from the rows inside this transaction, or kept by
            // this service alone: a comment missing from it is a bug, not bad input.
            return Err(DbError::Sql(sqlx::Error::Protocol(format!(
                "comment {comment_id} is missing from post {post_id}'s comment array"
            ))));
        }
        store_array(tx, &post_id, &array).await?;
    }
    let updated = CommentUpdated { id: comment_id.to_owned(), status, post_id, content };
    tx.emit(&updated, next).await?;
    Ok(Some(updated))
}
