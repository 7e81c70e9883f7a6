//! Field paths, list merge rules, field ownership (managedFields) and server-side apply.
//!
//! A manager owns a set of *field paths*. A path ends at a leaf: a scalar, an atomic list,
//! an empty map or list, a member of a set list (`finalizers`), or the *item node* of an
//! associative list (a list merged per item by key, e.g. `containers` by `name`); the
//! fields inside such an item have their own paths below the item node. This mirrors
//! structured-merge-diff's `FieldsV1`, which is also how the sets are rendered in
//! `metadata.managedFields`.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Seg {
    /// A map key.
    Field(String),
    /// An item of an associative list, by its key fields (canonical JSON object).
    Key(String),
    /// A member of a set list (canonical JSON value).
    Value(String),
}

pub(crate) type Path = Vec<Seg>;
pub(crate) type FieldSet = BTreeSet<Path>;

/// How a list merges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListKind {
    /// Replaced whole; owned as one leaf.
    Atomic,
    /// Scalars merged by value.
    Set,
    /// Objects merged per item by these key fields.
    Map(Vec<String>),
}

/// Which part of an object a write may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The main endpoint of a kind without status subresource: everything.
    All,
    /// The main endpoint of a kind with status subresource: everything but `.status`.
    NoStatus,
    /// The `/status` subresource: only `.status`.
    StatusOnly,
}

/// Metadata fields that no manager owns (they are the server's, or identify the object).
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

fn child_schema<'a>(schema: Option<&'a Value>, field: &str) -> Option<&'a Value> {
    let s = schema?;
    s.get("properties").and_then(|p| p.get(field)).or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
}

fn items_schema(schema: Option<&Value>) -> Option<&Value> {
    schema?.get("items")
}

