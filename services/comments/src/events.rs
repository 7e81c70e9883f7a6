//! Events comments consumes: `PostCreated` (its copy of posts) and `CommentModerated`.

use async_trait::async_trait;
use blog_events::{CommentModerated, PostCreated};
use busbar::{AttributesReader, CloudEvent, Event, Handler, HandlerError, Tx, envelope};

use crate::store;

/// What comments subscribes to.
pub const TYPES: &[&str] = &[PostCreated::TYPE, CommentModerated::TYPE];

pub struct Events;

#[async_trait]
impl Handler for Events {
    async fn handle(&self, tx: &mut Tx, ev: &CloudEvent) -> Result<(), HandlerError> {
        match ev.ty() {
            PostCreated::TYPE => {
                let post: PostCreated = envelope::data(ev)?;
                store::remember_post(tx, &post.id).await?;
            }
            CommentModerated::TYPE => {
                let m: CommentModerated = envelope::data(ev)?;
                match store::moderate(tx, &m.id, m.status).await {
                    Ok(Some(u)) => tracing::info!(comment = %u.id, status = u.status.as_str(), "comment moderated"),
                    Ok(None) => tracing::info!(comment = %m.id, "comment already moderated; decision ignored"),
                    Err(busbar::db::DbError::Sql(sqlx::Error::RowNotFound)) => {
                        return Err(format!("moderated comment {} does not exist here", m.id).into());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            other => tracing::debug!(event_type = other, "ignoring an event type comments does not handle"),
        }
        Ok(())
    }
}
