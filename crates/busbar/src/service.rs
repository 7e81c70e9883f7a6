//! The runtime every service shares, so that a service's `main` is only its own logic:
//! settings from the environment, its database and migrations, the outbox relay, the
//! `POST /events` receiver, backfill of a fresh copy from history, health, metrics, CORS,
//! and graceful shutdown.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::DefaultBodyLimit, http::header, routing::get};
use cloudevents::AttributesReader;
use prometheus_client::{
    metrics::gauge::Gauge,
    registry::{Registry, Unit},
};
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;
use tower_http::{cors::CorsLayer, trace::TraceLayer};

use crate::{
    config::{BusbarConfig, ConfigError, TransportChoice},
    consumer::Consumer,
    db::{Db, DbError, DbOptions, redact},
    handlers::Handlers,
    outbox::{self, RelayOptions},
    receive::{self, ReceiveStats},
    subscription::Subscription,
    transport::{
        Transport,
        http::HttpTransport,
        jetstream::{self, JetStream, SubscribeOptions},
    },
    web::{self, ApiError},
};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{var}=`{value}` is invalid: {hint}")]
    Setting { var: &'static str, value: String, hint: &'static str },
    #[error("cannot listen on {addr}: {source}. Is another process using the port? Set PORT to choose another.")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("NATS: {0}")]
    Nats(String),
    #[error("serving HTTP failed: {0}")]
    Serve(std::io::Error),
}

/// Where and how the service runs: `HOST` (default 0.0.0.0), `PORT`, `DATABASE_URL`
/// (default a SQLite file `data/<service>.db`), `MAX_BODY_BYTES`, and the `BUSBAR_*` wiring.
#[derive(Debug, Clone)]
pub struct Settings {
    pub host: IpAddr,
    pub port: u16,
    pub database_url: String,
    pub max_body_bytes: usize,
    pub busbar: BusbarConfig,
}

impl Settings {
    pub fn from_env(default_name: &str, default_port: u16) -> Result<Self, ServiceError> {
        Self::from_lookup(default_name, default_port, |k| std::env::var(k).ok())
    }

