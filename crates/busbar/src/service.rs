//! The runtime every service shares, so that a service's `main` is only its own logic:
//! settings from the environment, its database and migrations, the outbox relay, the
//! `POST /events` receiver, backfill of a fresh copy from history, health, metrics, CORS,
//! and graceful shutdown.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::DefaultBodyLimit, http::header, routing::get};
use prometheus_client::{
    metrics::gauge::Gauge,
    registry::{Registry, Unit},
};
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;
use tower_http::{cors::CorsLayer, trace::TraceLayer};

use crate::{
    Backoff,
    backfill::{self, Backfill},
    config::{BusbarConfig, ConfigError},
    consumer::Consumer,
    db::{Db, DbError, DbOptions, SqliteSync, redact},
    handlers::Handlers,
    outbox::{self, RelayOptions},
    parking::{Limits, ParkedGauge, Sweeper},
    receive::{self, ReceiveStats},
    spec::TransportKind,
    subscription::Subscription,
    transport::{PullLoop, Receiving, Transport, http::HttpTransport, jetstream::JetStream},
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
    /// `BUSBAR_SQLITE_SYNC`: how durable a commit is on SQLite (default `normal`).
    pub sqlite_sync: SqliteSync,
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
        let sqlite_sync = match get("BUSBAR_SQLITE_SYNC") {
            None => SqliteSync::Normal,
            Some(v) => v.parse().map_err(|_| ServiceError::Setting {
                var: "BUSBAR_SQLITE_SYNC",
                value: v,
                hint: "use `full` (fsync every commit: survives power loss) or `normal` (survives a killed process)",
            })?,
        };
        let database_url = get("DATABASE_URL").unwrap_or_else(|| format!("sqlite://data/{}.db", busbar.service));
        Ok(Settings { host, port, database_url, max_body_bytes, sqlite_sync, busbar })
    }
}

pub struct Service {
    pub settings: Settings,
    db: Db,
    /// What this service receives, from its handlers and its wiring.
    subscription: Option<Subscription>,
    transport: Arc<dyn Transport>,
    stop: CancellationToken,
    relay: tokio::task::JoinHandle<()>,
    relay_leader: Gauge,
}

