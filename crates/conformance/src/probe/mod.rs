//! busbar-probe: a real busbar service built the way the blog's services are
//! (`Service::start`, typed `Handlers`), used by the conformance tests as publisher and
//! as subscriber. Its wiring comes from the usual `BUSBAR_*` environment; `PORT`, `HOST`
//! and `DATABASE_URL` as for any service. `PROBE_REPLICA` names this process in its log
//! (several replicas may share one database).
//!
//! - `POST /emit` ([`crate::wire::EmitRequest`]): emits item events, each version the next
//!   of its aggregate, kept in the probe's own table, in the emit's transaction;
//! - `GET /emitted`: every event this database emitted (the publisher's truth);
//! - `GET /applied`: every application of a received event, in application order;
//! - `GET /stats`: counts of the above and of parked events;
//! - `POST /cure` `{"aggregates": [...]}`: from now on, `fail` poison on those aggregates
//!   passes (a fixed handler deployed before a redrive).

mod handlers;
mod routes;
mod store;

use std::sync::Arc;

use busbar::service::{Service, ServiceError};

pub const NAME: &str = "probe";
pub const PORT: u16 = 4100;

pub async fn run() -> Result<(), ServiceError> {
    let replica = std::env::var("PROBE_REPLICA").unwrap_or_else(|_| NAME.to_owned());
    let probe = Arc::new(handlers::Probe::new(replica.clone()));
    // The wiring sets BUSBAR_SUBSCRIBES to an empty list for a service that subscribes to
    // nothing. A publishing-only probe must receive nothing, so it registers no handler
    // (it still declares what it publishes).
    let subscribes = !std::env::var("BUSBAR_SUBSCRIBES").is_ok_and(|v| v.trim().is_empty());
    let service = Service::start(
        NAME,
        PORT,
        &sqlx::migrate!("./migrations/sqlite"),
        &sqlx::migrate!("./migrations/postgres"),
        handlers::handlers(probe.clone(), subscribes),
    )
    .await?;
    tracing::info!(%replica, pid = std::process::id(), "probe replica started");
    let routes = routes::router(service.db().clone(), probe);
    service.serve(routes).await
}
