//! RBAC authorization against the Roles, ClusterRoles, RoleBindings and ClusterRoleBindings
//! stored in the server, as the real RBAC authorizer evaluates them: a request is allowed when
//! some binding that applies (a ClusterRoleBinding, or a RoleBinding in the request's
//! namespace) names the user, one of its groups or its ServiceAccount, and its role has a rule
//! matching the verb, API group, resource (`resource/subresource`, `*`, `*/subresource`),
//! resource name (when the rule lists names), or non-resource URL.
//!
//! Simplifications: ClusterRole aggregation (`aggregationRule`) is not computed, and creating
//! or binding a role is not checked for privilege escalation. Instead of the bootstrap
//! ClusterRoles `system:discovery`, `system:basic-user` and `system:public-info-viewer`, every
//! authenticated user may read discovery, `/version` and `/openapi`, and create
//! SelfSubjectAccessReviews, SelfSubjectRulesReviews and SelfSubjectReviews.

use serde_json::{Value, json};

use crate::auth::User;
use crate::error::ApiError;
use crate::registry::ResourceType;
use crate::store::State;

/// What a request does, in RBAC's terms.
#[derive(Debug, Clone, Default)]
pub(crate) struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// For non-resource requests (`/healthz`, `/openapi/v3`).
    pub path: Option<String>,
}

impl Attributes {
    pub(crate) fn resource(verb: &str, group: &str, resource: &str) -> Self {
        Attributes { verb: verb.into(), group: group.into(), resource: resource.into(), ..Default::default() }
    }

    pub(crate) fn in_namespace(mut self, ns: Option<&str>) -> Self {
        self.namespace = ns.filter(|n| !n.is_empty()).map(String::from);
        self
    }

    pub(crate) fn named(mut self, name: Option<&str>) -> Self {
        self.name = name.filter(|n| !n.is_empty()).map(String::from);
        self
    }

    pub(crate) fn sub(mut self, sub: Option<&str>) -> Self {
        self.subresource = sub.filter(|s| !s.is_empty()).map(String::from);
        self
    }

    fn combined_resource(&self) -> String {
        match &self.subresource {
            Some(s) => format!("{}/{s}", self.resource),
            None => self.resource.clone(),
        }
    }
}

const RBAC: &str = "rbac.authorization.k8s.io";

/// Requests every authenticated user may make (the bootstrap roles, see the module docs).
fn always_allowed(a: &Attributes) -> bool {
    if let Some(path) = &a.path {
        let p = path.trim_end_matches('/');
        return a.verb == "get"
            && (matches!(p, "/api" | "/apis" | "/version" | "/healthz" | "/livez" | "/readyz" | "/openapi/v2")
                || p.starts_with("/api/")
                || p.starts_with("/apis/")
                || p.starts_with("/openapi/"));
    }
    a.verb == "create"
        && ((a.group == "authorization.k8s.io"
            && matches!(a.resource.as_str(), "selfsubjectaccessreviews" | "selfsubjectrulesreviews"))
            || (a.group == "authentication.k8s.io" && a.resource == "selfsubjectreviews"))
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key).and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(String::from).collect()
}

fn has(list: &[String], wanted: &str) -> bool {
    list.iter().any(|x| x == "*" || x == wanted)
}

/// Whether one PolicyRule allows the request.
pub(crate) fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let verbs = strings(rule, "verbs");
    if !has(&verbs, &a.verb) {
        return false;
    }
    if let Some(path) = &a.path {
        return strings(rule, "nonResourceURLs")
            .iter()
            .any(|u| u == "*" || u == path || u.strip_suffix('*').is_some_and(|prefix| path.starts_with(prefix)));
    }
    if !has(&strings(rule, "apiGroups"), &a.group) {
        return false;
    }
    let combined = a.combined_resource();
    let resource_ok = strings(rule, "resources").iter().any(|r| {
        r == "*"
            || *r == combined
            || a.subresource.as_ref().is_some_and(|s| *r == format!("*/{s}"))
            || (a.subresource.is_some() && *r == format!("{}/*", a.resource))
    });
    if !resource_ok {
        return false;
    }
    let names = strings(rule, "resourceNames");
    names.is_empty() || a.name.as_ref().is_some_and(|n| names.contains(n))
}

