//! The request kinds that are answered, not stored: access reviews (`kubectl auth can-i`,
//! `kubectl auth can-i --list`), SelfSubjectReview (`kubectl auth whoami`) and TokenRequest
//! (`kubectl create token`).

use serde_json::{Value, json};

use crate::auth::User;
use crate::error::ApiError;
use crate::http::Shared;
use crate::rbac::{self, Attributes};
use crate::registry::ResourceType;

fn user_info(u: &User) -> Value {
    json!({"username": u.name, "uid": u.uid, "groups": u.groups})
}

/// Answer a review. `user` is `None` for the admin.
pub(crate) fn answer(shared: &Shared, rt: &ResourceType, body: Value, user: Option<&User>) -> Result<Value, ApiError> {
    let mut review = if body.is_object() { body } else { json!({}) };
    let admin = User::admin();
    let me = user.unwrap_or(&admin);
    let st = shared.lock();
    let status = match rt.plural.as_str() {
        "selfsubjectaccessreviews" => {
            let a = rbac::review_attributes(&review["spec"])?;
            json!({"allowed": st.authorize(me, &a)})
        }
        "subjectaccessreviews" => {
            let spec = &review["spec"];
            let subject = User {
                name: spec.get("user").and_then(Value::as_str).unwrap_or_default().into(),
                uid: spec.get("uid").and_then(Value::as_str).unwrap_or_default().into(),
                groups: spec
                    .get("groups")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect(),
            };
            let a: Attributes = rbac::review_attributes(spec)?;
            json!({"allowed": st.authorize(&subject, &a)})
        }
        "selfsubjectrulesreviews" => {
            let ns = review.pointer("/spec/namespace").and_then(Value::as_str).unwrap_or("default").to_string();
            rbac::rules_review(&st, me, &ns)
        }
        "selfsubjectreviews" => json!({"userInfo": user_info(me)}),
        _ => return Err(ApiError::no_such_resource()),
    };
    review["apiVersion"] = json!(rt.preferred_api_version());
    review["kind"] = json!(rt.kind);
    if !review.get("metadata").is_some_and(Value::is_object) {
        review["metadata"] = json!({});
    }
    review["metadata"]["creationTimestamp"] = Value::Null;
    review["status"] = status;
    Ok(review)
}

/// `POST .../serviceaccounts/<name>/token`: a token for that ServiceAccount (default one hour,
/// as `kubectl create token`; `spec.expirationSeconds` to choose).
pub(crate) fn token_request(shared: &Shared, ns: &str, name: &str, req: &Value) -> Result<Value, ApiError> {
    let seconds = req.pointer("/spec/expirationSeconds").and_then(Value::as_i64).unwrap_or(3600);
    if seconds < 600 {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!(
                "TokenRequest.authentication.k8s.io \"{name}\" is invalid: spec.expirationSeconds: Invalid value: {seconds}: may not specify a duration less than 10 minutes"
            ),
        ));
    }
    let mut st = shared.lock();
    let sa = st.registry.resolve("serviceaccounts").cloned().expect("serviceaccounts are a builtin kind");
    let uid = st
        .get(&sa, ns, name)
        .and_then(|s| s.obj.pointer("/metadata/uid").and_then(Value::as_str).map(String::from))
        .ok_or_else(|| ApiError::not_found(&sa, name))?;
    let (token, issued) = st.tokens.issue(ns, name, &uid, seconds);
    Ok(json!({
        "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
        "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": seconds, "boundObjectRef": null},
        "status": {"token": token, "expirationTimestamp": issued.expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)},
    }))
}
