//! The REST surface: path routing, verbs, list and watch, discovery.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State as AxumState};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, watch};

use crate::admission::FieldValidation;
use crate::auth::{self, User};
use crate::error::ApiError;
use crate::patch::PatchType;
use crate::rbac::{self, Attributes};
use crate::registry::ResourceType;
use crate::requests::{RequestRecord, effective_manager};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{ChangeType, DeleteOpts, Propagation, State, WriteCtx};
use crate::{discovery, openapi, proto, reviews, table};

/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Settings of a server.
#[derive(Debug, Clone)]
pub(crate) struct ServerConfig {
    pub bookmark_interval: Duration,
    pub gc_delay: Duration,
    /// Requests without a valid token get 401 (else they act as the admin).
    pub require_auth: bool,
}

/// What the handlers, the garbage collector and the handle share.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Ticks after every write and history expiry; watches wake up on it.
    changed: watch::Sender<u64>,
    gc: Notify,
    pub shutdown: watch::Sender<bool>,
    pub config: ServerConfig,
}

impl Shared {
    pub(crate) fn new(state: State, config: ServerConfig) -> Arc<Self> {
        Arc::new(Shared {
            state: Mutex::new(state),
            changed: watch::channel(0).0,
            gc: Notify::new(),
            shutdown: watch::channel(false).0,
            config,
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wake watches (and the garbage collector when it has work) after a change.
    pub(crate) fn notify(&self, st: &State) {
        self.changed.send_modify(|v| *v += 1);
        if st.has_pending_gc() {
            self.gc.notify_one();
        }
    }

    /// The readiness simulation (see [`crate::readiness`]): checks after every change, and when
    /// a waiting workload is due.
    pub(crate) async fn run_readiness_loop(self: Arc<Self>, delay: Duration) {
        let mut changed = self.changed.subscribe();
        let mut shutdown = self.shutdown.subscribe();
        let mut pending = crate::readiness::Pending::default();
        loop {
            let next = {
                let mut st = self.lock();
                let before = st.rv;
                let next = st.simulate_readiness(&mut pending, delay);
                if st.rv != before {
                    self.notify(&st);
                }
                next
            };
            let wait = next.unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// The garbage collector: runs after writes that removed owners or namespaces.
    pub(crate) async fn run_gc_loop(self: Arc<Self>) {
        let mut shutdown = self.shutdown.subscribe();
        loop {
            tokio::select! {
                _ = self.gc.notified() => {}
                _ = shutdown.changed() => return,
            }
            if !self.config.gc_delay.is_zero() {
                tokio::time::sleep(self.config.gc_delay).await;
            }
            let mut st = self.lock();
            st.run_gc();
            self.changed.send_modify(|v| *v += 1);
        }
    }
}

fn json_response(code: u16, body: &Value) -> Response {
    let mut resp = (StatusCode::from_u16(code).unwrap_or(StatusCode::OK), body.to_string()).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, "application/json".parse().expect("valid header value"));
    resp
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.code, &e.to_status())
}

/// Where a request goes.
enum Target {
    Version,
    Health,
    Discovery(discovery::Request),
    OpenApiV2,
    OpenApiV3Index,
    OpenApiV3(String),
    Resource(ResourcePath),
    NotFound,
}

#[derive(Debug, Clone)]
struct ResourcePath {
    group: String,
    version: String,
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Target {
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let rest = |group: &str, version: &str, rest: &[&str]| -> Target {
        let s = |i: usize| rest.get(i).map(|x| x.to_string());
        let rp = match rest {
            [] => return Target::NotFound,
            // The namespace object's own subresources.
            ["namespaces", ns, sub @ ("status" | "finalize")] if group.is_empty() => ResourcePath {
                group: String::new(),
                version: version.into(),
                namespace: None,
                plural: "namespaces".into(),
                name: Some(ns.to_string()),
                sub: Some(sub.to_string()),
            },
            ["namespaces", _, _, ..] if rest.len() <= 5 => ResourcePath {
                group: group.into(),
                version: version.into(),
                namespace: s(1),
                plural: rest[2].into(),
                name: s(3),
                sub: s(4),
            },
            _ if rest.len() <= 3 => ResourcePath {
                group: group.into(),
                version: version.into(),
                namespace: None,
                plural: rest[0].into(),
                name: s(1),
                sub: s(2),
            },
            _ => return Target::NotFound,
        };
        Target::Resource(rp)
    };
    match segs.as_slice() {
        ["version"] => Target::Version,
        ["healthz" | "livez" | "readyz", ..] => Target::Health,
        ["openapi", "v2"] => Target::OpenApiV2,
        ["openapi", "v3"] => Target::OpenApiV3Index,
        ["openapi", "v3", gv @ ..] => Target::OpenApiV3(gv.join("/")),
        ["api"] => Target::Discovery(discovery::Request::CoreVersions),
        ["apis"] => Target::Discovery(discovery::Request::Groups),
        ["api", "v1"] => Target::Discovery(discovery::Request::Resources(String::new(), "v1".into())),
        ["apis", g] => Target::Discovery(discovery::Request::Group(g.to_string())),
        ["apis", g, v] => Target::Discovery(discovery::Request::Resources(g.to_string(), v.to_string())),
        ["api", "v1", r @ ..] => rest("", "v1", r),
        ["apis", g, v, r @ ..] => rest(g, v, r),
        _ => Target::NotFound,
    }
}

/// Query parameters.
struct Params(HashMap<String, String>);

impl Params {
    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }
    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }
}

/// How objects are shown: full, as `PartialObjectMetadata` (metadata-only watches and lists),
/// or as a Table (`kubectl get`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Presentation {
    Full,
    Metadata,
    Table(table::RowObject),
}

fn accept(headers: &HeaderMap) -> &str {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

fn presentation(headers: &HeaderMap, params: &Params) -> Presentation {
    let accept = accept(headers);
    if table::wants_table(accept) {
        Presentation::Table(table::row_object(params.get("includeObject")))
    } else if accept.contains("as=PartialObjectMetadata") {
        Presentation::Metadata
    } else {
        Presentation::Full
    }
}

fn with_api_version(obj: &Value, rt: &ResourceType, version: &str) -> Value {
    let mut o = obj.clone();
    let av = rt.api_version(version);
    if o.get("apiVersion").and_then(Value::as_str) != Some(av.as_str()) {
        o["apiVersion"] = json!(av);
    }
    o
}

fn present(obj: &Value, rt: &ResourceType, version: &str, p: Presentation) -> Value {
    match p {
        Presentation::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
        }),
        Presentation::Full => with_api_version(obj, rt, version),
        Presentation::Table(what) => {
            let rv = obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""));
            table::table(rt, version, &[with_api_version(obj, rt, version)], what, json!({"resourceVersion": rv}))
        }
    }
}

