//! Objects: create, read, replace, generation, the status subresource, patches, selectors.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube_fake::FakeApiServer;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn a_replace_with_a_stale_resource_version_conflicts() {
    let api = FakeApiServer::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "shop");

    let created = cms.create(&PostParams::default(), &config_map("settings", &[("color", "red")])).await.unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some(), "the server sets uid and creationTimestamp");
    assert_eq!(meta.generation, Some(1));
    assert_eq!(meta.namespace.as_deref(), Some("shop"));

    // Alice and Bob both read version N; Alice writes first.
    let mut alice = cms.get("settings").await.unwrap();
    let mut bob = alice.clone();
    alice.data.as_mut().unwrap().insert("color".into(), "blue".into());
    let written = cms.replace("settings", &PostParams::default(), &alice).await.unwrap();
    assert!(rv_of(&written) > rv_of(&created));

    // Bob's write carries the stale version: 409 Conflict, and nothing changes.
    bob.data.as_mut().unwrap().insert("color".into(), "green".into());
    let status = api_error(cms.replace("settings", &PostParams::default(), &bob).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(status.message.contains("the object has been modified"), "{}", status.message);
    assert_eq!(cms.get("settings").await.unwrap().data.unwrap()["color"], "blue");

    // Creating it again: 409 AlreadyExists.
    let status = api_error(cms.create(&PostParams::default(), &config_map("settings", &[])).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "AlreadyExists"));

    // A missing object: 404 NotFound.
    let status = api_error(cms.get("nope").await);
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
}

#[tokio::test]
async fn generation_counts_spec_changes_and_no_op_writes_change_nothing() {
    let api = server_with_widgets().await;
    let widgets: Api<Widget> = Api::namespaced(api.client(), "default");
    let w = widgets.create(&PostParams::default(), &widget("w", 1)).await.unwrap();
    assert_eq!(w.metadata.generation, Some(1));

    // A spec change bumps generation.
    let mut w2 = w.clone();
    w2.spec.size = 2;
    let w2 = widgets.replace("w", &PostParams::default(), &w2).await.unwrap();
    assert_eq!(w2.metadata.generation, Some(2));

    // A metadata change gets a new resourceVersion but keeps generation.
    let labelled = widgets
        .patch("w", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"tier": "a"}}})))
        .await
        .unwrap();
    assert_eq!(labelled.metadata.generation, Some(2));
    assert!(rv_of(&labelled) > rv_of(&w2));

    // Writing the same object again is a no-op: same resourceVersion, same generation.
    let before = api.resource_version();
    let same = widgets.replace("w", &PostParams::default(), &labelled).await.unwrap();
    assert_eq!(rv_of(&same), rv_of(&labelled));
    let same = widgets.patch("w", &PatchParams::default(), &Patch::Merge(json!({"spec": {"size": 2}}))).await.unwrap();
    assert_eq!(rv_of(&same), rv_of(&labelled));
    assert_eq!(same.metadata.generation, Some(2));
    assert_eq!(api.resource_version(), before, "no write happened");

    // Deployments: a pod template change bumps generation, a status change does not.
    let deployments: Api<Deployment> = Api::namespaced(api.client(), "default");
    deployments.create(&PostParams::default(), &deployment("web").build()).await.unwrap();
    let patched = deployments
        .patch("web", &PatchParams::default(), &Patch::Merge(deployment("web").image("app:2").json()))
        .await
        .unwrap();
    assert_eq!(patched.metadata.generation, Some(2));
    let with_status = deployments
        .patch_status("web", &PatchParams::default(), &Patch::Merge(json!({"status": {"readyReplicas": 1}})))
        .await
        .unwrap();
    assert_eq!(with_status.metadata.generation, Some(2));
    assert!(rv_of(&with_status) > rv_of(&patched));
}