fn subject_matches(subject: &Value, user: &User, binding_ns: Option<&str>) -> bool {
    let kind = subject.get("kind").and_then(Value::as_str).unwrap_or_default();
    let name = subject.get("name").and_then(Value::as_str).unwrap_or_default();
    match kind {
        "User" => name == user.name,
        "Group" => user.groups.iter().any(|g| g == name),
        "ServiceAccount" => {
            let ns = subject.get("namespace").and_then(Value::as_str).filter(|n| !n.is_empty()).or(binding_ns);
            user.service_account_parts() == ns.map(|ns| (ns, name))
        }
        _ => false,
    }
}

impl State {
    fn rbac_objects(&self, plural: &str, ns: Option<&str>) -> Vec<Value> {
        let Some(rt) = self.registry.resolve(&format!("{plural}.{RBAC}")).cloned() else { return Vec::new() };
        self.iter(&rt, ns).cloned().collect()
    }

    /// The rules of the role a binding refers to (in `ns` for a Role).
    fn role_rules(&self, role_ref: &Value, ns: Option<&str>) -> Vec<Value> {
        let kind = role_ref.get("kind").and_then(Value::as_str).unwrap_or_default();
        let name = role_ref.get("name").and_then(Value::as_str).unwrap_or_default();
        let role = match (kind, ns) {
            ("ClusterRole", _) => self.rbac_objects("clusterroles", None),
            ("Role", Some(ns)) => self.rbac_objects("roles", Some(ns)),
            _ => Vec::new(),
        }
        .into_iter()
        .find(|r| r.pointer("/metadata/name").and_then(Value::as_str) == Some(name));
        role.and_then(|r| r.get("rules").and_then(Value::as_array).cloned()).unwrap_or_default()
    }

    /// Every rule that applies to `user` in `ns` (or cluster-wide with `None`).
    pub(crate) fn rules_for(&self, user: &User, ns: Option<&str>) -> Vec<Value> {
        let mut rules = Vec::new();
        for b in self.rbac_objects("clusterrolebindings", None) {
            let subjects = b.get("subjects").and_then(Value::as_array).cloned().unwrap_or_default();
            if subjects.iter().any(|s| subject_matches(s, user, None)) {
                rules.extend(self.role_rules(&b["roleRef"], None));
            }
        }
        if let Some(ns) = ns {
            for b in self.rbac_objects("rolebindings", Some(ns)) {
                let subjects = b.get("subjects").and_then(Value::as_array).cloned().unwrap_or_default();
                if subjects.iter().any(|s| subject_matches(s, user, Some(ns))) {
                    rules.extend(self.role_rules(&b["roleRef"], Some(ns)));
                }
            }
        }
        rules
    }

    /// Whether RBAC allows the request.
    pub(crate) fn authorize(&self, user: &User, a: &Attributes) -> bool {
        user.is_superuser()
            || always_allowed(a)
            || self.rules_for(user, a.namespace.as_deref()).iter().any(|r| rule_allows(r, a))
    }

    /// `Ok` when RBAC allows the request, else the 403 the real server answers.
    pub(crate) fn check(&self, user: Option<&User>, a: &Attributes) -> Result<(), ApiError> {
        match user {
            Some(u) if !self.authorize(u, a) => Err(forbidden(u, a, "")),
            _ => Ok(()),
        }
    }
}

fn owner_refs(obj: Option<&Value>) -> Vec<Value> {
    obj.and_then(|o| o.pointer("/metadata/ownerReferences")).and_then(Value::as_array).cloned().unwrap_or_default()
}

fn blocks(r: &Value) -> bool {
    r.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true)
}