/// The merge rule of the list at `field` with these items (both sides of a merge).
///
/// A CRD schema's `x-kubernetes-list-type` / `x-kubernetes-list-map-keys` wins; otherwise the
/// Kubernetes builtin rules by field name apply (to custom resources as well).
pub(crate) fn list_kind<'a>(
    schema: Option<&Value>,
    field: Option<&str>,
    items: impl Iterator<Item = &'a Value> + Clone,
) -> ListKind {
    let all_objects_with = |keys: &[String]| {
        items.clone().all(|it| it.as_object().is_some_and(|o| keys.iter().all(|k| o.get(k).is_some_and(is_scalar))))
    };
    let all_scalars = || items.clone().all(is_scalar);
    if let Some(t) = schema.and_then(|s| s.get("x-kubernetes-list-type")).and_then(Value::as_str) {
        return match t {
            "set" if all_scalars() => ListKind::Set,
            "map" => {
                let keys: Vec<String> = schema
                    .and_then(|s| s.get("x-kubernetes-list-map-keys"))
                    .and_then(Value::as_array)
                    .map(|ks| ks.iter().filter_map(Value::as_str).map(String::from).collect())
                    .unwrap_or_default();
                if !keys.is_empty() && all_objects_with(&keys) { ListKind::Map(keys) } else { ListKind::Atomic }
            }
            _ => ListKind::Atomic,
        };
    }
    let key = match field {
        Some("containers" | "initContainers" | "ephemeralContainers" | "env" | "volumes" | "imagePullSecrets") => {
            "name"
        }
        Some("ports") => {
            if items.clone().any(|it| it.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        Some("volumeMounts") => "mountPath",
        Some("volumeDevices") => "devicePath",
        Some("hostAliases") => "ip",
        Some("ownerReferences") => "uid",
        Some("conditions") => "type",
        Some("finalizers") => {
            return if all_scalars() { ListKind::Set } else { ListKind::Atomic };
        }
        _ => return ListKind::Atomic,
    };
    let keys = vec![key.to_string()];
    if all_objects_with(&keys) { ListKind::Map(keys) } else { ListKind::Atomic }
}

fn is_scalar(v: &Value) -> bool {
    !(v.is_object() || v.is_array())
}

/// Canonical key of an associative-list item.
pub(crate) fn item_key(item: &Value, keys: &[String]) -> String {
    let mut m = Map::new();
    for k in keys {
        m.insert(k.clone(), item.get(k).cloned().unwrap_or(Value::Null));
    }
    Value::Object(m).to_string()
}

fn matches_key(item: &Value, key: &Map<String, Value>) -> bool {
    key.iter().all(|(k, v)| item.get(k) == Some(v))
}

fn parse_key(key: &str) -> Map<String, Value> {
    serde_json::from_str(key).unwrap_or_default()
}

/// All field paths of `obj` within `scope`.
pub(crate) fn leaves(obj: &Value, scope: Scope, schema: Option<&Value>) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(top) = obj.as_object() else { return out };
    let mut path = Path::new();
    for (k, v) in top {
        let keep = match k.as_str() {
            "apiVersion" | "kind" => false,
            "status" => scope != Scope::NoStatus,
            _ => scope != Scope::StatusOnly,
        };
        if !keep {
            continue;
        }
        path.push(Seg::Field(k.clone()));
        if k == "metadata" {
            if let Some(meta) = v.as_object() {
                let meta_schema = child_schema(schema, "metadata");
                for (mk, mv) in meta {
                    if SERVER_METADATA.contains(&mk.as_str()) {
                        continue;
                    }
                    path.push(Seg::Field(mk.clone()));
                    collect(mv, &mut path, child_schema(meta_schema, mk), Some(mk), &mut out);
                    path.pop();
                }
            }
        } else {
            collect(v, &mut path, child_schema(schema, k), Some(k), &mut out);
        }
        path.pop();
    }
    out
}

fn collect(v: &Value, path: &mut Path, schema: Option<&Value>, field: Option<&str>, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                path.push(Seg::Field(k.clone()));
                collect(c, path, child_schema(schema, k), Some(k), out);
                path.pop();
            }
        }
        Value::Array(items) if !items.is_empty() => match list_kind(schema, field, items.iter()) {
            ListKind::Atomic => {
                out.insert(path.clone());
            }
            ListKind::Set => {
                for it in items {
                    path.push(Seg::Value(it.to_string()));
                    out.insert(path.clone());
                    path.pop();
                }
            }
            ListKind::Map(keys) => {
                let item_schema = items_schema(schema);
                for it in items {
                    path.push(Seg::Key(item_key(it, &keys)));
                    out.insert(path.clone());
                    collect(it, path, item_schema, None, out);
                    path.pop();
                }
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The value at `path`, if present.
pub(crate) fn get_at<'a>(v: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    let mut cur = v;
    for seg in path {
        cur = match seg {
            Seg::Field(k) => cur.as_object()?.get(k)?,
            Seg::Key(k) => {
                let key = parse_key(k);
                cur.as_array()?.iter().find(|it| matches_key(it, &key))?
            }
            Seg::Value(j) => {
                let val: Value = serde_json::from_str(j).ok()?;
                cur.as_array()?.iter().find(|it| **it == val)?
            }
        };
    }
    Some(cur)
}

fn get_at_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut cur = v;
    for seg in path {
        cur = match seg {
            Seg::Field(k) => cur.as_object_mut()?.get_mut(k)?,
            Seg::Key(k) => {
                let key = parse_key(k);
                cur.as_array_mut()?.iter_mut().find(|it| matches_key(it, &key))?
            }
            Seg::Value(j) => {
                let val: Value = serde_json::from_str(j).ok()?;
                cur.as_array_mut()?.iter_mut().find(|it| **it == val)?
            }
        };
    }
    Some(cur)
}

/// Remove the value at `path`. Returns whether something was removed.
pub(crate) fn remove_at(v: &mut Value, path: &[Seg]) -> bool {
    let Some((last, parent)) = path.split_last() else { return false };
    let Some(parent) = get_at_mut(v, parent) else { return false };
    match last {
        Seg::Field(k) => parent.as_object_mut().and_then(|m| m.remove(k)).is_some(),
        Seg::Key(k) => {
            let key = parse_key(k);
            let Some(items) = parent.as_array_mut() else { return false };
            let before = items.len();
            items.retain(|it| !matches_key(it, &key));
            items.len() != before
        }
        Seg::Value(j) => {
            let Ok(val) = serde_json::from_str::<Value>(j) else { return false };
            let Some(items) = parent.as_array_mut() else { return false };
            let before = items.len();
            items.retain(|it| *it != val);
            items.len() != before
        }
    }
}

