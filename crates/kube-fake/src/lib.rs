//! An in-process fake Kubernetes API server for tests and benchmarks of kube-rs clients and
//! controllers.
//!
//! It serves plain HTTP on `127.0.0.1:<free port>` from the test's own tokio runtime and
//! speaks the REST protocol `kube::Client` speaks, so the code under test runs unchanged:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kube::api::{Api, PostParams};
//!
//! let api = kube_fake::FakeApiServer::start().await;
//! api.install_crd(include_str!("../tests/fixtures/widgets-crd.yaml"))?; // YAML, JSON, or a CRD value
//! let client: kube::Client = api.client();
//! let cms: Api<ConfigMap> = Api::namespaced(client, "default");
//! cms.create(&PostParams::default(), &ConfigMap::default()).await.ok();
//! assert_eq!(api.writes_by_field_manager("my-operator"), 0);
//! # Ok(()) }
//! ```
//!
//! # What it serves
//!
//! - The builtin kinds in [`builtin_kinds`] (core configmaps, secrets, services, events,
//!   serviceaccounts, pods, namespaces, endpoints; apps deployments, statefulsets,
//!   replicasets, daemonsets; leases; `events.k8s.io` events; RBAC; CRDs; ...), plus every
//!   custom resource whose CRD has been created (through the API or [`FakeApiServer::install_crd`]).
//!   A resource whose CRD is not installed answers 404 `NotFound`, like the real server.
//! - Namespaced paths, all-namespaces list/watch paths, the `status` subresource, discovery
//!   (`/api`, `/apis`, `/apis/<group>/<version>`), `/version` and `/openapi`.
//! - Metadata-only requests (`Accept: ...;as=PartialObjectMetadata...`, used by
//!   `kube::runtime::metadata_watcher` and `Api::get_metadata`).
//!
//! # Semantics it reproduces
//!
//! - One global resourceVersion counter; uid, creationTimestamp and `generation: 1` on
//!   create; `generation` bumps on changes outside `.metadata` (and outside `.status` for
//!   kinds with a status subresource), and when deletion starts on an object with finalizers.
//!   A write that leaves the object (and its field ownership) unchanged is a no-op: no new
//!   resourceVersion, no generation bump, no watch event.
//! - Status subresource: the main endpoint ignores `.status` (and drops it on create), `/status`
//!   changes only `.status`.
//! - Optimistic concurrency: PUT with a stale resourceVersion → 409 `Conflict`; a
//!   resourceVersion in a patch body is a precondition too. PUT of a custom resource without
//!   resourceVersion → 422, as on the real server. Create of an existing name → 409
//!   `AlreadyExists`. `generateName` works. Errors are `Status` objects.
//! - List: label selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!`), field selectors
//!   (`metadata.name`, `metadata.namespace`, and a few per-kind fields, e.g. for events; any
//!   other field is a 400 like on the real server), `limit` + `continue` paging, List
//!   `metadata.resourceVersion`.
//! - Watch: newline-delimited `{type, object}` events for every change after the given
//!   resourceVersion, in order; `resourceVersion` empty or `0` starts with synthetic ADDED
//!   events for the current objects; `sendInitialEvents=true` (streaming lists) ends the
//!   initial events with the `k8s.io/initial-events-end` bookmark; BOOKMARK events when
//!   `allowWatchBookmarks=true` (once caught up, then every
//!   [`FakeApiServerBuilder::bookmark_interval`]); the stream closes after `timeoutSeconds`;
//!   an object that stops (starts) matching a label-selected watch is reported DELETED
//!   (ADDED). A resourceVersion older than the kept history gets an ERROR event with a 410
//!   `Expired` Status; [`FakeApiServer::expire_history`] forces that (also for open watches).
//! - Deletion: objects with finalizers get `deletionTimestamp` + `deletionGracePeriodSeconds: 0`
//!   and stay (MODIFIED, answer 202 with the object); removing the last finalizer removes them
//!   (DELETED); adding a finalizer once deletion started → 422. Without finalizers the object
//!   goes at once. Preconditions (uid, resourceVersion) → 409 when they fail. Garbage
//!   collection runs in the background after each removal: dependents whose
//!   `ownerReferences` name the removed owner's uid are deleted (cascading, honouring their
//!   own finalizers), or just lose the reference if another owner still lives.
//!   `propagationPolicy: Orphan` leaves dependents without the reference (through the
//!   `orphan` finalizer when the owner has other finalizers); `Foreground` keeps the owner
//!   (finalizer `foregroundDeletion`) until its dependents are gone. Deleting a namespace
//!   deletes its objects.
//! - Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902, all or nothing, failed
//!   `test` → 422; a `test` for `null` passes on a missing path like on the real server),
//!   strategic merge patch for builtin kinds (simplified, see below; custom resources answer
//!   415 like the real server), and server-side apply.
//! - Server-side apply (`application/apply-patch+yaml`, JSON or YAML body, `fieldManager`
//!   required, `force`): ownership is tracked per manager, operation (Apply/Update) and
//!   subresource and shown in `metadata.managedFields` (FieldsV1). A manager owns exactly
//!   the fields it applied; fields it applied before and omits now are removed unless
//!   another manager owns them; associative lists merge per item (`containers`,
//!   `initContainers`, `env`, `volumes`, `imagePullSecrets` by `name`; container `ports` by
//!   `containerPort`; Service `ports` by `port`; `volumeMounts` by `mountPath`;
//!   `ownerReferences` by `uid`; `conditions` by `type`; `finalizers` as a set; a CRD
//!   schema's `x-kubernetes-list-type`/`x-kubernetes-list-map-keys` win), other lists are
//!   atomic. Giving a field another manager owns a different value → 409 `Conflict` listing
//!   the fields, unless `force=true`, which takes them over. Non-apply writes take ownership
//!   of the fields they change (the manager is `fieldManager`, or the User-Agent prefix), so
//!   an apply after a manual edit conflicts without force. Apply to a missing object
//!   creates it.
//! - CRDs: creating one serves its kind at once (every served version; `status`
//!   subresource when declared) and, as the real controllers do, marks it `NamesAccepted`
//!   and `Established` in a following status write. Deleting it removes its custom resources.
//! - Events (`events.k8s.io/v1` and core `v1`) and Leases are plain objects;
//!   `kube::runtime::events::Recorder` works (create, then merge patches of the series).
//! - `dryRun=All` is honoured for writes.
//!
//! # Test helpers
//!
//! Besides the HTTP API, the handle reads and writes the store directly, for setup and
//! assertions: [`FakeApiServer::get`] / [`get_as`](FakeApiServer::get_as) /
//! [`list`](FakeApiServer::list) / [`list_as`](FakeApiServer::list_as) /
//! [`events`](FakeApiServer::events); [`create`](FakeApiServer::create),
//! [`merge_patch`](FakeApiServer::merge_patch), [`patch_status`](FakeApiServer::patch_status)
//! (e.g. a Deployment's readiness) and [`delete`](FakeApiServer::delete), which follow the
//! same rules as the API and notify watches; [`expire_history`](FakeApiServer::expire_history);
//! and the request log: [`requests`](FakeApiServer::requests) (method, verb, resource,
//! namespace, name, `fieldManager`, `User-Agent`, patch type, answer code of every request),
//! [`writes_by_field_manager`](FakeApiServer::writes_by_field_manager),
//! [`writes_by_user_agent`](FakeApiServer::writes_by_user_agent),
//! [`write_counts_by_verb`](FakeApiServer::write_counts_by_verb),
//! [`count_requests`](FakeApiServer::count_requests) and
//! [`clear_requests`](FakeApiServer::clear_requests).
//!
//! # A dev API server for real clients
//!
//! `kube-fake serve` (see `src/main.rs`) runs it as a program for kubectl, helm and the
//! operator binary: HTTPS with a certificate made at start, a kubeconfig for the admin, and:
//!
//! - **authentication** (`auth`): bearer tokens, the admin's and ServiceAccounts' (TokenRequest,
//!   `kubectl create token`), impersonation; [`FakeApiServerBuilder::require_authentication`];
//! - **RBAC** (`rbac`) from the stored Roles, ClusterRoles and bindings, namespace-scoped;
//!   server-side apply or PUT that creates needs `create`; OwnerReferencesPermissionEnforcement
//!   (`blockOwnerDeletion` needs `update` on the owner's `finalizers`); access reviews
//!   (`kubectl auth can-i`, `--list`, `whoami`);
//! - **discovery** (`discovery`): aggregated v2 and legacy, short names and categories;
//!   **OpenAPI** (`openapi`) v2 and v3 with the official 1.35 schemas of the builtin kinds and
//!   every CRD's schema;
//! - **admission** (`admission`, `schema`, `defaulting`): CRD structural-schema and CEL
//!   validation, pruning, defaulting and `fieldValidation=Strict|Warn|Ignore`, unknown and
//!   required fields of builtin kinds, a few builtin defaults (replicas, Service cluster IPs);
//! - **Table output** (`table`) for `kubectl get`: CRD printer columns, standard columns of
//!   the builtin kinds;
//! - **readiness simulation** (`readiness`, [`FakeApiServerBuilder::simulate_readiness`]):
//!   Deployments and StatefulSets report ready replicas after a short delay;
//! - protobuf request bodies for the kinds kubectl's and helm's typed clients send that way
//!   (`proto`).
//!
//! In-process, by default, a client without a token is the admin and RBAC does not apply to it;
//! clients with a ServiceAccount's token ([`FakeApiServer::service_account_token`],
//! [`FakeApiServer::client_with_token`]) get exactly what RBAC grants.
//!
//! # Simplifications (nothing an operator should depend on)
//!
//! - Not a cluster: no kubelet, scheduler or controller manager, so no Pod, ReplicaSet,
//!   PersistentVolumeClaim or Endpoints object is ever made, and nothing listens on a Service's
//!   IP. Readiness is simulated (above), not observed.
//! - Admission is the above only: no webhooks, quotas, limit ranges or pod security; builtin
//!   kinds are not held to their Go validation (name formats, label syntax, ...), see `schema`.
//!   Namespaces need not exist before objects are created in them unless
//!   [`FakeApiServerBuilder::require_namespaces`] (on in `kube-fake serve`).
//! - Each module says what else it leaves out (`rbac`, `openapi`, `table`, `proto`).
//! - All served versions of a CRD share one storage; objects are returned with the requested
//!   `apiVersion` and no other conversion.
//! - Pagination is not a snapshot: later pages show the current state after the previous
//!   page's last key, with the first page's resourceVersion (clients that watch from it may see
//!   a change twice, which watchers tolerate).
//! - A watch or list with a resourceVersion newer than the server's is served as "from now";
//!   `resourceVersionMatch` is accepted and ignored (every read is the latest state).
//! - Garbage collection reacts to removals; it does not delete objects created with
//!   references to owners that never existed. Foreground deletion waits for all dependents
//!   (not only those with `blockOwnerDeletion`) and deletes them with background propagation.
//!   Deleting a namespace removes its objects at once (no `Terminating` phase).
//! - Strategic merge patch knows only the merge keys listed above and ignores
//!   `$setElementOrder`/`$retainKeys`; `$patch: delete|replace` and `$deleteFromPrimitiveList`
//!   work.
//! - Server-side apply: the field ownership model is structured-merge-diff's, but conflicts are
//!   computed on leaves only, an explicit `null` in an applied configuration means "not
//!   applied", managedFields sent by clients are ignored (the server keeps its own), and fields
//!   removed by an apply leave no empty parent maps or lists behind.
//! - `generation` is kept for every kind (the real server omits it for some builtin kinds,
//!   e.g. ConfigMap).
//! - Core `v1` events and `events.k8s.io/v1` events are stored separately (the real server
//!   converts between them), except that listing core events also shows the `events.k8s.io`
//!   ones converted (so `kubectl get events` shows what kube's Recorder wrote; watches do not);
//!   [`FakeApiServer::events`] returns both.
//! - Without the readiness simulation, Deployments and StatefulSets never get status unless a
//!   test writes it (through `/status`, or [`FakeApiServer::patch_status`]).

