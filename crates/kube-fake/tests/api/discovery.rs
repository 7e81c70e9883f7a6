//! What clients read before they act: aggregated discovery with short names and categories,
//! OpenAPI (fieldValidation support, builtin and CRD schemas), Table output, and the readiness
//! simulation that `kubectl rollout status` and `helm --wait` wait for.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::PostParams;
use kube_fake::FakeApiServer;
use serde_json::Value;

use crate::support::{deployment, server_with_widgets, within};

async fn get(api: &FakeApiServer, path: &str, accept: &str) -> (String, Value) {
    let resp =
        reqwest::Client::new().get(format!("{}{path}", api.url())).header("accept", accept).send().await.unwrap();
    assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
    let ct = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (ct, resp.json().await.unwrap())
}

#[tokio::test]
async fn aggregated_discovery_lists_short_names_and_categories() {
    let api = server_with_widgets().await;
    let accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
    let (ct, groups) = get(&api, "/apis", accept).await;
    assert_eq!(ct, "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList");
    let resource = |group: &str, plural: &str| -> Value {
        let g = groups["items"].as_array().unwrap().iter().find(|g| g["metadata"]["name"] == group).unwrap();
        g["versions"][0]["resources"].as_array().unwrap().iter().find(|r| r["resource"] == plural).unwrap().clone()
    };
    let deploy = resource("apps", "deployments");
    assert_eq!(deploy["shortNames"], serde_json::json!(["deploy"]));
    assert_eq!(deploy["categories"], serde_json::json!(["all"]));
    assert_eq!(deploy["subresources"][0]["subresource"], "status");
    assert_eq!(resource("example.dev", "widgets")["shortNames"], serde_json::json!(["wd"]));
    assert!(groups["items"].as_array().unwrap().iter().any(|g| g["metadata"]["name"] == "networking.k8s.io"));
    // Without the aggregated Accept, the legacy list.
    let (_, legacy) = get(&api, "/apis/apps/v1", "application/json").await;
    assert_eq!(legacy["kind"], "APIResourceList");
}

#[tokio::test]
async fn openapi_v3_tells_clients_the_server_validates_fields() {
    let api = server_with_widgets().await;
    let (_, index) = get(&api, "/openapi/v3", "application/json").await;
    let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"].as_str().unwrap().to_string();
    let (_, doc) = get(&api, &url, "application/json").await;
    let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
    assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Deployment");
    assert!(
        patch["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
    );
    let spec = &doc["components"]["schemas"]["io.k8s.api.apps.v1.DeploymentSpec"];
    assert_eq!(spec["required"], serde_json::json!(["selector", "template"]), "the official schema");
    // A CRD's schema is published under its group.
    let url = index["paths"]["apis/example.dev/v1"]["serverRelativeURL"].as_str().unwrap().to_string();
    let (_, doc) = get(&api, &url, "application/json").await;
    assert!(doc["components"]["schemas"]["dev.example.v1.Widget"]["properties"]["metadata"].is_object());
    let (_, v2) = get(&api, "/openapi/v2", "application/json").await;
    assert!(v2["definitions"]["io.k8s.api.core.v1.Service"].is_object());
}

#[tokio::test]
async fn kubectl_get_gets_a_table_with_the_printer_columns() {
    let api = FakeApiServer::start().await;
    api.install_crd(include_str!("../fixtures/widgets-crd.yaml")).unwrap();
    api.install_crd(
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gizmos.example.dev}
spec:
  group: example.dev
  scope: Namespaced
  names: {plural: gizmos, singular: gizmo, kind: Gizmo}
  versions:
    - name: v1
      served: true
      storage: true
      subresources: {status: {}}
      additionalPrinterColumns:
        - {name: Ready, type: string, jsonPath: '.status.conditions[?(@.type=="Ready")].status'}
        - {name: Size, type: integer, jsonPath: .spec.size}
        - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#,
    )
    .unwrap();
    api.create(serde_json::json!({"apiVersion": "example.dev/v1", "kind": "Gizmo", "metadata": {"name": "g1", "namespace": "default"},
                                  "spec": {"size": 3}}))
        .unwrap();
    api.patch_status(
        "gizmos.example.dev",
        "default",
        "g1",
        serde_json::json!({"conditions": [{"type": "Ready", "status": "True"}]}),
    )
    .unwrap();
    let table_accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
    let (_, table) = get(&api, "/apis/example.dev/v1/namespaces/default/gizmos", table_accept).await;
    assert_eq!(table["kind"], "Table");
    let names: Vec<&str> =
        table["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Name", "Ready", "Size", "Age"]);
    let cells = &table["rows"][0]["cells"];
    assert_eq!((cells[0].as_str(), cells[1].as_str(), cells[2].as_i64()), (Some("g1"), Some("True"), Some(3)));
    assert!(cells[3].as_str().unwrap().ends_with('s'), "an age like 0s: {}", cells[3]);
    assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");

    let deployments: Api<Deployment> = Api::namespaced(api.client(), "default");
    deployments.create(&PostParams::default(), &deployment("web").replicas(2).build()).await.unwrap();
    let (_, table) = get(&api, "/apis/apps/v1/namespaces/default/deployments", table_accept).await;
    let names: Vec<&str> =
        table["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(&names[..5], ["Name", "Ready", "Up-to-date", "Available", "Age"]);
    assert_eq!(table["rows"][0]["cells"][1], "0/2", "nothing runs the pods");
}

#[tokio::test]
async fn simulated_readiness_reports_deployments_ready_after_the_delay() {
    let api = FakeApiServer::builder().simulate_readiness(Duration::from_millis(300)).start().await;
    let deployments: Api<Deployment> = Api::namespaced(api.client(), "default");
    let created = deployments.create(&PostParams::default(), &deployment("web").replicas(2).build()).await.unwrap();
    assert!(created.status.is_none(), "not ready at once");
    let ready = || async {
        let d = deployments.get("web").await.unwrap();
        let s = d.status.unwrap_or_default();
        (s.observed_generation == d.metadata.generation
            && s.ready_replicas == Some(2)
            && s.available_replicas == Some(2))
        .then_some(s)
    };
    let status = within(5, "the Deployment reports ready", async {
        loop {
            if let Some(s) = ready().await {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let progressing = status.conditions.unwrap().into_iter().find(|c| c.type_ == "Progressing").unwrap();
    assert_eq!(progressing.reason.as_deref(), Some("NewReplicaSetAvailable"));
    let writer = api.get("deployments", "default", "web").unwrap()["metadata"]["managedFields"].to_string();
    assert!(writer.contains("kube-controller-manager"), "{writer}");
}
