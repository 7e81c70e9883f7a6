//! The kinds the fake serves: a small table of builtin kinds, plus one entry per served
//! version of every installed CustomResourceDefinition.

use serde_json::Value;

/// One served resource type: where it lives in the REST tree and how the server treats it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group (`/api/v1`).
    pub group: String,
    /// Served versions. The first is the preferred one.
    pub versions: Vec<String>,
    /// Lower-case plural used in URLs, e.g. `deployments`.
    pub plural: String,
    /// `kind` of the objects, e.g. `Deployment`.
    pub kind: String,
    /// Namespaced (`true`) or cluster scoped.
    pub namespaced: bool,
    /// Whether the kind has a `status` subresource: then the main endpoint ignores `.status`,
    /// `/status` changes only `.status`, and status changes never bump `generation`.
    pub status_subresource: bool,
    /// Defined by a CRD (then: strategic merge patch is refused with 415, and PUT needs a
    /// resourceVersion, as on the real server).
    pub custom: bool,
    /// A PUT on a missing object creates it (true for leases and events on the real server).
    pub create_on_update: bool,
    /// Field selector paths accepted besides `metadata.name` and `metadata.namespace`.
    pub extra_field_selectors: Vec<String>,
    /// For CRDs: the `openAPIV3Schema` of each served version (validation, pruning, defaulting,
    /// and `x-kubernetes-list-type` in server-side apply).
    pub schemas: Vec<(String, Value)>,
    /// Short names in discovery (`deploy`, `sbus`), which `kubectl get` resolves.
    pub short_names: Vec<String>,
    /// Categories in discovery (`all`), which `kubectl get all` resolves.
    pub categories: Vec<String>,
    /// Lower-case singular name (`deployment`).
    pub singular: String,
    /// For CRDs: the `additionalPrinterColumns` of each served version (Table output).
    pub printer_columns: Vec<(String, Vec<Value>)>,
    /// Not stored: a review or request kind that only answers `create`
    /// (SelfSubjectAccessReview, SelfSubjectRulesReview, SubjectAccessReview, SelfSubjectReview).
    pub create_only: bool,
}

impl ResourceType {
    /// A builtin kind: `ResourceType::builtin("apps", "v1", "deployments", "Deployment", true, true)`.
    pub fn builtin(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool, status: bool) -> Self {
        ResourceType {
            group: group.to_string(),
            versions: vec![version.to_string()],
            plural: plural.to_string(),
            kind: kind.to_string(),
            namespaced,
            status_subresource: status,
            custom: false,
            create_on_update: false,
            extra_field_selectors: Vec::new(),
            schemas: Vec::new(),
            short_names: Vec::new(),
            categories: Vec::new(),
            singular: kind.to_lowercase(),
            printer_columns: Vec::new(),
            create_only: false,
        }
    }

    /// Short names for discovery (`deploy`).
    pub fn short_names(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|n| n.to_string()).collect();
        self
    }

    /// Categories for discovery (`all`).
    pub fn categories(mut self, names: &[&str]) -> Self {
        self.categories = names.iter().map(|n| n.to_string()).collect();
        self
    }

    /// A kind that is not stored and only answers `create` (access reviews).
    pub fn create_only(mut self) -> Self {
        self.create_only = true;
        self
    }

    /// A PUT on a missing object creates it.
    pub fn create_on_update(mut self) -> Self {
        self.create_on_update = true;
        self
    }

    /// Accept these field selector paths as well.
    pub fn field_selectors(mut self, paths: &[&str]) -> Self {
        self.extra_field_selectors.extend(paths.iter().map(|p| p.to_string()));
        self
    }

    /// `plural.group` (or just `plural` for the core group), as in the real server's messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }

    /// `group/version` (or `v1` for core) for a served version.
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() { version.to_string() } else { format!("{}/{version}", self.group) }
    }

    /// `apiVersion` of the preferred version.
    pub fn preferred_api_version(&self) -> String {
        self.api_version(&self.versions[0])
    }

    pub(crate) fn serves(&self, version: &str) -> bool {
        self.versions.iter().any(|v| v == version)
    }

    /// The CRD schema of a version, if any.
    pub(crate) fn schema(&self, version: &str) -> Option<&Value> {
        self.schemas.iter().find(|(v, _)| v == version).map(|(_, s)| s)
    }

    /// The CRD printer columns of a version (empty for builtin kinds).
    pub(crate) fn columns(&self, version: &str) -> &[Value] {
        self.printer_columns.iter().find(|(v, _)| v == version).map(|(_, c)| c.as_slice()).unwrap_or(&[])
    }

    /// The verbs discovery lists for this kind.
    pub(crate) fn verbs(&self) -> Vec<&'static str> {
        if self.create_only {
            vec!["create"]
        } else {
            vec!["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        }
    }
}

