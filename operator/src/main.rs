//! `busbar-operator`: reconciles ServiceBus resources in the cluster it runs in.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use busbar_operator::{
    controller::{self, RunConfig},
    leader::LeaseConfig,
    metrics::Metrics,
    settings::Settings,
};
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Reconciles `ServiceBus` resources (busbar.dev/v1alpha1): checks each bus's event graph,
/// runs its transport (the built-in event bus, or JetStream streams and consumers), wires
/// every declared Deployment with `BUSBAR_*` env vars through server-side apply, and
/// reports health in the resource's status and as Kubernetes Events.
///
/// It talks to the cluster it runs in (or the current kubeconfig context outside one).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Serve /healthz, /readyz and /metrics here.
    #[arg(long, env = "BUSBAR_OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Image of the built-in event bus the operator runs for `transport: {builtin: {}}`.
    #[arg(long, env = "BUSBAR_BUS_IMAGE", default_value = "ghcr.io/busbar-dev/event-bus:latest")]
    bus_image: String,
    /// Size of each built-in bus's log volume.
    #[arg(long, env = "BUSBAR_BUS_STORAGE", default_value = "1Gi")]
    bus_storage: String,
    /// StorageClass for that volume (default: the cluster's default class).
    #[arg(long, env = "BUSBAR_BUS_STORAGE_CLASS")]
    bus_storage_class: Option<String>,
    /// A subscriber with more events pending than this gets a Warning Event (LagHigh) when
    /// it crosses the line, and a Normal one (LagCleared) when it is back under.
    #[arg(long, env = "BUSBAR_LAG_WARNING", default_value_t = 1000)]
    lag_warning: u64,
    /// Read each built-in bus's figures here instead of at its in-cluster Service, with
    /// `{bus}` and `{namespace}` replaced; for an operator run outside the cluster, e.g.
    /// `http://127.0.0.1:4005` with `kubectl port-forward`.
    #[arg(long, env = "BUSBAR_BUS_STATS_URL")]
    bus_stats_url: Option<String>,
    /// Elect a leader through a Lease so several replicas can run; only the leader writes.
    #[arg(long, env = "BUSBAR_LEADER_ELECTION", default_value_t = false)]
    leader_election: bool,
    /// Namespace of the Lease (usually the operator's own; POD_NAMESPACE in the chart).
    #[arg(long, env = "POD_NAMESPACE", default_value = "busbar-system")]
    lease_namespace: String,
    #[arg(long, env = "BUSBAR_LEASE_NAME", default_value = "busbar-operator")]
    lease_name: String,
    /// This replica's identity (usually the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log as `text` or `json` (one object per line, for log collectors). The same
    /// `BUSBAR_LOG_FORMAT` switch as every busbar process.
    #[arg(long, env = "BUSBAR_LOG_FORMAT", value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // SAFETY: before any thread is started; the flag wins over the environment.
    unsafe { std::env::set_var("BUSBAR_LOG_FORMAT", &args.log_format) };
    busbar_client::init_logging("info,kube_runtime=warn,kube_client=warn");
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The context says what failed and what to do; kube's errors repeat their whole
            // chain in Display, so only the root cause is added.
            let cause = e.root_cause().to_string();
            let msg = if e.to_string().contains(&cause) { e.to_string() } else { format!("{e}: {cause}") };
            eprintln!("busbar-operator: {msg}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("cannot configure a Kubernetes client: no in-cluster service account, and no usable kubeconfig (set KUBECONFIG or run inside the cluster)")?;
    controller::check_crd(&client).await?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME").unwrap_or_else(|_| format!("busbar-operator-{}", std::process::id()))
    });
    let cfg = RunConfig {
        settings: Settings {
            bus_image: args.bus_image,
            bus_storage: args.bus_storage,
            bus_storage_class: args.bus_storage_class,
            bus_stats_url: args.bus_stats_url,
            lag_warning: args.lag_warning,
            ..Settings::default()
        },
        identity: identity.clone(),
        lease: args.leader_election.then(|| LeaseConfig {
            namespace: args.lease_namespace,
            name: args.lease_name,
            identity: identity.clone(),
            lease_duration: std::time::Duration::from_secs(15),
            retry_period: std::time::Duration::from_secs(2),
        }),
    };
    let metrics = Arc::new(Metrics::default());
    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ready" }))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { metrics: metrics.clone() });
    let http_stop = stop.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(async move { http_stop.cancelled().await }).await
    });
    let signal_stop = stop.clone();
    tokio::spawn(async move {
        busbar_client::shutdown_signal().await;
        tracing::info!("shutting down");
        signal_stop.cancel();
    });
    tracing::info!(%identity, listen = %args.listen, leader_election = cfg.lease.is_some(), "busbar-operator started");
    controller::run(client, cfg, metrics, stop.clone()).await;
    stop.cancel();
    let _ = http.await;
    Ok(())
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render())
}
