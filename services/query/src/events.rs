use async_trait::async_trait;
use blog_events::{CommentCreated, CommentUpdated, PostCreated};
use busbar::{AttributesReader, CloudEvent, Event, Handler, HandlerError, Tx, envelope};

use crate::store;

pub const TYPES: &[&str] = &[PostCreated::TYPE, CommentCreated::TYPE, CommentUpdated::TYPE];

pub struct Events;

#[async_trait]
impl Handler for Events {
    async fn handle(&self, tx: &mut Tx, ev: &CloudEvent) -> Result<(), HandlerError> {
        match ev.ty() {
            PostCreated::TYPE => store::upsert_post(tx, &envelope::data::<PostCreated>(ev)?).await?,
            CommentCreated::TYPE => {
                let c: CommentCreated = envelope::data(ev)?;
                store::upsert_comment(tx, &c.id, &c.post_id, &c.content, c.status.as_str()).await?
            }
            // Ordering guarantees the update comes after its CommentCreated (version 2 after 1).
            CommentUpdated::TYPE => {
                let c: CommentUpdated = envelope::data(ev)?;
                store::upsert_comment(tx, &c.id, &c.post_id, &c.content, c.status.as_str()).await?
            }
            other => tracing::debug!(event_type = other, "ignoring an event type query does not handle"),
        }
        Ok(())
    }
}
