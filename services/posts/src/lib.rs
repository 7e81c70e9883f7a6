//! posts: owns the blog's posts. Emits `PostCreated`; consumes nothing.

mod routes;
mod store;

use busbar::{
    Handlers,
    service::{Service, ServiceError},
};

pub const NAME: &str = "posts";
pub const PORT: u16 = 4000;

pub async fn run() -> Result<(), ServiceError> {
    let migrations = sqlx::migrate!("./migrations");
    let service = Service::start(NAME, PORT, &migrations, &migrations).await?;
    let routes = routes::router(service.db().clone());
    service.serve(routes, Handlers::none()).await
}
