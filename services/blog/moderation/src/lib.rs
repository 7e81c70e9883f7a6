//! moderation: decides on each new comment (rejects content containing a listed word,
//! `orange` by default) and emits `CommentModerated`. No public routes.

pub mod events;
mod policy;
pub mod store;

use busbar::service::{Service, ServiceError};

pub use policy::WordList;

pub const NAME: &str = "moderation";
pub const PORT: u16 = 4003;

pub async fn run() -> Result<(), ServiceError> {
    let words = WordList::from_env();
    tracing::info!(words = ?words.words(), "moderation word list (MODERATION_WORDS)");
    let migrations = sqlx::migrate!("./migrations");
    let service = Service::start(NAME, PORT, &migrations, &migrations, events::handlers(words)).await?;
    service.serve(axum::Router::new()).await
}
