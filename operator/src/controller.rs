//! Reconcile, error policy and run: the kube-runtime Controller around observe → plan →
//! execute. A reconcile reads ([`crate::observe`]), decides ([`crate::plan`]), writes
//! ([`crate::execute`]), and then reports: the status and its Events, with whatever failed
//! said in the conditions.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::{ConfigMap, Service},
};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Recorder, Reporter},
        finalizer::{self, Event},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tokio_util::sync::CancellationToken;

use crate::{
    crd::ServiceBus,
    execute::{Executor, Outcome},
    jetstream::Links,
    leader::{LeaderElector, LeaseConfig},
    metrics::Metrics,
    names::{BUS_LABEL, CONTRACTS_LABEL, FIELD_MANAGER, FINALIZER, MANAGED_BY_LABEL, bus_of_contracts, declares},
    observe::{Observation, Sources},
    plan::{self, actions::Failure, observed::Moment, status},
    settings::Settings,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    /// Actions the plan asked for failed; status says which, and the next reconcile retries.
    #[error("{}", failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Failed { failures: Vec<Failure> },
    /// The ServiceBus cannot be deleted yet; the sentence says why and what to do.
    #[error("{0}")]
    CleanupBlocked(String),
}

pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub deployments: Store<Deployment>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub jetstream: Links,
}

impl Context {
    fn sources(&self) -> Sources<'_> {
        Sources {
            client: &self.client,
            deployments: &self.deployments,
            jetstream: &self.jetstream,
            settings: &self.settings,
        }
    }

    fn executor<'a>(&'a self, sb: &'a ServiceBus, observation: &'a Observation) -> Executor<'a> {
        Executor {
            client: &self.client,
            recorder: &self.recorder,
            deployments: &self.deployments,
            nats: observation.nats.as_ref(),
            sb,
        }
    }
}

pub async fn reconcile(sb: Arc<ServiceBus>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    let started = std::time::Instant::now();
    // The Deployment cache fills on the first list; deciding before it would unwire everything.
    let _ = ctx.deployments.wait_until_ready().await;
    let api = Api::<ServiceBus>::namespaced(ctx.client.clone(), &sb.bus_ref().namespace);
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
    let bus = sb.bus_ref();
    let spec = &sb.spec.0;
    let observation = match ctx.sources().observe(&bus, spec, sb.status.clone()).await {
        Ok(o) => o,
        Err(e) => {
            // Say so in status too: without it an RBAC gap shows only in the operator's log.
            let previous = sb.status.as_ref();
            let status = status::unobserved(previous, &bus, &e.to_string(), &Moment::now().time);
            let executor = Executor {
                client: &ctx.client,
                recorder: &ctx.recorder,
                deployments: &ctx.deployments,
                nats: None,
                sb,
            };
            let reported = executor.run(&plan::report(previous, &status, &ctx.settings)).await;
            for f in reported.failures {
                tracing::warn!(bus = %bus.name, namespace = %bus.namespace, error = %f, "cannot report the failure in status either");
            }
            return Err(e.into());
        }
    };
    let moment = Moment::now();
    let plan = plan::plan(&bus, spec, &ctx.settings, &observation.observed, &moment);
    if !plan.problems.is_empty() {
        tracing::warn!(bus = %bus.name, namespace = %bus.namespace, problems = ?plan.problems, "invalid ServiceBus spec");
    }
    let executor = ctx.executor(sb, &observation);
    let outcome = executor.run(&plan.actions).await;
    if outcome.stale {
        // Another operator created the bus key meanwhile: plan again with it.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let previous = sb.status.as_ref();
    let status = status::with_failures(plan.status, &outcome.failures, &bus, previous, &moment.time);
    let reported = executor.run(&plan::report(previous, &status, &ctx.settings)).await;
    let failures: Vec<Failure> = outcome.failures.into_iter().chain(reported.failures).collect();
    if !failures.is_empty() {
        return Err(Error::Failed { failures });
    }
    let ready = status.condition("Ready").is_some_and(|c| c.status == "True");
    Ok(if !plan.problems.is_empty() {
        Action::await_change()
    } else if ready {
        Action::requeue(Duration::from_secs(60))
    } else {
        Action::requeue(Duration::from_secs(10))
    })
}

async fn cleanup(sb: &ServiceBus, ctx: &Context) -> Result<Action, Error> {
    let bus = sb.bus_ref();
    let observation = ctx.sources().observe_for_cleanup(&bus, &sb.spec.0).await?;
    let cleanup = plan::cleanup(&bus, &sb.spec.0, &observation.observed);
    let Outcome { failures, .. } = ctx.executor(sb, &observation).run(&cleanup.actions).await;
    if !failures.is_empty() {
        return Err(Error::Failed { failures });
    }
    if let Some(why) = cleanup.blocked {
        return Err(Error::CleanupBlocked(why));
    }
    tracing::info!(bus = %bus.name, namespace = %bus.namespace, "cleaned up");
    Ok(Action::await_change())
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
    let owned = || watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}"));
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
            Reporter { controller: FIELD_MANAGER.into(), instance: Some(cfg.identity.clone()) },
        ),
        metrics,
        jetstream: Links::default(),
    });
    controller
        .owns(Api::<StatefulSet>::all(client.clone()), owned())
        .owns(Api::<ConfigMap>::all(client.clone()), owned())
        .owns(Api::<Service>::all(client.clone()), owned())
        // A labelled contracts ConfigMap `<bus>-contracts` reconciles its bus when it changes.
        .watches(
            Api::<ConfigMap>::all(client.clone()),
            watcher::Config::default().labels(CONTRACTS_LABEL),
            |cm: ConfigMap| {
                let ns = cm.namespace().unwrap_or_default();
                bus_of_contracts(&cm.name_any()).map(|bus| ObjectRef::<ServiceBus>::new(bus).within(&ns))
            },
        )
        // A Deployment maps to every ServiceBus in its namespace that declares it or wired it.
        .watches_stream(deployments, move |d: Deployment| {
            let (ns, name) = (d.namespace(), d.name_any());
            let label = d.labels().get(BUS_LABEL).cloned();
            buses
                .state()
                .into_iter()
                .filter(|sb| {
                    sb.namespace() == ns && (declares(&sb.spec, &name) || label.as_deref() == Some(&sb.name_any()))
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
