//! Server-side apply: ownership per field manager, removal of omitted fields, conflicts.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube_fake::FakeApiServer;
use serde_json::json;

use crate::support::*;

const OPERATOR: &str = "busbar-operator";

fn apply_as(manager: &str) -> PatchParams {
    PatchParams::apply(manager)
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test]
async fn an_env_var_the_operator_stops_applying_is_removed_but_another_managers_stays() {
    let api = FakeApiServer::start().await;
    let deployments: Api<Deployment> = Api::namespaced(api.client(), "blog");

    // The user deploys the app; the operator wires it with two env vars.
    deployments.create(&PostParams::default(), &deployment("posts").env("PORT", "4000").build()).await.unwrap();
    let wired = deployment("posts").env("BUSBAR_URL", "http://bus").env("BUSBAR_SUBSCRIBES", "PostCreated");
    let d = deployments.patch("posts", &apply_as(OPERATOR), &Patch::Apply(wired.json())).await.unwrap();
    assert_eq!(
        env_of(&d),
        env(&[("PORT", "4000"), ("BUSBAR_URL", "http://bus"), ("BUSBAR_SUBSCRIBES", "PostCreated")]),
        "env merges per item by name"
    );

    // Someone else applies their own env var.
    let theirs = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "posts"},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "env": [{"name": "DEBUG", "value": "1"}]}]}}}
    });
    deployments.patch("posts", &apply_as("debugger"), &Patch::Apply(theirs)).await.unwrap();

    // The operator's next apply omits BUSBAR_SUBSCRIBES: it goes; PORT and DEBUG stay.
    let rewired = deployment("posts").env("BUSBAR_URL", "http://bus");
    let d = deployments.patch("posts", &apply_as(OPERATOR), &Patch::Apply(rewired.json())).await.unwrap();
    assert_eq!(env_of(&d), env(&[("PORT", "4000"), ("BUSBAR_URL", "http://bus"), ("DEBUG", "1")]));

    // Unwiring: the operator applies no env at all.
    let d = deployments.patch("posts", &apply_as(OPERATOR), &Patch::Apply(deployment("posts").json())).await.unwrap();
    assert_eq!(env_of(&d), env(&[("PORT", "4000"), ("DEBUG", "1")]));
    assert_eq!(d.spec.unwrap().template.spec.unwrap().containers[0].image.as_deref(), Some("app:1"));

    // managedFields show who owns what.
    let managers: Vec<String> = d.metadata.managed_fields.unwrap().into_iter().filter_map(|m| m.manager).collect();
    assert!(managers.contains(&OPERATOR.to_string()) && managers.contains(&"debugger".to_string()), "{managers:?}");
}

#[tokio::test]
async fn applying_a_field_another_manager_owns_conflicts_unless_forced() {
    let api = FakeApiServer::start().await;
    let deployments: Api<Deployment> = Api::namespaced(api.client(), "default");
    deployments.patch("web", &apply_as("team-a"), &Patch::Apply(deployment("web").replicas(1).json())).await.unwrap();

    // Same value: shared ownership, no conflict.
    deployments.patch("web", &apply_as("team-b"), &Patch::Apply(deployment("web").replicas(1).json())).await.unwrap();
    // team-c wants a different value.
    let status = api_error(
        deployments.patch("web", &apply_as("team-c"), &Patch::Apply(deployment("web").replicas(3).json())).await,
    );
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(status.message.contains(".spec.replicas"), "{}", status.message);
    assert!(status.message.contains("team-a") && status.message.contains("team-b"), "{}", status.message);
    assert_eq!(api.get_as::<Deployment>("default", "web").unwrap().spec.unwrap().replicas, Some(1));

    // Forced, team-c takes the field over; team-a now conflicts in turn.
    let forced = PatchParams::apply("team-c").force();
    let d = deployments.patch("web", &forced, &Patch::Apply(deployment("web").replicas(3).json())).await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(3));
    let status = api_error(
        deployments.patch("web", &apply_as("team-a"), &Patch::Apply(deployment("web").replicas(1).json())).await,
    );
    assert_eq!(status.code, 409);
    assert!(status.message.contains("team-c"), "{}", status.message);
}

