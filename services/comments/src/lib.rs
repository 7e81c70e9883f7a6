//! comments: owns comments. Emits `CommentCreated` and `CommentUpdated`; keeps its own
//! copy of which posts exist from `PostCreated`, and applies `CommentModerated`.

mod events;
mod routes;
mod store;

use std::sync::Arc;

use busbar::service::{Service, ServiceError, Subscription};

pub const NAME: &str = "comments";
pub const PORT: u16 = 4001;

pub async fn run() -> Result<(), ServiceError> {
    let migrations = sqlx::migrate!("./migrations");
    let service = Service::start(NAME, PORT, &migrations, &migrations).await?;
    let routes = routes::router(service.db().clone());
    // Only the posts copy can be rebuilt from history; the comments are this service's own.
    let subscription =
        Subscription { handler: Arc::new(events::Events), types: events::TYPES, backfill: &["PostCreated"] };
    service.serve(routes, Some(subscription)).await
}
