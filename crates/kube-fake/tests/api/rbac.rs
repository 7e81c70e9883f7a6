//! Authentication and RBAC: a ServiceAccount's token gets exactly what the stored Roles,
//! ClusterRoles and bindings grant, with namespace scope; server-side apply that creates needs
//! `create`; blockOwnerDeletion needs `update` on the owner's finalizers.

use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube_fake::FakeApiServer;
use serde_json::json;

use crate::support::{api_error, config_map, server_with_widgets};

const OPERATOR: &str = "system:serviceaccount:ops:operator";

/// A server with the ServiceAccount `ops/operator`, bound by `binding` (a RoleBinding in `app`
/// or a ClusterRoleBinding) to a role with these rules.
async fn server_with_operator(rules: serde_json::Value, cluster_wide: bool) -> FakeApiServer {
    let api = server_with_widgets().await;
    api.create(
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "operator", "namespace": "ops"}}),
    )
    .unwrap();
    let subject = json!([{"kind": "ServiceAccount", "name": "operator", "namespace": "ops"}]);
    if cluster_wide {
        api.create(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                          "metadata": {"name": "operator"}, "rules": rules}))
            .unwrap();
        api.create(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                          "metadata": {"name": "operator"}, "subjects": subject,
                          "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "operator"}}))
            .unwrap();
    } else {
        api.create(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                          "metadata": {"name": "operator", "namespace": "app"}, "rules": rules}))
            .unwrap();
        api.create(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                          "metadata": {"name": "operator", "namespace": "app"}, "subjects": subject,
                          "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "operator"}}))
            .unwrap();
    }
    api
}

fn operator_client(api: &FakeApiServer) -> kube::Client {
    api.client_with_token(&api.service_account_token("ops", "operator").unwrap())
}

#[tokio::test]
async fn a_service_account_gets_what_its_role_grants_in_that_namespace_only() {
    let api = server_with_operator(
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "create"]}]),
        false,
    )
    .await;
    let client = operator_client(&api);
    let in_app: Api<ConfigMap> = Api::namespaced(client.clone(), "app");
    in_app.create(&PostParams::default(), &config_map("made", &[("a", "1")])).await.unwrap();
    assert_eq!(in_app.list(&Default::default()).await.unwrap().items.len(), 1);

    // No delete in the role; no access in another namespace; no cluster-wide list.
    let denied = api_error(in_app.delete("made", &Default::default()).await);
    assert_eq!((denied.code, denied.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        denied.message,
        format!(
            "configmaps \"made\" is forbidden: User \"{OPERATOR}\" cannot delete resource \"configmaps\" in API group \"\" in the namespace \"app\""
        )
    );
    let elsewhere: Api<ConfigMap> = Api::namespaced(client.clone(), "other");
    assert_eq!(api_error(elsewhere.list(&Default::default()).await).code, 403);
    let everywhere: Api<ConfigMap> = Api::all(client.clone());
    let all = api_error(everywhere.list(&Default::default()).await);
    assert!(all.message.ends_with("at the cluster scope"), "{}", all.message);

    // The request log says who was refused.
    let refused = api.requests().into_iter().filter(|r| r.code == 403).collect::<Vec<_>>();
    assert_eq!(refused.len(), 3);
    assert!(refused.iter().all(|r| r.user.as_deref() == Some(OPERATOR)));
}

#[tokio::test]
async fn tokens_are_checked_and_die_with_their_service_account() {
    let api = FakeApiServer::builder().require_authentication().start().await;
    api.create(
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "operator", "namespace": "ops"}}),
    )
    .unwrap();
    let anonymous = api_error(Api::<ConfigMap>::all(api.client()).list(&Default::default()).await);
    assert_eq!((anonymous.code, anonymous.reason.as_str()), (401, "Unauthorized"));
    let forged = api_error(Api::<ConfigMap>::all(api.client_with_token("forged")).list(&Default::default()).await);
    assert_eq!(forged.code, 401);
    let admin = api.client_with_token(&api.admin_token());
    Api::<ConfigMap>::all(admin.clone()).list(&Default::default()).await.expect("the admin may list");

    // A token from the TokenRequest API (kubectl create token) is the ServiceAccount...
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "ops");
    let request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}});
    let answer: serde_json::Value =
        sas.create_subresource("token", "operator", &PostParams::default(), &request).await.unwrap();
    let token = answer["status"]["token"].as_str().unwrap().to_string();
    let as_sa = api.client_with_token(&token);
    let denied = api_error(Api::<ConfigMap>::namespaced(as_sa.clone(), "ops").list(&Default::default()).await);
    assert_eq!(denied.code, 403, "{}", denied.message);
    // ...until the ServiceAccount is deleted.
    api.delete("serviceaccounts", "ops", "operator").unwrap();
    assert_eq!(api_error(Api::<ConfigMap>::namespaced(as_sa, "ops").list(&Default::default()).await).code, 401);
    assert!(api.service_account_token("ops", "operator").is_err(), "no token for a missing ServiceAccount");
}

