//! Deletion: finalizers (through kube's own finalizer helper and controller), the no-new-
//! finalizers rule, and garbage collection of owned objects.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use kube_fake::FakeApiServer;
use serde_json::json;

use crate::support::*;

const CLEANUP: &str = "example.dev/cleanup";

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

/// A controller that keeps a finalizer on every Widget and counts cleanups.
async fn run_widget_controller(api: &FakeApiServer, cleanups: Arc<AtomicUsize>) {
    let widgets: Api<Widget> = Api::all(api.client());
    let client = api.client();
    Controller::new(widgets, watcher::Config::default())
        .run(
            move |w: Arc<Widget>, cleanups: Arc<AtomicUsize>| {
                let api: Api<Widget> = Api::namespaced(client.clone(), &w.namespace().unwrap());
                async move {
                    finalizer(&api, CLEANUP, w, |event| async move {
                        if let Finalizer::Cleanup(_) = event {
                            cleanups.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok::<_, Never>(Action::await_change())
                    })
                    .await
                }
            },
            |_, _, _| Action::requeue(Duration::from_millis(50)),
            cleanups,
        )
        .for_each(|_| async {})
        .await;
}

#[tokio::test]
async fn a_controller_adds_its_finalizer_and_cleans_up_before_the_widget_goes() {
    let api = server_with_widgets().await;
    let cleanups = Arc::new(AtomicUsize::new(0));
    let run = run_widget_controller(&api, cleanups.clone());
    let story = async {
        let widgets: Api<Widget> = Api::namespaced(api.client(), "shop");
        widgets.create(&PostParams::default(), &widget("w", 1)).await.unwrap();
        eventually("the controller adds its finalizer", || {
            api.get("widgets.example.dev", "shop", "w").is_some_and(|w| w["metadata"]["finalizers"] == json!([CLEANUP]))
        })
        .await;

        // Delete: the widget stays, marked for deletion, until the controller cleaned up.
        let answer = widgets.delete("w", &DeleteParams::default()).await.unwrap();
        let marked = answer.left().expect("the object is returned while finalizers are pending");
        assert!(marked.meta().deletion_timestamp.is_some());
        eventually("the widget is gone", || api.get("widgets.example.dev", "shop", "w").is_none()).await;
        assert_eq!(cleanups.load(Ordering::SeqCst), 1);
    };
    tokio::select! {
        _ = run => panic!("the controller stopped"),
        _ = within(20, "the finalizer story", story) => {}
    }
}

#[tokio::test]
async fn no_new_finalizers_once_deletion_started_and_the_last_one_removes_the_object() {
    let api = server_with_widgets().await;
    let widgets: Api<Widget> = Api::namespaced(api.client(), "default");
    let mut w = widget("w", 1);
    w.metadata.finalizers = Some(vec!["a".into(), "b".into()]);
    widgets.create(&PostParams::default(), &w).await.unwrap();
    let deleted = widgets.delete("w", &DeleteParams::default()).await.unwrap().left().unwrap();
    assert_eq!(deleted.metadata.deletion_grace_period_seconds, Some(0));

    let add = Patch::Merge(json!({"metadata": {"finalizers": ["a", "b", "c"]}}));
    let status = api_error(widgets.patch("w", &PatchParams::default(), &add).await);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(status.message.contains("no new finalizers"), "{}", status.message);

    let remaining = widgets
        .patch("w", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": ["b"]}})))
        .await
        .unwrap();
    assert_eq!(remaining.finalizers(), ["b"]);
    widgets
        .patch("w", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await
        .unwrap();
    assert_eq!(api_error(widgets.get("w").await).code, 404);
}

fn owned_by(owner: &impl Resource<DynamicType = ()>) -> serde_json::Value {
    json!([{
        "apiVersion": "example.dev/v1", "kind": "Widget", "name": owner.meta().name,
        "uid": owner.meta().uid, "controller": true, "blockOwnerDeletion": true
    }])
}

#[tokio::test]
async fn deleting_an_owner_collects_what_it_owns_honouring_finalizers() {
    let api = server_with_widgets().await;
    let widgets: Api<Widget> = Api::namespaced(api.client(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "default");
    let deployments: Api<Deployment> = Api::namespaced(api.client(), "default");
    let owner = widgets.create(&PostParams::default(), &widget("owner", 1)).await.unwrap();
    let other_owner = widgets.create(&PostParams::default(), &widget("other", 1)).await.unwrap();

    // A ConfigMap owned by the widget, a Deployment (with a finalizer) owned by the widget, a
    // ConfigMap owned by that Deployment, and a ConfigMap owned by both widgets.
    let mut cm = config_map("owned", &[]);
    cm.metadata.owner_references = Some(serde_json::from_value(owned_by(&owner)).unwrap());
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let mut d = deployment("owned").build();
    d.metadata.owner_references = Some(serde_json::from_value(owned_by(&owner)).unwrap());
    d.metadata.finalizers = Some(vec!["example.dev/drain".into()]);
    let d = deployments.create(&PostParams::default(), &d).await.unwrap();
    let mut grandchild = config_map("grandchild", &[]);
    grandchild.metadata.owner_references = Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: "owned".into(),
        uid: d.metadata.uid.clone().unwrap(),
        ..Default::default()
    }]);
    cms.create(&PostParams::default(), &grandchild).await.unwrap();
    let mut shared = config_map("shared", &[]);
    let mut refs: Vec<serde_json::Value> = serde_json::from_value(owned_by(&owner)).unwrap();
    refs.extend(serde_json::from_value::<Vec<serde_json::Value>>(owned_by(&other_owner)).unwrap());
    refs[1]["controller"] = json!(false);
    shared.metadata.owner_references = Some(serde_json::from_value(json!(refs)).unwrap());
    cms.create(&PostParams::default(), &shared).await.unwrap();

    // Without finalizers, the owner goes at once.
    widgets.delete("owner", &DeleteParams::default()).await.unwrap();
    assert!(api.get("widgets.example.dev", "default", "owner").is_none());

    eventually("the owned ConfigMap is collected", || api.get("configmaps", "default", "owned").is_none()).await;
    eventually("the owned Deployment is being deleted", || {
        api.get("deployments", "default", "owned").is_some_and(|d| d["metadata"]["deletionTimestamp"].is_string())
    })
    .await;
    eventually("the shared ConfigMap loses the dead owner only", || {
        api.get("configmaps", "default", "shared")
            .is_some_and(|c| c["metadata"]["ownerReferences"].as_array().is_some_and(|r| r.len() == 1))
    })
    .await;
    assert!(api.get("configmaps", "default", "grandchild").is_some(), "its owner still exists (terminating)");

    // The Deployment's finalizer goes: the Deployment and then its own ConfigMap go.
    deployments
        .patch("owned", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await
        .unwrap();
    assert!(api.get("deployments", "default", "owned").is_none());
    eventually("the grandchild is collected", || api.get("configmaps", "default", "grandchild").is_none()).await;
    assert!(api.get("configmaps", "default", "shared").is_some());
}

/// A Widget owning one ConfigMap (`<name>-config`, with the given finalizers).
async fn owner_with_config(api: &FakeApiServer, name: &str, finalizers: &[&str]) -> Widget {
    let widgets: Api<Widget> = Api::namespaced(api.client(), "default");
    let owner = widgets.create(&PostParams::default(), &widget(name, 1)).await.unwrap();
    let mut cm = config_map(&format!("{name}-config"), &[]);
    cm.metadata.owner_references = Some(serde_json::from_value(owned_by(&owner)).unwrap());
    cm.metadata.finalizers = Some(finalizers.iter().map(|f| f.to_string()).collect());
    Api::<ConfigMap>::namespaced(api.client(), "default").create(&PostParams::default(), &cm).await.unwrap();
    owner
}

#[tokio::test]
async fn orphan_and_foreground_propagation() {
    let api = server_with_widgets().await;
    let widgets: Api<Widget> = Api::namespaced(api.client(), "default");

    // Orphan: the owner goes, the dependent stays without the reference.
    owner_with_config(&api, "o", &[]).await;
    widgets.delete("o", &DeleteParams::orphan()).await.unwrap();
    eventually("the orphan loses its owner reference", || {
        api.get("configmaps", "default", "o-config").is_some_and(|c| c["metadata"]["ownerReferences"].is_null())
    })
    .await;

    // Foreground: the owner waits (foregroundDeletion finalizer) until its dependents are gone.
    owner_with_config(&api, "f", &["example.dev/hold"]).await;
    let answer = widgets.delete("f", &DeleteParams::foreground()).await.unwrap();
    assert_eq!(answer.left().unwrap().finalizers(), ["foregroundDeletion"]);
    eventually("the dependent is being deleted", || {
        api.get("configmaps", "default", "f-config").is_some_and(|c| c["metadata"]["deletionTimestamp"].is_string())
    })
    .await;
    assert!(api.get("widgets.example.dev", "default", "f").is_some(), "the owner waits for its dependents");
    api.merge_patch("configmaps", "default", "f-config", json!({"metadata": {"finalizers": null}})).unwrap();
    eventually("the owner goes after its dependent", || api.get("widgets.example.dev", "default", "f").is_none()).await;
}

#[tokio::test]
async fn deleting_a_namespace_deletes_what_is_in_it() {
    let api = FakeApiServer::start().await;
    api.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tmp"}})).unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "tmp");
    cms.create(&PostParams::default(), &config_map("a", &[])).await.unwrap();
    Api::<ConfigMap>::namespaced(api.client(), "other")
        .create(&PostParams::default(), &config_map("b", &[]))
        .await
        .unwrap();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(api.client());
    namespaces.delete("tmp", &DeleteParams::default()).await.unwrap();
    eventually("the namespace's objects are gone", || api.list("configmaps", Some("tmp")).is_empty()).await;
    assert!(api.get("configmaps", "other", "b").is_some());
}