mod admission;
mod auth;
mod defaulting;
mod discovery;
mod error;
mod events;
mod fields;
mod http;
mod openapi;
mod patch;
mod proto;
mod rbac;
mod readiness;
mod registry;
mod requests;
mod reviews;
mod schema;
mod selector;
mod store;
mod table;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

pub use admission::FieldValidation;
pub use auth::{ADMIN_USER, User};
pub use error::{ApiError, FakeError};
pub use openapi::KUBERNETES_VERSION;
pub use registry::{ResourceType, builtin_kinds};
pub use requests::RequestRecord;

use http::{ServerConfig, Shared};
use patch::PatchType;
use store::{DeleteOpts, State, WriteCtx};

/// The field manager the test-facing helpers write as.
pub const TEST_MANAGER: &str = "kube-fake-test";

/// Settings for a [`FakeApiServer`].
#[derive(Debug, Clone)]
pub struct FakeApiServerBuilder {
    kinds: Vec<ResourceType>,
    history_limit: usize,
    bookmark_interval: Duration,
    gc_delay: Duration,
    require_auth: bool,
    readiness: Option<Duration>,
    require_namespaces: bool,
    listen: std::net::SocketAddr,
    tls: bool,
}

impl Default for FakeApiServerBuilder {
    fn default() -> Self {
        FakeApiServerBuilder {
            kinds: builtin_kinds(),
            history_limit: 10_000,
            bookmark_interval: Duration::from_secs(5),
            gc_delay: Duration::ZERO,
            require_auth: false,
            readiness: None,
            require_namespaces: false,
            listen: ([127, 0, 0, 1], 0).into(),
            tls: false,
        }
    }
}

