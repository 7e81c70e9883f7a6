//! busbar's built-in event bus: a durable log with ordered push delivery, retries,
//! dead letters and replay. See `api.rs` for the HTTP API.
//!
//! A library so that `busbar up` can run it from its own binary; `main.rs` is the
//! container entry point.

mod access;
mod api;
pub mod dashboard;
mod delivery;
mod ingest;
mod metrics;
mod routes;
mod standby;
mod store;
mod supervisor;
mod traces;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use access::Access;
use anyhow::Context;
use busbar::{
    Db, DbOptions,
    credentials::BusKey,
    db::{SqliteSync, redact},
};
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// busbar's built-in event bus.
///
/// Stores every published CloudEvent durably, then pushes it, in order, to each
/// subscriber listed in the ServiceBus spec (`--routes`), retrying with backoff and moving
/// events that keep failing to a dead-letter store. The spec file is re-read while
/// running, so routes change without a restart.
#[derive(Parser, Debug)]
#[command(name = "event-bus", bin_name = "event-bus", version)]
struct Args {
    /// Address to serve the HTTP API on.
    #[arg(long, env = "BUSBAR_LISTEN", default_value = "0.0.0.0:4005")]
    listen: SocketAddr,

    /// The bus's own database: sqlite://FILE (created if missing) or postgres://...
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://data/event-bus.db")]
    database_url: String,

    /// ServiceBus manifest (YAML) naming the subscribers. Without it the bus stores and
    /// replays events but pushes nothing.
    #[arg(long, env = "BUSBAR_ROUTES")]
    routes: Option<PathBuf>,

    /// File holding the bus key (64 hex digits). With it, every call needs a token derived
    /// from the key: a service may publish only the types its spec `publishes` and replay
    /// only what it `subscribes` to; dead letters need the admin token. Without it the
    /// bus is open to anyone who can reach it.
    #[arg(long, env = "BUSBAR_AUTH_KEY_FILE", value_name = "FILE")]
    auth_key_file: Option<PathBuf>,

    /// Where a subscriber's events are pushed; `{name}` and `{port}` come from the spec.
    #[arg(long, env = "BUSBAR_ENDPOINT_TEMPLATE", default_value = "http://{name}:{port}/events")]
    endpoint_template: String,

    /// How often to check the routes file for changes.
    #[arg(long, env = "BUSBAR_RELOAD_INTERVAL", default_value = "1s", value_parser = duration_arg)]
    reload_interval: Duration,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "BUSBAR_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    max_body_bytes: usize,

    /// Most events pushed to a subscriber in one request.
    #[arg(long, env = "BUSBAR_PUSH_BATCH", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=10000))]
    push_batch: u16,

    /// With --push-batch 1, push each event as a bare JSON object rather than a
    /// one-element array (for subscribers that expect the course's single-event body).
    #[arg(long, env = "BUSBAR_PUSH_BARE")]
    push_bare: bool,

    /// SQLite durability: `full` fsyncs every commit (survives power loss); `normal`
    /// survives a killed process but may lose the last commits on power loss.
    #[arg(long, env = "BUSBAR_SQLITE_SYNC", default_value = "full", value_name = "full|normal")]
    sqlite_sync: SqliteSync,
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    busbar::spec::parse_duration(s)
}