#[tokio::test]
async fn the_status_subresource_is_isolated_from_the_main_endpoint() {
    let api = server_with_widgets().await;
    let widgets: Api<Widget> = Api::namespaced(api.client(), "default");

    // Status sent on create is dropped.
    let mut w = widget("w", 1);
    w.status = Some(WidgetStatus { ready: true, message: None });
    let created = widgets.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(created.status, None);

    // The status endpoint changes status only, whatever else the body says.
    let mut body = created.clone();
    body.spec.size = 99;
    body.status = Some(WidgetStatus { ready: true, message: Some("up".into()) });
    let after = widgets.replace_status("w", &PostParams::default(), &body).await.unwrap();
    assert_eq!(after.spec.size, 1);
    assert_eq!(after.status.as_ref().unwrap().message.as_deref(), Some("up"));
    assert_eq!(after.metadata.generation, Some(1), "status writes never bump generation");

    // The main endpoint ignores status.
    let mut body = after.clone();
    body.spec.size = 2;
    body.status = Some(WidgetStatus { ready: false, message: None });
    let after = widgets.replace("w", &PostParams::default(), &body).await.unwrap();
    assert_eq!(after.spec.size, 2);
    assert_eq!(after.status.unwrap().message.as_deref(), Some("up"));

    // Merge patches through /status likewise.
    let after = widgets
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 7}, "status": {"ready": false}})),
        )
        .await
        .unwrap();
    assert_eq!(after.spec.size, 2);
    assert_eq!(after.status.unwrap(), WidgetStatus { ready: false, message: Some("up".into()) });
}

#[tokio::test]
async fn a_custom_resource_without_its_crd_is_not_found() {
    let api = FakeApiServer::start().await;
    let widgets: Api<Widget> = Api::all(api.client());
    let status = api_error(widgets.list(&ListParams::default()).await);
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    let namespaced: Api<Widget> = Api::namespaced(api.client(), "default");
    assert_eq!(api_error(namespaced.create(&PostParams::default(), &widget("w", 1)).await).code, 404);

    // Creating the CRD through the API serves the kind at once, and the CRD becomes Established.
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(api.client());
    let crd: CustomResourceDefinition = manifest(WIDGET_CRD);
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let established = kube::runtime::wait::await_condition(
        crds.clone(),
        "widgets.example.dev",
        kube::runtime::wait::conditions::is_crd_established(),
    );
    within(5, "the CRD is established", established).await.unwrap();
    assert!(widgets.list(&ListParams::default()).await.unwrap().items.is_empty());
    namespaced.create(&PostParams::default(), &widget("w", 1)).await.unwrap();

    // Discovery knows it too.
    let gv = kube::core::GroupVersion::gv("example.dev", "v1");
    let group = kube::discovery::pinned_group(&api.client(), &gv).await.unwrap();
    let (resource, caps) = group.recommended_kind("Widget").expect("Widget is discoverable");
    assert_eq!(resource.plural, "widgets");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
}

/// A manifest in YAML, typed.
fn manifest<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
    let value = kube_fake::IntoManifest::into_manifest(yaml).unwrap();
    serde_json::from_value(value).unwrap()
}

#[tokio::test]
async fn a_merge_patch_null_deletes_a_key_and_lists_are_replaced() {
    let api = FakeApiServer::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "default");
    cms.create(&PostParams::default(), &config_map("c", &[("a", "1"), ("b", "2")])).await.unwrap();
    let patched =
        cms.patch("c", &PatchParams::default(), &Patch::Merge(json!({"data": {"a": null, "c": "3"}}))).await.unwrap();
    let data = patched.data.unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["b", "c"]);

    let deployments: Api<Deployment> = Api::namespaced(api.client(), "default");
    deployments.create(&PostParams::default(), &deployment("d").env("A", "1").env("B", "2").build()).await.unwrap();
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:1", "env": [{"name": "C", "value": "3"}]}]}}}});
    let patched = deployments.patch("d", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    assert_eq!(env_of(&patched), [("C".to_string(), "3".to_string())], "merge patch replaces lists whole");
}

