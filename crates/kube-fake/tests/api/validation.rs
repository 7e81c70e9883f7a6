//! What the server makes of objects: CRD schema and CEL validation, defaulting and pruning,
//! `fieldValidation`, required fields of builtin kinds, and the builtin defaults clients read.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube_fake::FakeApiServer;
use serde_json::{Value, json};

use crate::support::{api_error, deployment};

/// A CRD with the shapes the ServiceBus CRD uses: a list map keyed by name, patterns, bounds,
/// defaults, a nullable field, and CEL rules.
const GADGETS_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.example.dev}
spec:
  group: example.dev
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget, shortNames: [gd], categories: [example]}
  versions:
    - name: v1
      served: true
      storage: true
      subresources: {status: {}}
      additionalPrinterColumns:
        - {name: Mode, type: string, jsonPath: .spec.mode}
        - {name: Parts, type: integer, jsonPath: .spec.count}
      schema:
        openAPIV3Schema:
          type: object
          required: [spec]
          properties:
            spec:
              type: object
              required: [parts]
              x-kubernetes-validations:
                - {rule: "!(has(self.fast) && has(self.slow))", message: "choose fast or slow, not both"}
              properties:
                mode: {type: string, enum: [on, off], default: "on"}
                count: {type: integer, minimum: 1, default: 3}
                wait: {type: string, pattern: '^[0-9]+s$'}
                fast: {type: object, nullable: true}
                slow: {type: object, nullable: true}
                parts:
                  type: array
                  x-kubernetes-list-type: map
                  x-kubernetes-list-map-keys: [name]
                  items:
                    type: object
                    required: [name]
                    properties: {name: {type: string, maxLength: 8}}
"#;

async fn gadgets() -> (FakeApiServer, Api<DynamicObject>) {
    let api = FakeApiServer::start().await;
    api.install_crd(GADGETS_CRD).unwrap();
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("example.dev", "v1", "Gadget"), "gadgets");
    let gadgets = Api::namespaced_with(api.client(), "default", &ar);
    (api, gadgets)
}

fn gadget(spec: Value) -> DynamicObject {
    serde_json::from_value(
        json!({"apiVersion": "example.dev/v1", "kind": "Gadget", "metadata": {"name": "g"}, "spec": spec}),
    )
    .unwrap()
}

#[tokio::test]
async fn custom_resources_are_validated_against_their_schema_and_cel_rules() {
    let (_api, gadgets) = gadgets().await;
    let pp = PostParams::default();
    let bad =
        gadget(json!({"wait": "soon", "count": 0, "parts": [{"name": "a"}, {"name": "a"}, {"name": "far-too-long"}]}));
    let status = api_error(gadgets.create(&pp, &bad).await);
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        status.message,
        "Gadget.example.dev \"g\" is invalid: [spec.count: Invalid value: 0: spec.count in body should be greater than or \
         equal to 1, spec.parts[1]: Duplicate value: map[string]interface {}{\"name\":\"a\"}, spec.parts[2].name: Too long: \
         may not be more than 8 bytes, spec.wait: Invalid value: \"soon\": spec.wait in body should match '^[0-9]+s$']"
    );
    let causes = status.details.unwrap().causes;
    assert_eq!(causes[1].reason, "FieldValueDuplicate");
    assert_eq!(causes[1].field, "spec.parts[1]");

    let both = gadget(json!({"parts": [], "fast": {}, "slow": {}}));
    let status = api_error(gadgets.create(&pp, &both).await);
    assert_eq!(
        status.message,
        "Gadget.example.dev \"g\" is invalid: spec: Invalid value: \"object\": choose fast or slow, not both"
    );
    let missing = api_error(gadgets.create(&pp, &gadget(json!({"mode": "sideways"}))).await);
    assert!(missing.message.contains("spec.parts: Required value"), "{}", missing.message);
    assert!(missing.message.contains("spec.mode: Unsupported value: \"sideways\": supported values: \"on\", \"off\""));
}

