//! orders: owns orders. Emits `OrderPlaced` and `OrderCancelled`; keeps its own copy of
//! which users exist (`UserSignedUp`) and of each product's price (`ProductAdded`,
//! `ProductPriceChanged`), so placing an order asks no other service anything.

mod events;
mod routes;
mod store;

use busbar::service::{Service, ServiceError};

pub const NAME: &str = "orders";
pub const PORT: u16 = 4102;

pub async fn run() -> Result<(), ServiceError> {
    let migrations = sqlx::migrate!("./migrations");
    let service = Service::start(NAME, PORT, &migrations, &migrations, events::handlers()).await?;
    let routes = routes::router(service.db().clone());
    service.serve(routes).await
}
