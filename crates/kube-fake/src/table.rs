//! Table output (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`), which `kubectl get`
//! asks for: custom resources get their CRD's `additionalPrinterColumns` (JSONPath, typed
//! cells, `date` columns as ages like `2m`), or Name and Age without any; builtin kinds get the
//! standard columns of the real server's printers for the kinds this project uses (Name and
//! Age for the others).
//!
//! Simplifications: builtin cells are computed from the stored object only (no pods exist, so
//! a Deployment's READY comes from its status, which the readiness simulation may write);
//! `includeObject=Object` is honoured, `None` is treated as `PartialObjectMetadata`.

use serde_json::{Value, json};

use crate::registry::ResourceType;

/// Whether the Accept header asks for a Table.
pub(crate) fn wants_table(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| first.contains("as=Table"))
}

/// Go's `duration.HumanDuration`, as in kubectl's AGE column.
pub(crate) fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 { format!("{minutes}m") } else { format!("{minutes}m{s}s") };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 { format!("{hours}h") } else { format!("{hours}h{m}m") };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 { format!("{}d", hours / 24) } else { format!("{}d{h}h", hours / 24) };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    let years = hours / 24 / 365;
    let days = (hours / 24) % 365;
    if hours < 24 * 365 * 8 && days != 0 { format!("{years}y{days}d") } else { format!("{years}y") }
}

fn age(ts: Option<&str>) -> Value {
    let Some(ts) = ts else { return json!("<unknown>") };
    match chrono::DateTime::parse_from_rfc3339(ts) {
        Ok(t) => json!(human_duration((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())),
        Err(_) => json!("<invalid>"),
    }
}

fn col(name: &str, ty: &str, format: &str, priority: i64, description: &str) -> Value {
    json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
}

fn name_col() -> Value {
    col(
        "Name",
        "string",
        "name",
        0,
        "Name must be unique within a namespace. Is required when creating resources, although some resources may \
         allow a client to request the generation of an appropriate name automatically.",
    )
}

fn age_col() -> Value {
    col(
        "Age",
        "string",
        "",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    )
}

/// Evaluate a CRD column's JSONPath (`.status.conditions[?(@.type=="Ready")].status`): the
/// first result, as the real server takes it.
fn jsonpath_first(obj: &Value, path: &str) -> Option<Value> {
    use jsonpath_rust::JsonPath;
    let query = format!("${}", path.trim());
    let found = obj.query(&query).ok()?;
    found.into_iter().next().cloned()
}

fn custom_cell(ty: &str, v: Option<Value>) -> Value {
    let Some(v) = v else { return Value::Null };
    match (ty, &v) {
        ("integer", Value::Number(n)) => {
            n.as_i64().map(Value::from).unwrap_or_else(|| json!(n.as_f64().unwrap_or_default() as i64))
        }
        ("number", Value::Number(_)) | ("boolean", Value::Bool(_)) => v,
        ("date", Value::String(s)) => age(Some(s)),
        ("string", Value::String(_)) => v,
        // A string column prints any value the way kubectl's JSONPath printer does.
        ("string", other) => json!(other.to_string()),
        _ => Value::Null,
    }
}

fn s<'a>(obj: &'a Value, path: &str) -> Option<&'a str> {
    obj.pointer(path).and_then(Value::as_str)
}

fn n(obj: &Value, path: &str) -> i64 {
    obj.pointer(path).and_then(Value::as_i64).unwrap_or(0)
}

fn containers(obj: &Value, template: &str) -> (String, String) {
    let cs = obj.pointer(&format!("{template}/spec/containers")).and_then(Value::as_array).cloned().unwrap_or_default();
    let names: Vec<&str> = cs.iter().filter_map(|c| c.get("name").and_then(Value::as_str)).collect();
    let images: Vec<&str> = cs.iter().filter_map(|c| c.get("image").and_then(Value::as_str)).collect();
    (names.join(","), images.join(","))
}

fn selector(obj: &Value, path: &str) -> String {
    let Some(m) = obj.pointer(path).and_then(Value::as_object) else { return "<none>".into() };
    let labels = m.get("matchLabels").and_then(Value::as_object).cloned().unwrap_or_else(|| m.clone());
    let parts: Vec<String> = labels.iter().filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}"))).collect();
    if parts.is_empty() { "<none>".into() } else { parts.join(",") }
}