/// A path for messages: `.spec.template.spec.containers[name="app"].env[name="X"].value`.
pub(crate) fn display(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Field(k) => {
                s.push('.');
                s.push_str(k);
            }
            Seg::Key(k) => {
                let parts: Vec<String> = parse_key(k).iter().map(|(k, v)| format!("{k}={v}")).collect();
                s.push('[');
                s.push_str(&parts.join(","));
                s.push(']');
            }
            Seg::Value(j) => {
                s.push_str("[=");
                s.push_str(j);
                s.push(']');
            }
        }
    }
    s
}

/// A key field of an associative-list item (it goes only with its item).
fn is_key_field(path: &[Seg]) -> bool {
    match path {
        [.., Seg::Key(k), Seg::Field(f)] => parse_key(k).contains_key(f),
        _ => false,
    }
}

fn is_node(path: &[Seg]) -> bool {
    matches!(path.last(), Some(Seg::Key(_) | Seg::Value(_)))
}

/// What a write changed: paths added or given a new value, and paths that disappeared.
pub(crate) fn diff(old: Option<&Value>, new: &Value, scope: Scope, schema: Option<&Value>) -> (FieldSet, FieldSet) {
    let new_leaves = leaves(new, scope, schema);
    let Some(old) = old else { return (new_leaves, FieldSet::new()) };
    let old_leaves = leaves(old, scope, schema);
    let changed = new_leaves
        .iter()
        .filter(|p| !old_leaves.contains(*p) || (!is_node(p) && get_at(old, p) != get_at(new, p)))
        .cloned()
        .collect();
    let removed = old_leaves.difference(&new_leaves).cloned().collect();
    (changed, removed)
}

/// `Apply` or `Update`, as in `metadata.managedFields[].operation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// One `managedFields` entry: a manager, how it wrote, through which subresource, and what it owns.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub manager: String,
    pub operation: Operation,
    pub status: bool,
    pub api_version: String,
    pub time: String,
    pub fields: FieldSet,
}

impl Entry {
    fn same_key(&self, manager: &str, operation: Operation, status: bool) -> bool {
        self.manager == manager && self.operation == operation && self.status == status
    }
}

/// Ownership after a non-apply write (create, PUT, merge/JSON/strategic patch) by `manager`:
/// the writer takes the fields it changed; nobody keeps fields that disappeared.
pub(crate) fn record_update(
    entries: &mut Vec<Entry>,
    manager: &str,
    status: bool,
    api_version: &str,
    changed: &FieldSet,
    removed: &FieldSet,
    now: &str,
) {
    for e in entries.iter_mut() {
        if !e.same_key(manager, Operation::Update, status) {
            e.fields.retain(|p| !changed.contains(p) && !removed.contains(p));
        }
    }
    match entries.iter_mut().find(|e| e.same_key(manager, Operation::Update, status)) {
        Some(e) => {
            e.fields.retain(|p| !removed.contains(p));
            if !changed.is_empty() {
                e.fields.extend(changed.iter().cloned());
                e.time = now.to_string();
                e.api_version = api_version.to_string();
            }
        }
        None if !changed.is_empty() => entries.push(Entry {
            manager: manager.to_string(),
            operation: Operation::Update,
            status,
            api_version: api_version.to_string(),
            time: now.to_string(),
            fields: changed.clone(),
        }),
        None => {}
    }
}

/// Drop owned paths that no longer exist in `obj`, and entries that own nothing.
pub(crate) fn prune(entries: &mut Vec<Entry>, obj: &Value) {
    for e in entries.iter_mut() {
        e.fields.retain(|p| get_at(obj, p).is_some());
    }
    entries.retain(|e| !e.fields.is_empty());
}

/// Whether two entry lists give the same managers the same fields (times aside).
pub(crate) fn same_ownership(a: &[Entry], b: &[Entry]) -> bool {
    a.len() == b.len()
        && a.iter().all(|x| b.iter().any(|y| y.same_key(&x.manager, x.operation, x.status) && y.fields == x.fields))
}

/// A field another manager owns with a different value.
#[derive(Debug, Clone)]
pub(crate) struct Conflict {
    /// The manager as the real server prints it: `"name"` for an Apply manager,
    /// `"name" using <apiVersion> at <time>` for an Update manager.
    pub manager: String,
    pub path: Path,
}

fn print_manager(e: &Entry) -> String {
    match e.operation {
        Operation::Apply => format!("{:?}", e.manager),
        Operation::Update => format!("{:?} using {} at {}", e.manager, e.api_version, e.time),
    }
}

