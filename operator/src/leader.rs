//! Leader election on a `coordination.k8s.io/v1` Lease, the algorithm client-go uses: read
//! the Lease, and take or renew it with an update that carries the resourceVersion read.
//! The API server refuses a stale update (409), so of two replicas racing for an expired
//! lease exactly one wins. Only the leader runs the controller.
//!
//! (kube-lease-manager was the obvious crate; version 0.13 takes an expired lease with
//! strategic-merge and server-side-apply patches that carry no resourceVersion, so its
//! safety rests on managed-field conflicts rather than on the compare-and-swap the Lease
//! API is built for. This module is that compare-and-swap, in under 150 lines.)

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::{PostParams, entry::Entry},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity, usually the pod name.
    pub identity: String,
    /// A leader that has not renewed for this long has lost the lease.
    pub lease_duration: Duration,
    /// How often the leader renews, and followers retry.
    pub retry_period: Duration,
}

pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaseConfig,
}

impl LeaderElector {
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        LeaderElector { api: Api::namespaced(client, &cfg.namespace), cfg }
    }

    /// One attempt: `Ok(true)` if this replica holds the lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let duration_secs = self.cfg.lease_duration.as_secs().max(1) as i32;
        let mine = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(duration_secs),
            acquire_time: acquired.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        };
        let result = match self.api.entry(&self.cfg.name).await? {
            Entry::Vacant(v) => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.cfg.name.clone()), ..Default::default() },
                    spec: Some(mine(0, None)),
                };
                v.insert(lease).commit(&PostParams::default()).await.map(|_| true)
            }
            Entry::Occupied(mut o) => {
                let spec = o.get().spec.clone().unwrap_or_default();
                let held_by_me = spec.holder_identity.as_deref() == Some(&self.cfg.identity);
                let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
                    (Some(MicroTime(renewed)), Some(secs)) => {
                        renewed.checked_add(SignedDuration::from_secs(secs.into())).is_ok_and(|until| until < now)
                    }
                    _ => true,
                };
                let vacant = spec.holder_identity.as_deref().is_none_or(str::is_empty);
                if !(held_by_me || expired || vacant) {
                    return Ok(false);
                }
                let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!held_by_me);
                let acquired = if held_by_me { spec.acquire_time.clone() } else { None };
                o.get_mut().spec = Some(mine(transitions, acquired));
                // `commit` replaces with the resourceVersion read: a concurrent writer makes it fail.
                o.commit(&PostParams::default()).await.map(|_| true)
            }
        };
        match result {
            Ok(v) => Ok(v),
            Err(kube::api::entry::CommitError::Save(kube::Error::Api(e))) if e.code == 409 => Ok(false),
            Err(kube::api::entry::CommitError::Save(e)) => Err(e),
            Err(kube::api::entry::CommitError::Validate(e)) => Err(kube::Error::Service(Box::new(e))),
        }
    }

    /// Gives the lease up at shutdown, so another replica takes over without waiting for expiry.
    pub async fn release(&self) -> Result<(), kube::Error> {
        if let Entry::Occupied(mut o) = self.api.entry(&self.cfg.name).await?
            && o.get().spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(&self.cfg.identity)
        {
            if let Some(spec) = o.get_mut().spec.as_mut() {
                spec.holder_identity = None;
                spec.renew_time = None;
            }
            let _ = o.commit(&PostParams::default()).await;
        }
        Ok(())
    }

    /// Campaigns until `stop`: the receiver says whether this replica leads right now. A
    /// leader that cannot renew within the lease duration steps down on its own, before
    /// another replica may take over.
    pub fn run(self, stop: CancellationToken) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            let mut last_renewed = None::<tokio::time::Instant>;
            loop {
                let leading = match self.try_acquire_or_renew().await {
                    Ok(true) => {
                        last_renewed = Some(tokio::time::Instant::now());
                        true
                    }
                    Ok(false) => false,
                    Err(e) => {
                        tracing::warn!(error = %e, lease = %self.cfg.name, "cannot reach the leader lease");
                        // Keep leading only while the last renewal is still within the lease.
                        last_renewed.is_some_and(|t| t.elapsed() < self.cfg.lease_duration * 2 / 3)
                    }
                };
                if *tx.borrow() != leading {
                    tracing::info!(identity = %self.cfg.identity, leading, "leadership changed");
                }
                tx.send_replace(leading);
                tokio::select! {
                    _ = tokio::time::sleep(self.cfg.retry_period) => {}
                    _ = stop.cancelled() => break,
                }
            }
            if *tx.borrow() {
                let _ = self.release().await;
            }
            tx.send_replace(false);
        });
        rx
    }
}