    pub fn from_lookup(
        default_name: &str,
        default_port: u16,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ServiceError> {
        let busbar = BusbarConfig::from_lookup(default_name, &get)?;
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let port = match get("PORT") {
            None => default_port,
            Some(v) => v.trim().parse().ok().filter(|p| *p > 0).ok_or(ServiceError::Setting {
                var: "PORT",
                value: v,
                hint: "use a TCP port number between 1 and 65535",
            })?,
        };
        let host = match get("HOST") {
            None => IpAddr::from([0, 0, 0, 0]),
            Some(v) => v.trim().parse().map_err(|_| ServiceError::Setting {
                var: "HOST",
                value: v,
                hint: "use an IP address to listen on, e.g. 0.0.0.0 or 127.0.0.1",
            })?,
        };
        let max_body_bytes = match get("MAX_BODY_BYTES") {
            None => 1024 * 1024,
            Some(v) => v.trim().parse().ok().filter(|n| *n > 0).ok_or(ServiceError::Setting {
                var: "MAX_BODY_BYTES",
                value: v,
                hint: "use a number of bytes, e.g. 1048576",
            })?,
        };
        let database_url = get("DATABASE_URL").unwrap_or_else(|| format!("sqlite://data/{}.db", busbar.service));
        Ok(Settings { host, port, database_url, max_body_bytes, busbar })
    }
}

pub struct Service {
    pub settings: Settings,
    db: Db,
    transport: Arc<dyn Transport>,
    jetstream: Option<JetStream>,
    stop: CancellationToken,
    relay: tokio::task::JoinHandle<()>,
}

impl Service {
    /// Reads settings, opens and migrates the database, and starts the outbox relay.
    pub async fn start(
        default_name: &str,
        default_port: u16,
        sqlite: &Migrator,
        postgres: &Migrator,
    ) -> Result<Service, ServiceError> {
        let settings = Settings::from_env(default_name, default_port)?;
        let (transport, jetstream): (Arc<dyn Transport>, _) = match settings.busbar.transport {
            TransportChoice::Http => {
                (Arc::new(HttpTransport::new(&settings.busbar.url, settings.busbar.token.clone())), None)
            }
            TransportChoice::JetStream => {
                let b = &settings.busbar;
                let js = match &b.token {
                    Some(token) => JetStream::connect_as(&b.url, &b.bus, &b.service, token).await,
                    None => JetStream::connect(&b.url, &b.bus).await,
                }
                .map_err(|e| ServiceError::Nats(e.to_string()))?;
                (Arc::new(js.clone()), Some(js))
            }
        };
        let db = Db::connect(&settings.busbar.service, &settings.database_url, DbOptions::default()).await?;
        db.migrate(sqlite, postgres).await?;
        let stop = CancellationToken::new();
        let relay = outbox::spawn_relay(db.clone(), transport.clone(), RelayOptions::default(), stop.clone());
        tracing::info!(service = %settings.busbar.service, database = %redact(&settings.database_url),
            transport = %settings.busbar.transport, bus = %settings.busbar.url, "started");
        Ok(Service { settings, db, transport, jetstream, stop, relay })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Serves `routes` plus the shared endpoints until SIGTERM or Ctrl-C, and receives the
    /// events `handlers` handle (a service that only publishes passes [`Handlers::none`]).
    pub async fn serve<S: Send + Sync + 'static>(
        self,
        routes: Router,
        handlers: Handlers<S>,
    ) -> Result<(), ServiceError> {
        let subscription = Subscription::of(&self.settings.busbar, handlers);
        let stats = ReceiveStats::default();
        let ready = Arc::new(AtomicBool::new(true));
        let mut app = routes;
        let mut backfill = None;
        let mut pull = None;
        if let Some(sub) = subscription {
            let consumer = Consumer::new(self.db.clone(), sub.handler.clone());
            // POST /events stays mounted on JetStream too: it is harmless and lets an
            // operator push a single event by hand.
            let token = self.settings.busbar.token.clone();
            app = app.merge(receive::router_with_stats(consumer.clone(), stats.clone(), token));
            if let Some(js) = &self.jetstream {
                let b = &self.settings.busbar;
                let opts = SubscribeOptions {
                    durable: b.service.clone(),
                    types: sub.types.clone(),
                    start_from: b.start_from,
                    max_deliver: b.max_deliver,
                    ack_wait: b.ack_wait,
                    backoff: b.backoff.clone(),
                };
                pull = Some(tokio::spawn(jetstream::run_subscriber_with_stats(
                    js.clone(),
                    opts,
                    consumer.clone(),
                    stats.clone(),
                    self.stop.clone(),
                )));
            }
            if !sub.backfill.is_empty() && inbox_is_empty(&self.db).await? {
                ready.store(false, Ordering::Relaxed);
                backfill = Some(tokio::spawn(backfill_from_history(
                    consumer,
                    self.transport.clone(),
                    sub.backfill.clone(),
                    stats.clone(),
                    ready.clone(),
                    self.stop.clone(),
                )));
            }
        }
        let metrics = Arc::new(ServiceMetrics::new(&stats));
        let (db, r) = (self.db.clone(), ready.clone());
        let db_m = self.db.clone();
        app = app
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(move || readyz(db.clone(), r.clone())))
            .route("/metrics", get(move || render_metrics(db_m.clone(), metrics.clone())))
            .fallback(web::not_found)
            .layer(DefaultBodyLimit::max(self.settings.max_body_bytes))
            // The course's React client calls the services straight from the browser.
            .layer(CorsLayer::permissive())
            .layer(TraceLayer::new_for_http());

        let addr = SocketAddr::new(self.settings.host, self.settings.port);
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| ServiceError::Listen { addr, source })?;
        tracing::info!(service = %self.settings.busbar.service, %addr, "listening");
        let served = axum::serve(listener, app).with_graceful_shutdown(web::shutdown_signal()).await;
        self.stop.cancel();
        for task in [backfill, pull].into_iter().flatten() {
            let _ = task.await;
        }
        let _ = self.relay.await;
        self.db.close().await;
        tracing::info!(service = %self.settings.busbar.service, "stopped");
        served.map_err(ServiceError::Serve)
    }
}

async fn inbox_is_empty(db: &Db) -> Result<bool, DbError> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT event_id FROM busbar_inbox LIMIT 1").fetch_optional(db.pool()).await?;
    Ok(row.is_none())
}

/// Events per replay request while backfilling.
const REPLAY_PAGE: usize = 1000;
/// Events applied per transaction while backfilling.
const BACKFILL_CHUNK: usize = 256;

