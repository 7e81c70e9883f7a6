//! moderation consumes `CommentCreated` and emits `CommentModerated`.

use blog_events::{CommentCreated, CommentModerated};
use busbar::{Handlers, Received, Tx, db::DbError};

use crate::policy::WordList;

/// Decisions happen once, when a comment is new: old comments were decided by the
/// moderation that saw them, so nothing is replayed from history.
pub fn handlers(words: WordList) -> Handlers<WordList> {
    Handlers::new(words)
        .on_new::<CommentCreated>(comment_created)
        .publishes::<CommentModerated>()
        // The handler only writes through its transaction (the word list is read-only).
        .transactional()
}

async fn comment_created(words: &WordList, tx: &mut Tx, c: Received<CommentCreated>) -> Result<(), DbError> {
    let status = words.decide(&c.content);
    let decided = sqlx::query(
        "INSERT INTO decisions (comment_id, status, decided_at) VALUES ($1, $2, $3) ON CONFLICT (comment_id) DO NOTHING",
    )
    .bind(&c.id)
    .bind(status.as_str())
    .bind(busbar::db::now_millis())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if decided == 0 {
        // Already decided (e.g. the same comment re-published under a new event id).
        return Ok(());
    }
    let c = c.into_inner();
    tx.emit(&CommentModerated { id: c.id, post_id: c.post_id, status, content: c.content }, 1).await?;
    Ok(())
}
