//! Reconcile, error policy and run: the kube-runtime Controller around the plan.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use busbar_domain::spec::TransportKind;
use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::{ConfigMap, Service},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event as KubeEvent, EventType, Recorder, Reporter},
        finalizer::{self, Event},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tokio_util::sync::CancellationToken;

use crate::{
    apply,
    crd::ServiceBus,
    jetstream::Provisioner,
    leader::{LeaderElector, LeaseConfig},
    metrics::Metrics,
    plan::{
        self, BUS_LABEL, BusRef, FINALIZER, MANAGED_BY_LABEL, Observed, ObservedDeployment, Settings, TransportState,
    },
};

/// Deployments wired at once during one reconcile.
const WIRING_CONCURRENCY: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    #[error("JetStream: {0}")]
    JetStream(String),
    #[error("{0}")]
    BusKey(String),
}

pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub deployments: Store<Deployment>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub jetstream: Provisioner,
    pub http: reqwest::Client,
}

fn bus_ref(sb: &ServiceBus) -> BusRef {
    BusRef {
        name: sb.name_any(),
        namespace: sb.namespace().unwrap_or_else(|| "default".into()),
        uid: sb.uid().unwrap_or_default(),
        generation: sb.metadata.generation,
    }
}

fn deployments_in(store: &Store<Deployment>, namespace: &str) -> BTreeMap<String, ObservedDeployment> {
    store
        .state()
        .iter()
        .filter(|d| d.namespace().as_deref() == Some(namespace))
        .map(|d| (d.name_any(), ObservedDeployment::from_deployment(d)))
        .collect()
}