impl Service {
    /// Reads settings, opens and migrates the database, and starts the outbox relay.
    /// `handlers` are what the service receives and publishes (see [`Handlers`]); started
    /// with `--contract`, the process prints the contract they make and exits instead.
    pub async fn start<S: Send + Sync + 'static>(
        default_name: &str,
        default_port: u16,
        sqlite: &Migrator,
        postgres: &Migrator,
        handlers: Handlers<S>,
    ) -> Result<Service, ServiceError> {
        crate::contract::print_if_asked(default_name, &handlers);
        let settings = Settings::from_env(default_name, default_port)?;
        let b = &settings.busbar;
        let transport: Arc<dyn Transport> = match b.transport {
            TransportKind::Builtin => Arc::new(HttpTransport::new(&b.url, b.token.clone())),
            TransportKind::JetStream => {
                let js = match &b.token {
                    Some(token) => JetStream::connect_as(&b.url, &b.bus, &b.service, token).await,
                    None => JetStream::connect(&b.url, &b.bus).await,
                }
                .map_err(|e| ServiceError::Nats(e.to_string()))?;
                Arc::new(js.with_replicas(b.jetstream_replicas))
            }
        };
        let db = Db::connect(
            &settings.busbar.service,
            &settings.database_url,
            DbOptions { sqlite_sync: settings.sqlite_sync, ..DbOptions::default() },
        )
        .await?
        .with_declared(handlers.declared());
        db.migrate(sqlite, postgres).await?;
        let stop = CancellationToken::new();
        let relay_opts = RelayOptions::default();
        let relay_leader = relay_opts.leading.clone();
        let relay = outbox::spawn_relay(db.clone(), transport.clone(), relay_opts, stop.clone());
        tracing::info!(service = %settings.busbar.service, database = %redact(&settings.database_url),
            transport = %settings.busbar.transport, bus = %settings.busbar.url, "started");
        let subscription = Subscription::of(&settings.busbar, handlers);
        Ok(Service { settings, db, subscription, transport, stop, relay, relay_leader })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Serves `routes` plus the shared endpoints until SIGTERM or Ctrl-C, and receives the
    /// events its handlers handle.
    pub async fn serve(self, routes: Router) -> Result<(), ServiceError> {
        let b = &self.settings.busbar;
        let subscription = self.subscription.clone();
        let stats = ReceiveStats::default();
        let health = Health::default();
        let gauge = ParkedGauge::default();
        let mut app = routes;
        let mut tasks = vec![];
        if let Some(sub) = &subscription {
            let consumer = Consumer::with_scope(self.db.clone(), sub.handler.clone(), sub.scope());
            // POST /events stays mounted on JetStream too: it is harmless and lets an
            // operator push a single event by hand.
            app = app.merge(receive::router_with(consumer.clone(), stats.clone(), b.token.clone(), gauge.clone()));
            if let Receiving::Pull(pull) = self.transport.receiving(b, sub) {
                tasks.push(tokio::spawn(supervise_pull(
                    pull,
                    consumer.clone(),
                    stats.clone(),
                    health.consuming.clone(),
                    self.stop.clone(),
                )));
            }
            if !sub.backfill.is_empty()
                && let Some(from) = backfill::start_position(&self.db).await?
            {
                health.backfilling.store(true, Ordering::Relaxed);
                let run = Backfill {
                    consumer: consumer.clone(),
                    transport: self.transport.clone(),
                    types: sub.backfill.clone(),
                    subscriber: b.service.clone(),
                    max_deliver: b.max_deliver,
                    stats: stats.clone(),
                    running: health.backfilling.clone(),
                    progress: health.backfilled.clone(),
                };
                tasks.push(tokio::spawn(run.run(from, self.stop.clone())));
            }
            let sweeper = Sweeper {
                consumer,
                transport: self.transport.clone(),
                subscriber: b.service.clone(),
                limits: Limits {
                    max_parked_for: b.max_parked_for,
                    max_deliver: b.max_deliver,
                    backoff: Backoff::schedule(b.backoff.clone()),
                },
                backfilling: health.backfilling.clone(),
                gauge: gauge.clone(),
            };
            tasks.push(sweeper.spawn(self.stop.clone()));
        }
        let metrics = Arc::new(ServiceMetrics::new(&stats, gauge, self.relay_leader.clone()));
        let (db, h) = (self.db.clone(), health.clone());
        let db_m = self.db.clone();
        app = app
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(move || readyz(db.clone(), h.clone())))
            .route("/metrics", get(move || render_metrics(db_m.clone(), metrics.clone())))
            .fallback(web::not_found)
            .layer(DefaultBodyLimit::max(self.settings.max_body_bytes))
            // The course's React client calls the services straight from the browser.
            .layer(CorsLayer::permissive())
            .layer(TraceLayer::new_for_http())
            // Outermost, so that the request's own log lines carry its trace id too.
            .layer(axum::middleware::from_fn(crate::trace::http_span))
            .route_layer(axum::middleware::from_fn(crate::metrics::time_requests));

        let addr = SocketAddr::new(self.settings.host, self.settings.port);
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| ServiceError::Listen { addr, source })?;
        tracing::info!(service = %self.settings.busbar.service, %addr, "listening");
        let served = axum::serve(listener, app).with_graceful_shutdown(web::shutdown_signal()).await;
        self.stop.cancel();
        for task in tasks {
            let _ = task.await;
        }
        let _ = self.relay.await;
        self.db.close().await;
        tracing::info!(service = %self.settings.busbar.service, "stopped");
        served.map_err(ServiceError::Serve)
    }
}

/// What `/readyz` reports on, besides the database.
#[derive(Clone)]
struct Health {
    /// A backfill is running: the copy is not complete yet.
    backfilling: Arc<AtomicBool>,
    /// Events the running backfill has gone through so far.
    backfilled: Arc<AtomicU64>,
    /// The pull loop is running (always true for push transports).
    consuming: Arc<AtomicBool>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            backfilling: Arc::new(AtomicBool::new(false)),
            backfilled: Arc::default(),
            consuming: Arc::new(AtomicBool::new(true)),
        }
    }
}

/// Runs the transport's pull loop, and restarts it with backoff whenever it ends or panics
/// before `stop`; while it is down, `consuming` is false and `/readyz` says so.
async fn supervise_pull(
    pull: Arc<dyn PullLoop>,
    consumer: Consumer,
    stats: ReceiveStats,
    consuming: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let backoff = Backoff::exponential(Duration::from_millis(200), Duration::from_secs(5));
    let mut failures = 0u32;
    loop {
        consuming.store(true, Ordering::Relaxed);
        let run = {
            let (pull, consumer, stats, stop) = (pull.clone(), consumer.clone(), stats.clone(), stop.clone());
            tokio::spawn(async move { pull.run(consumer, stats, stop).await })
        };
        let ended = match run.await {
            Ok(Ok(())) => "the subscription ended".to_owned(),
            Ok(Err(e)) => e,
            Err(e) if e.is_panic() => "the receiving task panicked".to_owned(),
            Err(e) => e.to_string(),
        };
        if stop.is_cancelled() {
            return;
        }
        consuming.store(false, Ordering::Relaxed);
        failures += 1;
        let wait = backoff.delay(failures);
        tracing::warn!(error = %ended, retry_in_ms = wait.as_millis() as u64, "not receiving events; restarting the subscription");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn readyz(db: Db, health: Health) -> Result<&'static str, ApiError> {
    let unavailable = |m: String| ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, m);
    if health.backfilling.load(Ordering::Relaxed) {
        let n = health.backfilled.load(Ordering::Relaxed);
        return Err(unavailable(format!("backfilling from history: {n} events so far")));
    }
    if !health.consuming.load(Ordering::Relaxed) {
        return Err(unavailable("not receiving events: the subscription is restarting (see the log)".into()));
    }
    sqlx::query("SELECT 1").execute(db.pool()).await.map_err(|e| unavailable(format!("database unavailable: {e}")))?;
    Ok("ready")
}