/// Runs the bus with command-line `args` (the first is the program name).
pub fn main_with_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> std::process::ExitCode {
    let args = Args::parse_from(args);
    busbar::web::init_tracing();
    busbar::telemetry::init("event-bus");
    let rt = match busbar::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("event-bus: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = rt.block_on(run(args));
    busbar::telemetry::shutdown();
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("event-bus: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let key = match &args.auth_key_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the bus key file {} (--auth-key-file)", path.display()))?;
            Some(BusKey::from_hex(&text).map_err(|e| anyhow::anyhow!("bus key file {}: {e}", path.display()))?)
        }
        None => None,
    };
    let mut access = Access::new(key, None);
    let initial_routes = match &args.routes {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read routes file {}", path.display()))?;
            let bus = busbar::spec::parse_manifest(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            access.set_spec(&bus.spec);
            let routes = routes::routes_from_spec(&bus.spec, &args.endpoint_template, &access);
            Some((text, routes, bus))
        }
        None => None,
    };
    if !access.enforced() {
        tracing::warn!("no --auth-key-file: any client that reaches this bus may publish and read every event type");
    }
    let access = Arc::new(std::sync::RwLock::new(access));
    let spec: dashboard::CurrentSpec = Arc::default();

    let opts = DbOptions { sqlite_sync: args.sqlite_sync, sdk_tables: false, ..DbOptions::default() };
    let db = Db::connect("event-bus", &args.database_url, opts).await?;
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| {
        format!("cannot listen on {}: is another process using that port? (set --listen)", args.listen)
    })?;
    // Serves from now on: as a standby (503, saying so) until this process holds the log.
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            busbar::web::shutdown_signal().await;
            shutdown.cancel();
        }
    });
    let metrics = metrics::Metrics::new();
    if let Some((_, routes, _)) = &initial_routes {
        metrics.init_subscribers(routes.values().map(|r| r.subscriber.as_str()));
    }
    let active = standby::Active::default();
    let server = tokio::spawn({
        let (app, shutdown) = (standby::router(active.clone(), metrics.clone()), shutdown.clone());
        async move { axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await }
    });
    // One bus process writes the log: a second one on the same database waits here.
    let Some(mut lead) = busbar::leader::acquire(&db, "event-bus", &shutdown).await else {
        server.await??;
        tracing::info!("event-bus stopped (it was a standby)");
        return Ok(());
    };
    let store = store::Store::open(db).await?;
    let head_now = store.head().await?;
    let (head_tx, head_rx) = tokio::sync::watch::channel(head_now);
    metrics.head.set(head_now);
    metrics.active.set(1);
    let (ingest, ingest_task) = ingest::Ingest::spawn(store.clone(), head_tx, metrics.clone());
    let mode =
        delivery::PushMode { batch: args.push_batch as usize, bare_single: args.push_bare && args.push_batch == 1 };
    let sup = supervisor::Supervisor::new(store.clone(), head_rx.clone(), metrics.clone(), mode);
    let stop = CancellationToken::new();
    let mut watcher = None;
    if let (Some(path), Some((text, routes, bus))) = (&args.routes, initial_routes) {
        *spec.write().expect("spec lock") = Some(bus);
        sup.apply(routes).await;
        watcher = Some(tokio::spawn(supervisor::watch_routes(
            sup.clone(),
            access.clone(),
            spec.clone(),
            path.clone(),
            args.endpoint_template.clone(),
            args.reload_interval,
            text,
            stop.clone(),
        )));
    }

    let ready = Arc::new(AtomicBool::new(false));
    let state_auth = access.read().expect("access lock").enforced();
    let state = api::AppState {
        store: store.clone(),
        ingest,
        head: head_rx,
        supervisor: sup.clone(),
        metrics,
        ready: ready.clone(),
        access,
        spec,
    };
    let app = api::router(state, args.max_body_bytes).layer(tower_http::trace::TraceLayer::new_for_http());
    active.set(app);
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(listen = %args.listen, database = %redact(&args.database_url), head = head_now,
        subscribers = ?sup.routes().await.iter().map(|r| r.subscriber.clone()).collect::<Vec<_>>(),
        auth = if state_auth { "tokens" } else { "open" }, "event-bus ready");
    // A PostgreSQL lock lives on a connection: if that connection breaks, another process
    // may take the log, so this one must stop writing at once.
    let lost = async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if !lead.holds().await {
                return;
            }
        }
    };
    tokio::select! {
        r = server => r??,
        _ = lost => {
            tracing::error!("lost the writer lock on the database; exiting so that a standby takes over");
            std::process::exit(1);
        }
    }

    // The API (and with it the last handle on the writer) goes with the server.
    drop(active);
    // The server has stopped taking requests; the writer finishes what it was handed,
    // then delivery stops where it is (each worker saves its cursor as it stops).
    ready.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = ingest_task.await;
    stop.cancel();
    if let Some(w) = watcher {
        let _ = w.await;
    }
    sup.shutdown().await;
    store.db().close().await;
    tracing::info!("event-bus stopped");
    Ok(())
}
