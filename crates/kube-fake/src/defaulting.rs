//! Defaulting of builtin kinds: the few defaults of the real server that clients read back.
//!
//! - Deployments, StatefulSets and ReplicaSets: `spec.replicas: 1` (what `kubectl rollout
//!   status` and `helm --wait` compare against), Deployments also their `strategy`,
//!   `revisionHistoryLimit` and `progressDeadlineSeconds`, StatefulSets their
//!   `podManagementPolicy`, `updateStrategy` and `revisionHistoryLimit`;
//! - Services: `type: ClusterIP`, a cluster IP from 10.96.0.0/16 (kept across updates), and
//!   per port `protocol: TCP` and `targetPort` = `port`; `sessionAffinity: None`;
//! - Namespaces: `status.phase: Active` and the `kubernetes` finalizer in `spec`;
//! - container ports: `protocol: TCP`.
//!
//! Simplification: the many other defaults (pod `restartPolicy`, `dnsPolicy`, container
//! `terminationMessagePath`, `imagePullPolicy`, ...) are not filled in.

use serde_json::{Value, json};

use crate::registry::ResourceType;

fn set_default(obj: &mut Value, path: &[&str], value: Value) {
    let mut cur = obj;
    for (i, key) in path.iter().enumerate() {
        let Some(m) = cur.as_object_mut() else { return };
        if i + 1 == path.len() {
            if m.get(*key).is_none_or(Value::is_null) {
                m.insert(key.to_string(), value);
            }
            return;
        }
        cur = m.entry(key.to_string()).or_insert_with(|| json!({}));
    }
}

fn container_ports(obj: &mut Value) {
    let Some(pod) = obj.pointer_mut("/spec/template/spec") else { return };
    for list in ["containers", "initContainers"] {
        for c in pod.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            for p in c.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
                set_default(p, &["protocol"], json!("TCP"));
            }
        }
    }
}

/// Fill in the defaults of `rt` into `obj`. `old` is the stored object on an update;
/// `next_ip` allocates a cluster IP for a new Service.
pub(crate) fn apply(rt: &ResourceType, obj: &mut Value, old: Option<&Value>, next_ip: &mut dyn FnMut() -> String) {
    if !obj.is_object() {
        return;
    }
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("apps", "deployments") => {
            set_default(obj, &["spec", "replicas"], json!(1));
            set_default(obj, &["spec", "revisionHistoryLimit"], json!(10));
            set_default(obj, &["spec", "progressDeadlineSeconds"], json!(600));
            set_default(
                obj,
                &["spec", "strategy"],
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
            );
            container_ports(obj);
        }
        ("apps", "statefulsets") => {
            set_default(obj, &["spec", "replicas"], json!(1));
            set_default(obj, &["spec", "revisionHistoryLimit"], json!(10));
            set_default(obj, &["spec", "podManagementPolicy"], json!("OrderedReady"));
            set_default(
                obj,
                &["spec", "updateStrategy"],
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
            );
            container_ports(obj);
        }
        ("apps", "replicasets") => set_default(obj, &["spec", "replicas"], json!(1)),
        ("", "services") => {
            set_default(obj, &["spec", "type"], json!("ClusterIP"));
            set_default(obj, &["spec", "sessionAffinity"], json!("None"));
            let headless = obj.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
            if !headless && obj.pointer("/spec/type").and_then(Value::as_str) != Some("ExternalName") {
                let kept = old.and_then(|o| o.pointer("/spec/clusterIP")).cloned();
                if obj.pointer("/spec/clusterIP").is_none_or(|v| v.as_str().is_none_or(str::is_empty)) {
                    let ip = kept.unwrap_or_else(|| json!(next_ip()));
                    obj["spec"]["clusterIP"] = ip.clone();
                    obj["spec"]["clusterIPs"] = json!([ip]);
                }
            }
            for p in obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut).into_iter().flatten() {
                set_default(p, &["protocol"], json!("TCP"));
                if p.get("targetPort").is_none()
                    && let Some(port) = p.get("port").cloned()
                {
                    p["targetPort"] = port;
                }
            }
        }
        ("", "namespaces") => {
            set_default(obj, &["spec", "finalizers"], json!(["kubernetes"]));
            set_default(obj, &["status", "phase"], json!("Active"));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_get_an_ip_that_updates_keep() {
        let rt = ResourceType::builtin("", "v1", "services", "Service", true, true);
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("10.96.0.{n}")
        };
        let mut svc = json!({"spec": {"ports": [{"port": 4000}]}});
        apply(&rt, &mut svc, None, &mut next);
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.1");
        assert_eq!(svc["spec"]["ports"][0], json!({"port": 4000, "protocol": "TCP", "targetPort": 4000}));
        let mut updated = json!({"spec": {"ports": [{"port": 4001}]}});
        apply(&rt, &mut updated, Some(&svc), &mut next);
        assert_eq!(updated["spec"]["clusterIP"], "10.96.0.1");
    }
}
