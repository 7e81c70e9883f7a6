//! `busbar dashboard`: the built-in bus's dashboard page for a bus on JetStream. JetStream
//! has no HTTP API of its own, so this serves the same page and answers the bus API calls
//! the page makes (`/subscribers`, `/deadletters`, redrive, `/events`) from JetStream, with
//! the same wire types ([`busbar::bus_api`]).
//!
//! It listens on loopback by default and talks to NATS with the credentials it was
//! given: whoever reaches its port acts with them, as with `busbar dlq`, so it asks for no
//! token of its own. A page of another site open in the same browser reaches that port
//! too, so a redrive whose `Origin` names another site is refused ([`same_origin`]).

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::{Context, Result, bail};
use axum::{
    Json, Router,
    extract::{Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use busbar::{
    bus_api::{self, DeadLetter, RedriveResult, SubscriberStatus},
    spec::ServiceBus,
    transport::jetstream::{JetStream, dlq::DeadLetterError},
    web::ApiError,
};
use clap::Args;
use serde::Deserialize;

use crate::target::{Connected, Target};

/// `busbar dashboard`'s arguments; its help text is on `Cmd::Dashboard` in main.rs.
#[derive(Args, Debug)]
pub struct DashboardArgs {
    /// The ServiceBus manifest, for the event graph (without it the page shows none).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Where to serve the page.
    #[arg(long, default_value = "127.0.0.1:4006")]
    listen: SocketAddr,
    #[command(flatten)]
    target: Target,
}

#[derive(Clone)]
struct Served {
    js: Arc<JetStream>,
    spec: Option<Arc<ServiceBus>>,
}

pub fn run(args: DashboardArgs) -> Result<()> {
    if args.target.nats_url.is_none() {
        bail!(
            "the built-in bus serves this dashboard itself, at its own URL ({}/); `busbar dashboard` is for JetStream: pass --nats-url and --bus",
            args.target.bus_url
        );
    }
    let spec = match &args.file {
        Some(path) => Some(Arc::new(busbar::spec::load_manifest(path).map_err(anyhow::Error::msg)?)),
        None => None,
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let Connected::JetStream(js) = args.target.connect().await? else { unreachable!("--nats-url was given") };
        let app = router(Served { js: Arc::new(*js), spec });
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        eprintln!("busbar dashboard: http://{} (Ctrl-C stops)", listener.local_addr()?);
        axum::serve(listener, app).with_graceful_shutdown(busbar::web::shutdown_signal()).await?;
        Ok(())
    })
}

fn router(s: Served) -> Router {
    let redrive = Router::new()
        .route("/deadletters/redrive", post(redrive_all))
        .route("/deadletters/{id}/redrive", post(redrive_one))
        .route_layer(middleware::from_fn(same_origin));
    Router::new()
        .route("/", get(event_bus::dashboard::page))
        .route("/graph.svg", get(graph))
        .route("/subscribers", get(subscribers))
        .route("/deadletters", get(dead_letters))
        .route("/events", get(events))
        .merge(redrive)
        .with_state(s)
}

/// Refuses a request that a page of another site makes from the user's browser (cross-site
/// request forgery): a browser names the page's origin in `Origin` on every POST, and only
/// this dashboard's own page may act. Requests without `Origin` come from no page (`curl`).
async fn same_origin(req: Request, next: Next) -> Response {
    let headers = req.headers();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let own = headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(|host| format!("http://{host}"));
        if own.as_deref() != origin.to_str().ok() {
            let origin = String::from_utf8_lossy(origin.as_bytes());
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "refused a cross-origin request from {origin}: only its own page ({}) may redrive dead letters",
                    own.as_deref().unwrap_or("its own address")
                ),
            )
            .into_response();
        }
    }
    next.run(req).await
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

fn dlq_error(e: DeadLetterError) -> ApiError {
    match e {
        DeadLetterError::NotFound { .. } => ApiError::not_found(e.to_string()),
        other => unavailable(other),
    }
}

async fn graph(State(s): State<Served>) -> Result<Response, ApiError> {
    let svg = event_bus::dashboard::svg_of(s.spec.as_deref()).map_err(|_| {
        ApiError::not_found("`busbar dashboard` was started without a manifest (-f), so it has no event graph")
    })?;
    Ok(([(header::CONTENT_TYPE, "image/svg+xml; charset=utf-8")], svg).into_response())
}

async fn subscribers(State(s): State<Served>) -> Result<Json<Vec<SubscriberStatus>>, ApiError> {
    s.js.subscriber_status().await.map(Json).map_err(unavailable)
}

#[derive(Deserialize)]
struct Which {
    subscriber: Option<String>,
    limit: Option<usize>,
}

async fn dead_letters(State(s): State<Served>, Query(q): Query<Which>) -> Result<Json<Vec<DeadLetter>>, ApiError> {
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    match s.js.list_dead_letters(q.subscriber.as_deref(), 0, limit).await {
        Ok(list) => Ok(Json(list)),
        // No dead-letter stream yet: nobody has given up on anything.
        Err(DeadLetterError::NoStream { .. }) => Ok(Json(vec![])),
        Err(e) => Err(dlq_error(e)),
    }
}

async fn redrive_one(State(s): State<Served>, Path(id): Path<u64>) -> Result<Json<RedriveResult>, ApiError> {
    let done = s.js.redrive(id, None).await.map_err(dlq_error)?;
    Ok(Json(RedriveResult { redriving: 1, subscribers: vec![done.subscriber] }))
}

async fn redrive_all(State(s): State<Served>, Query(q): Query<Which>) -> Result<Json<RedriveResult>, ApiError> {
    let done = s.js.redrive_all(q.subscriber.as_deref()).await.map_err(dlq_error)?;
    let mut subscribers: Vec<String> = done.iter().map(|d| d.subscriber.clone()).collect();
    subscribers.sort();
    subscribers.dedup();
    Ok(Json(RedriveResult { redriving: done.len() as u64, subscribers }))
}

#[derive(Deserialize)]
struct Page {
    after: Option<u64>,
    limit: Option<usize>,
}

/// The bus API's replay: a JSON array, with the next position and the head as headers.
async fn events(State(s): State<Served>, Query(q): Query<Page>) -> Result<Response, ApiError> {
    let (after, limit) = (q.after.unwrap_or(0), q.limit.unwrap_or(1000).clamp(1, 10_000));
    let head = s.js.head().await.map_err(unavailable)?;
    let page = s.js.replay(after, limit, &[]).await.map_err(unavailable)?;
    let mut headers = HeaderMap::new();
    headers.insert(bus_api::NEXT_AFTER_HEADER, HeaderValue::from(page.next));
    headers.insert(bus_api::HEAD_HEADER, HeaderValue::from(head));
    Ok((headers, Json(page.events)).into_response())
}
