//! API errors, rendered as Kubernetes `Status` objects.

use serde_json::{Value, json};

use crate::registry::ResourceType;

/// An error answered by the fake API server, as the real server would: an HTTP code, a
/// machine-readable `reason` and a message. It renders as a `Status` object
/// (`kind: Status, apiVersion: v1, status: Failure`), which `kube` decodes into
/// `kube::Error::Api(status)`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code (404, 409, 422, ...).
    pub code: u16,
    /// `Status.reason`, e.g. `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, `Gone`.
    pub reason: String,
    /// Human-readable message, worded like the real server's.
    pub message: String,
    /// `Status.details`, when the real server sends them.
    pub details: Option<Value>,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError { code, reason: reason.to_string(), message: message.into(), details: None }
    }

    pub(crate) fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    fn object_details(rt: &ResourceType, name: &str) -> Value {
        json!({ "name": name, "group": rt.group, "kind": rt.plural })
    }

    /// `404 NotFound` for a named object.
    pub(crate) fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", rt.qualified()))
            .with_details(Self::object_details(rt, name))
    }

    /// `404 NotFound` for a path that names no served resource (e.g. a CRD that is not installed).
    pub(crate) fn no_such_resource() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource").with_details(json!({}))
    }

    pub(crate) fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{} \"{name}\" already exists", rt.qualified()))
            .with_details(Self::object_details(rt, name))
    }

    /// `409 Conflict` for a stale resourceVersion.
    pub(crate) fn conflict(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                rt.qualified()
            ),
        )
        .with_details(Self::object_details(rt, name))
    }

    /// `409 Conflict` for a failed precondition (uid or resourceVersion in DeleteOptions or in the body).
    pub(crate) fn precondition(rt: &ResourceType, name: &str, what: &str, wanted: &str, actual: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: {what} in precondition: \
                 {wanted}, {what} in object meta: {actual}",
                rt.qualified()
            ),
        )
        .with_details(Self::object_details(rt, name))
    }

    /// `422 Invalid`: `<resource> "<name>" is invalid: <field>: <detail>`.
    pub(crate) fn invalid(rt: &ResourceType, name: &str, field: &str, detail: &str) -> Self {
        Self::new(422, "Invalid", format!("{} \"{name}\" is invalid: {field}: {detail}", rt.qualified())).with_details(
            json!({
                "name": name, "group": rt.group, "kind": rt.kind,
                "causes": [{ "reason": "FieldValueInvalid", "message": detail, "field": field }]
            }),
        )
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// `410 Gone` for a resourceVersion (or continue token) older than the kept history.
    pub(crate) fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub(crate) fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({content_type}) - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
            ),
        )
    }

    pub(crate) fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// This error as a `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

/// Errors of the test-facing helpers that are not API answers.
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    /// The API server refused the request.
    #[error("the fake API server refused the request: {0}")]
    Api(#[from] ApiError),
    /// A manifest handed to a helper could not be parsed.
    #[error("could not parse the manifest as YAML or JSON: {0}")]
    Parse(String),
    /// A helper was given a resource name that is not registered.
    #[error("unknown resource {0:?}: not a builtin kind and no installed CRD serves it (install the CRD first)")]
    UnknownResource(String),
}