struct ServiceMetrics {
    registry: Registry,
    backlog: Gauge,
    outbox_oldest: Gauge<f64, std::sync::atomic::AtomicU64>,
    deferred: Gauge,
    oldest_parked: Gauge<f64, std::sync::atomic::AtomicU64>,
    parked: ParkedGauge,
}

impl ServiceMetrics {
    fn new(stats: &ReceiveStats, parked: ParkedGauge, relay_leader: Gauge) -> Self {
        let mut registry = Registry::with_prefix("busbar");
        let (backlog, deferred, oldest_parked) = (Gauge::default(), Gauge::default(), Gauge::default());
        let outbox_oldest = Gauge::default();
        registry.register_with_unit(
            "outbox_backlog",
            "Committed events not yet published",
            Unit::Other("events".into()),
            backlog.clone(),
        );
        registry.register("inbox_deferred", "Events parked waiting for an earlier version", deferred.clone());
        registry.register_with_unit(
            "inbox_oldest_parked",
            "How long the oldest parked event has waited for an earlier version",
            Unit::Seconds,
            oldest_parked.clone(),
        );
        registry.register(
            "outbox_relay_leader",
            "1 while this process's outbox relay publishes; 0 while another replica's does",
            relay_leader,
        );
        registry.register_with_unit(
            "outbox_oldest",
            "How long the oldest event not yet published has waited in the outbox (the relay's lag)",
            Unit::Seconds,
            outbox_oldest.clone(),
        );
        stats.register(&mut registry);
        crate::metrics::register_http(&mut registry);
        crate::metrics::register_events(&mut registry);
        Self { registry, backlog, outbox_oldest, deferred, oldest_parked, parked }
    }
}

async fn render_metrics(db: Db, m: Arc<ServiceMetrics>) -> impl axum::response::IntoResponse {
    // Read at scrape time: both are small indexed counts.
    if let Ok((n, oldest_ms)) = outbox::backlog_and_age(&db).await {
        m.backlog.set(n);
        m.outbox_oldest.set(oldest_ms as f64 / 1000.0);
    }
    match crate::parking::summary(&db).await {
        Ok(p) => {
            m.deferred.set(p.count as i64);
            m.oldest_parked.set(p.oldest_age_ms as f64 / 1000.0);
        }
        Err(_) => {
            if let Some(p) = m.parked.get() {
                m.deferred.set(p.count as i64);
                m.oldest_parked.set(p.oldest_age_ms as f64 / 1000.0);
            }
        }
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
    busbar_client::telemetry::init(&std::env::var("BUSBAR_SERVICE").unwrap_or_else(|_| name.to_owned()));
    let rt = match busbar_client::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = rt.block_on(run());
    // What is still buffered is exported before the process goes.
    busbar_client::telemetry::shutdown();
    match outcome {
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
        assert_eq!(s.sqlite_sync, SqliteSync::Normal);
    }

    #[test]
    fn the_sqlite_sync_mode_is_a_setting() {
        assert_eq!(settings(&[("BUSBAR_SQLITE_SYNC", "FULL")]).unwrap().sqlite_sync, SqliteSync::Full);
        assert_eq!(settings(&[("BUSBAR_SQLITE_SYNC", "normal")]).unwrap().sqlite_sync, SqliteSync::Normal);
    }

    #[test]
    fn bad_settings_name_the_variable() {
        for (var, value) in [
            ("PORT", "eighty"),
            ("PORT", "0"),
            ("HOST", "localhost:1"),
            ("MAX_BODY_BYTES", "-1"),
            ("BUSBAR_SQLITE_SYNC", "off"),
        ] {
            let err = settings(&[(var, value)]).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{var}=`{value}` is invalid")), "{err}");
        }
        assert_eq!(settings(&[("PORT", "4100"), ("HOST", "127.0.0.1")]).unwrap().port, 4100);
    }
}
