//! The object store and the write semantics: resourceVersion, generation, status
//! subresource, field ownership, finalizers, deletion and garbage collection, watch history.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::admission::{self, FieldValidation};
use crate::auth::{Tokens, User};
use crate::error::ApiError;
use crate::fields::{self, Entry, Scope};
use crate::patch::{self, JsonPatchError, PatchType};
use crate::registry::{self, Registry, ResourceType};
use crate::requests::RequestRecord;
use crate::selector::{FieldSelector, LabelSelector};

/// The field manager the fake's own controllers (garbage collector, CRD establishment) write as.
pub(crate) const GC_MANAGER: &str = "generic-garbage-collector";
const CRD_MANAGER: &str = "kube-apiserver";

/// A stored object and its field ownership.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub obj: Value,
    pub entries: Vec<Entry>,
}

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    /// `ADDED`
    Added,
    /// `MODIFIED`
    Modified,
    /// `DELETED`
    Deleted,
}

impl ChangeType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ChangeType::Added => "ADDED",
            ChangeType::Modified => "MODIFIED",
            ChangeType::Deleted => "DELETED",
        }
    }
}

/// One entry of the change history that watches replay.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub rv: u64,
    pub resource: String,
    pub ns: String,
    pub kind: ChangeType,
    pub object: Arc<Value>,
    /// Labels before the change (for label-selected watches: an object that stops matching
    /// is reported as DELETED, one that starts matching as ADDED).
    pub prev_labels: Option<Value>,
}

/// Who writes, where, and whether for real.
#[derive(Debug, Clone)]
pub(crate) struct WriteCtx {
    pub manager: String,
    /// Through the `/status` subresource.
    pub status: bool,
    pub dry_run: bool,
    /// The API version of the request (`v1alpha1`).
    pub version: String,
    /// The user RBAC restricts; `None` for the server's own writes and for superusers.
    pub user: Option<User>,
    /// What to do with unknown fields.
    pub field_validation: FieldValidation,
    /// The request was authorized as `create` (a POST); otherwise a write that creates (apply,
    /// PUT) still needs `create`.
    pub create_authorized: bool,
    /// Store the object without schema and CEL validation (a test helper's seeding).
    pub skip_validation: bool,
}

impl WriteCtx {
    pub(crate) fn internal(manager: &str, rt: &ResourceType) -> Self {
        WriteCtx {
            manager: manager.to_string(),
            status: false,
            dry_run: false,
            version: rt.versions[0].clone(),
            user: None,
            field_validation: FieldValidation::Ignore,
            create_authorized: true,
            skip_validation: false,
        }
    }
}

/// `propagationPolicy` of a DELETE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Propagation {
    Background,
    Foreground,
    Orphan,
}

#[derive(Debug, Clone)]
pub(crate) struct DeleteOpts {
    pub propagation: Propagation,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub dry_run: bool,
}

impl Default for DeleteOpts {
    fn default() -> Self {
        DeleteOpts { propagation: Propagation::Background, uid: None, resource_version: None, dry_run: false }
    }
}

/// What the garbage collector does with the dependents of an owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GcMode {
    /// The owner is gone: delete dependents that have no other living owner.
    Removed,
    /// The owner was deleted with `Orphan`: dependents lose the reference (then the owner's
    /// `orphan` finalizer goes, if it has one).
    Orphan,
    /// The owner is being deleted with `Foreground`: delete its dependents; the owner's
    /// `foregroundDeletion` finalizer goes once none is left.
    Foreground,
}

const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
const ORPHAN_FINALIZER: &str = "orphan";

/// How ownership of a write is decided.
enum Ownership {
    /// A non-apply write: the writer takes the fields it changed.
    Update,
    /// Server-side apply computed it.
    Computed(Vec<Entry>),
}

/// The result of a write.
#[derive(Debug, Clone)]
pub(crate) struct Written {
    pub obj: Value,
    pub created: bool,
}

/// A page of a list.
pub(crate) struct Page {
    pub items: Vec<Value>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<u64>,
}

type Key = (String, String);

pub(crate) struct State {
    pub registry: Registry,
    objects: HashMap<String, BTreeMap<Key, Stored>>,
    /// The global resourceVersion counter: the version of the last write.
    pub rv: u64,
    pub history: VecDeque<Change>,
    history_limit: usize,
    /// Watches and continue tokens from before this version are gone (410).
    pub compacted: u64,
    /// Bumped by `expire_history`: open watches end with a 410 ERROR event.
    expire_epoch: u64,
    /// Per resource (`expire_history_of`): the oldest version one may still watch from, and
    /// an epoch that ends open watches of that resource.
    expired: HashMap<String, (u64, u64)>,
    pub requests: Vec<RequestRecord>,
    /// Work for the garbage collector: owners whose dependents need attention.
    gc_queue: Vec<(String, GcMode)>,
    /// Namespaces removed since the last garbage collection.
    ns_queue: Vec<String>,
    /// The admin token and the tokens issued for ServiceAccounts.
    pub tokens: Tokens,
    /// `Warning` headers for the current request (unknown fields with `fieldValidation=Warn`).
    pub warnings: Vec<String>,
    /// Objects can be created only in namespaces that exist (as on a real server).
    pub require_namespaces: bool,
    /// The last cluster IP handed to a Service (10.96.0.0/16).
    last_ip: u32,
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj).and_then(|m| m.get(field)).and_then(Value::as_str)
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let top = obj.as_object_mut().expect("made an object above");
    let m = top.entry("metadata").or_insert_with(|| json!({}));
    if !m.is_object() {
        *m = json!({});
    }
    m.as_object_mut().expect("made an object above")
}