/// Who sends a request: the user, or a refusal (401 for a bad or missing token, 403 for a
/// refused impersonation). `None`: not restricted (the admin, or a trusted in-process client).
fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<Option<User>, ApiError> {
    let st = shared.lock();
    let user = match auth::bearer(headers) {
        Some(t) if t == st.tokens.admin => User::admin(),
        Some(t) => {
            let issued = st.tokens.issued.get(t).cloned().ok_or_else(auth::unauthorized)?;
            let sa = st.registry.resolve("serviceaccounts").cloned().expect("serviceaccounts are a builtin kind");
            let alive = st
                .get(&sa, &issued.namespace, &issued.name)
                .is_some_and(|s| s.obj.pointer("/metadata/uid").and_then(Value::as_str) == Some(issued.uid.as_str()));
            if !alive || issued.expires < chrono::Utc::now() {
                return Err(auth::unauthorized());
            }
            User::service_account(&issued.namespace, &issued.name, &issued.uid)
        }
        None if shared.config.require_auth => return Err(auth::unauthorized()),
        None => User::admin(),
    };
    let user = match auth::impersonation(headers) {
        None => user,
        Some(imp) => {
            let target = imp.as_user();
            let mut checks = Vec::new();
            match target.service_account_parts() {
                Some((ns, name)) => checks.push(
                    Attributes::resource("impersonate", "", "serviceaccounts").in_namespace(Some(ns)).named(Some(name)),
                ),
                None => checks.push(Attributes::resource("impersonate", "", "users").named(Some(&target.name))),
            }
            for g in &imp.groups {
                checks.push(Attributes::resource("impersonate", "", "groups").named(Some(g)));
            }
            for a in &checks {
                if !st.authorize(&user, a) {
                    return Err(rbac::forbidden(&user, a, ""));
                }
            }
            target
        }
    };
    Ok(Some(user).filter(|u| !u.is_superuser()))
}