/// The message of a 409 for failed applies, worded like the real server's.
pub(crate) fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [c] = conflicts {
        return format!("Apply failed with 1 conflict: conflict with {}: {}", c.manager, display(&c.path));
    }
    let mut managers: Vec<&str> = conflicts.iter().map(|c| c.manager.as_str()).collect();
    managers.sort();
    managers.dedup();
    let mut lines = Vec::new();
    for m in managers {
        lines.push(format!("conflicts with {m}:"));
        lines.extend(conflicts.iter().filter(|c| c.manager == m).map(|c| format!("- {}", display(&c.path))));
    }
    format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
}

/// Remove `null`s (apply treats them as "not set") and the fields no manager may own.
pub(crate) fn scoped_config(config: &Value, scope: Scope) -> Value {
    let mut c = strip_nulls(config);
    if let Some(top) = c.as_object_mut() {
        match scope {
            Scope::All => {}
            Scope::NoStatus => {
                top.remove("status");
            }
            Scope::StatusOnly => top.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status")),
        }
        if let Some(meta) = top.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.retain(|k, _| !SERVER_METADATA.contains(&k.as_str()));
            if scope == Scope::StatusOnly {
                meta.clear();
            }
        }
    }
    c
}

fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            Value::Object(m.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), strip_nulls(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

/// Server-side apply of `config` (already scoped with [`scoped_config`]) by `manager` onto
/// `live` (the current object, or a skeleton when creating).
///
/// Returns the merged object and the new ownership, or the conflicts (when `force` is false).
pub(crate) struct ApplyInput<'a> {
    pub live: &'a Value,
    pub entries: &'a [Entry],
    pub config: &'a Value,
    pub manager: &'a str,
    pub status: bool,
    pub force: bool,
    pub scope: Scope,
    pub schema: Option<&'a Value>,
    pub api_version: &'a str,
    pub now: &'a str,
}

pub(crate) fn apply(input: ApplyInput<'_>) -> Result<(Value, Vec<Entry>), Vec<Conflict>> {
    let ApplyInput { live, entries, config, manager, status, force, scope, schema, api_version, now } = input;
    let applied = leaves(config, scope, schema);
    let mut entries: Vec<Entry> = entries.to_vec();
    let is_mine = |e: &Entry| e.same_key(manager, Operation::Apply, status);

    // Conflicts: a field another manager owns, to which this apply gives a different value.
    let mut conflicts = Vec::new();
    for e in entries.iter().filter(|e| !is_mine(e)) {
        for p in applied.intersection(&e.fields) {
            if !is_node(p) && get_at(live, p) != get_at(config, p) {
                conflicts.push(Conflict { manager: print_manager(e), path: p.clone() });
            }
        }
    }
    if !conflicts.is_empty() {
        if !force {
            return Err(conflicts);
        }
        // Force: the applier takes the fields over.
        for e in entries.iter_mut().filter(|e| !e.same_key(manager, Operation::Apply, status)) {
            e.fields.retain(|p| !conflicts.iter().any(|c| &c.path == p));
        }
    }

    let mut merged = live.clone();
    // Fields this manager applied before and omits now go, unless someone else owns them
    // (or something below them).
    let previous = entries.iter().find(|e| is_mine(e)).map(|e| e.fields.clone()).unwrap_or_default();
    // Shallow paths first: an item node goes with its fields (removing a key field first would
    // leave an item that no longer matches its key).
    let mut dropped: Vec<&Path> = previous.difference(&applied).collect();
    dropped.sort_by_key(|p| p.len());
    for p in dropped {
        let owned_elsewhere = entries.iter().filter(|e| !is_mine(e)).any(|e| e.fields.iter().any(|q| q.starts_with(p)));
        if owned_elsewhere || is_key_field(p) {
            continue;
        }
        if remove_at(&mut merged, p) {
            prune_empty_parents(&mut merged, p, &entries);
        }
    }

    merge_apply(&mut merged, config, schema, None);

    match entries.iter_mut().find(|e| is_mine(e)) {
        Some(e) => {
            if e.fields != applied {
                e.time = now.to_string();
            }
            e.fields = applied;
            e.api_version = api_version.to_string();
        }
        None => entries.push(Entry {
            manager: manager.to_string(),
            operation: Operation::Apply,
            status,
            api_version: api_version.to_string(),
            time: now.to_string(),
            fields: applied,
        }),
    }
    prune(&mut entries, &merged);
    Ok((merged, entries))
}