#[tokio::test]
async fn access_reviews_answer_for_the_caller_and_for_whom_it_impersonates() {
    let api =
        server_with_operator(json!([{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["patch"]}]), true)
            .await;
    let review = |verb: &str| SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some("apps".into()),
                resource: Some("deployments".into()),
                namespace: Some("app".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let allowed = |client: kube::Client, verb: &'static str| async move {
        let r =
            Api::<SelfSubjectAccessReview>::all(client).create(&PostParams::default(), &review(verb)).await.unwrap();
        r.status.unwrap().allowed
    };
    assert!(allowed(operator_client(&api), "patch").await);
    assert!(!allowed(operator_client(&api), "create").await);
    // The admin impersonating the ServiceAccount (kubectl auth can-i --as=...).
    let mut cfg = api.config();
    cfg.auth_info.impersonate = Some(OPERATOR.into());
    let impersonating = kube::Client::try_from(cfg).unwrap();
    assert!(allowed(impersonating.clone(), "patch").await);
    assert!(!allowed(impersonating, "delete").await);
    // The ServiceAccount may not impersonate anyone.
    let mut cfg = api.config();
    cfg.auth_info.token = Some(api.service_account_token("ops", "operator").unwrap().into());
    cfg.auth_info.impersonate = Some("kubernetes-admin".into());
    let escalating = kube::Client::try_from(cfg).unwrap();
    let refused = api_error(Api::<ConfigMap>::all(escalating).list(&Default::default()).await);
    assert!(refused.message.contains("cannot impersonate resource \"users\""), "{}", refused.message);
}

#[tokio::test]
async fn server_side_apply_that_creates_needs_create() {
    let api = server_with_operator(
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "patch"]}]),
        true,
    )
    .await;
    api.create(config_map_in("app", "existing")).unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(operator_client(&api), "app");
    let body =
        |name: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}});
    let pp = PatchParams::apply("operator");
    cms.patch("existing", &pp, &Patch::Apply(body("existing")))
        .await
        .expect("patching an existing object needs patch only");
    let refused = api_error(cms.patch("new", &pp, &Patch::Apply(body("new"))).await);
    assert_eq!(
        refused.message,
        format!(
            "configmaps \"new\" is forbidden: User \"{OPERATOR}\" cannot create resource \"configmaps\" in API group \"\" in the namespace \"app\""
        )
    );
    assert!(api.get("configmaps", "app", "new").is_none());
}

fn config_map_in(ns: &str, name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}})
}

#[tokio::test]
async fn block_owner_deletion_needs_update_on_the_owners_finalizers() {
    let rules = json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "patch"]}]);
    let api = server_with_operator(rules, true).await;
    let owner = api
        .create(json!({"apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "app"},
                       "spec": {"size": 1}}))
        .unwrap();
    let uid = owner["metadata"]["uid"].as_str().unwrap().to_string();
    let owned = |block: bool| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owned", "ownerReferences": [
            {"apiVersion": "example.dev/v1", "kind": "Widget", "name": "w", "uid": uid, "controller": true,
             "blockOwnerDeletion": block}]}})
    };
    let cms: Api<ConfigMap> = Api::namespaced(operator_client(&api), "app");
    let pp = PatchParams::apply("operator");
    let refused = api_error(cms.patch("owned", &pp, &Patch::Apply(owned(true))).await);
    assert_eq!(refused.code, 403);
    assert!(
        refused.message.ends_with(
            "is forbidden: cannot set blockOwnerDeletion if an ownerReference refers to a resource you can't set finalizers on: , <nil>"
        ),
        "{}",
        refused.message
    );
    cms.patch("owned", &pp, &Patch::Apply(owned(false))).await.expect("an owner reference that does not block is fine");

    // Granted update on widgets/finalizers, the same apply passes.
    api.merge_patch(
        "clusterroles",
        "",
        "operator",
        json!({"rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "patch", "delete"]},
                         {"apiGroups": ["example.dev"], "resources": ["widgets/finalizers"], "verbs": ["update"]}]}),
    )
    .unwrap();
    cms.patch("owned", &pp, &Patch::Apply(owned(true))).await.expect("allowed with update on widgets/finalizers");
}