/// The single handler: every request comes here.
pub(crate) async fn dispatch(AxumState(shared): AxumState<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let headers = req.headers().clone();
    let params = Params(Query::<HashMap<String, String>>::try_from_uri(&uri).map(|q| q.0).unwrap_or_default());
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return error_response(&ApiError::bad_request(format!("could not read the request body: {e}"))),
    };
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(String::from);
    let mut record = RequestRecord {
        method: method.to_string(),
        verb: "discovery".into(),
        path: uri.path().to_string(),
        group: String::new(),
        resource: String::new(),
        subresource: None,
        namespace: None,
        name: None,
        field_manager: params.get("fieldManager").map(String::from),
        user_agent,
        patch_type: None,
        dry_run: params.get("dryRun") == Some("All"),
        code: 200,
        user: None,
    };
    let target = parse_path(uri.path());
    let public = matches!(target, Target::Version | Target::Health);
    let user = match authenticate(&shared, &headers) {
        Ok(u) => u,
        Err(e) if e.code == 401 && public => None,
        Err(e) => {
            record.code = e.code;
            shared.lock().requests.push(record);
            return error_response(&e);
        }
    };
    record.user = user.as_ref().map(|u| u.name.clone());
    let response = match target {
        Target::Resource(rp) => {
            record.group = rp.group.clone();
            record.resource = rp.plural.clone();
            record.subresource = rp.sub.clone();
            record.namespace = rp.namespace.clone();
            record.name = rp.name.clone();
            handle_resource(&shared, &method, &headers, &params, body, rp, &mut record, user).await
        }
        other if method == Method::GET => {
            let path = Attributes { verb: "get".into(), path: Some(uri.path().to_string()), ..Default::default() };
            let allowed = shared.lock().check(user.as_ref(), &path);
            match allowed.and_then(|()| non_resource(&shared, other, &headers)) {
                Ok(resp) => resp,
                Err(e) => error_response(&e),
            }
        }
        _ => error_response(&ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        )),
    };
    record.code = response.status().as_u16();
    shared.lock().requests.push(record);
    response
}

