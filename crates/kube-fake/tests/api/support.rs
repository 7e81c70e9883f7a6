//! Builders and bounded waits shared by the stories.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::CustomResource;
use kube::api::ObjectMeta;
use kube_fake::FakeApiServer;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The CRD of [`Widget`], as a user would `kubectl apply` it.
pub const WIDGET_CRD: &str = include_str!("../fixtures/widgets-crd.yaml");

/// A small custom resource with a status subresource.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "example.dev",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus",
    schema = "disabled"
)]
pub struct WidgetSpec {
    pub size: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct WidgetStatus {
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A fake API server with the Widget CRD installed.
pub async fn server_with_widgets() -> FakeApiServer {
    let api = FakeApiServer::start().await;
    api.install_crd(WIDGET_CRD).expect("the Widget CRD installs");
    api
}

pub fn widget(name: &str, size: i32) -> Widget {
    Widget::new(name, WidgetSpec { size, color: None })
}

pub fn config_map(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        data: Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        ..Default::default()
    }
}

/// An apply configuration (or manifest) for a one-container Deployment.
#[derive(Clone)]
pub struct DeploymentConfig {
    name: String,
    image: String,
    replicas: Option<i32>,
    env: Vec<(String, String)>,
    labels: Vec<(String, String)>,
}

pub fn deployment(name: &str) -> DeploymentConfig {
    DeploymentConfig { name: name.into(), image: "app:1".into(), replicas: None, env: vec![], labels: vec![] }
}

impl DeploymentConfig {
    pub fn image(mut self, image: &str) -> Self {
        self.image = image.into();
        self
    }
    pub fn replicas(mut self, n: i32) -> Self {
        self.replicas = Some(n);
        self
    }
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.push((k.into(), v.into()));
        self
    }
    pub fn json(&self) -> Value {
        let mut container = json!({"name": "app", "image": self.image});
        if !self.env.is_empty() {
            container["env"] = self.env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect();
        }
        let mut d = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": self.name},
            "spec": {
                "selector": {"matchLabels": {"app": self.name}},
                "template": {
                    "metadata": {"labels": {"app": self.name}},
                    "spec": {"containers": [container]}
                }
            }
        });
        if let Some(r) = self.replicas {
            d["spec"]["replicas"] = json!(r);
        }
        if !self.labels.is_empty() {
            d["metadata"]["labels"] = self.labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        }
        d
    }
    pub fn build(&self) -> Deployment {
        serde_json::from_value(self.json()).expect("a valid Deployment")
    }
}

/// The env vars of a Deployment's first container, as (name, value).
pub fn env_of(d: &Deployment) -> Vec<(String, String)> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| &p.containers[0])
        .and_then(|c| c.env.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.value.unwrap_or_default()))
        .collect()
}

pub fn rv_of<K: kube::Resource>(obj: &K) -> u64 {
    obj.meta().resource_version.as_deref().expect("a resourceVersion").parse().expect("a numeric resourceVersion")
}

/// The Status of a failed request, or a panic naming what was expected.
pub fn api_error<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> kube::core::Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Poll `cond` until it holds, for at most 5 s.
pub async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Await `fut` for at most `secs` seconds.
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}