pub async fn reconcile(sb: Arc<ServiceBus>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    let started = std::time::Instant::now();
    // The Deployment cache fills on the first list; deciding before it would unwire everything.
    let _ = ctx.deployments.wait_until_ready().await;
    let api = Api::<ServiceBus>::namespaced(ctx.client.clone(), &bus_ref(&sb).namespace);
    let result = finalizer::finalizer(&api, FINALIZER, sb, |event| async {
        match event {
            Event::Apply(sb) => apply(&sb, &ctx).await,
            Event::Cleanup(sb) => cleanup(&sb, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.observe(started.elapsed(), result.is_ok());
    result
}

async fn apply(sb: &ServiceBus, ctx: &Context) -> Result<Action, Error> {
    let bus = bus_ref(sb);
    let spec = &sb.spec.0;
    let mut observed = Observed {
        deployments: deployments_in(&ctx.deployments, &bus.namespace),
        previous: sb.status.clone(),
        ..Default::default()
    };
    // An invalid spec provisions and wires nothing: the plan reports it and stops there.
    if busbar_domain::spec::validate(spec).is_empty() {
        let endpoint = plan::endpoint(&bus, spec, &ctx.settings);
        match endpoint.kind {
            TransportKind::Builtin => {
                let key = apply::ensure_bus_key(&ctx.client, &bus).await?;
                observed.token_secrets = apply::token_secrets(&ctx.client, &bus).await?;
                let objs = plan::builtin_objects(&bus, spec, &ctx.settings);
                let ready = apply::ensure_builtin(&ctx.client, &bus, &objs).await?;
                if ready.unwrap_or(0) > 0 && ctx.settings.bus_stats {
                    let admin = key.token(busbar_domain::credentials::ADMIN);
                    observed.stats = apply::builtin_stats(&ctx.http, &endpoint.url, &admin).await;
                }
                observed.bus_key = Some(key);
                observed.transport = Some(TransportState::Builtin { ready_replicas: ready });
            }
            TransportKind::JetStream => {
                let key = apply::ensure_bus_key(&ctx.client, &bus).await?;
                observed.token_secrets = apply::token_secrets(&ctx.client, &bus).await?;
                let auth_secret = plan::nats_auth_secret_name(&bus.name);
                observed.nats_auth =
                    apply::secret_file(&ctx.client, &bus.namespace, &auth_secret, plan::NATS_AUTH_FILE).await?;
                ctx.jetstream
                    .authenticate(&endpoint.url, &bus.name, key.token(busbar_domain::credentials::ADMIN))
                    .await;
                observed.bus_key = Some(key);
                let (state, stats) = ctx.jetstream.provision(&endpoint.url, &bus.name, spec).await;
                observed.transport = Some(state);
                observed.stats = stats;
            }
        }
    }
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let plan = plan::plan(&bus, spec, &ctx.settings, &observed, &now);
    // Secrets first: a Deployment wired to a missing Secret would not start.
    for body in &plan.token_secrets {
        apply::apply_secret(&ctx.client, &bus.namespace, body).await?;
    }
    if let Some(body) = &plan.nats_auth_secret {
        apply::apply_secret(&ctx.client, &bus.namespace, body).await?;
    }
    for name in &plan.delete_token_secrets {
        apply::delete_secret(&ctx.client, &bus.namespace, name).await?;
    }
    // Each wiring is one round trip to the API server; a bounded number run at once so a
    // bus of many services is wired in a fraction of the time without flooding the server.
    let wirings: Vec<_> = plan.wire.iter().map(|w| wire_one(ctx, sb, &bus, w)).collect();
    futures::stream::iter(wirings)
        .buffer_unordered(WIRING_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()?;
    for d in &plan.unwire {
        apply::unwire(&ctx.client, &bus.namespace, d).await?;
        tracing::info!(bus = %bus.name, namespace = %bus.namespace, deployment = %d, "unwired");
        let note = format!("left ServiceBus {}; its wiring was removed", bus.name);
        publish_on_deployment(ctx, sb, &bus.namespace, d, "Unwired", "Unwire", note).await;
    }
    for c in &plan.status.conditions {
        let before = sb.status.as_ref().and_then(|s| s.condition(&c.type_)).map(|p| p.status.as_str());
        if before != Some(c.status.as_str()) && (c.type_ == "Ready" || c.status == "False") {
            let kind = if c.status == "True" { EventType::Normal } else { EventType::Warning };
            publish(ctx, sb, kind, &c.reason, "Reconcile", format!("{}={}: {}", c.type_, c.status, c.message)).await;
        }
    }
    if !plan.problems.is_empty() {
        tracing::warn!(bus = %bus.name, namespace = %bus.namespace, problems = ?plan.problems, "invalid ServiceBus spec");
    }
    apply::write_status(&ctx.client, sb, &plan.status).await?;
    let ready = plan.status.condition("Ready").is_some_and(|c| c.status == "True");
    Ok(if !plan.problems.is_empty() {
        Action::await_change()
    } else if ready {
        Action::requeue(Duration::from_secs(60))
    } else {
        Action::requeue(Duration::from_secs(10))
    })
}

async fn wire_one(ctx: &Context, sb: &ServiceBus, bus: &BusRef, w: &plan::Wiring) -> Result<(), kube::Error> {
    apply::wire(&ctx.client, bus, w).await?;
    tracing::info!(bus = %bus.name, namespace = %bus.namespace, deployment = %w.deployment, hash = %w.hash, "wired");
    let note = format!("wired by ServiceBus {} (wiring {})", bus.name, w.hash);
    publish_on_deployment(ctx, sb, &bus.namespace, &w.deployment, "Wired", "Wire", note).await;
    Ok(())
}

async fn cleanup(sb: &ServiceBus, ctx: &Context) -> Result<Action, Error> {
    let bus = bus_ref(sb);
    let spec = &sb.spec.0;
    let wired: Vec<String> = deployments_in(&ctx.deployments, &bus.namespace)
        .into_values()
        .filter(|d| d.labels.get(BUS_LABEL) == Some(&bus.name) || plan::declares(spec, &d.name))
        .map(|d| d.name)
        .collect();
    for d in &wired {
        apply::unwire(&ctx.client, &bus.namespace, d).await?;
    }
    if let Some(js) = &spec.transport.jetstream {
        let key_secret = plan::key_secret_name(&bus.name);
        if let Some(hex) = apply::secret_file(&ctx.client, &bus.namespace, &key_secret, "key").await?
            && let Ok(key) = busbar_domain::credentials::BusKey::from_hex(&hex)
        {
            ctx.jetstream.authenticate(&js.url, &bus.name, key.token(busbar_domain::credentials::ADMIN)).await;
        }
        ctx.jetstream.remove_consumers(&js.url, &bus.name).await.map_err(Error::JetStream)?;
    }
    // The built-in bus's objects carry owner references: the API server deletes them.
    tracing::info!(bus = %bus.name, namespace = %bus.namespace, unwired = wired.len(), "cleaned up");
    publish(ctx, sb, EventType::Normal, "CleanedUp", "Cleanup", format!("unwired {} Deployment(s)", wired.len())).await;
    Ok(Action::await_change())
}

async fn publish(ctx: &Context, sb: &ServiceBus, type_: EventType, reason: &str, action: &str, note: String) {
    let ev = KubeEvent { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&ev, &sb.object_ref(&())).await {
        tracing::debug!(error = %e, "cannot record a Kubernetes Event");
    }
}

/// An Event about one Deployment (so `kubectl describe deployment` shows it), related to
/// the ServiceBus. Events about the same object with the same reason are merged into a
/// series by the recorder; per Deployment they stay apart.
async fn publish_on_deployment(
    ctx: &Context,
    sb: &ServiceBus,
    namespace: &str,
    deployment: &str,
    reason: &str,
    action: &str,
    note: String,
) {
    let Some(d) = ctx.deployments.get(&ObjectRef::new(deployment).within(namespace)) else { return };
    let ev = KubeEvent {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: Some(sb.object_ref(&())),
    };
    if let Err(e) = ctx.recorder.publish(&ev, &d.object_ref(&())).await {
        tracing::debug!(error = %e, "cannot record a Kubernetes Event");
    }
}

pub fn error_policy(sb: Arc<ServiceBus>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(bus = %sb.name_any(), namespace = ?sb.namespace(), error = %err, "reconcile failed; retrying in 5s");
    Action::requeue(Duration::from_secs(5))
}

/// Settings for one operator process.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub settings: Settings,
    /// This replica's name in Events and in the Lease.
    pub identity: String,
    /// `None`: no leader election (one replica).
    pub lease: Option<LeaseConfig>,
}

/// Fails with a readable message when the ServiceBus CRD is not installed.
pub async fn check_crd(client: &Client) -> anyhow::Result<()> {
    let api = Api::<ServiceBus>::all(client.clone());
    match api.list(&kube::api::ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => anyhow::bail!(
            "the ServiceBus CRD (servicebuses.busbar.dev) is not installed in this cluster. Install it with \
             `kubectl apply -f k8s/base/operator/crd.yaml` or the busbar Helm chart, then start the operator again"
        ),
        Err(e) => Err(anyhow::anyhow!("cannot list ServiceBuses: {e}")),
    }
}

/// Runs the controller until `stop`.
pub async fn run_controller(client: Client, cfg: &RunConfig, metrics: Arc<Metrics>, stop: CancellationToken) {
    let owned = || watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={}", plan::FIELD_MANAGER));
    let (reader, writer) = reflector::store();
    let deployments = watcher(Api::<Deployment>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    let controller = Controller::new(Api::<ServiceBus>::all(client.clone()), watcher::Config::default());
    let buses = controller.store();
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings: cfg.settings.clone(),
        deployments: reader,
        recorder: Recorder::new(
            client.clone(),
            Reporter { controller: plan::FIELD_MANAGER.into(), instance: Some(cfg.identity.clone()) },
        ),
        metrics,
        jetstream: Provisioner::default(),
        http: reqwest::Client::new(),
    });
    controller
        .owns(Api::<StatefulSet>::all(client.clone()), owned())
        .owns(Api::<ConfigMap>::all(client.clone()), owned())
        .owns(Api::<Service>::all(client.clone()), owned())
        // A Deployment maps to every ServiceBus in its namespace that declares it or wired it.
        .watches_stream(deployments, move |d: Deployment| {
            let (ns, name) = (d.namespace(), d.name_any());
            let label = d.labels().get(BUS_LABEL).cloned();
            buses
                .state()
                .into_iter()
                .filter(|sb| {
                    sb.namespace() == ns
                        && (plan::declares(&sb.spec, &name) || label.as_deref() == Some(&sb.name_any()))
                })
                .map(|sb| ObjectRef::from_obj(&*sb))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(bus = %obj.name, namespace = ?obj.namespace, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
        })
        .await;
}

/// Runs the operator until `stop`: with a Lease, the controller runs only while this
/// replica leads, and stops as soon as it does not.
pub async fn run(client: Client, cfg: RunConfig, metrics: Arc<Metrics>, stop: CancellationToken) {
    let Some(lease) = cfg.lease.clone() else {
        run_controller(client, &cfg, metrics, stop).await;
        return;
    };
    let mut leading = LeaderElector::new(client.clone(), lease).run(stop.clone());
    loop {
        tokio::select! {
            r = leading.wait_for(|l| *l) => if r.is_err() { return },
            _ = stop.cancelled() => return,
        }
        tracing::info!(identity = %cfg.identity, "leading: starting the controller");
        let term = stop.child_token();
        let watch_term = term.clone();
        let mut lost = leading.clone();
        let guard = tokio::spawn(async move {
            let _ = lost.wait_for(|l| !*l).await;
            watch_term.cancel();
        });
        run_controller(client.clone(), &cfg, metrics.clone(), term).await;
        guard.abort();
        if stop.is_cancelled() {
            return;
        }
        tracing::warn!(identity = %cfg.identity, "lost leadership: controller stopped");
    }
}