#[tokio::test]
async fn a_json_patch_whose_test_fails_changes_nothing() {
    let api = FakeApiServer::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "default");
    let created = cms.create(&PostParams::default(), &config_map("c", &[("a", "1")])).await.unwrap();
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "add", "path": "/data/b", "value": "2"},
        {"op": "test", "path": "/data/a", "value": "wrong"},
    ]))
    .unwrap();
    let status = api_error(cms.patch("c", &PatchParams::default(), &Patch::<()>::Json(patch)).await);
    assert_eq!(status.code, 422);
    let now = cms.get("c").await.unwrap();
    assert_eq!(rv_of(&now), rv_of(&created));
    assert_eq!(now.data.unwrap().len(), 1);

    // The same patch with a passing test applies.
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/data/a", "value": "1"},
        {"op": "add", "path": "/data/b", "value": "2"},
    ]))
    .unwrap();
    let patched = cms.patch("c", &PatchParams::default(), &Patch::<()>::Json(patch)).await.unwrap();
    assert_eq!(patched.data.unwrap()["b"], "2");
}

#[tokio::test]
async fn selectors_filter_lists() {
    let api = FakeApiServer::start().await;
    for (name, tier, ns) in [("a", "web", "one"), ("b", "db", "one"), ("c", "web", "two"), ("d", "", "two")] {
        let mut cm = config_map(name, &[]);
        if !tier.is_empty() {
            cm.metadata.labels = Some([("tier".to_string(), tier.to_string())].into());
        }
        Api::<ConfigMap>::namespaced(api.client(), ns).create(&PostParams::default(), &cm).await.unwrap();
    }
    let all: Api<ConfigMap> = Api::all(api.client());
    let names = |l: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        l.items.into_iter().map(|c| c.metadata.name.unwrap()).collect()
    };
    let by = |sel: &str| ListParams::default().labels(sel);
    assert_eq!(names(all.list(&by("tier=web")).await.unwrap()), ["a", "c"]);
    assert_eq!(names(all.list(&by("tier!=web")).await.unwrap()), ["b", "d"]);
    assert_eq!(names(all.list(&by("tier in (db,web)")).await.unwrap()), ["a", "b", "c"]);
    assert_eq!(names(all.list(&by("tier notin (web)")).await.unwrap()), ["b", "d"]);
    assert_eq!(names(all.list(&by("tier")).await.unwrap()), ["a", "b", "c"]);
    assert_eq!(names(all.list(&by("!tier")).await.unwrap()), ["d"]);
    let fields = ListParams::default().fields("metadata.namespace=two,metadata.name!=d");
    assert_eq!(names(all.list(&fields).await.unwrap()), ["c"]);
    let one: Api<ConfigMap> = Api::namespaced(api.client(), "one");
    let list = one.list(&ListParams::default()).await.unwrap();
    assert_eq!(names(list.clone()), ["a", "b"]);
    assert_eq!(list.metadata.resource_version.as_deref(), Some(api.resource_version().to_string().as_str()));
    assert_eq!(api_error(all.list(&ListParams::default().fields("data.x=1")).await).code, 400);
}

#[tokio::test]
async fn a_stale_lease_update_fails_so_only_one_candidate_leads() {
    let api = FakeApiServer::start().await;
    let leases: Api<Lease> = Api::namespaced(api.client(), "busbar");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "operator-leader"},
        "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15}
    }))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();

    // Both candidates see the lease expire and try to take it from the same version.
    let seen = leases.get("operator-leader").await.unwrap();
    let take = |holder: &str| {
        let mut l = seen.clone();
        l.spec.as_mut().unwrap().holder_identity = Some(holder.into());
        l
    };
    let b = leases.replace("operator-leader", &PostParams::default(), &take("pod-b")).await;
    let c = leases.replace("operator-leader", &PostParams::default(), &take("pod-c")).await;
    assert!(b.is_ok());
    assert_eq!(api_error(c).code, 409);
    assert_eq!(leases.get("operator-leader").await.unwrap().spec.unwrap().holder_identity.as_deref(), Some("pod-b"));
}