impl FakeApiServerBuilder {
    /// Serve one more builtin-like kind.
    pub fn kind(mut self, rt: ResourceType) -> Self {
        self.kinds.retain(|k| !(k.group == rt.group && k.plural == rt.plural));
        self.kinds.push(rt);
        self
    }

    /// How many changes the server keeps for watches (default 10 000). Watches from an older
    /// resourceVersion get 410 Gone.
    pub fn history_limit(mut self, changes: usize) -> Self {
        self.history_limit = changes;
        self
    }

    /// How often an idle watch with `allowWatchBookmarks=true` gets a BOOKMARK (default 5 s).
    pub fn bookmark_interval(mut self, every: Duration) -> Self {
        self.bookmark_interval = every;
        self
    }

    /// How long the garbage collector waits after a removal before it acts (default: it acts
    /// right after the write, but always after the write's response).
    pub fn gc_delay(mut self, delay: Duration) -> Self {
        self.gc_delay = delay;
        self
    }

    /// Refuse requests without a valid bearer token (401), as a real server does. Off by default,
    /// so that [`FakeApiServer::client`] (no token) acts as the admin; tokens are checked and
    /// RBAC enforced for service accounts either way.
    pub fn require_authentication(mut self) -> Self {
        self.require_auth = true;
        self
    }

