//! What comments consumes: `PostCreated` (its copy of which posts exist, rebuilt from
//! history on an empty database) and `CommentModerated` (decisions on its own comments,
//! only as they happen: on an empty database there are no comments to decide on).

use blog_events::{CommentCreated, CommentModerated, CommentUpdated, PostCreated};
use busbar::{Event, HandlerError, Handlers, Received, Tx, db::DbError};
use serde::{Deserialize, Serialize};

use crate::store;

pub fn handlers() -> Handlers {
    Handlers::new(())
        // Posts come in runs (a busy blog's delivered batches are mostly posts): one
        // statement remembers a run, and one decides a run of moderations.
        .on_many::<PostExists>(posts_created)
        .on_new_many::<CommentModerated>(comments_moderated)
        .publishes::<CommentCreated>()
        .publishes::<CommentUpdated>()
        // Every handler only writes through its transaction.
        .transactional()
}

/// All comments reads of a `PostCreated`: that the post exists. Its reader schema asks for
/// the id only, so a post's other fields can change without breaking comments.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
struct PostExists {
    id: String,
}

impl Event for PostExists {
    const TYPE: &'static str = PostCreated::TYPE;
    fn aggregate_id(&self) -> String {
        self.id.clone()
    }
}

async fn posts_created(_: &(), tx: &mut Tx, posts: Vec<Received<PostExists>>) -> Result<(), DbError> {
    store::remember_posts(tx, &posts.iter().map(|p| p.id.as_str()).collect::<Vec<_>>()).await
}

async fn comments_moderated(_: &(), tx: &mut Tx, run: Vec<Received<CommentModerated>>) -> Result<(), HandlerError> {
    let decisions: Vec<_> =
        run.iter().map(|m| store::Decision { comment_id: &m.id, status: m.status, trace: m.meta.trace }).collect();
    match store::moderate(tx, &decisions).await {
        Ok(done) => {
            for u in done.updated {
                // Routine, one per comment: at DEBUG, or a busy blog writes a log line per event.
                tracing::debug!(comment = %u.id, status = u.status.as_str(), "comment moderated");
            }
            for id in done.unchanged {
                tracing::info!(comment = %id, "comment already moderated; decision ignored");
            }
            Ok(())
        }
        Err(DbError::Sql(sqlx::Error::RowNotFound)) => Err(match decisions.as_slice() {
            [one] => format!("moderated comment {} does not exist here", one.comment_id),
            // Handled again one at a time, which names it.
            run => format!("one of {} moderated comments does not exist here", run.len()),
        }
        .into()),
        Err(e) => Err(e.into()),
    }
}
