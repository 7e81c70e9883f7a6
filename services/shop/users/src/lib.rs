//! users: owns the shop's users. Emits `UserSignedUp` and `UserRenamed`; consumes nothing.

mod routes;
mod store;

use busbar::{
    Handlers,
    service::{Service, ServiceError},
};
use shop_events::{UserRenamed, UserSignedUp};

pub const NAME: &str = "users";
pub const PORT: u16 = 4100;

pub async fn run() -> Result<(), ServiceError> {
    let migrations = sqlx::migrate!("./migrations");
    let events = Handlers::none().publishes::<UserSignedUp>().publishes::<UserRenamed>();
    let service = Service::start(NAME, PORT, &migrations, &migrations, events).await?;
    let routes = routes::router(service.db().clone());
    service.serve(routes).await
}