    /// Simulate the Deployment and StatefulSet controllers: such a workload reports all its
    /// replicas ready `after` its generation changed (see the `readiness` module docs).
    pub fn simulate_readiness(mut self, after: Duration) -> Self {
        self.readiness = Some(after);
        self
    }

    /// Refuse objects in namespaces that do not exist (404), as a real server does. Off by
    /// default for tests that do not create their namespaces.
    pub fn require_namespaces(mut self) -> Self {
        self.require_namespaces = true;
        self
    }

    /// Serve HTTPS with a certificate made for this run (see [`FakeApiServer::ca_pem`]), as
    /// kubectl and helm need: they send tokens only over TLS. Off by default (plain HTTP).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Listen on this address instead of a free loopback port.
    pub fn listen(mut self, addr: std::net::SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Bind a free loopback port (or [`listen`](Self::listen)'s) and serve. Must be called within
    /// a tokio runtime; panics when the address cannot be bound (see [`try_start`](Self::try_start)).
    pub async fn start(self) -> FakeApiServer {
        self.try_start().await.expect("bind the fake API server's address")
    }

    /// Like [`start`](Self::start), with the bind error returned.
    pub async fn try_start(self) -> std::io::Result<FakeApiServer> {
        let mut state = State::new(self.kinds, self.history_limit);
        state.require_namespaces = self.require_namespaces;
        let shared = Shared::new(
            state,
            ServerConfig {
                bookmark_interval: self.bookmark_interval,
                gc_delay: self.gc_delay,
                require_auth: self.require_auth,
            },
        );
        let listener = tokio::net::TcpListener::bind(self.listen).await?;
        let addr = listener.local_addr()?;
        let router = axum::Router::new().fallback(http::dispatch).with_state(shared.clone());
        let mut shutdown = shared.shutdown.subscribe();
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        let certs = if self.tls { Some(tls::make_certs(addr.ip()).map_err(std::io::Error::other)?) } else { None };
        let server = match &certs {
            Some(c) => {
                let listener = tls::TlsListener::new(listener, c)?;
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(stop).await {
                        tracing::warn!("kube-fake server stopped: {e}");
                    }
                })
            }
            None => tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(stop).await {
                    tracing::warn!("kube-fake server stopped: {e}");
                }
            }),
        };
        let ca = certs.map(|c| (c.ca_pem, c.ca_der));
        let gc = tokio::spawn(shared.clone().run_gc_loop());
        let readiness = self.readiness.map(|delay| tokio::spawn(shared.clone().run_readiness_loop(delay)));
        tracing::debug!("kube-fake API server on http://{addr}");
        Ok(FakeApiServer { shared, addr, server: Some(server), gc: Some(gc), readiness, ca })
    }
}

