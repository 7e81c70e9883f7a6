//! moderation consumes `CommentCreated` and emits `CommentModerated`.

use blog_events::{CommentCreated, CommentModerated};
use busbar::{Handlers, Received, Tx, db::DbError};

use crate::{policy::WordList, store};

/// Decisions happen once, when a comment is new: old comments were decided by the
/// moderation that saw them, so nothing is replayed from history.
pub fn handlers(words: WordList) -> Handlers<WordList> {
    Handlers::new(words)
        // New comments come in runs under load: one statement records a run's decisions.
        .on_new_many::<CommentCreated>(comments_created)
        .publishes::<CommentModerated>()
        // The handler only writes through its transaction (the word list is read-only).
        .transactional()
}

async fn comments_created(
    words: &WordList,
    tx: &mut Tx,
    comments: Vec<Received<CommentCreated>>,
) -> Result<(), DbError> {
    let decisions: Vec<_> = comments.iter().map(|c| (c.id.as_str(), words.decide(&c.content))).collect();
    let mut decided = store::decide(tx, &decisions).await?;
    for (c, (_, status)) in comments.iter().zip(decisions) {
        // Not decided now: decided before (e.g. the same comment re-published under a new
        // event id), or earlier in this run. `remove`: its first occurrence emits.
        if !decided.remove(&c.id) {
            continue;
        }
        let decision =
            CommentModerated { id: c.id.clone(), post_id: c.post_id.clone(), status, content: c.content.clone() };
        // In the comment's own trace, as when it was decided alone.
        c.traced(tx.emit(&decision, 1)).await?;
    }
    Ok(())
}
