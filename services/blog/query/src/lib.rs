//! query: the aggregated view `{postId: {id, title, comments: [...]}}`, built only from
//! `PostCreated`, `CommentCreated` and `CommentUpdated`. On an empty database it
//! backfills from the bus's history.

mod events;
mod routes;
/// Public for its tests.
pub mod store;

pub use routes::router;

use busbar::service::{Service, ServiceError};

pub const NAME: &str = "query";
pub const PORT: u16 = 4002;

pub async fn run() -> Result<(), ServiceError> {
    let migrations = sqlx::migrate!("./migrations");
    let service = Service::start(NAME, PORT, &migrations, &migrations, events::handlers()).await?;
    let rendered = store::render_missing(service.db()).await?;
    if rendered > 0 {
        tracing::info!(posts = rendered, "rendered the views of posts stored before views were kept");
    }
    let routes = routes::router(service.db().clone());
    service.serve(routes).await
}