/// Column definitions and the cells of one object.
fn builtin_columns(rt: &ResourceType) -> Vec<Value> {
    let c = |n: &str, p: i64| col(n, "string", "", p, "");
    let i = |n: &str| col(n, "integer", "", 0, "");
    let mut cols = vec![name_col()];
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("apps", "deployments") => cols.extend([
            c("Ready", 0),
            i("Up-to-date"),
            i("Available"),
            age_col(),
            c("Containers", 1),
            c("Images", 1),
            c("Selector", 1),
        ]),
        ("apps", "statefulsets") => cols.extend([c("Ready", 0), age_col(), c("Containers", 1), c("Images", 1)]),
        ("apps", "replicasets") => cols.extend([i("Desired"), i("Current"), i("Ready"), age_col()]),
        ("", "services") => cols.extend([
            c("Type", 0),
            c("Cluster-IP", 0),
            c("External-IP", 0),
            c("Port(s)", 0),
            age_col(),
            c("Selector", 1),
        ]),
        ("", "pods") => cols.extend([c("Ready", 0), c("Status", 0), i("Restarts"), age_col()]),
        ("", "configmaps") => cols.extend([i("Data"), age_col()]),
        ("", "secrets") => cols.extend([c("Type", 0), i("Data"), age_col()]),
        ("", "namespaces") => cols.extend([c("Status", 0), age_col()]),
        ("", "serviceaccounts") => cols.extend([i("Secrets"), age_col()]),
        ("", "persistentvolumeclaims") => cols.extend([c("Status", 0), c("Volume", 0), c("Capacity", 0), age_col()]),
        ("networking.k8s.io", "ingresses") => {
            cols.extend([c("Class", 0), c("Hosts", 0), c("Address", 0), c("Ports", 0), age_col()])
        }
        ("networking.k8s.io", "networkpolicies") => cols.extend([c("Pod-Selector", 0), age_col()]),
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => cols.extend([c("Role", 0), age_col()]),
        ("coordination.k8s.io", "leases") => cols.extend([c("Holder", 0), age_col()]),
        ("", "events") => {
            cols.extend([c("Last Seen", 0), c("Type", 0), c("Reason", 0), c("Object", 0), c("Message", 0)])
        }
        ("apiextensions.k8s.io", "customresourcedefinitions")
        | ("rbac.authorization.k8s.io", "roles" | "clusterroles") => cols.push(col(
            "Created At",
            "date",
            "",
            0,
            "CreationTimestamp is a timestamp representing the server time when this object was created.",
        )),
        ("policy", "poddisruptionbudgets") => {
            cols.extend([c("Min Available", 0), c("Max Unavailable", 0), i("Allowed Disruptions"), age_col()])
        }
        _ => cols.push(age_col()),
    }
    cols
}

fn builtin_cells(rt: &ResourceType, obj: &Value) -> Vec<Value> {
    let name = json!(s(obj, "/metadata/name").unwrap_or_default());
    let created = age(s(obj, "/metadata/creationTimestamp"));
    let count = |p: &str| obj.pointer(p).and_then(Value::as_object).map_or(0, |m| m.len()) as i64;
    let mut cells = vec![name];
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("apps", "deployments") => {
            let (cn, im) = containers(obj, "/spec/template");
            cells.extend([
                json!(format!(
                    "{}/{}",
                    n(obj, "/status/readyReplicas"),
                    obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)
                )),
                json!(n(obj, "/status/updatedReplicas")),
                json!(n(obj, "/status/availableReplicas")),
                created,
                json!(cn),
                json!(im),
                json!(selector(obj, "/spec/selector")),
            ])
        }
        ("apps", "statefulsets") => {
            let (cn, im) = containers(obj, "/spec/template");
            cells.extend([
                json!(format!(
                    "{}/{}",
                    n(obj, "/status/readyReplicas"),
                    obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)
                )),
                created,
                json!(cn),
                json!(im),
            ])
        }
        ("apps", "replicasets") => cells.extend([
            json!(obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)),
            json!(n(obj, "/status/replicas")),
            json!(n(obj, "/status/readyReplicas")),
            created,
        ]),
        ("", "services") => {
            let ports: Vec<String> = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| format!("{}/{}", p["port"], p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")))
                .collect();
            cells.extend([
                json!(s(obj, "/spec/type").unwrap_or("ClusterIP")),
                json!(s(obj, "/spec/clusterIP").unwrap_or("<none>")),
                json!("<none>"),
                json!(if ports.is_empty() { "<none>".to_string() } else { ports.join(",") }),
                created,
                json!(selector(obj, "/spec/selector")),
            ])
        }
        ("", "pods") => {
            let total = obj.pointer("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len);
            cells.extend([
                json!(format!("0/{total}")),
                json!(s(obj, "/status/phase").unwrap_or("Pending")),
                json!(0),
                created,
            ])
        }
        ("", "configmaps") => cells.extend([json!(count("/data") + count("/binaryData")), created]),
        ("", "secrets") => cells.extend([json!(s(obj, "/type").unwrap_or("Opaque")), json!(count("/data")), created]),
        ("", "namespaces") => cells.extend([json!(s(obj, "/status/phase").unwrap_or("Active")), created]),
        ("", "serviceaccounts") => {
            cells.extend([json!(obj.pointer("/secrets").and_then(Value::as_array).map_or(0, Vec::len)), created])
        }
        ("", "persistentvolumeclaims") => cells.extend([
            json!(s(obj, "/status/phase").unwrap_or("Pending")),
            json!(s(obj, "/spec/volumeName").unwrap_or("")),
            json!(s(obj, "/status/capacity/storage").unwrap_or("")),
            created,
        ]),
        ("networking.k8s.io", "ingresses") => {
            let hosts: Vec<&str> = obj
                .pointer("/spec/rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|r| r.get("host").and_then(Value::as_str))
                .collect();
            let tls = obj.pointer("/spec/tls").and_then(Value::as_array).is_some_and(|t| !t.is_empty());
            cells.extend([
                json!(s(obj, "/spec/ingressClassName").unwrap_or("<none>")),
                json!(if hosts.is_empty() { "*".to_string() } else { hosts.join(",") }),
                json!(""),
                json!(if tls { "80, 443" } else { "80" }),
                created,
            ])
        }
        ("networking.k8s.io", "networkpolicies") => {
            let sel = selector(obj, "/spec/podSelector");
            cells.extend([json!(if sel == "<none>" { "<none>".to_string() } else { sel }), created])
        }
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => cells.extend([
            json!(format!(
                "{}/{}",
                s(obj, "/roleRef/kind").unwrap_or_default(),
                s(obj, "/roleRef/name").unwrap_or_default()
            )),
            created,
        ]),
        ("coordination.k8s.io", "leases") => {
            cells.extend([json!(s(obj, "/spec/holderIdentity").unwrap_or("")), created])
        }
        ("", "events") => {
            let kind = s(obj, "/involvedObject/kind").unwrap_or_default().to_lowercase();
            cells.extend([
                age(crate::events::last_seen(obj)),
                json!(s(obj, "/type").unwrap_or_default()),
                json!(s(obj, "/reason").unwrap_or_default()),
                json!(format!("{kind}/{}", s(obj, "/involvedObject/name").unwrap_or_default())),
                json!(s(obj, "/message").unwrap_or_default()),
            ])
        }
        ("apiextensions.k8s.io", "customresourcedefinitions")
        | ("rbac.authorization.k8s.io", "roles" | "clusterroles") => {
            cells.push(json!(s(obj, "/metadata/creationTimestamp").unwrap_or_default()))
        }
        ("policy", "poddisruptionbudgets") => {
            let v = |p: &str| obj.pointer(p).map(|x| x.as_str().map(String::from).unwrap_or_else(|| x.to_string()));
            cells.extend([
                json!(v("/spec/minAvailable").unwrap_or_else(|| "N/A".into())),
                json!(v("/spec/maxUnavailable").unwrap_or_else(|| "N/A".into())),
                json!(n(obj, "/status/disruptionsAllowed")),
                created,
            ])
        }
        _ => cells.push(created),
    }
    cells
}

/// What each row carries besides its cells.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowObject {
    Metadata,
    Object,
}