/// After removing `path`, remove parents left empty (below the top-level fields), unless a
/// manager owns that parent itself.
fn prune_empty_parents(obj: &mut Value, path: &[Seg], entries: &[Entry]) {
    let mut parent = &path[..path.len() - 1];
    while parent.len() >= 2 {
        let empty = match get_at(obj, parent) {
            Some(Value::Object(m)) => m.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            _ => false,
        };
        if !empty || entries.iter().any(|e| e.fields.contains(parent)) {
            return;
        }
        remove_at(obj, parent);
        parent = &parent[..parent.len() - 1];
    }
}

/// Merge an applied configuration into an object: maps per key, associative lists per item,
/// set lists by value, everything else replaced.
fn merge_apply(base: &mut Value, config: &Value, schema: Option<&Value>, field: Option<&str>) {
    match (base, config) {
        (Value::Object(b), Value::Object(c)) => {
            for (k, cv) in c {
                match b.get_mut(k) {
                    Some(bv) => merge_apply(bv, cv, child_schema(schema, k), Some(k)),
                    None => {
                        b.insert(k.clone(), cv.clone());
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(c)) => match list_kind(schema, field, b.iter().chain(c.iter())) {
            ListKind::Map(keys) => {
                let item_schema = items_schema(schema);
                for ci in c {
                    let key = item_key(ci, &keys);
                    match b.iter_mut().find(|bi| item_key(bi, &keys) == key) {
                        Some(bi) => merge_apply(bi, ci, item_schema, None),
                        None => b.push(ci.clone()),
                    }
                }
            }
            ListKind::Set => {
                for ci in c {
                    if !b.contains(ci) {
                        b.push(ci.clone());
                    }
                }
            }
            ListKind::Atomic => *b = c.clone(),
        },
        (b, c) => *b = c.clone(),
    }
}

/// Render entries as `metadata.managedFields`.
pub(crate) fn render(entries: &[Entry]) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|e| {
                let mut tree = Map::new();
                for p in &e.fields {
                    let mut node = &mut tree;
                    for seg in p {
                        let k = match seg {
                            Seg::Field(f) => format!("f:{f}"),
                            Seg::Key(k) => format!("k:{k}"),
                            Seg::Value(v) => format!("v:{v}"),
                        };
                        node = node.entry(k).or_insert_with(|| json!({})).as_object_mut().expect("tree nodes are maps");
                    }
                    if is_node(p) {
                        node.insert(".".into(), json!({}));
                    }
                }
                let mut entry = json!({
                    "manager": e.manager,
                    "operation": e.operation.as_str(),
                    "apiVersion": e.api_version,
                    "time": e.time,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": Value::Object(tree),
                });
                if e.status {
                    entry["subresource"] = json!("status");
                }
                entry
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(env: Value) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "namespace": "ns", "labels": {"app": "x"}},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "app", "image": "i", "env": env}]}}}
        })
    }

    #[test]
    fn leaves_use_merge_keys() {
        let l = leaves(&deployment(json!([{"name": "A", "value": "1"}])), Scope::NoStatus, None);
        let shown: Vec<String> = l.iter().map(|p| display(p)).collect();
        assert!(shown.contains(&".spec.template.spec.containers[name=\"app\"].env[name=\"A\"].value".to_string()));
        assert!(shown.contains(&".spec.template.spec.containers[name=\"app\"]".to_string()));
        assert!(shown.contains(&".metadata.labels.app".to_string()));
        assert!(!shown.iter().any(|s| s.contains("metadata.name") || s.starts_with(".kind")));
    }

    #[test]
    fn get_and_remove_by_key() {
        let mut d = deployment(json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]));
        let p = vec![
            Seg::Field("spec".into()),
            Seg::Field("template".into()),
            Seg::Field("spec".into()),
            Seg::Field("containers".into()),
            Seg::Key(r#"{"name":"app"}"#.into()),
            Seg::Field("env".into()),
            Seg::Key(r#"{"name":"A"}"#.into()),
        ];
        assert_eq!(get_at(&d, &p).unwrap()["value"], "1");
        assert!(remove_at(&mut d, &p));
        assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["env"], json!([{"name": "B", "value": "2"}]));
    }
}