/// A running fake API server. Dropping it stops the server.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Option<JoinHandle<()>>,
    gc: Option<JoinHandle<()>>,
    readiness: Option<JoinHandle<()>>,
    /// With TLS: the CA certificate (PEM, DER) that signed the server's.
    ca: Option<(String, Vec<u8>)>,
}

impl FakeApiServer {
    /// Start a server with the builtin kinds and default settings.
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    /// Settings before starting.
    pub fn builder() -> FakeApiServerBuilder {
        FakeApiServerBuilder::default()
    }

    /// The server's address (loopback).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, `http://127.0.0.1:<port>` (`https://` with [`FakeApiServerBuilder::tls`]).
    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The CA certificate (PEM) that signed the server's, with [`FakeApiServerBuilder::tls`].
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca.as_ref().map(|(pem, _)| pem.as_str())
    }

    /// A `kube::Config` for this server (default namespace `default`; trusting its CA).
    pub fn config(&self) -> kube::Config {
        let mut cfg = kube::Config::new(self.url().parse().expect("the server URL is a valid URI"));
        if let Some((_, der)) = &self.ca {
            cfg.root_cert = Some(vec![der.clone()]);
        }
        cfg
    }

    /// A client for this server. It sends no token: unless the server requires
    /// authentication, it acts as the admin.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("a kube client for a plain-HTTP loopback URL")
    }

    /// The admin's bearer token (user `kubernetes-admin`, group `system:masters`).
    pub fn admin_token(&self) -> String {
        self.shared.lock().tokens.admin.clone()
    }

    /// A token for a ServiceAccount, as `kubectl create token` gets one (valid one hour, and
    /// only while that ServiceAccount exists). The ServiceAccount must exist.
    pub fn service_account_token(&self, namespace: &str, name: &str) -> Result<String, FakeError> {
        let answer = reviews::token_request(&self.shared, namespace, name, &json!({}))?;
        Ok(answer["status"]["token"].as_str().unwrap_or_default().to_string())
    }

    /// A client that sends this bearer token.
    pub fn client_with_token(&self, token: &str) -> kube::Client {
        let mut cfg = self.config();
        cfg.auth_info.token = Some(token.to_string().into());
        kube::Client::try_from(cfg).expect("a kube client for a plain-HTTP loopback URL")
    }

    /// A kubeconfig (YAML) for this server: context `kube-fake`, user `admin` with
    /// [`admin_token`](Self::admin_token).
    pub fn kubeconfig(&self) -> String {
        kubeconfig_yaml(&self.url(), self.ca_pem(), "admin", &self.admin_token())
    }

    /// Create a CRD from YAML, JSON, or a `serde_json::Value`, as if a user created it (so its
    /// kind is served at once and the CRD is `Established`). Replaces an existing CRD of the
    /// same name.
    pub fn install_crd(&self, crd: impl IntoManifest) -> Result<(), FakeError> {
        let crd = crd.into_manifest()?;
        let mut st = self.shared.lock();
        let rt = st.registry.resolve("customresourcedefinitions.apiextensions.k8s.io").cloned().expect("builtin kind");
        let ctx = WriteCtx::internal(TEST_MANAGER, &rt);
        let name = crd.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        let result = match st.get(&rt, "", &name).map(|s| s.obj.clone()) {
            Some(existing) => {
                let mut body = crd;
                body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"].clone();
                st.replace(&rt, "", &name, body, &ctx).map(|_| ())
            }
            None => st.create(&rt, "", crd, &ctx).map(|_| ()),
        };
        self.shared.notify(&st);
        result.map_err(FakeError::from)
    }

    /// The object, as the API would return it. `resource` is a plural (`deployments`), a
    /// qualified plural (`servicebuses.busbar.dev`) or a kind (`Deployment`); `ns` is
    /// ignored for cluster-scoped kinds.
    pub fn get(&self, resource: &str, ns: &str, name: &str) -> Option<Value> {
        let st = self.shared.lock();
        let rt = st.registry.resolve(resource)?.clone();
        st.get(&rt, ns, name).map(|s| s.obj.clone())
    }

    /// The object as a typed resource (`api.get_as::<Deployment>("ns", "name")`).
    pub fn get_as<K>(&self, ns: &str, name: &str) -> Option<K>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        let value = self.get(&qualified::<K>(), ns, name)?;
        Some(serde_json::from_value(value).expect("stored objects deserialize into their kind"))
    }

    /// All objects of a kind, in one namespace (`Some(ns)`) or all, in key order.
    pub fn list(&self, resource: &str, ns: Option<&str>) -> Vec<Value> {
        let st = self.shared.lock();
        let Some(rt) = st.registry.resolve(resource).cloned() else { return Vec::new() };
        st.iter(&rt, ns).cloned().collect()
    }

    /// All objects of a kind, typed.
    pub fn list_as<K>(&self, ns: Option<&str>) -> Vec<K>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        self.list(&qualified::<K>(), ns)
            .into_iter()
            .map(|v| serde_json::from_value(v).expect("stored objects deserialize into their kind"))
            .collect()
    }

    /// The events in a namespace (`events.k8s.io/v1` first, then core `v1`), oldest first by
    /// creation.
    pub fn events(&self, ns: &str) -> Vec<Value> {
        let mut events = self.list("events.events.k8s.io", Some(ns));
        events.extend(self.list("events", Some(ns)));
        events.sort_by_key(|e| {
            e.pointer("/metadata/resourceVersion").and_then(Value::as_str).and_then(|r| r.parse::<u64>().ok())
        });
        events
    }

    /// Create an object without going through HTTP (for seeding). The kind comes from its
    /// `apiVersion` and `kind`; the field manager is [`TEST_MANAGER`].
    pub fn create(&self, obj: impl IntoManifest) -> Result<Value, FakeError> {
        let obj = obj.into_manifest()?;
        let mut st = self.shared.lock();
        let rt = resolve_by_type(&st, &obj)?;
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_string();
        let mut ctx = WriteCtx::internal(TEST_MANAGER, &rt);
        ctx.version = version_of(&obj, &rt);
        let result = st.create(&rt, &ns, obj, &ctx);
        self.shared.notify(&st);
        Ok(result?)
    }

    /// Server-side apply as `field_manager` (with force), without the schema and CEL
    /// validation: for a test that needs an object a real server would refuse today, as if it
    /// had been stored before its CRD's schema became stricter. Later writes to it are
    /// ratcheted (see the `admission` docs), and an apply by the same manager replaces it.
    pub fn apply_unvalidated(&self, field_manager: &str, obj: impl IntoManifest) -> Result<Value, FakeError> {
        let obj = obj.into_manifest()?;
        let mut st = self.shared.lock();
        let rt = resolve_by_type(&st, &obj)?;
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_string();
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        let mut ctx = WriteCtx::internal(field_manager, &rt);
        ctx.version = version_of(&obj, &rt);
        ctx.skip_validation = true;
        let result = st.patch(&rt, &ns, &name, PatchType::Apply, &obj, true, &ctx);
        self.shared.notify(&st);
        Ok(result?.obj)
    }

    /// Merge-patch an object's `.status` through the status subresource semantics (for kinds
    /// without a status subresource, the patch applies to the whole object). The field
    /// manager is [`TEST_MANAGER`].
    pub fn patch_status(&self, resource: &str, ns: &str, name: &str, status_patch: Value) -> Result<Value, FakeError> {
        let mut st = self.shared.lock();
        let rt = st.registry.resolve(resource).cloned().ok_or_else(|| FakeError::UnknownResource(resource.into()))?;
        let mut ctx = WriteCtx::internal(TEST_MANAGER, &rt);
        ctx.status = rt.status_subresource;
        let result = st.patch(&rt, ns, name, PatchType::Merge, &json!({ "status": status_patch }), false, &ctx);
        self.shared.notify(&st);
        Ok(result?.obj)
    }

    /// Merge-patch an object (main endpoint) as [`TEST_MANAGER`].
    pub fn merge_patch(&self, resource: &str, ns: &str, name: &str, patch: Value) -> Result<Value, FakeError> {
        let mut st = self.shared.lock();
        let rt = st.registry.resolve(resource).cloned().ok_or_else(|| FakeError::UnknownResource(resource.into()))?;
        let ctx = WriteCtx::internal(TEST_MANAGER, &rt);
        let result = st.patch(&rt, ns, name, PatchType::Merge, &patch, false, &ctx);
        self.shared.notify(&st);
        Ok(result?.obj)
    }

    /// Delete an object (background propagation), as a user would.
    pub fn delete(&self, resource: &str, ns: &str, name: &str) -> Result<(), FakeError> {
        let mut st = self.shared.lock();
        let rt = st.registry.resolve(resource).cloned().ok_or_else(|| FakeError::UnknownResource(resource.into()))?;
        let result = st.delete(&rt, ns, name, &DeleteOpts::default());
        self.shared.notify(&st);
        result?;
        Ok(())
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Forget the change history: watches from any resourceVersion so far get an ERROR event
    /// with a 410 Status (open watches at once), so watchers must re-list, as after an API
    /// server restart. See [`expire_history_of`](Self::expire_history_of) for one resource.
    pub fn expire_history(&self) {
        let mut st = self.shared.lock();
        st.expire_history();
        self.shared.notify(&st);
    }

    /// [`expire_history`](Self::expire_history) for one resource (`deployments`,
    /// `servicebuses.busbar.dev`, ...): only its watches get the 410 and re-list.
    ///
    /// Useful with `kube::runtime::Controller`, which sends the errors of all its watchers
    /// through one shared backoff (0.8 s, doubling): after a global expiry, a controller with
    /// N watchers takes about 0.8·(2^N − 1) s until the last one has re-listed.
    pub fn expire_history_of(&self, resource: &str) -> Result<(), FakeError> {
        let mut st = self.shared.lock();
        let rt = st.registry.resolve(resource).cloned().ok_or_else(|| FakeError::UnknownResource(resource.into()))?;
        st.expire_history_of(&rt);
        self.shared.notify(&st);
        Ok(())
    }

    /// Every request served so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// How many requests were served.
    pub fn request_count(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// How many served requests match `pred`.
    pub fn count_requests(&self, pred: impl Fn(&RequestRecord) -> bool) -> usize {
        self.shared.lock().requests.iter().filter(|r| pred(r)).count()
    }

    /// How many writes (create, update, patch, delete, deletecollection) were served,
    /// whatever their outcome.
    pub fn write_count(&self) -> usize {
        self.count_requests(RequestRecord::is_write)
    }

    /// Writes attributed to a field manager (the `fieldManager` parameter, or else the
    /// User-Agent prefix, see [`RequestRecord::manager`]).
    pub fn writes_by_field_manager(&self, manager: &str) -> usize {
        self.count_requests(|r| r.is_write() && r.manager() == manager)
    }

    /// Writes whose User-Agent header contains `needle`.
    pub fn writes_by_user_agent(&self, needle: &str) -> usize {
        self.count_requests(|r| r.is_write() && r.user_agent.as_deref().is_some_and(|ua| ua.contains(needle)))
    }

    /// Write counts per verb (`create`, `update`, `patch`, ...).
    pub fn write_counts_by_verb(&self) -> std::collections::BTreeMap<String, usize> {
        let mut out = std::collections::BTreeMap::new();
        for r in self.shared.lock().requests.iter().filter(|r| r.is_write()) {
            *out.entry(r.verb.clone()).or_insert(0) += 1;
        }
        out
    }

    /// Forget the request log (e.g. after a test's setup).
    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }

    /// Stop serving: open watches end, the port closes. Waits (boundedly) for the server task.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.send_replace(true);
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
        for task in [self.gc.take(), self.readiness.take()].into_iter().flatten() {
            task.abort();
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        for task in [self.server.take(), self.gc.take(), self.readiness.take()].into_iter().flatten() {
            task.abort();
        }
    }
}