#[tokio::test]
async fn strategic_merge_works_for_builtins_and_is_refused_for_custom_resources() {
    let api = server_with_widgets().await;
    let deployments: Api<Deployment> = Api::namespaced(api.client(), "default");
    deployments.create(&PostParams::default(), &deployment("d").env("A", "1").build()).await.unwrap();
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "env": [{"name": "B", "value": "2"}]}]}}}});
    let patched = deployments.patch("d", &PatchParams::default(), &Patch::Strategic(patch)).await.unwrap();
    assert_eq!(env_of(&patched), [("A".to_string(), "1".to_string()), ("B".to_string(), "2".to_string())]);

    let widgets: Api<Widget> = Api::namespaced(api.client(), "default");
    widgets.create(&PostParams::default(), &widget("w", 1)).await.unwrap();
    let status =
        api_error(widgets.patch("w", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"size": 2}}))).await);
    assert_eq!(status.code, 415);
}

#[tokio::test]
async fn generate_name_dry_run_and_delete_collection() {
    let api = FakeApiServer::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "default");
    let mut cm = config_map("", &[]);
    cm.metadata.name = None;
    cm.metadata.generate_name = Some("job-".into());
    let a = cms.create(&PostParams::default(), &cm).await.unwrap();
    let b = cms.create(&PostParams::default(), &cm).await.unwrap();
    let (a, b) = (a.metadata.name.unwrap(), b.metadata.name.unwrap());
    assert!(a.starts_with("job-") && a.len() == "job-".len() + 5 && a != b, "{a} {b}");

    // A dry run answers as if it wrote, and writes nothing.
    let before = api.resource_version();
    let dry = PostParams { dry_run: true, ..Default::default() };
    cms.create(&dry, &config_map("ghost", &[])).await.unwrap();
    let dry_delete = DeleteParams { dry_run: true, ..Default::default() };
    cms.delete(&a, &dry_delete).await.unwrap();
    assert_eq!(api.resource_version(), before);
    assert!(api.get("configmaps", "default", "ghost").is_none() && api.get("configmaps", "default", &a).is_some());

    // Delete a collection by label.
    let mut keep = config_map("keep", &[]);
    keep.metadata.labels = Some([("keep".to_string(), "yes".to_string())].into());
    cms.create(&PostParams::default(), &keep).await.unwrap();
    cms.delete_collection(&DeleteParams::default(), &ListParams::default().labels("!keep")).await.unwrap();
    let left: Vec<String> =
        api.list("configmaps", Some("default")).iter().map(|c| c["metadata"]["name"].to_string()).collect();
    assert_eq!(left, ["\"keep\""]);
}

#[tokio::test]
async fn delete_preconditions_and_an_update_of_a_missing_lease_creates_it() {
    let api = FakeApiServer::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "default");
    let c = cms.create(&PostParams::default(), &config_map("c", &[])).await.unwrap();
    cms.patch("c", &PatchParams::default(), &Patch::Merge(json!({"data": {"x": "1"}}))).await.unwrap();
    let stale = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: c.metadata.resource_version.clone(),
            uid: None,
        }),
        ..Default::default()
    };
    assert_eq!(api_error(cms.delete("c", &stale).await).code, 409);
    assert!(api.get("configmaps", "default", "c").is_some());

    // Leader election code may PUT a Lease that does not exist yet: the real server creates it.
    let leases: Api<Lease> = Api::namespaced(api.client(), "default");
    let lease: Lease =
        serde_json::from_value(json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}})).unwrap();
    leases.replace("l", &PostParams::default(), &lease).await.unwrap();
    // ...but not a ConfigMap.
    assert_eq!(api_error(cms.replace("nope", &PostParams::default(), &config_map("nope", &[])).await).code, 404);
}

#[tokio::test]
async fn metadata_only_reads_return_partial_objects() {
    let api = FakeApiServer::start().await;
    let deployments: Api<Deployment> = Api::namespaced(api.client(), "default");
    deployments.create(&PostParams::default(), &deployment("web").label("team", "blog").build()).await.unwrap();
    let meta = deployments.get_metadata("web").await.unwrap();
    assert_eq!(meta.metadata.labels.unwrap()["team"], "blog");
    assert_eq!(meta.types.unwrap().kind, "PartialObjectMetadata");
    let list = deployments.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
}
