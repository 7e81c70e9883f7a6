//! What happens to an object between the request and the store, in the real server's order:
//! unknown fields are pruned (and refused or warned about, per `fieldValidation`), defaults are
//! filled in, then the object is validated (schema, CEL rules). Then, for non-admin users, the
//! authorization a write needs besides its own verb: creating through apply or PUT needs
//! `create`, and OwnerReferencesPermissionEnforcement (see [`crate::rbac`]).

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::openapi;
use crate::registry::ResourceType;
use crate::schema::{FieldError, Schemas};

/// `fieldValidation`: what to do with unknown fields in a create, update or patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and say so in `Warning` headers (the server's default).
    #[default]
    Warn,
    /// Refuse the request (400), naming them.
    Strict,
}

impl FieldValidation {
    pub(crate) fn parse(v: Option<&str>) -> Result<Self, ApiError> {
        match v {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn or Strict, got {other:?}"
            ))),
        }
    }
}

/// The schema a kind's objects are judged by, in one version.
fn schema_of<'a>(rt: &'a ResourceType, version: &str) -> Option<(Schemas<'static>, &'a Value)> {
    if rt.custom {
        let s = rt.schema(version)?;
        Some((Schemas { defs: openapi::definitions(), structural: true }, s))
    } else {
        let s = openapi::builtin_schema(&rt.group, version, &rt.kind)?;
        Some((Schemas { defs: openapi::definitions(), structural: false }, s))
    }
}

/// `Deployment.apps`, `Service`: how the real server names a kind in messages.
pub(crate) fn qualified_kind(rt: &ResourceType) -> String {
    if rt.group.is_empty() { rt.kind.clone() } else { format!("{}.{}", rt.kind, rt.group) }
}

/// A 422 with one cause per field error, as the real server sends it.
pub(crate) fn invalid(rt: &ResourceType, name: &str, errs: &[FieldError]) -> ApiError {
    let all: Vec<String> = errs.iter().map(ToString::to_string).collect();
    let listed = if all.len() == 1 { all[0].clone() } else { format!("[{}]", all.join(", ")) };
    let causes: Vec<Value> =
        errs.iter().map(|e| json!({"reason": e.reason(), "message": e.body(), "field": e.field})).collect();
    ApiError::new(422, "Invalid", format!("{} \"{name}\" is invalid: {listed}", qualified_kind(rt)))
        .with_details(json!({"name": name, "group": rt.group, "kind": rt.kind, "causes": causes}))
}

/// Prune unknown fields; per `fv`, refuse them (400) or return them as warnings.
pub(crate) fn prune(
    rt: &ResourceType,
    version: &str,
    obj: &mut Value,
    fv: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    let Some((schemas, schema)) = schema_of(rt, version) else { return Ok(Vec::new()) };
    let unknown = schemas.prune(obj, schema, true);
    if unknown.is_empty() {
        return Ok(Vec::new());
    }
    let listed: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
    match fv {
        FieldValidation::Ignore => Ok(Vec::new()),
        FieldValidation::Warn => Ok(listed),
        FieldValidation::Strict => Err(ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
            listed.join(", "),
            kind = rt.kind
        ))),
    }
}

/// Server-side apply refuses an applied configuration with undeclared fields, whatever
/// `fieldValidation` says (the real server answers 500 for it, which is what is reproduced).
pub(crate) fn check_applied(
    rt: &ResourceType,
    version: &str,
    ns: &str,
    name: &str,
    config: &Value,
) -> Result<(), ApiError> {
    let Some((schemas, schema)) = schema_of(rt, version) else { return Ok(()) };
    let undeclared = schemas.undeclared(config, schema, true);
    if let Some(first) = undeclared.first() {
        let gv = rt.api_version(version);
        let (g, v) = gv.rsplit_once('/').unwrap_or(("", &gv));
        let at = if rt.namespaced { format!("{ns}/{name}") } else { format!("/{name}") };
        return Err(ApiError::new(
            500,
            "InternalError",
            format!(
                "failed to create typed patch object ({at}; {g}/{v}, Kind={}): .{first}: field not declared in schema",
                rt.kind
            ),
        ));
    }
    Ok(())
}

/// Fill in defaults (custom resources: their schema's; builtin kinds: see [`crate::defaulting`]).
pub(crate) fn default(
    rt: &ResourceType,
    version: &str,
    obj: &mut Value,
    old: Option<&Value>,
    next_ip: &mut dyn FnMut() -> String,
) {
    if rt.custom {
        if let Some(schema) = rt.schema(version) {
            *obj = kube_cel::apply_defaults(schema, obj);
        }
    } else {
        crate::defaulting::apply(rt, obj, old, next_ip);
    }
}

/// Validate against the schema and (custom resources) the CEL rules.
///
/// On an update, an error at a field whose value did not change is not reported: the
/// validation ratcheting of Kubernetes 1.30+, simplified to comparing the failing field's value
/// (so an object stored before a stricter schema, or a status write to it, still goes through).
pub(crate) fn validate(
    rt: &ResourceType,
    version: &str,
    name: &str,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let Some((schemas, schema)) = schema_of(rt, version) else { return Ok(()) };
    let mut errs = schemas.validate(obj, schema, true);
    if rt.custom && errs.is_empty() {
        let root = kube_cel::RootContext {
            api_version: rt.api_version(version),
            api_group: rt.group.clone(),
            kind: rt.kind.clone(),
        };
        errs = crate::schema::cel_errors(schema, obj, old, &root);
    }
    if let Some(old) = old {
        errs.retain(|e| {
            let before = crate::schema::value_at(old, &e.field);
            before.is_none() || before != crate::schema::value_at(obj, &e.field)
        });
    }
    if errs.is_empty() { Ok(()) } else { Err(invalid(rt, name, &errs)) }
}
