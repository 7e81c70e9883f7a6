//! query: the aggregated view `{postId: {id, title, comments: [...]}}`, built only from
//! `PostCreated`, `CommentCreated` and `CommentUpdated`. On an empty database it
//! backfills from the bus's history.

mod events;
mod routes;
mod store;

use busbar::service::{Service, ServiceError};

pub const NAME: &str = "query";
pub const PORT: u16 = 4002;

pub async fn run() -> Result<(), ServiceError> {
    let migrations = sqlx::migrate!("./migrations");
    let service = Service::start(NAME, PORT, &migrations, &migrations, events::handlers()).await?;
    let routes = routes::router(service.db().clone());
    service.serve(routes).await
}
