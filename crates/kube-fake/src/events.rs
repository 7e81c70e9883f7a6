//! Core `v1` Events as the real server shows `events.k8s.io/v1` ones: it stores one kind and
//! converts, so `kubectl get events --field-selector involvedObject.kind=ServiceBus` lists
//! what kube's `Recorder` wrote through `events.k8s.io`. Here the two are stored apart and a
//! list of core events adds the converted `events.k8s.io` ones (see the crate docs).

use serde_json::{Value, json};

/// An `events.k8s.io/v1` Event as a core `v1` Event.
pub(crate) fn to_core(e: &Value) -> Value {
    let get = |k: &str| e.get(k).cloned().unwrap_or(Value::Null);
    let controller = e.get("reportingController").cloned().unwrap_or(Value::Null);
    let mut core = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": get("metadata"),
        "involvedObject": get("regarding"),
        "reason": get("reason"),
        "message": get("note"),
        "type": get("type"),
        "action": get("action"),
        "related": get("related"),
        "eventTime": get("eventTime"),
        "series": get("series"),
        "reportingComponent": controller.clone(),
        "reportingInstance": get("reportingInstance"),
        "source": e.get("deprecatedSource").cloned().unwrap_or_else(|| json!({"component": controller})),
        "firstTimestamp": get("deprecatedFirstTimestamp"),
        "lastTimestamp": get("deprecatedLastTimestamp"),
        "count": get("deprecatedCount"),
    });
    if let Some(m) = core.as_object_mut() {
        m.retain(|_, v| !v.is_null());
    }
    core
}

/// When a core event last happened, as `kubectl get events` sorts and shows it.
pub(crate) fn last_seen(e: &Value) -> Option<&str> {
    ["/series/lastObservedTime", "/lastTimestamp", "/eventTime", "/metadata/creationTimestamp"]
        .iter()
        .find_map(|p| e.pointer(p).and_then(Value::as_str))
}
