//! The same story as `controller.rs`, against a real cluster. Ignored by default because
//! these machines have none. To run it on kind:
//!
//! ```sh
//! kind create cluster --name busbar
//! kubectl apply -f k8s/base/operator/crd.yaml
//! cargo test -p busbar-operator --test cluster -- --ignored --nocapture
//! kind delete cluster --name busbar
//! ```
//!
//! It uses the current kubeconfig context, works in a namespace of its own
//! (`busbar-test-<random>`), runs the operator in-process and deletes the namespace at the end.

mod support;

use std::{sync::Arc, time::Duration};

use busbar_operator::{
    controller::{self, RunConfig},
    crd::ServiceBus,
    metrics::Metrics,
    names::WIRING_HASH_ANNOTATION,
    settings::Settings,
};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Namespace};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
};
use serde_json::json;
use support::{blog_spec, deployment, service_bus};
use tokio_util::sync::CancellationToken;

#[tokio::test]
#[ignore = "needs a Kubernetes cluster (kind or minikube) in the current kubeconfig context"]
async fn the_blog_is_wired_and_cleaned_up_on_a_real_cluster() {
    let client = Client::try_default().await.expect("a kubeconfig context");
    controller::check_crd(&client).await.expect("the CRD is installed");
    let ns = format!("busbar-test-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let namespaces = Api::<Namespace>::all(client.clone());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(json!({ "metadata": { "name": ns } })).unwrap())
        .await
        .unwrap();
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    for name in ["posts", "comments", "moderation", "query"] {
        deployments.create(&PostParams::default(), &deployment(&ns, name)).await.unwrap();
    }
    let stop = CancellationToken::new();
    let cfg = RunConfig {
        settings: Settings { bus_stats: false, ..Settings::default() },
        identity: "cluster-test".into(),
        lease: None,
    };
    let op = tokio::spawn(controller::run(client.clone(), cfg, Arc::new(Metrics::default()), stop.clone()));
    let buses = Api::<ServiceBus>::namespaced(client.clone(), &ns);
    buses.create(&PostParams::default(), &service_bus(&ns, "blog", blog_spec())).await.unwrap();

    let wired = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .is_some_and(|a| a.contains_key(WIRING_HASH_ANNOTATION))
    };
    testkit::wait_until(Duration::from_secs(60), "every Deployment is wired", || async {
        let list = deployments.list(&Default::default()).await.ok()?;
        list.items.iter().all(wired).then_some(())
    })
    .await;

    buses.delete("blog", &DeleteParams::default()).await.unwrap();
    testkit::wait_until(Duration::from_secs(60), "the ServiceBus is deleted after cleanup", || async {
        buses.get_opt("blog").await.ok()?.is_none().then_some(())
    })
    .await;
    let list = deployments.list(&Default::default()).await.unwrap();
    assert!(list.items.iter().all(|d| !wired(d)), "cleanup removed the wiring");

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), op).await;
    namespaces.delete(&ns, &DeleteParams::default()).await.unwrap();
}
