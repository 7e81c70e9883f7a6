//! The CRD and RBAC the repository ships are exactly what the code generates, the CRD
//! schema is structural, and its CEL rules say what they mean.

mod support;

use busbar_operator::{
    crd::{self, ServiceBus},
    rbac,
};
use kube::CustomResourceExt;
use serde_json::Value;
use support::{blog_spec, service_bus};

fn repo_file(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

const REGENERATE: &str = "regenerate with: cargo run -p busbar-operator --bin crdgen > k8s/base/operator/crd.yaml && \
                          cp k8s/base/operator/crd.yaml helm/busbar/crds/servicebus.yaml && \
                          cargo run -p busbar-operator --bin crdgen -- rbac > k8s/base/operator/rbac.yaml && \
                          cargo run -p busbar-operator --bin crdgen -- rbac-rules > helm/busbar/files/rbac-rules.yaml";

#[test]
fn the_committed_crd_is_the_generated_one() {
    assert!(
        repo_file("k8s/base/operator/crd.yaml") == crd::crd_yaml(),
        "k8s/base/operator/crd.yaml is stale; {REGENERATE}"
    );
}

#[test]
fn the_committed_rbac_is_the_generated_one() {
    assert!(
        repo_file("k8s/base/operator/rbac.yaml") == rbac::manifest_yaml("busbar-system"),
        "k8s/base/operator/rbac.yaml is stale; {REGENERATE}"
    );
}

// Helm installs `crds/` only on first install and the chart's RBAC templates read the rules
// file, so a stale copy there would ship silently.
#[test]
fn the_chart_carries_the_generated_crd_and_rules() {
    assert!(
        repo_file("helm/busbar/crds/servicebus.yaml") == crd::crd_yaml(),
        "helm/busbar/crds/servicebus.yaml is stale; {REGENERATE}"
    );
    assert!(
        repo_file("helm/busbar/files/rbac-rules.yaml") == rbac::rules_yaml(),
        "helm/busbar/files/rbac-rules.yaml is stale; {REGENERATE}"
    );
}

#[test]
fn the_crd_names_what_the_sdk_parses() {
    let crd = ServiceBus::crd();
    let v = &crd.spec.versions[0];
    assert_eq!(format!("{}/{}", crd.spec.group, v.name), busbar_domain::spec::API_VERSION);
    assert_eq!(crd.spec.names.kind, busbar_domain::spec::KIND);
    assert_eq!(crd.spec.names.short_names.as_deref(), Some(&["sbus".to_owned()][..]));
    assert!(v.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<&str> = v.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
    assert_eq!(columns, ["Transport", "Services", "Ready", "Pending", "Dead", "Age"]);
}

/// The rules of a structural schema (apiextensions.k8s.io/v1) that a derive can break.
fn structural_problems(path: &str, s: &Value, out: &mut Vec<String>) {
    let obj = s.as_object().unwrap();
    let ext = |k: &str| obj.get(k).is_some_and(|v| v == &Value::Bool(true));
    if !obj.contains_key("type") && !ext("x-kubernetes-int-or-string") && !ext("x-kubernetes-preserve-unknown-fields") {
        out.push(format!("{path}: no type"));
    }
    for k in ["oneOf", "anyOf", "allOf", "not"] {
        if let Some(subs) = obj.get(k) {
            for sub in subs.as_array().into_iter().flatten() {
                for banned in
                    ["type", "properties", "items", "additionalProperties", "default", "nullable", "description"]
                {
                    if sub.get(banned).is_some() {
                        out.push(format!("{path}: {k} sets `{banned}`"));
                    }
                }
            }
        }
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        out.push(format!("{path}: both properties and additionalProperties"));
    }
    if obj.get("additionalProperties") == Some(&Value::Bool(false)) {
        out.push(format!("{path}: additionalProperties: false"));
    }
    for k in ["$ref", "uniqueItems", "definitions", "$defs", "patternProperties", "dependencies"] {
        if obj.contains_key(k) {
            out.push(format!("{path}: `{k}` is not allowed"));
        }
    }
    if obj.get("type") == Some(&Value::String("array".into())) && !obj.contains_key("items") {
        out.push(format!("{path}: array without items"));
    }
    for (name, p) in obj.get("properties").and_then(Value::as_object).into_iter().flatten() {
        structural_problems(&format!("{path}.{name}"), p, out);
    }
    if let Some(items) = obj.get("items") {
        structural_problems(&format!("{path}[]"), items, out);
    }
    if let Some(Value::Object(_)) = obj.get("additionalProperties") {
        structural_problems(&format!("{path}{{}}"), &obj["additionalProperties"], out);
    }
}

#[test]
fn the_schema_is_structural() {
    let crd = serde_json::to_value(ServiceBus::crd()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut problems = vec![];
    structural_problems("", schema, &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
    // list-map keys must be required in their items.
    let services = &schema["properties"]["spec"]["properties"]["services"];
    assert_eq!(services["x-kubernetes-list-type"], "map");
    assert!(services["items"]["required"].as_array().unwrap().contains(&"name".into()));
}

fn cel_errors(sb: &ServiceBus) -> String {
    match kube::core::cel::validate_cel(sb) {
        Ok(()) => String::new(),
        Err(e) => format!("{e:?}"),
    }
}

#[test]
fn the_cel_rules_accept_the_blog_and_refuse_what_a_schema_cannot() {
    assert_eq!(cel_errors(&service_bus("shop", "blog", blog_spec())), "");

    let mut both = blog_spec();
    both.transport.jetstream = Some(busbar_domain::spec::JetStreamSpec { url: "nats://nats:4222".into(), replicas: 1 });
    both.transport.builtin = Some(Default::default());
    assert!(cel_errors(&service_bus("shop", "blog", both)).contains("choose one transport"));

    let mut portless = blog_spec();
    portless.services[3].port = None;
    assert!(cel_errors(&service_bus("shop", "blog", portless)).contains("needs a `port`"));
}
