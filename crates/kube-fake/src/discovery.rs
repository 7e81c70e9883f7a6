//! Discovery: `/api`, `/apis`, `/apis/<group>`, `/api(s)/.../<version>`, in the legacy form and
//! as aggregated discovery v2 (`Accept: application/json;g=apidiscovery.k8s.io;v=v2;
//! as=APIGroupDiscoveryList`, which kubectl and helm ask for first). Resources carry their
//! short names and categories, so `kubectl get sbus` and `kubectl get all` resolve.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::registry::ResourceType;

/// The content type of an aggregated discovery answer.
pub(crate) fn aggregated_content_type(version: &str) -> String {
    format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList")
}

/// The aggregated discovery version the client asks for (`v2` or `v2beta1`), if any.
pub(crate) fn wants_aggregated(accept: &str) -> Option<&'static str> {
    for part in accept.split(',') {
        if part.contains("as=APIGroupDiscoveryList") && part.contains("g=apidiscovery.k8s.io") {
            if part.contains("v=v2beta1") {
                return Some("v2beta1");
            }
            if part.contains("v=v2") {
                return Some("v2");
            }
        }
    }
    None
}

fn group_versions(kinds: &[ResourceType], group: &str) -> Vec<String> {
    let mut vs: Vec<String> = Vec::new();
    for k in kinds.iter().filter(|k| k.group == group) {
        for v in &k.versions {
            if !vs.contains(v) {
                vs.push(v.clone());
            }
        }
    }
    vs
}

fn api_group(kinds: &[ResourceType], group: &str) -> Value {
    let versions: Vec<Value> = group_versions(kinds, group)
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": versions, "preferredVersion": versions.first().cloned().unwrap_or(json!({}))})
}

fn subresources(k: &ResourceType) -> Vec<(&'static str, Value, Vec<&'static str>)> {
    let mut subs = Vec::new();
    if k.status_subresource {
        subs.push(("status", json!({"group": k.group, "kind": k.kind}), vec!["get", "patch", "update"]));
    }
    if k.group.is_empty() && k.plural == "serviceaccounts" {
        subs.push((
            "token",
            json!({"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"}),
            vec!["create"],
        ));
    }
    subs
}

/// `/api/v1`, `/apis/<group>/<version>`: the legacy resource list.
fn resource_list(kinds: &[ResourceType], group: &str, version: &str) -> Result<Value, ApiError> {
    let mut resources = Vec::new();
    for k in kinds.iter().filter(|k| k.group == group && k.serves(version)) {
        let mut r = json!({
            "name": k.plural, "singularName": k.singular, "namespaced": k.namespaced, "kind": k.kind,
            "verbs": k.verbs(),
        });
        if !k.short_names.is_empty() {
            r["shortNames"] = json!(k.short_names);
        }
        if !k.categories.is_empty() {
            r["categories"] = json!(k.categories);
        }
        resources.push(r);
        for (sub, kind, verbs) in subresources(k) {
            let mut r = json!({"name": format!("{}/{sub}", k.plural), "singularName": "", "namespaced": k.namespaced,
                               "kind": kind["kind"], "verbs": verbs});
            if let Some(g) = kind.get("version") {
                r["group"] = kind["group"].clone();
                r["version"] = g.clone();
            }
            resources.push(r);
        }
    }
    if resources.is_empty() {
        return Err(ApiError::no_such_resource());
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Ok(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

/// One group's entry in an aggregated discovery list.
fn aggregated_group(kinds: &[ResourceType], group: &str) -> Value {
    let versions: Vec<Value> = group_versions(kinds, group)
        .iter()
        .map(|v| {
            let resources: Vec<Value> = kinds
                .iter()
                .filter(|k| k.group == group && k.serves(v))
                .map(|k| {
                    let mut r = json!({
                        "resource": k.plural,
                        "responseKind": {"group": k.group, "version": v, "kind": k.kind},
                        "scope": if k.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": k.singular,
                        "verbs": k.verbs(),
                    });
                    if !k.short_names.is_empty() {
                        r["shortNames"] = json!(k.short_names);
                    }
                    if !k.categories.is_empty() {
                        r["categories"] = json!(k.categories);
                    }
                    let subs: Vec<Value> = subresources(k)
                        .into_iter()
                        .map(|(sub, kind, verbs)| {
                            let kind = json!({
                                "group": kind["group"],
                                "version": kind.get("version").cloned().unwrap_or(json!(v)),
                                "kind": kind["kind"],
                            });
                            json!({"subresource": sub, "responseKind": kind, "verbs": verbs})
                        })
                        .collect();
                    if !subs.is_empty() {
                        r["subresources"] = json!(subs);
                    }
                    r
                })
                .collect();
            json!({"version": v, "resources": resources, "freshness": "Current"})
        })
        .collect();
    json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions})
}

/// `/api` or `/apis` as aggregated discovery.
pub(crate) fn aggregated(kinds: &[ResourceType], core: bool, version: &str) -> Value {
    let items: Vec<Value> = if core {
        vec![aggregated_group(kinds, "")]
    } else {
        let groups: BTreeMap<&str, ()> =
            kinds.iter().filter(|k| !k.group.is_empty()).map(|k| (k.group.as_str(), ())).collect();
        groups.keys().map(|g| aggregated_group(kinds, g)).collect()
    };
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{version}"), "metadata": {}, "items": items})
}

/// What a discovery path asks for.
pub(crate) enum Request {
    CoreVersions,
    Groups,
    Group(String),
    Resources(String, String),
}

pub(crate) fn answer(kinds: &[ResourceType], req: Request) -> Result<Value, ApiError> {
    match req {
        Request::CoreVersions => Ok(json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
        })),
        Request::Groups => {
            let mut groups: BTreeMap<String, Value> = BTreeMap::new();
            for k in kinds.iter().filter(|k| !k.group.is_empty()) {
                groups.entry(k.group.clone()).or_insert_with(|| api_group(kinds, &k.group));
            }
            Ok(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups.into_values().collect::<Vec<_>>()}))
        }
        Request::Group(g) => {
            if group_versions(kinds, &g).is_empty() {
                return Err(ApiError::no_such_resource());
            }
            let mut v = api_group(kinds, &g);
            v["kind"] = json!("APIGroup");
            v["apiVersion"] = json!("v1");
            Ok(v)
        }
        Request::Resources(g, v) => resource_list(kinds, &g, &v),
    }
}