/// `/version`, health, discovery and OpenAPI.
fn non_resource(shared: &Arc<Shared>, target: Target, headers: &HeaderMap) -> Result<Response, ApiError> {
    let kinds = shared.lock().registry.all().to_vec();
    let value = match target {
        Target::Version => json!({
            "major": "1", "minor": "35", "emulationMajor": "1", "emulationMinor": "35",
            "minCompatibilityMajor": "1", "minCompatibilityMinor": "34",
            "gitVersion": openapi::KUBERNETES_VERSION, "gitCommit": "kube-fake", "gitTreeState": "clean",
            "buildDate": "2025-12-17T00:00:00Z", "goVersion": "go1.25.5", "compiler": "gc", "platform": "linux/amd64",
        }),
        Target::Health => {
            let mut resp = (StatusCode::OK, "ok").into_response();
            resp.headers_mut().insert(header::CONTENT_TYPE, "text/plain".parse().expect("valid header value"));
            return Ok(resp);
        }
        Target::Discovery(req) => {
            let core = matches!(req, discovery::Request::CoreVersions);
            if matches!(req, discovery::Request::CoreVersions | discovery::Request::Groups)
                && let Some(v) = discovery::wants_aggregated(accept(headers))
            {
                let mut resp = json_response(200, &discovery::aggregated(&kinds, core, v));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    discovery::aggregated_content_type(v).parse().expect("valid header value"),
                );
                return Ok(resp);
            }
            discovery::answer(&kinds, req)?
        }
        Target::OpenApiV2 => {
            let a = accept(headers);
            if !a.is_empty() && !a.contains("json") && !a.contains("*/*") {
                return Err(ApiError::new(406, "NotAcceptable", "only application/json is served for /openapi/v2"));
            }
            openapi::v2(&kinds)
        }
        Target::OpenApiV3Index => openapi::v3_index(&kinds),
        Target::OpenApiV3(gv) => openapi::v3_document(&kinds, &gv).ok_or_else(ApiError::no_such_resource)?,
        Target::Resource(_) | Target::NotFound => return Err(ApiError::no_such_resource()),
    };
    Ok(json_response(200, &value))
}

