//! Carries the plan's actions out, in order, and says which failed: the thin shell between
//! the plan and the API server (server-side apply with the operator's field manager, status
//! patches, Events) and JetStream. It decides nothing.
//!
//! The first failure stops the run: later actions may depend on it (a Deployment wired to a
//! Secret that could not be written would not start), and the next reconcile plans again
//! from what is there. The failures go back to the controller, which reports them in status.
//! Consecutive wirings are independent of each other and run a bounded number at a time, so a
//! bus of many services is wired in a fraction of the time without flooding the API server.

use std::fmt::Debug;

use busbar_client::jetstream::JetStream;
use futures::StreamExt;
use k8s_openapi::{
    NamespaceResourceScope,
    api::{apps::v1::Deployment, core::v1::Secret},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{
        events::{Event as KubeEvent, EventType, Recorder},
        reflector::{ObjectRef, Store},
    },
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    crd::ServiceBus,
    jetstream,
    names::FIELD_MANAGER,
    plan::actions::{Action, DeploymentApply, Failure, Note, Regarding},
};

/// Deployments wired at once.
const WIRING_CONCURRENCY: usize = 16;

/// What execute needs to carry actions out for one ServiceBus.
pub struct Executor<'a> {
    pub client: &'a Client,
    pub recorder: &'a Recorder,
    /// The controller's cache of Deployments, to name them in Events.
    pub deployments: &'a Store<Deployment>,
    /// The connection observe read JetStream on (None on the built-in bus, or when NATS did
    /// not answer, in which case the plan has no JetStream actions).
    pub nats: Option<&'a JetStream>,
    pub sb: &'a ServiceBus,
}

/// How a run went.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub failures: Vec<Failure>,
    /// Another operator created the bus key first: the rest of the plan (tokens from the
    /// key this one picked) was stale and was skipped; the next reconcile reads theirs.
    pub stale: bool,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.failures.is_empty() && !self.stale
    }
}

enum Stop {
    Stale,
    Failed(String),
}

impl<'a> Executor<'a> {
    fn namespace(&self) -> String {
        self.sb.namespace().unwrap_or_else(|| "default".into())
    }

    fn api<K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>>(&self) -> Api<K> {
        Api::namespaced(self.client.clone(), &self.namespace())
    }

    pub async fn run(&self, actions: &[Action]) -> Outcome {
        let mut out = Outcome::default();
        let mut rest = actions;
        while !rest.is_empty() {
            let wirings = rest.iter().take_while(|a| matches!(a, Action::Wire(_))).count();
            let (step, tail) = rest.split_at(wirings.max(1));
            rest = tail;
            let runs: Vec<_> = step.iter().map(|a| self.one(a)).collect();
            let results: Vec<_> = futures::stream::iter(runs).buffered(WIRING_CONCURRENCY).collect().await;
            for (action, result) in step.iter().zip(results) {
                match result {
                    Ok(()) => {}
                    Err(Stop::Stale) => out.stale = true,
                    Err(Stop::Failed(error)) => {
                        tracing::warn!(bus = %self.sb.name_any(), action = %action, %error, "action failed");
                        out.failures.push(Failure { action: action.to_string(), concern: action.concern(), error });
                    }
                }
            }
            if !out.ok() {
                if !rest.is_empty() {
                    tracing::info!(bus = %self.sb.name_any(), skipped = rest.len(), "left for the next reconcile");
                }
                break;
            }
        }
        out
    }