/// Replays `types` from the start of history through the consumer (the inbox absorbs
/// anything that is also pushed meanwhile). Retries until it reaches the end.
async fn backfill_from_history(
    consumer: Consumer,
    transport: Arc<dyn Transport>,
    types: Vec<String>,
    stats: ReceiveStats,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    tracing::info!(?types, "empty database: backfilling from history");
    let types: Vec<&str> = types.iter().map(String::as_str).collect();
    let mut after = 0;
    let mut total = 0usize;
    let mut failures = 0u32;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let step = async {
            let page = transport.replay(after, REPLAY_PAGE, &types).await.map_err(|e| e.to_string())?;
            // A transaction per chunk rather than per event: backfill speed is commit rate.
            for chunk in page.events.chunks(BACKFILL_CHUNK) {
                let outcomes = consumer.receive_all(chunk).await.map_err(|(done, e)| {
                    for o in &done {
                        stats.record(o);
                    }
                    format!("event {}: {e}", chunk[done.len()].id())
                })?;
                for o in &outcomes {
                    stats.record(o);
                }
            }
            Ok::<_, String>(page)
        };
        match step.await {
            Ok(page) => {
                failures = 0;
                total += page.events.len();
                after = page.next;
                if page.done {
                    tracing::info!(events = total, "backfill complete");
                    ready.store(true, Ordering::Relaxed);
                    return;
                }
            }
            Err(e) => {
                failures += 1;
                let wait = Duration::from_millis(200).saturating_mul(1 << failures.min(5));
                tracing::warn!(error = %e, attempt = failures, retry_in_ms = wait.as_millis() as u64, "backfill step failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

async fn readyz(db: Db, ready: Arc<AtomicBool>) -> Result<&'static str, ApiError> {
    if !ready.load(Ordering::Relaxed) {
        return Err(ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "backfilling from history"));
    }
    sqlx::query("SELECT 1").execute(db.pool()).await.map_err(|e| {
        ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, format!("database unavailable: {e}"))
    })?;
    Ok("ready")
}

struct ServiceMetrics {
    registry: Registry,
    backlog: Gauge,
    deferred: Gauge,
}

impl ServiceMetrics {
    fn new(stats: &ReceiveStats) -> Self {
        let mut registry = Registry::with_prefix("busbar");
        let (backlog, deferred) = (Gauge::default(), Gauge::default());
        registry.register_with_unit(
            "outbox_backlog",
            "Committed events not yet published",
            Unit::Other("events".into()),
            backlog.clone(),
        );
        registry.register("inbox_deferred", "Events parked waiting for an earlier version", deferred.clone());
        stats.register(&mut registry);
        Self { registry, backlog, deferred }
    }
}

async fn render_metrics(db: Db, m: Arc<ServiceMetrics>) -> impl axum::response::IntoResponse {
    // Read at scrape time: both are small indexed counts.
    if let Ok(n) = outbox::backlog(&db).await {
        m.backlog.set(n);
    }
    if let Ok(n) = crate::consumer::deferred_count(&db).await {
        m.deferred.set(n);
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &m.registry).expect("writing to a String cannot fail");
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out)
}

/// The whole `main` of a service binary: logging, a runtime, `run`, and a clear message
/// and non-zero exit status if it fails.
pub fn main<F, Fut>(name: &str, run: F) -> std::process::ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(), ServiceError>>,
{
    web::init_tracing();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ServiceError> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_lookup("posts", 4000, |k| m.get(k).cloned())
    }

    #[test]
    fn defaults_give_a_runnable_service() {
        let s = settings(&[]).unwrap();
        assert_eq!(
            (s.port, s.host.to_string(), s.database_url.as_str()),
            (4000, "0.0.0.0".into(), "sqlite://data/posts.db")
        );
    }

    #[test]
    fn bad_settings_name_the_variable() {
        for (var, value) in [("PORT", "eighty"), ("PORT", "0"), ("HOST", "localhost:1"), ("MAX_BODY_BYTES", "-1")] {
            let err = settings(&[(var, value)]).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{var}=`{value}` is invalid")), "{err}");
        }
        assert_eq!(settings(&[("PORT", "4100"), ("HOST", "127.0.0.1")]).unwrap().port, 4100);
    }
}