/// The body of a review or TokenRequest: JSON, or protobuf as kubectl's typed clients send it.
fn request_object(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if ct.starts_with("application/vnd.kubernetes.protobuf") {
        return proto::decode(body).map_err(|e| ApiError::new(415, "UnsupportedMediaType", e));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

/// Add the `Warning` headers a write collected (unknown fields with `fieldValidation=Warn`).
fn with_warnings(mut resp: Response, warnings: Vec<String>) -> Response {
    for w in warnings {
        let text = format!("299 - {}", serde_json::to_string(&w).unwrap_or_default());
        if let Ok(v) = text.parse() {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

#[allow(clippy::too_many_arguments)]
async fn handle_resource(
    shared: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    params: &Params,
    body: Bytes,
    rp: ResourcePath,
    record: &mut RequestRecord,
    user: Option<User>,
) -> Response {
    let rt = {
        let st = shared.lock();
        st.registry.lookup(&rp.group, &rp.version, &rp.plural).cloned()
    };
    let verb = match (method, rp.name.is_some()) {
        (&Method::GET, true) if params.flag("watch") => "watch",
        (&Method::GET, true) => "get",
        (&Method::GET, false) if params.flag("watch") => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, false) => "create",
        (&Method::POST, true) if rp.sub.is_some() => "create",
        (&Method::PUT, true) => "update",
        (&Method::PATCH, true) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "unsupported",
    };
    record.verb = verb.into();
    let Some(rt) = rt else { return error_response(&ApiError::no_such_resource()) };
    // Scope: a namespaced kind needs a namespace for single objects; a cluster-scoped one has none.
    if (rt.namespaced && rp.namespace.is_none() && rp.name.is_some()) || (!rt.namespaced && rp.namespace.is_some()) {
        return error_response(&ApiError::no_such_resource());
    }
    let attributes = Attributes::resource(verb, &rt.group, &rt.plural)
        .in_namespace(rp.namespace.as_deref())
        .named(rp.name.as_deref())
        .sub(rp.sub.as_deref());
    if let Err(e) = shared.lock().check(user.as_ref(), &attributes) {
        return error_response(&e);
    }
    if rt.create_only {
        if verb != "create" {
            return error_response(&ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({method} {})",
                rt.qualified()
            )));
        }
        let answer = request_object(headers, &body).and_then(|b| reviews::answer(shared, &rt, b, user.as_ref()));
        return match answer {
            Ok(v) => json_response(201, &v),
            Err(e) => error_response(&e),
        };
    }
    if rt.group.is_empty() && rt.plural == "serviceaccounts" && rp.sub.as_deref() == Some("token") && verb == "create" {
        let ns = rp.namespace.clone().unwrap_or_default();
        let answer = request_object(headers, &body)
            .and_then(|b| reviews::token_request(shared, &ns, rp.name.as_deref().unwrap_or_default(), &b));
        return match answer {
            Ok(v) => json_response(201, &v),
            Err(e) => error_response(&e),
        };
    }
    let status = match rp.sub.as_deref() {
        None => false,
        Some("status") if rt.status_subresource => true,
        Some(_) => return error_response(&ApiError::no_such_resource()),
    };
    if verb == "unsupported" || (status && matches!(verb, "delete" | "deletecollection" | "list" | "watch")) {
        return error_response(&ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} {})",
            rt.qualified()
        )));
    }
    let field_validation = match FieldValidation::parse(params.get("fieldValidation")) {
        Ok(fv) => fv,
        Err(e) => return error_response(&e),
    };
    let ns = rp.namespace.clone().unwrap_or_default();
    let pres = presentation(headers, params);
    let version = rp.version.clone();
    let ctx = WriteCtx {
        manager: effective_manager(params.get("fieldManager"), record.user_agent.as_deref()),
        status,
        dry_run: record.dry_run,
        version: version.clone(),
        user,
        field_validation,
        create_authorized: verb == "create",
        skip_validation: false,
    };
    let parse_body = |body: &Bytes| -> Result<Value, ApiError> {
        let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if ct.starts_with("application/vnd.kubernetes.protobuf") {
            return proto::decode(body).map_err(|e| ApiError::new(415, "UnsupportedMediaType", e));
        }
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
    };
    let name = rp.name.clone().unwrap_or_default();
    let mut warnings = Vec::new();
    let result: Result<Response, ApiError> = async {
        match verb {
            "get" => {
                let st = shared.lock();
                let stored = st.get(&rt, &ns, &name).ok_or_else(|| ApiError::not_found(&rt, &name))?;
                Ok(json_response(200, &present(&stored.obj, &rt, &version, pres)))
            }
            "list" => list(shared, &rt, &version, rp.namespace.as_deref(), params, pres),
            "watch" => {
                let mut params = Params(params.0.clone());
                if let Some(n) = rp.name.as_deref() {
                    // GET .../<name>?watch=true: a watch of that one object.
                    params.0.insert("fieldSelector".into(), format!("metadata.name={n}"));
                }
                watch(shared, &rt, &version, rp.namespace.clone(), &params, pres)
            }
            "create" => {
                let obj = parse_body(&body)?;
                let mut st = shared.lock();
                st.warnings.clear();
                let created = st.create(&rt, &ns, obj, &ctx);
                warnings = std::mem::take(&mut st.warnings);
                let created = created?;
                shared.notify(&st);
                Ok(json_response(201, &present(&created, &rt, &version, pres)))
            }
            "update" => {
                let obj = parse_body(&body)?;
                let mut st = shared.lock();
                st.warnings.clear();
                let w = st.replace(&rt, &ns, &name, obj, &ctx);
                warnings = std::mem::take(&mut st.warnings);
                let w = w?;
                shared.notify(&st);
                Ok(json_response(if w.created { 201 } else { 200 }, &present(&w.obj, &rt, &version, pres)))
            }
            "patch" => {
                let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
                let ptype = PatchType::from_content_type(ct).ok_or_else(|| ApiError::unsupported_media_type(ct))?;
                record.patch_type = Some(ptype.as_str().into());
                let patch_body: Value = if ptype == PatchType::Apply {
                    serde_json::from_slice(&body).or_else(|_| {
                        let text = std::str::from_utf8(&body)
                            .map_err(|_| ApiError::bad_request("the applied configuration is not UTF-8"))?;
                        serde_yaml_ng::from_str(text)
                            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
                    })?
                } else {
                    parse_body(&body)?
                };
                let mut st = shared.lock();
                st.warnings.clear();
                let w = st.patch(&rt, &ns, &name, ptype, &patch_body, params.flag("force"), &ctx);
                warnings = std::mem::take(&mut st.warnings);
                let w = w?;
                shared.notify(&st);
                Ok(json_response(if w.created { 201 } else { 200 }, &present(&w.obj, &rt, &version, pres)))
            }
            "delete" | "deletecollection" => {
                let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
                let body = if ct.starts_with("application/vnd.kubernetes.protobuf") && !body.is_empty() {
                    let opts = proto::decode(&body).map_err(|e| ApiError::new(415, "UnsupportedMediaType", e))?;
                    Bytes::from(opts.to_string())
                } else {
                    body.clone()
                };
                let opts = delete_options(params, &body)?;
                let mut st = shared.lock();
                if verb == "delete" {
                    let (obj, removed) = st.delete(&rt, &ns, &name, &opts)?;
                    shared.notify(&st);
                    if !removed {
                        return Ok(json_response(202, &present(&obj, &rt, &version, Presentation::Full)));
                    }
                    if rt.custom {
                        return Ok(json_response(200, &present(&obj, &rt, &version, Presentation::Full)));
                    }
                    let uid = obj.pointer("/metadata/uid").cloned().unwrap_or(json!(""));
                    Ok(json_response(
                        200,
                        &json!({
                            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                            "details": {"name": name, "group": rt.group, "kind": rt.plural, "uid": uid},
                        }),
                    ))
                } else {
                    let labels = LabelSelector::parse(params.get("labelSelector").unwrap_or_default())?;
                    let fields = FieldSelector::parse(
                        params.get("fieldSelector").unwrap_or_default(),
                        &rt.extra_field_selectors,
                    )?;
                    let items = st.delete_collection(&rt, rp.namespace.as_deref(), &labels, &fields, &opts)?;
                    shared.notify(&st);
                    let items: Vec<Value> =
                        items.iter().map(|o| present(o, &rt, &version, Presentation::Full)).collect();
                    Ok(json_response(
                        200,
                        &json!({
                            "kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(&version),
                            "metadata": {"resourceVersion": st.rv.to_string()}, "items": items,
                        }),
                    ))
                }
            }
            _ => unreachable!("verbs are matched above"),
        }
    }
    .await;
    with_warnings(result.unwrap_or_else(|e| error_response(&e)), warnings)
}