pub(crate) fn row_object(include_object: Option<&str>) -> RowObject {
    if include_object == Some("Object") { RowObject::Object } else { RowObject::Metadata }
}

/// The column definitions of a kind in a version.
pub(crate) fn columns(rt: &ResourceType, version: &str) -> Vec<Value> {
    if !rt.custom {
        return builtin_columns(rt);
    }
    let custom = rt.columns(version);
    let mut cols = vec![name_col()];
    if custom.is_empty() {
        cols.push(age_col());
    }
    for c in custom {
        cols.push(json!({
            "name": c.get("name").cloned().unwrap_or(json!("")),
            "type": c.get("type").cloned().unwrap_or(json!("string")),
            "format": c.get("format").cloned().unwrap_or(json!("")),
            "description": c.get("description").cloned().unwrap_or(json!("")),
            "priority": c.get("priority").cloned().unwrap_or(json!(0)),
        }));
    }
    cols
}

/// One row (`obj` already presented in the requested version).
pub(crate) fn row(rt: &ResourceType, version: &str, obj: &Value, what: RowObject) -> Value {
    let cells = if rt.custom {
        let custom = rt.columns(version);
        let mut cells = vec![json!(s(obj, "/metadata/name").unwrap_or_default())];
        if custom.is_empty() {
            cells.push(age(s(obj, "/metadata/creationTimestamp")));
        }
        for c in custom {
            let ty = c.get("type").and_then(Value::as_str).unwrap_or("string");
            let path = c.get("jsonPath").and_then(Value::as_str).unwrap_or_default();
            cells.push(custom_cell(ty, jsonpath_first(obj, path)));
        }
        cells
    } else {
        builtin_cells(rt, obj)
    };
    let object = match what {
        RowObject::Object => obj.clone(),
        RowObject::Metadata => json!({
            "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
        }),
    };
    json!({"cells": cells, "object": object})
}

/// A Table of these objects.
pub(crate) fn table(rt: &ResourceType, version: &str, objs: &[Value], what: RowObject, metadata: Value) -> Value {
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata,
        "columnDefinitions": columns(rt, version),
        "rows": objs.iter().map(|o| row(rt, version, o, what)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(3600 * 3 + 60 * 5), "3h5m");
        assert_eq!(human_duration(3600 * 24 * 3), "3d");
    }

    #[test]
    fn printer_columns_follow_their_json_path() {
        let obj = json!({"status": {"transport": "builtin", "conditions": [
            {"type": "Wired", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(jsonpath_first(&obj, ".status.conditions[?(@.type==\"Ready\")].status"), Some(json!("True")));
        assert_eq!(jsonpath_first(&obj, ".status.transport"), Some(json!("builtin")));
        assert_eq!(jsonpath_first(&obj, ".status.missing"), None);
    }
}