    async fn one(&self, action: &Action) -> Result<(), Stop> {
        match action {
            Action::CreateKeySecret(secret) => {
                let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
                match self.api::<Secret>().create(&params, secret).await {
                    Ok(_) => {
                        tracing::info!(bus = %self.sb.name_any(), secret = %secret.name_any(), "created the bus key");
                        Ok(())
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => Err(Stop::Stale),
                    Err(e) => Err(failed(e)),
                }
            }
            Action::ApplySecret(s) => self.apply(s).await,
            Action::ApplyConfigMap(c) => self.apply(c).await,
            Action::ApplyService(s) => self.apply(s).await,
            Action::ApplyStatefulSet(s) => self.apply(s).await,
            Action::CreateStreams => jetstream::create_streams(self.nats()?).await.map_err(Stop::Failed),
            Action::PutConsumer(c) => jetstream::put_consumer(self.nats()?, c).await.map_err(Stop::Failed),
            Action::DeleteConsumer(name) => jetstream::delete_consumer(self.nats()?, name).await.map_err(Stop::Failed),
            Action::Wire(w) => {
                self.apply_deployment(&w.body).await?;
                tracing::info!(bus = %self.sb.name_any(), deployment = %w.deployment, hash = %w.hash, "wired");
                self.record_all(&w.notes).await;
                Ok(())
            }
            Action::Unwire { deployment, notes } => {
                // Applying the empty body to a Deployment that is gone would create one.
                if self.api::<Deployment>().get_opt(deployment).await.map_err(failed)?.is_none() {
                    return Ok(());
                }
                let body = DeploymentApply::nothing(&self.namespace(), deployment);
                match self.api::<Deployment>().patch(deployment, &apply_params(), &Patch::Apply(&body)).await {
                    Ok(_) => {}
                    // Deleted meanwhile (404), or it would have to be created from the empty
                    // body (422): nothing to remove.
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 422 => return Ok(()),
                    Err(e) => return Err(failed(e)),
                }
                tracing::info!(bus = %self.sb.name_any(), %deployment, "unwired");
                self.record_all(notes).await;
                Ok(())
            }
            Action::DeleteSecret(name) => match self.api::<Secret>().delete(name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                Err(e) => Err(failed(e)),
            },
            Action::Event(note) => {
                self.record(note).await;
                Ok(())
            }
            Action::PatchStatus(body) => {
                let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
                self.api::<ServiceBus>()
                    .patch_status(&self.sb.name_any(), &params, &Patch::Merge(body))
                    .await
                    .map(drop)
                    .map_err(failed)
            }
        }
    }

    fn nats(&self) -> Result<&JetStream, Stop> {
        self.nats.ok_or_else(|| Stop::Failed("no connection to NATS".into()))
    }

    async fn apply<K>(&self, obj: &K) -> Result<(), Stop>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
    {
        self.api::<K>().patch(&obj.name_any(), &apply_params(), &Patch::Apply(obj)).await.map(drop).map_err(failed)
    }

    async fn apply_deployment(&self, body: &DeploymentApply) -> Result<(), Stop> {
        let name = body.metadata.name.as_deref().unwrap_or_default();
        self.api::<Deployment>().patch(name, &apply_params(), &Patch::Apply(body)).await.map(drop).map_err(failed)
    }

    async fn record_all(&self, notes: &[Note]) {
        for n in notes {
            self.record(n).await;
        }
    }

    /// Records an Event. A failure to record one is logged, not a failure of the reconcile:
    /// Events are for people, nothing depends on them.
    async fn record(&self, note: &Note) {
        let Some(regarding) = self.reference(&note.regarding) else { return };
        let event = KubeEvent {
            type_: if note.warning { EventType::Warning } else { EventType::Normal },
            reason: note.reason.clone(),
            note: Some(note.note.clone()),
            action: note.action.clone(),
            secondary: note.related.as_ref().and_then(|r| self.reference(r)),
        };
        if let Err(e) = self.recorder.publish(&event, &regarding).await {
            tracing::debug!(error = %e, reason = %note.reason, "cannot record a Kubernetes Event");
        }
    }

    fn reference(&self, r: &Regarding) -> Option<k8s_openapi::api::core::v1::ObjectReference> {
        match r {
            Regarding::ServiceBus => Some(self.sb.object_ref(&())),
            Regarding::Deployment(name) => {
                self.deployments.get(&ObjectRef::new(name).within(&self.namespace())).map(|d| d.object_ref(&()))
            }
        }
    }
}

fn apply_params() -> PatchParams {
    // `force`: the operator is the authority for the fields it manages; a hand edit of a
    // wired variable is drift to repair, not a conflict to stop at.
    PatchParams::apply(FIELD_MANAGER).force()
}

/// A Kubernetes error as a sentence that says what to do where that is clear.
fn failed(e: kube::Error) -> Stop {
    Stop::Failed(match &e {
        kube::Error::Api(s) if s.code == 403 => format!(
            "{e}; the operator's RBAC does not allow it: apply its ClusterRole (k8s/base/operator/rbac.yaml or the busbar \
             chart) again"
        ),
        _ => e.to_string(),
    })
}