fn delete_options(params: &Params, body: &Bytes) -> Result<DeleteOpts, ApiError> {
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let policy = body.get("propagationPolicy").and_then(Value::as_str).or(params.get("propagationPolicy"));
    let propagation = match policy {
        None | Some("Background") => Propagation::Background,
        Some("Foreground") => Propagation::Foreground,
        Some("Orphan") => Propagation::Orphan,
        Some(other) => return Err(ApiError::bad_request(format!("unknown propagationPolicy {other:?}"))),
    };
    let orphan = body.get("orphanDependents").and_then(Value::as_bool) == Some(true);
    let dry_run = params.get("dryRun") == Some("All")
        || body.get("dryRun").and_then(Value::as_array).is_some_and(|d| d.iter().any(|x| x == "All"));
    Ok(DeleteOpts {
        propagation: if orphan { Propagation::Orphan } else { propagation },
        uid: body.pointer("/preconditions/uid").and_then(Value::as_str).map(String::from),
        resource_version: body.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(String::from),
        dry_run,
    })
}

fn list(
    shared: &Arc<Shared>,
    rt: &ResourceType,
    version: &str,
    ns: Option<&str>,
    params: &Params,
    pres: Presentation,
) -> Result<Response, ApiError> {
    let labels = LabelSelector::parse(params.get("labelSelector").unwrap_or_default())?;
    let fields = FieldSelector::parse(params.get("fieldSelector").unwrap_or_default(), &rt.extra_field_selectors)?;
    let limit = match params.get("limit") {
        Some(l) => Some(l.parse::<usize>().map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?),
        None => None,
    };
    let (mut page, new_events) = {
        let st = shared.lock();
        let page = st.list_page(rt, ns, &labels, &fields, limit, params.get("continue"))?;
        // Core events also show the events.k8s.io ones, converted (see the events module).
        let new_events: Vec<Value> = match st.registry.resolve("events.events.k8s.io") {
            Some(ert) if rt.group.is_empty() && rt.plural == "events" && params.get("continue").is_none() => st
                .iter(&ert.clone(), ns)
                .map(crate::events::to_core)
                .filter(|e| labels.matches(e.pointer("/metadata/labels")) && fields.matches(e))
                .collect(),
            _ => Vec::new(),
        };
        (page, new_events)
    };
    page.items.extend(new_events);
    let mut metadata = json!({"resourceVersion": page.resource_version.to_string()});
    if let Some(c) = page.continue_token {
        metadata["continue"] = json!(c);
    }
    if let Some(r) = page.remaining {
        metadata["remainingItemCount"] = json!(r);
    }
    if let Presentation::Table(what) = pres {
        let objs: Vec<Value> = page.items.iter().map(|o| with_api_version(o, rt, version)).collect();
        return Ok(json_response(200, &table::table(rt, version, &objs, what, metadata)));
    }
    let items: Vec<Value> = page.items.iter().map(|o| present(o, rt, version, pres)).collect();
    let (kind, api_version) = match pres {
        Presentation::Metadata => ("PartialObjectMetadataList".to_string(), "meta.k8s.io/v1".to_string()),
        _ => (format!("{}List", rt.kind), rt.api_version(version)),
    };
    Ok(json_response(200, &json!({"kind": kind, "apiVersion": api_version, "metadata": metadata, "items": items})))
}

