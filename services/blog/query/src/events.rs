//! What query applies: `PostCreated`, `CommentCreated` and `CommentUpdated`, each into its
//! view. Ordering guarantees a comment's update comes after its creation.

use blog_events::{CommentCreated, CommentUpdated, PostCreated};
use busbar::{Handlers, Received, Tx, db::DbError};

use crate::store;

/// Every type rebuilds the view, so all are replayed when query starts on an empty database.
pub fn handlers() -> Handlers {
    Handlers::new(())
        .on::<PostCreated>(post_created)
        .on::<CommentCreated>(comment_created)
        .on::<CommentUpdated>(comment_updated)
        // Every handler only writes through its transaction.
        .transactional()
}

async fn post_created(_: &(), tx: &mut Tx, post: Received<PostCreated>) -> Result<(), DbError> {
    store::upsert_post(tx, &post).await
}

async fn comment_created(_: &(), tx: &mut Tx, c: Received<CommentCreated>) -> Result<(), DbError> {
    store::upsert_comment(tx, &c.id, &c.post_id, &c.content, c.status.as_str()).await
}

async fn comment_updated(_: &(), tx: &mut Tx, c: Received<CommentUpdated>) -> Result<(), DbError> {
    store::upsert_comment(tx, &c.id, &c.post_id, &c.content, c.status.as_str()).await
}
