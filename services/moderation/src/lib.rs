//! moderation: decides on each new comment (rejects content containing a listed word,
//! `orange` by default) and emits `CommentModerated`. No public routes.

mod events;
mod policy;

use std::sync::Arc;

use busbar::service::{Service, ServiceError, Subscription};

pub use policy::WordList;

pub const NAME: &str = "moderation";
pub const PORT: u16 = 4003;

pub async fn run() -> Result<(), ServiceError> {
    let words = WordList::from_env();
    tracing::info!(words = ?words.words(), "moderation word list (MODERATION_WORDS)");
    let migrations = sqlx::migrate!("./migrations");
    let service = Service::start(NAME, PORT, &migrations, &migrations).await?;
    // No backfill: old comments were decided by the moderation that saw them.
    let subscription =
        Subscription { handler: Arc::new(events::Events { words }), types: &["CommentCreated"], backfill: &[] };
    service.serve(axum::Router::new(), Some(subscription)).await
}