/// Watch parameters.
struct WatchSpec {
    rt: ResourceType,
    version: String,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    start: Option<u64>,
    bookmarks: bool,
    initial_events: bool,
    timeout: Option<Duration>,
    pres: Presentation,
}

fn watch(
    shared: &Arc<Shared>,
    rt: &ResourceType,
    version: &str,
    ns: Option<String>,
    params: &Params,
    pres: Presentation,
) -> Result<Response, ApiError> {
    let labels = LabelSelector::parse(params.get("labelSelector").unwrap_or_default())?;
    let fields = FieldSelector::parse(params.get("fieldSelector").unwrap_or_default(), &rt.extra_field_selectors)?;
    let start = match params.get("resourceVersion") {
        None | Some("0") => None,
        Some(rv) => {
            Some(rv.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))?)
        }
    };
    let timeout = match params.get("timeoutSeconds") {
        Some(t) => Some(Duration::from_secs(
            t.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        )),
        None => None,
    };
    let initial_events = params.flag("sendInitialEvents");
    let spec = WatchSpec {
        rt: rt.clone(),
        version: version.to_string(),
        ns: ns.filter(|_| rt.namespaced),
        labels,
        fields,
        start: if initial_events { None } else { start },
        bookmarks: params.flag("allowWatchBookmarks"),
        initial_events,
        timeout,
        pres,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(run_watch(shared.clone(), spec, tx));
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx)) });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(header::CONTENT_TYPE, "application/json".parse().expect("valid header value"));
    Ok(resp)
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn bookmark(spec: &WatchSpec, rv: u64, initial_end: bool) -> Bytes {
    let (kind, api_version) = match spec.pres {
        Presentation::Metadata => ("PartialObjectMetadata".to_string(), "meta.k8s.io/v1".to_string()),
        Presentation::Table(_) => ("Table".to_string(), "meta.k8s.io/v1".to_string()),
        Presentation::Full => (spec.rt.kind.clone(), spec.rt.api_version(&spec.version)),
    };
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line("BOOKMARK", &json!({"kind": kind, "apiVersion": api_version, "metadata": metadata}))
}