impl State {
    /// The OwnerReferencesPermissionEnforcement admission plugin: changing an object's owner
    /// references needs `delete` on the object (except when creating it), and a new
    /// `blockOwnerDeletion: true` needs `update` on the owner's `finalizers` subresource.
    pub(crate) fn check_owner_references(
        &self,
        user: &User,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        old: Option<&Value>,
        new: &Value,
    ) -> Result<(), ApiError> {
        let (before, after) = (owner_refs(old), owner_refs(Some(new)));
        if before == after {
            return Ok(());
        }
        let ns_opt = rt.namespaced.then_some(ns);
        let me = Attributes::resource("update", &rt.group, &rt.plural).in_namespace(ns_opt).named(Some(name));
        if old.is_some() {
            let delete = Attributes { verb: "delete".into(), ..me.clone() };
            if !self.authorize(user, &delete) {
                return Err(admission_forbidden(&me, "cannot set an ownerRef on a resource you can't delete: , <nil>"));
            }
        }
        for r in after.iter().filter(|r| blocks(r)) {
            let uid = r.get("uid");
            if before.iter().any(|b| b.get("uid") == uid && blocks(b)) {
                continue;
            }
            let api_version = r.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
            let kind = r.get("kind").and_then(Value::as_str).unwrap_or_default();
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
            let Some(owner) = self.registry.by_kind(group, version, kind) else {
                return Err(admission_forbidden(
                    &me,
                    &format!(
                        "cannot set blockOwnerDeletion in this case because cannot find RESTMapping for APIVersion \
                         {api_version} Kind {kind}: no matches for kind \"{kind}\" in version \"{api_version}\""
                    ),
                ));
            };
            let finalizers = Attributes::resource("update", &owner.group, &owner.plural)
                .sub(Some("finalizers"))
                .named(r.get("name").and_then(Value::as_str))
                .in_namespace(if owner.namespaced { ns_opt } else { None });
            if !self.authorize(user, &finalizers) {
                return Err(admission_forbidden(
                    &me,
                    "cannot set blockOwnerDeletion if an ownerReference refers to a resource you can't set finalizers \
                     on: , <nil>",
                ));
            }
        }
        Ok(())
    }
}

/// A 403 from an admission plugin: `<resource> "<name>" is forbidden: <why>`.
fn admission_forbidden(a: &Attributes, why: &str) -> ApiError {
    let qualified = if a.group.is_empty() { a.resource.clone() } else { format!("{}.{}", a.resource, a.group) };
    let name = a.name.clone().unwrap_or_default();
    ApiError::new(403, "Forbidden", format!("{qualified} \"{name}\" is forbidden: {why}"))
        .with_details(json!({"name": name, "group": a.group, "kind": a.resource}))
}

/// The 403 of a refused request, worded like the real server's:
/// `deployments.apps "posts" is forbidden: User "..." cannot patch resource "deployments" in API
/// group "apps" in the namespace "blog"`.
pub(crate) fn forbidden(user: &User, a: &Attributes, extra: &str) -> ApiError {
    let mut reason = match &a.path {
        Some(p) => format!("User \"{}\" cannot {} path \"{p}\"", user.name, a.verb),
        None => {
            let scope = match &a.namespace {
                Some(ns) => format!("in the namespace \"{ns}\""),
                None => "at the cluster scope".to_string(),
            };
            format!(
                "User \"{}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
                user.name,
                a.verb,
                a.combined_resource(),
                a.group
            )
        }
    };
    if !extra.is_empty() {
        reason = format!("{reason}: {extra}");
    }
    let qualified = if a.group.is_empty() { a.resource.clone() } else { format!("{}.{}", a.resource, a.group) };
    let message = match (&a.path, &a.name) {
        (Some(_), _) => format!("forbidden: {reason}"),
        (None, Some(n)) => format!("{qualified} \"{n}\" is forbidden: {reason}"),
        (None, None) => format!("{qualified} is forbidden: {reason}"),
    };
    ApiError::new(403, "Forbidden", message).with_details(json!({
        "name": a.name.clone().unwrap_or_default(), "group": a.group, "kind": a.resource,
    }))
}

