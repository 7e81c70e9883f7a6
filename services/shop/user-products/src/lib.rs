//! user-products: "which products has this user ordered?", answered from its own copy of
//! users, products and orders, built only from events (never a call to another service).
//! On an empty database it rebuilds that copy from the bus's history.

mod events;
mod routes;
mod store;

use busbar::service::{Service, ServiceError};

pub const NAME: &str = "user-products";
pub const PORT: u16 = 4103;

pub async fn run() -> Result<(), ServiceError> {
    let migrations = sqlx::migrate!("./migrations");
    let service = Service::start(NAME, PORT, &migrations, &migrations, events::handlers()).await?;
    let routes = routes::router(service.db().clone());
    service.serve(routes).await
}