fn gone_event(message: String) -> Bytes {
    event_line("ERROR", &ApiError::gone(message).to_status())
}

fn labels_of(obj: &Value) -> Option<&Value> {
    obj.pointer("/metadata/labels")
}

/// Stream one watch: the initial state if asked, then every matching change in order,
/// bookmarks, and the end (timeout, shutdown, 410 after history expiry).
async fn run_watch(shared: Arc<Shared>, spec: WatchSpec, tx: mpsc::Sender<Bytes>) {
    let mut changed = shared.changed.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    let deadline = spec.timeout.map(|t| tokio::time::Instant::now() + t);
    let resource = spec.rt.qualified();
    let mut out: Vec<Bytes> = Vec::new();
    let (mut cursor, epoch) = {
        let st = shared.lock();
        let cursor = match spec.start {
            Some(rv) => rv,
            None => {
                for obj in st.iter(&spec.rt, spec.ns.as_deref()) {
                    if spec.labels.matches(labels_of(obj)) && spec.fields.matches(obj) {
                        out.push(event_line("ADDED", &present(obj, &spec.rt, &spec.version, spec.pres)));
                    }
                }
                st.rv
            }
        };
        (cursor, st.epoch_for(&resource))
    };
    if spec.initial_events && spec.bookmarks {
        out.push(bookmark(&spec, cursor, true));
    }
    let mut first = true;
    let mut next_bookmark = tokio::time::Instant::now() + shared.config.bookmark_interval;
    loop {
        let mut gone = None;
        {
            let st = shared.lock();
            let too_old = || format!("too old resource version: {cursor} ({})", st.compacted_for(&resource));
            if st.epoch_for(&resource) != epoch {
                gone = Some(too_old());
            } else {
                match st.changes_after(cursor, &resource) {
                    Err(()) => gone = Some(too_old()),
                    Ok(changes) => {
                        for c in changes {
                            if c.resource != resource || spec.ns.as_ref().is_some_and(|n| *n != c.ns) {
                                continue;
                            }
                            if !spec.fields.matches(&c.object) {
                                continue;
                            }
                            let now_match = spec.labels.matches(labels_of(&c.object));
                            let kind = if spec.labels.is_empty() {
                                Some(c.kind)
                            } else {
                                let was_match =
                                    c.kind != ChangeType::Added && spec.labels.matches(c.prev_labels.as_ref());
                                match (c.kind, was_match, now_match) {
                                    (ChangeType::Deleted, w, n) if w || n => Some(ChangeType::Deleted),
                                    (ChangeType::Added, _, true) => Some(ChangeType::Added),
                                    (ChangeType::Modified, true, true) => Some(ChangeType::Modified),
                                    (ChangeType::Modified, false, true) => Some(ChangeType::Added),
                                    (ChangeType::Modified, true, false) => Some(ChangeType::Deleted),
                                    _ => None,
                                }
                            };
                            if let Some(kind) = kind {
                                out.push(event_line(
                                    kind.as_str(),
                                    &present(&c.object, &spec.rt, &spec.version, spec.pres),
                                ));
                            }
                        }
                        cursor = cursor.max(st.rv);
                    }
                }
            }
        }
        let is_gone = gone.is_some();
        if let Some(message) = gone {
            out.push(gone_event(message));
        }
        let now = tokio::time::Instant::now();
        if spec.bookmarks && !is_gone && (first || now >= next_bookmark) {
            out.push(bookmark(&spec, cursor, false));
            next_bookmark = now + shared.config.bookmark_interval;
        }
        first = false;
        for line in out.drain(..) {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if is_gone {
            return;
        }
        let sleep_deadline = deadline.unwrap_or(now + Duration::from_secs(24 * 3600));
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(next_bookmark), if spec.bookmarks => {}
            _ = tokio::time::sleep_until(sleep_deadline) => return,
            _ = shutdown.changed() => return,
            _ = tx.closed() => return,
        }
    }
}
