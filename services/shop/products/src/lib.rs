//! products: owns the catalogue. Emits `ProductAdded`, `ProductRenamed` and
//! `ProductPriceChanged`; consumes nothing.

mod routes;
mod store;

use busbar::{
    Handlers,
    service::{Service, ServiceError},
};
use shop_events::{ProductAdded, ProductPriceChanged, ProductRenamed};

pub const NAME: &str = "products";
pub const PORT: u16 = 4101;

pub async fn run() -> Result<(), ServiceError> {
    let migrations = sqlx::migrate!("./migrations");
    let events =
        Handlers::none().publishes::<ProductAdded>().publishes::<ProductRenamed>().publishes::<ProductPriceChanged>();
    let service = Service::start(NAME, PORT, &migrations, &migrations, events).await?;
    let routes = routes::router(service.db().clone());
    service.serve(routes).await
}