const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

const NEW_EVENT_FIELDS: &[&str] = &[
    "regarding.kind",
    "regarding.namespace",
    "regarding.name",
    "regarding.uid",
    "regarding.apiVersion",
    "reason",
    "reportingController",
    "type",
];

/// The builtin kinds. Adding one is one line. Short names and categories are the real
/// server's (`kubectl api-resources`), so `kubectl get deploy` and `kubectl get all` resolve.
pub fn builtin_kinds() -> Vec<ResourceType> {
    use ResourceType as R;
    const ALL: &[&str] = &["all"];
    vec![
        R::builtin("", "v1", "namespaces", "Namespace", false, true).short_names(&["ns"]),
        R::builtin("", "v1", "configmaps", "ConfigMap", true, false).short_names(&["cm"]),
        R::builtin("", "v1", "secrets", "Secret", true, false).field_selectors(&["type"]),
        R::builtin("", "v1", "services", "Service", true, true).short_names(&["svc"]).categories(ALL),
        R::builtin("", "v1", "serviceaccounts", "ServiceAccount", true, false).short_names(&["sa"]),
        R::builtin("", "v1", "pods", "Pod", true, true)
            .field_selectors(&["spec.nodeName", "status.phase"])
            .short_names(&["po"])
            .categories(ALL),
        R::builtin("", "v1", "endpoints", "Endpoints", true, false).create_on_update().short_names(&["ep"]),
        R::builtin("", "v1", "events", "Event", true, false)
            .create_on_update()
            .field_selectors(EVENT_FIELDS)
            .short_names(&["ev"]),
        R::builtin("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", true, true).short_names(&["pvc"]),
        R::builtin("apps", "v1", "deployments", "Deployment", true, true).short_names(&["deploy"]).categories(ALL),
        R::builtin("apps", "v1", "statefulsets", "StatefulSet", true, true).short_names(&["sts"]).categories(ALL),
        R::builtin("apps", "v1", "replicasets", "ReplicaSet", true, true).short_names(&["rs"]).categories(ALL),
        R::builtin("apps", "v1", "daemonsets", "DaemonSet", true, true).short_names(&["ds"]).categories(ALL),
        R::builtin("apps", "v1", "controllerrevisions", "ControllerRevision", true, false),
        R::builtin("batch", "v1", "jobs", "Job", true, true).categories(ALL),
        R::builtin("batch", "v1", "cronjobs", "CronJob", true, true).short_names(&["cj"]).categories(ALL),
        R::builtin("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", true, true)
            .short_names(&["hpa"])
            .categories(ALL),
        R::builtin("coordination.k8s.io", "v1", "leases", "Lease", true, false).create_on_update(),
        R::builtin("events.k8s.io", "v1", "events", "Event", true, false)
            .create_on_update()
            .field_selectors(NEW_EVENT_FIELDS)
            .short_names(&["ev"]),
        R::builtin("rbac.authorization.k8s.io", "v1", "roles", "Role", true, false),
        R::builtin("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", true, false),
        R::builtin("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", false, false),
        R::builtin("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", false, false),
        R::builtin("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", true, false).short_names(&["netpol"]),
        R::builtin("networking.k8s.io", "v1", "ingresses", "Ingress", true, true).short_names(&["ing"]),
        R::builtin("networking.k8s.io", "v1", "ingressclasses", "IngressClass", false, false),
        R::builtin("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", true, true).short_names(&["pdb"]),
        R::builtin("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", false, true)
            .short_names(&["crd", "crds"]),
        R::builtin("authorization.k8s.io", "v1", "selfsubjectaccessreviews", "SelfSubjectAccessReview", false, false)
            .create_only(),
        R::builtin("authorization.k8s.io", "v1", "selfsubjectrulesreviews", "SelfSubjectRulesReview", false, false)
            .create_only(),
        R::builtin("authorization.k8s.io", "v1", "subjectaccessreviews", "SubjectAccessReview", false, false)
            .create_only(),
        R::builtin("authentication.k8s.io", "v1", "selfsubjectreviews", "SelfSubjectReview", false, false)
            .create_only(),
    ]
}

/// The set of served resource types.
#[derive(Debug, Clone)]
pub(crate) struct Registry {
    kinds: Vec<ResourceType>,
}