/// The answer to a SelfSubjectRulesReview: every rule that applies to the user in `ns`.
pub(crate) fn rules_review(st: &State, user: &User, ns: &str) -> Value {
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = vec![json!({
        "verbs": ["get"],
        "nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*",
                            "/readyz", "/version", "/version/"],
    })];
    resource_rules.push(json!({"verbs": ["create"], "apiGroups": ["authorization.k8s.io"],
        "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]}));
    resource_rules.push(json!({"verbs": ["create"], "apiGroups": ["authentication.k8s.io"],
        "resources": ["selfsubjectreviews"]}));
    if user.is_superuser() {
        resource_rules.push(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}));
        non_resource_rules.push(json!({"verbs": ["*"], "nonResourceURLs": ["*"]}));
    }
    for r in st.rules_for(user, Some(ns)) {
        if r.get("nonResourceURLs").is_some() {
            non_resource_rules.push(r);
        } else {
            resource_rules.push(r);
        }
    }
    json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false})
}

/// The attributes a (Self)SubjectAccessReview asks about.
pub(crate) fn review_attributes(spec: &Value) -> Result<Attributes, ApiError> {
    if let Some(r) = spec.get("resourceAttributes").filter(|r| r.is_object()) {
        let s = |k: &str| r.get(k).and_then(Value::as_str).map(String::from);
        return Ok(Attributes {
            verb: s("verb").unwrap_or_default(),
            group: s("group").unwrap_or_default(),
            resource: s("resource").unwrap_or_default(),
            subresource: s("subresource").filter(|x| !x.is_empty()),
            namespace: s("namespace").filter(|x| !x.is_empty()),
            name: s("name").filter(|x| !x.is_empty()),
            path: None,
        });
    }
    if let Some(n) = spec.get("nonResourceAttributes").filter(|r| r.is_object()) {
        return Ok(Attributes {
            verb: n.get("verb").and_then(Value::as_str).unwrap_or_default().into(),
            path: Some(n.get("path").and_then(Value::as_str).unwrap_or_default().into()),
            ..Default::default()
        });
    }
    Err(ApiError::new(
        422,
        "Invalid",
        "spec.resourceAttributes: Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_like_the_rbac_authorizer() {
        let a = Attributes::resource("patch", "busbar.dev", "servicebuses").sub(Some("status")).named(Some("blog"));
        let rule = |r: Value| rule_allows(&r, &a);
        assert!(rule(json!({"verbs": ["patch"], "apiGroups": ["busbar.dev"], "resources": ["servicebuses/status"]})));
        assert!(rule(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*/status"]})));
        assert!(!rule(json!({"verbs": ["patch"], "apiGroups": ["busbar.dev"], "resources": ["servicebuses"]})));
        assert!(!rule(json!({"verbs": ["get"], "apiGroups": ["busbar.dev"], "resources": ["servicebuses/status"]})));
        assert!(!rule(json!({"verbs": ["patch"], "apiGroups": ["busbar.dev"], "resources": ["servicebuses/status"],
                              "resourceNames": ["other"]})));
        let list = Attributes::resource("list", "", "secrets");
        assert!(!rule_allows(
            &json!({"verbs": ["list"], "apiGroups": [""], "resources": ["secrets"],
                                     "resourceNames": ["a"]}),
            &list
        ));
    }

    #[test]
    fn the_forbidden_message_reads_like_the_real_one() {
        let u = User::service_account("busbar-system", "busbar-operator", "u");
        let a = Attributes::resource("create", "apps", "deployments").in_namespace(Some("blog")).named(Some("posts"));
        assert_eq!(
            forbidden(&u, &a, "").message,
            "deployments.apps \"posts\" is forbidden: User \"system:serviceaccount:busbar-system:busbar-operator\" \
             cannot create resource \"deployments\" in API group \"apps\" in the namespace \"blog\""
        );
        let l = Attributes::resource("list", "", "secrets");
        assert_eq!(
            forbidden(&u, &l, "").message,
            "secrets is forbidden: User \"system:serviceaccount:busbar-system:busbar-operator\" cannot list \
             resource \"secrets\" in API group \"\" at the cluster scope"
        );
    }
}
