//! posts: owns the blog's posts. Emits `PostCreated`; consumes nothing.

mod routes;
mod store;

use blog_events::PostCreated;
use busbar::{
    Handlers,
    service::{Service, ServiceError},
};

pub const NAME: &str = "posts";
pub const PORT: u16 = 4000;

pub async fn run() -> Result<(), ServiceError> {
    let migrations = sqlx::migrate!("./migrations");
    let events = Handlers::none().publishes::<PostCreated>();
    let service = Service::start(NAME, PORT, &migrations, &migrations, events).await?;
    let routes = routes::router(service.db().clone());
    service.serve(routes).await
}
