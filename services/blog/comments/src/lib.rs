//! comments: owns comments. Emits `CommentCreated` and `CommentUpdated`; keeps its own
//! copy of which posts exist from `PostCreated`, and applies `CommentModerated`.

mod doc;
mod events;
mod routes;
/// Public for its tests.
pub mod store;

pub use routes::router;

use busbar::service::{Service, ServiceError};

pub const NAME: &str = "comments";
pub const PORT: u16 = 4001;

pub async fn run() -> Result<(), ServiceError> {
    let migrations = sqlx::migrate!("./migrations");
    let service = Service::start(NAME, PORT, &migrations, &migrations, events::handlers()).await?;
    let routes = routes::router(service.db().clone());
    service.serve(routes).await
}