/// A kubeconfig with one cluster (`server`, trusting the CA `ca_pem` if given), one user
/// (`user`, bearer `token`) and the current context `kube-fake` joining them.
pub fn kubeconfig_yaml(server: &str, ca_pem: Option<&str>, user: &str, token: &str) -> String {
    let mut cluster = json!({"server": server});
    if let Some(pem) = ca_pem {
        // ByteString serializes as base64, the form `certificate-authority-data` takes.
        cluster["certificate-authority-data"] =
            serde_json::to_value(k8s_openapi::ByteString(pem.as_bytes().to_vec())).expect("bytes serialize");
    }
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kube-fake", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "kube-fake", "context": {"cluster": "kube-fake", "user": user}}],
        "current-context": "kube-fake",
        "preferences": {},
    });
    serde_yaml_ng::to_string(&doc).expect("a kubeconfig serializes")
}

fn qualified<K: kube::Resource<DynamicType = ()>>() -> String {
    let group = K::group(&());
    let plural = K::plural(&());
    if group.is_empty() { plural.to_string() } else { format!("{plural}.{group}") }
}

fn version_of(obj: &Value, rt: &ResourceType) -> String {
    let av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let v = av.rsplit('/').next().unwrap_or_default();
    if rt.serves(v) { v.to_string() } else { rt.versions[0].clone() }
}