#[tokio::test]
async fn an_apply_after_a_manual_edit_conflicts_without_force() {
    let api = FakeApiServer::start().await;
    let deployments: Api<Deployment> = Api::namespaced(api.client(), "default");
    deployments
        .patch("web", &apply_as(OPERATOR), &Patch::Apply(deployment("web").image("app:1").json()))
        .await
        .unwrap();

    // A human edits the image (kubectl edit is a merge patch under its own manager).
    let edit = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:hotfix"}]}}}});
    deployments
        .patch(
            "web",
            &PatchParams { field_manager: Some("kubectl-edit".into()), ..Default::default() },
            &Patch::Strategic(edit),
        )
        .await
        .unwrap();

    let status = api_error(
        deployments.patch("web", &apply_as(OPERATOR), &Patch::Apply(deployment("web").image("app:1").json())).await,
    );
    assert_eq!(status.code, 409);
    assert!(status.message.contains("kubectl-edit"), "{}", status.message);
    assert!(status.message.contains(r#".spec.template.spec.containers[name="app"].image"#), "{}", status.message);

    // The operator repairs the drift with force.
    let d = deployments
        .patch("web", &PatchParams::apply(OPERATOR).force(), &Patch::Apply(deployment("web").image("app:1").json()))
        .await
        .unwrap();
    assert_eq!(d.spec.unwrap().template.spec.unwrap().containers[0].image.as_deref(), Some("app:1"));
}

#[tokio::test]
async fn a_repeated_apply_is_a_no_op() {
    let api = FakeApiServer::start().await;
    let deployments: Api<Deployment> = Api::namespaced(api.client(), "default");
    let config = deployment("web").replicas(2).env("A", "1").label("app", "web");
    let first = deployments.patch("web", &apply_as(OPERATOR), &Patch::Apply(config.json())).await.unwrap();
    assert_eq!(first.metadata.generation, Some(1), "apply created the object");
    let writes_before = api.resource_version();
    let second = deployments.patch("web", &apply_as(OPERATOR), &Patch::Apply(config.json())).await.unwrap();
    assert_eq!(rv_of(&second), rv_of(&first));
    assert_eq!(second.metadata.generation, Some(1));
    assert_eq!(api.resource_version(), writes_before);
    assert_eq!(api.writes_by_field_manager(OPERATOR), 2, "both applies were requests, one of them changed nothing");
}

#[tokio::test]
async fn status_is_applied_through_the_status_subresource_only() {
    let api = server_with_widgets().await;
    let widgets: Api<Widget> = Api::namespaced(api.client(), "default");
    let spec = |size: i32| json!({"apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": size}});
    widgets.patch("w", &apply_as(OPERATOR), &Patch::Apply(spec(1))).await.unwrap();
    let status = json!({
        "apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": "w"},
        "status": {"ready": true, "message": "up"}
    });
    // Through the main endpoint, status is ignored.
    let w = widgets.patch("w", &apply_as("confused-client"), &Patch::Apply(&status)).await.unwrap();
    assert_eq!(w.status, None);
    let w = widgets.patch_status("w", &apply_as(OPERATOR), &Patch::Apply(&status)).await.unwrap();
    assert_eq!(w.status.as_ref().unwrap().message.as_deref(), Some("up"));
    assert_eq!(w.metadata.generation, Some(1));
    // Applying the main object without status leaves the status alone.
    let w = widgets.patch("w", &apply_as(OPERATOR), &Patch::Apply(spec(5))).await.unwrap();
    assert_eq!((w.spec.size, w.metadata.generation), (5, Some(2)));
    assert_eq!(w.status.unwrap().message.as_deref(), Some("up"));
    // Dropping a status field from the status apply removes it.
    let status =
        json!({"apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": "w"}, "status": {"ready": true}});
    let w = widgets.patch_status("w", &apply_as(OPERATOR), &Patch::Apply(&status)).await.unwrap();
    assert_eq!(w.status.unwrap(), WidgetStatus { ready: true, message: None });
}

#[tokio::test]
async fn writes_are_counted_per_field_manager() {
    let api = FakeApiServer::start().await;
    let deployments: Api<Deployment> = Api::namespaced(api.client(), "default");
    deployments.patch("a", &apply_as("leader"), &Patch::Apply(deployment("a").json())).await.unwrap();
    deployments.patch("b", &apply_as("leader"), &Patch::Apply(deployment("b").json())).await.unwrap();
    deployments.get("a").await.unwrap();
    let _ = deployments.patch("a", &apply_as("follower"), &Patch::Apply(deployment("a").image("x").json())).await;
    assert_eq!(api.writes_by_field_manager("leader"), 2);
    assert_eq!(api.writes_by_field_manager("follower"), 1, "refused writes count too");
    assert_eq!(api.write_count(), 3);
    assert_eq!(api.write_counts_by_verb()["patch"], 3);
    assert_eq!(api.request_count(), 4);
}

#[tokio::test]
async fn a_lease_held_through_apply_is_taken_only_after_its_holder_releases_it() {
    // The pattern of kube-lease-manager: take a lease by applying holderIdentity without force
    // (a conflict means someone else holds it), release it with a patch that nulls the fields.
    use k8s_openapi::api::coordination::v1::Lease;
    let api = FakeApiServer::start().await;
    let leases: Api<Lease> = Api::namespaced(api.client(), "busbar-system");
    let take = |who: &str| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "leader"},
               "spec": {"holderIdentity": who, "leaseDurationSeconds": 15}})
    };
    leases.patch("leader", &apply_as("lease-a"), &Patch::Apply(take("a"))).await.unwrap();
    let status = api_error(leases.patch("leader", &apply_as("lease-b"), &Patch::Apply(take("b"))).await);
    assert_eq!(status.code, 409);
    assert!(status.message.contains(".spec.holderIdentity"), "{}", status.message);

    let release = json!({"spec": {"holderIdentity": null, "leaseDurationSeconds": null}});
    let params = PatchParams { field_manager: Some("lease-a".into()), ..Default::default() };
    leases.patch("leader", &params, &Patch::Strategic(release)).await.unwrap();
    let l = leases.patch("leader", &apply_as("lease-b"), &Patch::Apply(take("b"))).await.unwrap();
    assert_eq!(l.spec.unwrap().holder_identity.as_deref(), Some("b"));
}
