//! Readiness **simulation** (on with [`crate::FakeApiServerBuilder::simulate_readiness`], and in
//! `kube-fake serve` unless `--no-readiness`): nothing runs pods here, so this stands in for the
//! Deployment and StatefulSet controllers and the kubelets. A Deployment or StatefulSet whose
//! status does not describe its current generation gets, after a short delay, the status its
//! controller would write once every replica is up: all replicas ready, available and updated,
//! `observedGeneration` current, and for Deployments the `Available` and `Progressing`
//! (`NewReplicaSetAvailable`) conditions. That is what `kubectl rollout status`, `kubectl wait
//! --for=condition=available` and `helm --wait` look at.
//!
//! It is a simulation: no Pods, ReplicaSets or PersistentVolumeClaims are created, no image is
//! pulled, and a workload that could never start (a missing image, a missing Secret) is
//! reported ready all the same. The status is written through the status subresource as the
//! field manager `kube-controller-manager`, as the real controllers do.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::store::{State, now};

pub(crate) const MANAGER: &str = "kube-controller-manager";

/// Workloads waiting to become ready: (resource, namespace, name, generation) → first seen.
#[derive(Default)]
pub(crate) struct Pending {
    seen: HashMap<(String, String, String, i64), Instant>,
}

fn revision(name: &str, generation: i64) -> String {
    // A stable stand-in for the controller's pod-template hash.
    let h = generation.wrapping_mul(2_654_435_761) as u64 % 0xffff_ffff;
    format!("{name}-{h:x}")
}

/// The status a controller writes once all replicas of this generation are ready.
fn ready_status(resource: &str, obj: &Value, generation: i64) -> Value {
    let replicas = obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let ts = now();
    let mut status = json!({
        "observedGeneration": generation,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
    });
    if resource == "deployments.apps" {
        let rs = revision(name, generation);
        status["conditions"] = json!([
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
             "message": "Deployment has minimum availability.", "lastUpdateTime": ts, "lastTransitionTime": ts},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
             "message": format!("ReplicaSet \"{rs}\" has successfully progressed."),
             "lastUpdateTime": ts, "lastTransitionTime": ts},
        ]);
    } else {
        let rev = revision(name, generation);
        status["currentReplicas"] = json!(replicas);
        status["currentRevision"] = json!(rev);
        status["updateRevision"] = json!(rev);
        status["collisionCount"] = json!(0);
    }
    if replicas == 0 {
        let s = status.as_object_mut().expect("an object");
        s.remove("readyReplicas");
        s.remove("availableReplicas");
    }
    status
}

fn is_current(obj: &Value, generation: i64) -> bool {
    let replicas = obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
    let st = |k: &str| obj.pointer(&format!("/status/{k}")).and_then(Value::as_i64);
    st("observedGeneration") == Some(generation)
        && st("updatedReplicas").unwrap_or(0) == replicas
        && st("readyReplicas").unwrap_or(0) == replicas
}

impl State {
    /// One pass: write the ready status of workloads that have waited `delay`. Returns how
    /// long until the next one is due (None: nothing waits).
    pub(crate) fn simulate_readiness(&mut self, pending: &mut Pending, delay: Duration) -> Option<Duration> {
        let mut due = Vec::new();
        let mut waiting = HashMap::new();
        let now_i = Instant::now();
        let mut next: Option<Duration> = None;
        for resource in ["deployments.apps", "statefulsets.apps"] {
            let Some(rt) = self.registry.resolve(resource).cloned() else { continue };
            for obj in self.iter(&rt, None) {
                let generation = obj.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
                if obj.pointer("/metadata/deletionTimestamp").is_some() || is_current(obj, generation) {
                    continue;
                }
                let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default().to_string();
                let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
                let key = (resource.to_string(), ns.clone(), name.clone(), generation);
                let since = pending.seen.get(&key).copied().unwrap_or(now_i);
                waiting.insert(key, since);
                let elapsed = now_i.duration_since(since);
                if elapsed >= delay {
                    due.push((rt.clone(), ns, name, ready_status(resource, obj, generation)));
                } else {
                    let left = delay - elapsed;
                    next = Some(next.map_or(left, |n| n.min(left)));
                }
            }
        }
        pending.seen = waiting;
        for (rt, ns, name, status) in due {
            if let Err(e) = self.write_status_as(MANAGER, &rt, &ns, &name, status) {
                tracing::debug!("readiness simulation: {e}");
            }
        }
        next
    }
}