fn resolve_by_type(st: &State, obj: &Value) -> Result<ResourceType, FakeError> {
    let av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    let (group, version) = av.rsplit_once('/').unwrap_or(("", av));
    st.registry.by_kind(group, version, kind).cloned().ok_or_else(|| FakeError::UnknownResource(format!("{av} {kind}")))
}

/// Something that can be turned into a manifest: YAML or JSON text, a `serde_json::Value`,
/// or any serializable object (e.g. a `CustomResourceDefinition` from k8s-openapi).
pub trait IntoManifest {
    /// The manifest as JSON.
    fn into_manifest(self) -> Result<Value, FakeError>;
}

impl IntoManifest for &str {
    fn into_manifest(self) -> Result<Value, FakeError> {
        serde_yaml_ng::from_str(self).map_err(|e| FakeError::Parse(e.to_string()))
    }
}

impl IntoManifest for String {
    fn into_manifest(self) -> Result<Value, FakeError> {
        self.as_str().into_manifest()
    }
}

impl IntoManifest for Value {
    fn into_manifest(self) -> Result<Value, FakeError> {
        Ok(self)
    }
}

impl IntoManifest for &Value {
    fn into_manifest(self) -> Result<Value, FakeError> {
        Ok(self.clone())
    }
}

impl IntoManifest for &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    fn into_manifest(self) -> Result<Value, FakeError> {
        serde_json::to_value(self).map_err(|e| FakeError::Parse(e.to_string()))
    }
}

impl IntoManifest for k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    fn into_manifest(self) -> Result<Value, FakeError> {
        (&self).into_manifest()
    }
}