fn finalizers(obj: &Value) -> Vec<String> {
    meta(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|f| f.iter().filter_map(Value::as_str).map(String::from).collect())
        .unwrap_or_default()
}

fn owner_uids(obj: &Value) -> Vec<String> {
    meta(obj)
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array)
        .map(|refs| refs.iter().filter_map(|r| r.get("uid").and_then(Value::as_str)).map(String::from).collect())
        .unwrap_or_default()
}

/// Drop what the real server drops when it decodes into ObjectMeta: empty lists and maps.
fn normalize_metadata(obj: &mut Value) {
    let m = meta_mut(obj);
    for f in ["finalizers", "labels", "annotations", "ownerReferences"] {
        let empty = match m.get(f) {
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Object(o)) => o.is_empty(),
            Some(Value::Null) => true,
            _ => false,
        };
        if empty {
            m.remove(f);
        }
    }
}

/// The object without what every write sets anew (for no-op detection).
fn comparable(obj: &Value) -> Value {
    let mut o = obj.clone();
    let m = meta_mut(&mut o);
    m.remove("resourceVersion");
    m.remove("managedFields");
    o
}

/// The object without metadata (and without status, for kinds with a status subresource):
/// a difference here bumps `generation`.
fn spec_part(obj: &Value, status_subresource: bool) -> Value {
    let mut o = obj.clone();
    if let Some(top) = o.as_object_mut() {
        top.remove("metadata");
        if status_subresource {
            top.remove("status");
        }
    }
    o
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::now_v7();
    bytes.as_bytes()[11..16].iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

impl State {
    pub(crate) fn new(kinds: Vec<ResourceType>, history_limit: usize) -> Self {
        State {
            registry: Registry::new(kinds),
            objects: HashMap::new(),
            // Like etcd, versions start above 0: "0" means "any version" to list and watch.
            rv: 1,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted: 0,
            expire_epoch: 0,
            expired: HashMap::new(),
            requests: Vec::new(),
            gc_queue: Vec::new(),
            ns_queue: Vec::new(),
            tokens: Tokens::new(),
            warnings: Vec::new(),
            require_namespaces: false,
            last_ip: 0,
        }
    }

    /// The next free cluster IP (10.96.0.1 is the `kubernetes` Service's on a real cluster).
    fn next_cluster_ip(&mut self) -> String {
        self.last_ip += 1;
        let n = self.last_ip + 1;
        format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff)
    }

    /// Write a workload's status as one of the server's own controllers (status subresource).
    pub(crate) fn write_status_as(
        &mut self,
        manager: &str,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        status: Value,
    ) -> Result<Written, ApiError> {
        let mut ctx = WriteCtx::internal(manager, rt);
        ctx.status = rt.status_subresource;
        self.patch(rt, ns, name, PatchType::Merge, &json!({ "status": status }), false, &ctx)
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        self.registry.resolve("namespaces").is_some_and(|rt| self.get(&rt.clone(), "", ns).is_some())
    }

    fn ns_key(rt: &ResourceType, ns: &str) -> String {
        if rt.namespaced { ns.to_string() } else { String::new() }
    }

    pub(crate) fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Option<&Stored> {
        self.objects.get(&rt.qualified())?.get(&(Self::ns_key(rt, ns), name.to_string()))
    }

    /// All objects of a kind, in key order, in one namespace or all.
    pub(crate) fn iter(&self, rt: &ResourceType, ns: Option<&str>) -> impl Iterator<Item = &Value> {
        let ns = ns.filter(|_| rt.namespaced).map(String::from);
        self.objects
            .get(&rt.qualified())
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(move |((ons, _), _)| ns.as_ref().is_none_or(|n| n == ons))
            .map(|(_, s)| &s.obj)
    }

    pub(crate) fn has_pending_gc(&self) -> bool {
        !self.gc_queue.is_empty() || !self.ns_queue.is_empty()
    }

    /// Forget the change history: watches from any version so far get 410 Gone, and open
    /// watches end with a 410 ERROR event. The resourceVersion moves on by one, so that a list
    /// after this returns a version one can watch from.
    pub(crate) fn expire_history(&mut self) {
        // Like an etcd compaction: the version moves on, and every version so far is too old.
        self.history.clear();
        self.rv += 1;
        self.compacted = self.rv;
        self.expire_epoch += 1;
    }

    /// Like [`State::expire_history`], for one resource only.
    pub(crate) fn expire_history_of(&mut self, rt: &ResourceType) {
        self.rv += 1;
        let rv = self.rv;
        let e = self.expired.entry(rt.qualified()).or_insert((0, 0));
        e.0 = rv;
        e.1 += 1;
    }

    /// Watches of `resource` from before this version get 410.
    pub(crate) fn compacted_for(&self, resource: &str) -> u64 {
        self.compacted.max(self.expired.get(resource).map_or(0, |e| e.0))
    }

    /// Changes when open watches of `resource` must end with 410.
    pub(crate) fn epoch_for(&self, resource: &str) -> (u64, u64) {
        (self.expire_epoch, self.expired.get(resource).map_or(0, |e| e.1))
    }

    fn record(&mut self, kind: ChangeType, rt: &ResourceType, ns: &str, obj: &Value, prev_labels: Option<Value>) {
        self.history.push_back(Change {
            rv: self.rv,
            resource: rt.qualified(),
            ns: Self::ns_key(rt, ns),
            kind,
            object: Arc::new(obj.clone()),
            prev_labels,
        });
        while self.history.len() > self.history_limit {
            if let Some(c) = self.history.pop_front() {
                self.compacted = c.rv;
            }
        }
    }

    /// Changes with resourceVersion after `rv`, or `Err` if some of them are no longer kept.
    pub(crate) fn changes_after(&self, rv: u64, resource: &str) -> Result<impl Iterator<Item = &Change>, ()> {
        if rv < self.compacted_for(resource) {
            return Err(());
        }
        let start = self.history.partition_point(|c| c.rv <= rv);
        Ok(self.history.range(start..))
    }

    // ---------------------------------------------------------------- list

    pub(crate) fn list_page(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<Page, ApiError> {
        let (list_rv, after) = match continue_token.filter(|t| !t.is_empty()) {
            None => (self.rv, None),
            Some(token) => {
                let parsed = token.strip_prefix("kf1/").and_then(|t| {
                    let mut parts = t.splitn(3, '/');
                    let rv = parts.next()?.parse::<u64>().ok()?;
                    Some((rv, (parts.next()?.to_string(), parts.next()?.to_string())))
                });
                let Some((rv, key)) = parsed else {
                    return Err(ApiError::bad_request(format!("invalid continue token {token:?}")));
                };
                if rv < self.compacted_for(&rt.qualified()) {
                    return Err(ApiError::gone(
                        "The provided continue parameter is too old to display a consistent list result. You can \
                         start a new list without the continue parameter.",
                    ));
                }
                (rv, Some(key))
            }
        };
        let ns = ns.filter(|_| rt.namespaced).map(String::from);
        let limit = limit.filter(|l| *l > 0);
        let mut items = Vec::new();
        let mut continue_token = None;
        let mut remaining = 0u64;
        let empty = BTreeMap::new();
        let map = self.objects.get(&rt.qualified()).unwrap_or(&empty);
        let range = match &after {
            Some(k) => map.range::<Key, _>((std::ops::Bound::Excluded(k.clone()), std::ops::Bound::Unbounded)),
            None => map.range::<Key, _>(..),
        };
        let mut last_key: Option<&Key> = None;
        for (key, stored) in range {
            if ns.as_ref().is_some_and(|n| *n != key.0) {
                continue;
            }
            let obj = &stored.obj;
            if !labels.matches(meta(obj).and_then(|m| m.get("labels"))) || !fields.matches(obj) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                remaining += 1;
                continue;
            }
            items.push(obj.clone());
            last_key = Some(key);
        }
        if remaining > 0
            && let Some((lns, lname)) = last_key
        {
            continue_token = Some(format!("kf1/{list_rv}/{lns}/{lname}"));
        }
        Ok(Page { items, resource_version: list_rv, continue_token, remaining: (remaining > 0).then_some(remaining) })
    }

    // ---------------------------------------------------------------- writes

    /// POST: create.
    pub(crate) fn create(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        body: Value,
        ctx: &WriteCtx,
    ) -> Result<Value, ApiError> {
        let mut body = body;
        if !body.is_object() {
            return Err(ApiError::bad_request("the request body must be a JSON object"));
        }
        self.check_kind(rt, &body)?;
        let m = meta_mut(&mut body);
        let name = match m.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            Some(n) => n.to_string(),
            None => match m.get("generateName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
                Some(prefix) => format!("{prefix}{}", random_suffix()),
                None => {
                    return Err(ApiError::invalid(
                        rt,
                        "",
                        "metadata.name",
                        "Required value: name or generateName is required",
                    ));
                }
            },
        };
        if let Some(bns) = m.get("namespace").and_then(Value::as_str).filter(|n| !n.is_empty())
            && rt.namespaced
            && bns != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if self.get(rt, ns, &name).is_some() {
            return Err(ApiError::already_exists(rt, &name));
        }
        self.check_namespace(rt, ns)?;
        if rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions" {
            meta_mut(&mut body).insert("name".into(), json!(name));
            registry::from_crd(&body).map_err(|e| {
                let (field, detail) = e.split_once(": ").unwrap_or(("spec", &e));
                ApiError::invalid(rt, &name, field, detail)
            })?;
        }
        let written = self.commit(rt, ns, &name, None, body, Ownership::Update, ctx)?;
        Ok(written.obj)
    }

    /// Creating in a namespace that does not exist is refused, as on a real server.
    fn check_namespace(&self, rt: &ResourceType, ns: &str) -> Result<(), ApiError> {
        if self.require_namespaces && rt.namespaced && !self.namespace_exists(ns) {
            let nrt = self.registry.resolve("namespaces").cloned().expect("namespaces are a builtin kind");
            return Err(ApiError::not_found(&nrt, ns));
        }
        Ok(())
    }

    fn check_kind(&self, rt: &ResourceType, body: &Value) -> Result<(), ApiError> {
        if let Some(kind) = body.get("kind").and_then(Value::as_str)
            && kind != rt.kind
        {
            return Err(ApiError::bad_request(format!(
                "the kind in the body ({kind}) does not match the kind of the request ({})",
                rt.kind
            )));
        }
        Ok(())
    }

    /// PUT: replace (main endpoint or `/status`).
    pub(crate) fn replace(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        body: Value,
        ctx: &WriteCtx,
    ) -> Result<Written, ApiError> {
        let mut body = body;
        if !body.is_object() {
            return Err(ApiError::bad_request("the request body must be a JSON object"));
        }
        self.check_kind(rt, &body)?;
        match meta_str(&body, "name") {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => {
                meta_mut(&mut body).insert("name".into(), json!(name));
            }
        }
        let Some(old) = self.get(rt, ns, name).cloned() else {
            if rt.create_on_update && !ctx.status {
                let obj = self.create(rt, ns, body, ctx)?;
                return Ok(Written { obj, created: true });
            }
            return Err(ApiError::not_found(rt, name));
        };
        match meta_str(&body, "resourceVersion").filter(|v| !v.is_empty()) {
            None if rt.custom => {
                return Err(ApiError::invalid(
                    rt,
                    name,
                    "metadata.resourceVersion",
                    "Invalid value: 0x0: must be specified for an update",
                ));
            }
            Some(rv) if Some(rv) != meta_str(&old.obj, "resourceVersion") => {
                return Err(ApiError::conflict(rt, name));
            }
            _ => {}
        }
        self.check_uid(rt, name, &body, &old.obj)?;
        if rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions" && !ctx.status {
            registry::from_crd(&body).map_err(|e| {
                let (field, detail) = e.split_once(": ").unwrap_or(("spec", &e));
                ApiError::invalid(rt, name, field, detail)
            })?;
        }
        self.commit(rt, ns, name, Some(old), body, Ownership::Update, ctx)
    }

    fn check_uid(&self, rt: &ResourceType, name: &str, body: &Value, old: &Value) -> Result<(), ApiError> {
        if let Some(uid) = meta_str(body, "uid").filter(|u| !u.is_empty()) {
            let actual = meta_str(old, "uid").unwrap_or_default();
            if uid != actual {
                return Err(ApiError::precondition(rt, name, "UID", uid, actual));
            }
        }
        Ok(())
    }

    /// PATCH, any type. Apply to a missing object creates it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn patch(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        ptype: PatchType,
        body: &Value,
        force: bool,
        ctx: &WriteCtx,
    ) -> Result<Written, ApiError> {
        let old = self.get(rt, ns, name).cloned();
        if ptype == PatchType::Strategic && rt.custom {
            return Err(ApiError::unsupported_media_type("application/strategic-merge-patch+json"));
        }
        // A resourceVersion in the patch body is a precondition.
        if ptype != PatchType::Json
            && let Some(rv) =
                body.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|v| !v.is_empty())
        {
            match &old {
                Some(o) if Some(rv) == meta_str(&o.obj, "resourceVersion") => {}
                Some(_) => return Err(ApiError::conflict(rt, name)),
                None => return Err(ApiError::not_found(rt, name)),
            }
        }
        if ptype == PatchType::Apply {
            return self.apply(rt, ns, name, old, body, force, ctx);
        }
        let Some(old) = old else { return Err(ApiError::not_found(rt, name)) };
        let mut candidate = old.obj.clone();
        match ptype {
            PatchType::Merge => patch::merge(&mut candidate, body),
            PatchType::Strategic => patch::strategic_merge(&mut candidate, body),
            PatchType::Json => {
                candidate = patch::json_patch(&old.obj, body).map_err(|e| match e {
                    JsonPatchError::Malformed(m) => ApiError::bad_request(format!("invalid JSON patch: {m}")),
                    JsonPatchError::Failed(m) => ApiError::new(422, "Invalid", m),
                })?;
                if meta_str(&candidate, "resourceVersion") != meta_str(&old.obj, "resourceVersion") {
                    return Err(ApiError::conflict(rt, name));
                }
            }
            PatchType::Apply => unreachable!("handled above"),
        }
        if !candidate.is_object() {
            return Err(ApiError::bad_request("the patch does not leave an object"));
        }
        self.check_uid(rt, name, &candidate, &old.obj)?;
        // The name and namespace cannot change.
        let m = meta_mut(&mut candidate);
        m.insert("name".into(), json!(name));
        self.commit(rt, ns, name, Some(old), candidate, Ownership::Update, ctx)
    }

    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        old: Option<Stored>,
        body: &Value,
        force: bool,
        ctx: &WriteCtx,
    ) -> Result<Written, ApiError> {
        if ctx.manager.is_empty() {
            return Err(ApiError::bad_request("PATCH with apply requires the fieldManager query parameter"));
        }
        if !body.is_object() {
            return Err(ApiError::bad_request("the applied configuration must be an object"));
        }
        let api_version = body.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        let kind = body.get("kind").and_then(Value::as_str).unwrap_or_default();
        if api_version.is_empty() || kind.is_empty() {
            return Err(ApiError::bad_request("apply requires apiVersion and kind in the body"));
        }
        if kind != rt.kind || api_version != rt.api_version(&ctx.version) {
            return Err(ApiError::bad_request(format!(
                "the applied object is a {api_version} {kind}, but the request is for {} {}",
                rt.api_version(&ctx.version),
                rt.kind
            )));
        }
        if let Some(n) = meta_str(body, "name")
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        if ctx.status && old.is_none() {
            return Err(ApiError::not_found(rt, name));
        }
        if old.is_none() {
            self.check_namespace(rt, ns)?;
        }
        admission::check_applied(rt, &ctx.version, ns, name, body)?;
        let scope = scope_of(rt, ctx.status);
        let config = fields::scoped_config(body, scope);
        let skeleton = json!({
            "apiVersion": rt.api_version(&ctx.version),
            "kind": rt.kind,
            "metadata": {"name": name},
        });
        let live = old.as_ref().map(|o| &o.obj).unwrap_or(&skeleton);
        let entries = old.as_ref().map(|o| o.entries.as_slice()).unwrap_or(&[]);
        let now = now();
        let api_version = rt.api_version(&ctx.version);
        let result = fields::apply(fields::ApplyInput {
            live,
            entries,
            config: &config,
            manager: &ctx.manager,
            status: ctx.status,
            force,
            scope,
            schema: rt.schema(&ctx.version),
            api_version: &api_version,
            now: &now,
        });
        let (merged, new_entries) = result.map_err(|conflicts| {
            let causes: Vec<Value> = conflicts
                .iter()
                .map(|c| {
                    json!({
                        "reason": "FieldManagerConflict",
                        "message": format!("conflict with {}", c.manager),
                        "field": fields::display(&c.path),
                    })
                })
                .collect();
            ApiError::new(409, "Conflict", fields::conflict_message(&conflicts))
                .with_details(json!({"name": name, "group": rt.group, "kind": rt.plural, "causes": causes}))
        })?;
        if old.is_none() && rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions" {
            registry::from_crd(&merged).map_err(|e| {
                let (field, detail) = e.split_once(": ").unwrap_or(("spec", &e));
                ApiError::invalid(rt, name, field, detail)
            })?;
        }
        self.commit(rt, ns, name, old, merged, Ownership::Computed(new_entries), ctx)
    }

    /// The common end of every write: isolate status, keep server-managed metadata, enforce the
    /// finalizer rule, record ownership, skip no-ops, bump generation and resourceVersion,
    /// store, and record the change for watches. Finishes a deletion when the last finalizer
    /// goes.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        old: Option<Stored>,
        candidate: Value,
        ownership: Ownership,
        ctx: &WriteCtx,
    ) -> Result<Written, ApiError> {
        let mut obj = candidate;
        if ctx.status {
            let Some(old) = &old else { return Err(ApiError::not_found(rt, name)) };
            let status = obj.get("status").cloned();
            obj = old.obj.clone();
            let top = obj.as_object_mut().expect("stored objects are objects");
            match status {
                Some(s) if !s.is_null() => top.insert("status".into(), s),
                _ => top.remove("status"),
            };
        } else if rt.status_subresource {
            let top = obj.as_object_mut().expect("candidates are objects");
            match old.as_ref().and_then(|o| o.obj.get("status")) {
                Some(s) => top.insert("status".into(), s.clone()),
                None => top.remove("status"),
            };
        }
        {
            let top = obj.as_object_mut().expect("candidates are objects");
            top.insert("apiVersion".into(), json!(rt.api_version(&ctx.version)));
            top.insert("kind".into(), json!(rt.kind));
        }
        let m = meta_mut(&mut obj);
        m.insert("name".into(), json!(name));
        if rt.namespaced {
            m.insert("namespace".into(), json!(ns));
        } else {
            m.remove("namespace");
        }
        for f in [
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
            "managedFields",
            "selfLink",
        ] {
            m.remove(f);
            if let Some(v) = old.as_ref().and_then(|o| meta(&o.obj)).and_then(|om| om.get(f))
                && !matches!(f, "resourceVersion" | "managedFields" | "selfLink")
            {
                m.insert(f.into(), v.clone());
            }
        }
        normalize_metadata(&mut obj);

        // Admission, in the real server's order: prune, default, validate; then what a
        // restricted user needs besides the request's own verb.
        let warnings = admission::prune(rt, &ctx.version, &mut obj, ctx.field_validation)?;
        {
            let mut next_ip = || self.next_cluster_ip();
            admission::default(rt, &ctx.version, &mut obj, old.as_ref().map(|o| &o.obj), &mut next_ip);
        }
        if !ctx.skip_validation {
            admission::validate(rt, &ctx.version, name, &obj, old.as_ref().map(|o| &o.obj))?;
        }
        if let Some(user) = &ctx.user {
            if old.is_none() && !ctx.create_authorized {
                let a = crate::rbac::Attributes::resource("create", &rt.group, &rt.plural)
                    .in_namespace(rt.namespaced.then_some(ns))
                    .named(Some(name));
                self.check(Some(user), &a)?;
            }
            self.check_owner_references(user, rt, ns, name, old.as_ref().map(|o| &o.obj), &obj)?;
        }
        self.warnings.extend(warnings);

        // No new finalizers once deletion started.
        if let Some(o) = &old
            && meta(&o.obj).is_some_and(|om| om.contains_key("deletionTimestamp"))
        {
            let before = finalizers(&o.obj);
            let added: Vec<String> = finalizers(&obj).into_iter().filter(|f| !before.contains(f)).collect();
            if !added.is_empty() {
                return Err(ApiError::invalid(
                    rt,
                    name,
                    "metadata.finalizers",
                    &format!(
                        "Forbidden: no new finalizers can be added if the object is being deleted, found new \
                         finalizers []string{{{}}}",
                        added.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }

        let scope = scope_of(rt, ctx.status);
        let now = now();
        let mut entries = match ownership {
            Ownership::Computed(e) => e,
            Ownership::Update => {
                let mut entries = old.as_ref().map(|o| o.entries.clone()).unwrap_or_default();
                let schema = rt.schema(&ctx.version);
                let (changed, removed) = fields::diff(old.as_ref().map(|o| &o.obj), &obj, scope, schema);
                fields::record_update(
                    &mut entries,
                    &ctx.manager,
                    ctx.status,
                    &rt.api_version(&ctx.version),
                    &changed,
                    &removed,
                    &now,
                );
                entries
            }
        };
        fields::prune(&mut entries, &obj);

        if let Some(o) = &old
            && comparable(&o.obj) == comparable(&obj)
            && fields::same_ownership(&o.entries, &entries)
        {
            return Ok(Written { obj: o.obj.clone(), created: false });
        }

        let generation = match &old {
            None => 1,
            Some(o) => {
                let g = meta(&o.obj).and_then(|m| m.get("generation")).and_then(Value::as_i64).unwrap_or(1);
                if spec_part(&o.obj, rt.status_subresource) != spec_part(&obj, rt.status_subresource) {
                    g + 1
                } else {
                    g
                }
            }
        };
        let m = meta_mut(&mut obj);
        m.insert("generation".into(), json!(generation));
        if old.is_none() {
            m.insert("uid".into(), json!(uuid::Uuid::now_v7().to_string()));
            m.insert("creationTimestamp".into(), json!(now));
        }
        if !entries.is_empty() {
            m.insert("managedFields".into(), fields::render(&entries));
        }
        let next_rv = self.rv + 1;
        m.insert("resourceVersion".into(), json!(next_rv.to_string()));

        if ctx.dry_run {
            return Ok(Written { obj, created: old.is_none() });
        }
        self.rv = next_rv;
        let deleting_done =
            old.as_ref().is_some_and(|o| meta(&o.obj).is_some_and(|om| om.contains_key("deletionTimestamp")))
                && finalizers(&obj).is_empty();
        let prev_labels = old.as_ref().and_then(|o| meta(&o.obj)).and_then(|m| m.get("labels")).cloned();
        if deleting_done {
            self.remove_now(rt, ns, name, &obj, prev_labels, false);
            return Ok(Written { obj, created: false });
        }
        let kind = if old.is_some() { ChangeType::Modified } else { ChangeType::Added };
        self.record(kind, rt, ns, &obj, prev_labels);
        self.objects
            .entry(rt.qualified())
            .or_default()
            .insert((Self::ns_key(rt, ns), name.to_string()), Stored { obj: obj.clone(), entries });
        self.after_write(rt, &obj, old.is_none());
        Ok(Written { obj, created: old.is_none() })
    }

    /// Side effects of the kinds the server itself acts on.
    fn after_write(&mut self, rt: &ResourceType, obj: &Value, created: bool) {
        if rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions" {
            if let Ok(new_rt) = registry::from_crd(obj) {
                self.registry.upsert(new_rt);
            }
            if created {
                self.establish_crd(rt, obj);
            }
        }
    }

    /// What the real server's CRD controllers do right after a CRD is created: accept the
    /// names and mark it Established (a separate status write, as on a real cluster).
    fn establish_crd(&mut self, rt: &ResourceType, crd: &Value) {
        let name = meta_str(crd, "name").unwrap_or_default().to_string();
        let now = now();
        let condition = |t: &str, reason: &str, message: &str| json!({"type": t, "status": "True", "lastTransitionTime": now, "reason": reason, "message": message});
        let storage: Vec<Value> = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .map(|vs| {
                vs.iter()
                    .filter(|v| v.get("storage").and_then(Value::as_bool).unwrap_or(false))
                    .filter_map(|v| v.get("name").cloned())
                    .collect()
            })
            .unwrap_or_default();
        let status = json!({"status": {
            "conditions": [
                condition("NamesAccepted", "NoConflicts", "no conflicts found"),
                condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
            ],
            "acceptedNames": crd.pointer("/spec/names").cloned().unwrap_or(json!({})),
            "storedVersions": storage,
        }});
        let mut ctx = WriteCtx::internal(CRD_MANAGER, rt);
        ctx.status = true;
        if let Some(old) = self.get(rt, "", &name).cloned() {
            let _ = self.commit(rt, "", &name, Some(old), status, Ownership::Update, &ctx);
        }
    }

    /// Remove an object now (DELETED event) and queue its dependents for garbage collection.
    fn remove_now(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        obj: &Value,
        prev_labels: Option<Value>,
        orphan: bool,
    ) {
        self.objects.get_mut(&rt.qualified()).map(|m| m.remove(&(Self::ns_key(rt, ns), name.to_string())));
        self.record(ChangeType::Deleted, rt, ns, obj, prev_labels);
        if let Some(uid) = meta_str(obj, "uid") {
            self.gc_queue.push((uid.to_string(), if orphan { GcMode::Orphan } else { GcMode::Removed }));
        }
        if rt.group.is_empty() && rt.plural == "namespaces" {
            self.ns_queue.push(name.to_string());
        }
        if rt.group == "apiextensions.k8s.io"
            && rt.plural == "customresourcedefinitions"
            && let Ok(crt) = registry::from_crd(obj)
        {
            // The CRD's custom resources go with it.
            let keys: Vec<Key> =
                self.objects.get(&crt.qualified()).map(|m| m.keys().cloned().collect()).unwrap_or_default();
            for (ons, oname) in keys {
                if let Some(stored) =
                    self.objects.get_mut(&crt.qualified()).and_then(|m| m.remove(&(ons.clone(), oname)))
                {
                    self.rv += 1;
                    let mut o = stored.obj;
                    meta_mut(&mut o).insert("resourceVersion".into(), json!(self.rv.to_string()));
                    self.record(ChangeType::Deleted, &crt, &ons, &o, None);
                }
            }
            self.registry.remove(&crt.group, &crt.plural);
        }
    }

    /// DELETE one object.
    pub(crate) fn delete(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<(Value, bool), ApiError> {
        let Some(old) = self.get(rt, ns, name).cloned() else { return Err(ApiError::not_found(rt, name)) };
        let actual_uid = meta_str(&old.obj, "uid").unwrap_or_default();
        if let Some(uid) = &opts.uid
            && uid != actual_uid
        {
            return Err(ApiError::precondition(rt, name, "UID", uid, actual_uid));
        }
        let actual_rv = meta_str(&old.obj, "resourceVersion").unwrap_or_default();
        if let Some(rv) = &opts.resource_version
            && rv != actual_rv
        {
            return Err(ApiError::precondition(rt, name, "ResourceVersion", rv, actual_rv));
        }
        let prev_labels = meta(&old.obj).and_then(|m| m.get("labels")).cloned();
        let uid = actual_uid.to_string();
        let mut fins = finalizers(&old.obj);
        // Foreground and Orphan work through finalizers the garbage collector removes, as on
        // the real server: foreground only when there are dependents, orphan only when the
        // object waits for other finalizers anyway.
        let mode = match opts.propagation {
            Propagation::Foreground if self.has_dependents(&uid) => Some((GcMode::Foreground, FOREGROUND_FINALIZER)),
            Propagation::Orphan if !fins.is_empty() => Some((GcMode::Orphan, ORPHAN_FINALIZER)),
            _ => None,
        };
        if let Some((_, f)) = mode
            && !fins.iter().any(|x| x == f)
        {
            fins.push(f.to_string());
        }
        if !fins.is_empty() {
            let deleting = meta(&old.obj).is_some_and(|m| m.contains_key("deletionTimestamp"));
            if deleting && fins == finalizers(&old.obj) {
                return Ok((old.obj, false));
            }
            let mut obj = old.obj.clone();
            let next_rv = self.rv + 1;
            let m = meta_mut(&mut obj);
            if !deleting {
                m.insert("deletionTimestamp".into(), json!(now()));
                m.insert("deletionGracePeriodSeconds".into(), json!(0));
                let g = m.get("generation").and_then(Value::as_i64).unwrap_or(1);
                m.insert("generation".into(), json!(g + 1));
            }
            m.insert("finalizers".into(), json!(fins));
            m.insert("resourceVersion".into(), json!(next_rv.to_string()));
            if opts.dry_run {
                return Ok((obj, false));
            }
            self.rv = next_rv;
            self.record(ChangeType::Modified, rt, ns, &obj, prev_labels);
            self.objects
                .entry(rt.qualified())
                .or_default()
                .insert((Self::ns_key(rt, ns), name.to_string()), Stored { obj: obj.clone(), entries: old.entries });
            if let Some((gc, _)) = mode {
                self.gc_queue.push((uid, gc));
            }
            return Ok((obj, false));
        }
        let mut obj = old.obj.clone();
        let next_rv = self.rv + 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(next_rv.to_string()));
        if opts.dry_run {
            return Ok((obj, true));
        }
        self.rv = next_rv;
        self.remove_now(rt, ns, name, &obj, prev_labels, opts.propagation == Propagation::Orphan);
        Ok((obj, true))
    }

    /// DELETE on a collection: every matching object.
    pub(crate) fn delete_collection(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        opts: &DeleteOpts,
    ) -> Result<Vec<Value>, ApiError> {
        let targets: Vec<(String, String)> = self
            .iter(rt, ns)
            .filter(|o| labels.matches(meta(o).and_then(|m| m.get("labels"))) && fields.matches(o))
            .map(|o| {
                (
                    meta_str(o, "namespace").unwrap_or_default().to_string(),
                    meta_str(o, "name").unwrap_or_default().to_string(),
                )
            })
            .collect();
        let mut out = Vec::new();
        for (ons, oname) in targets {
            let (obj, _) = self.delete(rt, &ons, &oname, opts)?;
            out.push(obj);
        }
        Ok(out)
    }

    fn has_dependents(&self, uid: &str) -> bool {
        self.objects.values().flat_map(|m| m.values()).any(|s| owner_uids(&s.obj).iter().any(|u| u == uid))
    }

    fn resource_type(&self, qualified: &str) -> Option<ResourceType> {
        self.registry.all().iter().find(|k| k.qualified() == qualified).cloned()
    }

    /// Remove one finalizer as the garbage collector (which may complete a deletion).
    fn drop_finalizer(&mut self, rt: &ResourceType, ns: &str, name: &str, finalizer: &str) {
        let Some(old) = self.get(rt, ns, name).cloned() else { return };
        let mut obj = old.obj.clone();
        if let Some(f) = meta_mut(&mut obj).get_mut("finalizers").and_then(Value::as_array_mut) {
            f.retain(|x| x != finalizer);
        }
        let ctx = WriteCtx::internal(GC_MANAGER, rt);
        let _ = self.commit(rt, ns, name, Some(old), obj, Ownership::Update, &ctx);
    }

    /// Garbage collection, as the real controller does in the background: dependents of
    /// removed owners are deleted (honouring their finalizers; cascading), or lose the
    /// reference when they still have a living owner or the owner was deleted with
    /// `propagationPolicy: Orphan`; owners deleted with `Foreground` go once their dependents
    /// are gone. Objects of removed namespaces are deleted.
    pub(crate) fn run_gc(&mut self) {
        loop {
            if let Some(ns) = self.ns_queue.pop() {
                let kinds: Vec<ResourceType> = self.registry.all().iter().filter(|k| k.namespaced).cloned().collect();
                for rt in kinds {
                    let names: Vec<String> =
                        self.iter(&rt, Some(&ns)).filter_map(|o| meta_str(o, "name")).map(String::from).collect();
                    for name in names {
                        let _ = self.delete(&rt, &ns, &name, &DeleteOpts::default());
                    }
                }
                continue;
            }
            let Some((uid, mode)) = self.gc_queue.pop() else {
                if self.finish_foreground_deletions() {
                    continue;
                }
                break;
            };
            let live: HashSet<String> = self
                .objects
                .values()
                .flat_map(|m| m.values())
                .filter_map(|s| meta_str(&s.obj, "uid").map(String::from))
                .collect();
            let mut dependents = Vec::new();
            let mut owner = None;
            for (res, map) in &self.objects {
                for ((ons, oname), s) in map {
                    if meta_str(&s.obj, "uid") == Some(uid.as_str()) {
                        owner = Some((res.clone(), ons.clone(), oname.clone()));
                    }
                    if owner_uids(&s.obj).contains(&uid) {
                        let keep = match mode {
                            GcMode::Orphan => true,
                            GcMode::Foreground => false,
                            GcMode::Removed => owner_uids(&s.obj).iter().any(|u| *u != uid && live.contains(u)),
                        };
                        dependents.push((res.clone(), ons.clone(), oname.clone(), keep));
                    }
                }
            }
            for (res, ons, oname, keep) in dependents {
                let Some(rt) = self.resource_type(&res) else { continue };
                if keep {
                    let Some(old) = self.get(&rt, &ons, &oname).cloned() else { continue };
                    let mut obj = old.obj.clone();
                    if let Some(refs) = meta_mut(&mut obj).get_mut("ownerReferences").and_then(Value::as_array_mut) {
                        refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid.as_str()));
                    }
                    let ctx = WriteCtx::internal(GC_MANAGER, &rt);
                    let _ = self.commit(&rt, &ons, &oname, Some(old), obj, Ownership::Update, &ctx);
                } else {
                    let _ = self.delete(&rt, &ons, &oname, &DeleteOpts::default());
                }
            }
            if mode == GcMode::Orphan
                && let Some((res, ons, oname)) = owner
                && let Some(rt) = self.resource_type(&res)
            {
                self.drop_finalizer(&rt, &ons, &oname, ORPHAN_FINALIZER);
            }
        }
    }

    /// Owners waiting in foreground deletion whose dependents are all gone lose their
    /// `foregroundDeletion` finalizer. Returns whether any did.
    fn finish_foreground_deletions(&mut self) -> bool {
        let waiting: Vec<(String, String, String, String)> = self
            .objects
            .iter()
            .flat_map(|(res, m)| m.iter().map(move |((ons, oname), s)| (res, ons, oname, s)))
            .filter(|(_, _, _, s)| {
                finalizers(&s.obj).iter().any(|f| f == FOREGROUND_FINALIZER)
                    && meta(&s.obj).is_some_and(|m| m.contains_key("deletionTimestamp"))
            })
            .map(|(res, ons, oname, s)| {
                (res.clone(), ons.clone(), oname.clone(), meta_str(&s.obj, "uid").unwrap_or_default().to_string())
            })
            .collect();
        let mut progress = false;
        for (res, ons, oname, uid) in waiting {
            if self.has_dependents(&uid) {
                continue;
            }
            if let Some(rt) = self.resource_type(&res) {
                self.drop_finalizer(&rt, &ons, &oname, FOREGROUND_FINALIZER);
                progress = true;
            }
        }
        progress
    }
}

/// The part of an object a write through this endpoint may change.
pub(crate) fn scope_of(rt: &ResourceType, status: bool) -> Scope {
    if status {
        Scope::StatusOnly
    } else if rt.status_subresource {
        Scope::NoStatus
    } else {
        Scope::All
    }
}