#[tokio::test]
async fn defaults_apply_and_unknown_fields_are_pruned_warned_about_or_refused() {
    let (api, gadgets) = gadgets().await;
    let created = gadgets.create(&PostParams::default(), &gadget(json!({"parts": [], "colour": "red"}))).await.unwrap();
    assert_eq!(created.data["spec"], json!({"parts": [], "mode": "on", "count": 3}), "defaulted, colour pruned");
    let warned = api.requests().last().unwrap().clone();
    assert_eq!(warned.code, 201);

    // fieldValidation=Strict refuses unknown fields with the decoder's message.
    let url = format!("{}/apis/example.dev/v1/namespaces/default/gadgets?fieldValidation=Strict", api.url());
    let body = json!({"apiVersion": "example.dev/v1", "kind": "Gadget", "metadata": {"name": "h"},
                      "spec": {"parts": [{"name": "a", "size": 2}]}});
    let resp = reqwest::Client::new().post(&url).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let status: Value = resp.json().await.unwrap();
    assert_eq!(
        status["message"],
        "Gadget in version \"v1\" cannot be handled as a Gadget: strict decoding error: unknown field \"spec.parts[0].size\""
    );
    // Warn (the default) says so in a Warning header and drops the field.
    let url = format!("{}/apis/example.dev/v1/namespaces/default/gadgets", api.url());
    let resp = reqwest::Client::new().post(&url).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let warning = resp.headers().get("warning").unwrap().to_str().unwrap().to_string();
    assert_eq!(warning, "299 - \"unknown field \\\"spec.parts[0].size\\\"\"");
    assert!(api.get("gadgets.example.dev", "default", "h").unwrap()["spec"]["parts"][0].get("size").is_none());

    // Server-side apply refuses undeclared fields whatever fieldValidation says, as the real
    // server does (with a 500).
    let apply = gadgets
        .patch(
            "g",
            &PatchParams::apply("me"),
            &Patch::Apply(json!({"apiVersion": "example.dev/v1", "kind": "Gadget",
            "metadata": {"name": "g"}, "spec": {"parts": [], "colour": "red"}})),
        )
        .await;
    let status = api_error(apply);
    assert_eq!(status.code, 500);
    assert!(status.message.ends_with(".spec.colour: field not declared in schema"), "{}", status.message);
}

#[tokio::test]
async fn builtin_kinds_need_their_required_fields_and_get_the_defaults_clients_read() {
    let api = FakeApiServer::start().await;
    let deployments: Api<Deployment> = Api::namespaced(api.client(), "default");
    // An apply that would create a Deployment from a partial body (what an operator that
    // wires an existing Deployment sends when it is gone) is refused as invalid.
    let partial = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "gone"},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "env": [{"name": "X", "value": "1"}]}]}}}});
    let status = api_error(deployments.patch("gone", &PatchParams::apply("op").force(), &Patch::Apply(partial)).await);
    assert_eq!(status.code, 422);
    assert!(
        status.message.starts_with("Deployment.apps \"gone\" is invalid: spec.selector: Required value"),
        "{}",
        status.message
    );
    assert!(api.get("deployments", "default", "gone").is_none());

    let d = deployments.create(&PostParams::default(), &deployment("web").build()).await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(1), "replicas default to 1");
    let services: Api<Service> = Api::namespaced(api.client(), "default");
    let svc: Service =
        serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}})).unwrap();
    let svc = services.create(&PostParams::default(), &svc).await.unwrap().spec.unwrap();
    assert_eq!(svc.type_.as_deref(), Some("ClusterIP"));
    assert!(svc.cluster_ip.as_deref().is_some_and(|ip| ip.starts_with("10.96.")));
    assert_eq!(svc.ports.unwrap()[0].protocol.as_deref(), Some("TCP"));
}

#[tokio::test]
async fn an_object_stored_before_a_stricter_schema_can_still_be_updated() {
    let (api, gadgets) = gadgets().await;
    let bad = json!({"apiVersion": "example.dev/v1", "kind": "Gadget", "metadata": {"name": "g", "namespace": "default"},
                     "spec": {"parts": [], "wait": "soon"}});
    api.apply_unvalidated("kubectl", bad).unwrap();
    // Ratcheting: writes that leave the invalid field as it is pass, status writes too...
    let status = Patch::Merge(json!({"status": {"ok": false}}));
    gadgets.patch_status("g", &PatchParams::default(), &status).await.expect("a status write passes");
    gadgets
        .patch("g", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})))
        .await
        .expect("a label change passes");
    // ...a new invalid value does not.
    let worse = gadgets.patch("g", &PatchParams::default(), &Patch::Merge(json!({"spec": {"wait": "later"}}))).await;
    assert_eq!(api_error(worse).code, 422);
}
