//! What query applies: `PostCreated`, `CommentCreated` and `CommentUpdated`, each into its
//! view. Ordering guarantees a comment's update comes after its creation.

use blog_events::{CommentCreated, CommentUpdated, PostCreated};
use busbar::{Handlers, Received, Tx, db::DbError};

use crate::store;

/// Every type rebuilds the view, so all are replayed when query starts on an empty database.
pub fn handlers() -> Handlers {
    Handlers::new(())
        // Posts come in runs (a busy blog's delivered batches are mostly posts): one
        // statement stores a run.
        .on_many::<PostCreated>(posts_created)
        .on::<CommentCreated>(comment_created)
        .on::<CommentUpdated>(comment_updated)
        // Every handler only writes through its transaction.
        .transactional()
}

async fn posts_created(_: &(), tx: &mut Tx, posts: Vec<Received<PostCreated>>) -> Result<(), DbError> {
    store::upsert_posts(tx, &posts.iter().map(|p| &p.data).collect::<Vec<_>>()).await
}

async fn comment_created(_: &(), tx: &mut Tx, c: Received<CommentCreated>) -> Result<(), DbError> {
    store::upsert_comment(tx, &c.id, &c.post_id, &c.content, c.status.as_str()).await
}

async fn comment_updated(_: &(), tx: &mut Tx, c: Received<CommentUpdated>) -> Result<(), DbError> {
    store::upsert_comment(tx, &c.id, &c.post_id, &c.content, c.status.as_str()).await
}
