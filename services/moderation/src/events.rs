//! moderation consumes `CommentCreated` and emits `CommentModerated`.

use async_trait::async_trait;
use blog_events::{CommentCreated, CommentModerated};
use busbar::{AttributesReader, CloudEvent, Event, Handler, HandlerError, Tx, envelope};

use crate::policy::WordList;

pub struct Events {
    pub words: WordList,
}

#[async_trait]
impl Handler for Events {
    async fn handle(&self, tx: &mut Tx, ev: &CloudEvent) -> Result<(), HandlerError> {
        if ev.ty() != CommentCreated::TYPE {
            tracing::debug!(event_type = ev.ty(), "ignoring an event type moderation does not handle");
            return Ok(());
        }
        let c: CommentCreated = envelope::data(ev)?;
        let status = self.words.decide(&c.content);
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
        tx.emit(&CommentModerated { id: c.id, post_id: c.post_id, status, content: c.content }, 1).await?;
        Ok(())
    }
}