impl Registry {
    pub(crate) fn new(kinds: Vec<ResourceType>) -> Self {
        Registry { kinds }
    }

    /// The resource at `/api(s)/<group>/<version>/.../<plural>`.
    pub(crate) fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.kinds.iter().find(|k| k.group == group && k.plural == plural && k.serves(version))
    }

    /// By group and kind (from an object's apiVersion and kind).
    pub(crate) fn by_kind(&self, group: &str, version: &str, kind: &str) -> Option<&ResourceType> {
        self.kinds.iter().find(|k| k.group == group && k.kind == kind && k.serves(version))
    }

    /// Resolve a test-facing name: `deployments`, `deployments.apps`, `Deployment`, or
    /// `servicebuses.busbar.dev`. Core kinds win over other groups for bare names.
    pub(crate) fn resolve(&self, name: &str) -> Option<&ResourceType> {
        self.kinds
            .iter()
            .find(|k| k.qualified() == name)
            .or_else(|| self.kinds.iter().find(|k| k.plural == name || k.kind == name))
            .or_else(|| self.kinds.iter().find(|k| k.kind.eq_ignore_ascii_case(name)))
    }

    /// Add or replace (same group and plural) a kind.
    pub(crate) fn upsert(&mut self, rt: ResourceType) {
        match self.kinds.iter_mut().find(|k| k.group == rt.group && k.plural == rt.plural) {
            Some(existing) => *existing = rt,
            None => self.kinds.push(rt),
        }
    }

    pub(crate) fn remove(&mut self, group: &str, plural: &str) {
        self.kinds.retain(|k| !(k.group == group && k.plural == plural && k.custom));
    }

    pub(crate) fn all(&self) -> &[ResourceType] {
        &self.kinds
    }
}

/// The resource type a CRD object defines, or an explanation of why it defines none.
pub(crate) fn from_crd(crd: &Value) -> Result<ResourceType, String> {
    let spec = crd.get("spec").ok_or("spec: Required value")?;
    let group = spec.get("group").and_then(Value::as_str).ok_or("spec.group: Required value")?;
    let names = spec.get("names").ok_or("spec.names: Required value")?;
    let plural = names.get("plural").and_then(Value::as_str).ok_or("spec.names.plural: Required value")?;
    let kind = names.get("kind").and_then(Value::as_str).ok_or("spec.names.kind: Required value")?;
    let scope = spec.get("scope").and_then(Value::as_str).ok_or("spec.scope: Required value")?;
    let namespaced = match scope {
        "Namespaced" => true,
        "Cluster" => false,
        other => return Err(format!("spec.scope: Unsupported value: \"{other}\"")),
    };
    let expected_name = format!("{plural}.{group}");
    let name = crd.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    if name != expected_name {
        return Err(format!("metadata.name: Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"));
    }
    let versions = spec.get("versions").and_then(Value::as_array).ok_or("spec.versions: Required value")?;
    let mut served = Vec::new();
    let mut schemas = Vec::new();
    let mut printer_columns = Vec::new();
    let mut status_subresource = false;
    // The storage version first (it is the preferred one for our purposes), then the rest.
    let mut ordered: Vec<&Value> = versions.iter().collect();
    ordered.sort_by_key(|v| !v.get("storage").and_then(Value::as_bool).unwrap_or(false));
    for v in ordered {
        let vname = v.get("name").and_then(Value::as_str).ok_or("spec.versions[].name: Required value")?;
        if !v.get("served").and_then(Value::as_bool).unwrap_or(false) {
            continue;
        }
        served.push(vname.to_string());
        if v.pointer("/subresources/status").is_some() {
            status_subresource = true;
        }
        if let Some(schema) = v.pointer("/schema/openAPIV3Schema") {
            schemas.push((vname.to_string(), schema.clone()));
        }
        if let Some(cols) = v.get("additionalPrinterColumns").and_then(Value::as_array) {
            printer_columns.push((vname.to_string(), cols.clone()));
        }
    }
    let strings = |field: &str| -> Vec<String> {
        names
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect()
    };
    if served.is_empty() {
        return Err("spec.versions: Invalid value: must have at least one served version".into());
    }
    Ok(ResourceType {
        group: group.to_string(),
        versions: served,
        plural: plural.to_string(),
        kind: kind.to_string(),
        namespaced,
        status_subresource,
        custom: true,
        create_on_update: false,
        extra_field_selectors: Vec::new(),
        schemas,
        short_names: strings("shortNames"),
        categories: strings("categories"),
        singular: names
            .get("singular")
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| kind.to_lowercase()),
        printer_columns,
        create_only: false,
    })
}
