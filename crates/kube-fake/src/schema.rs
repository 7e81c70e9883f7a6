//! Objects against OpenAPI schemas, as the API server judges them:
//!
//! - **pruning**: fields a schema does not declare are dropped (and reported, for
//!   `fieldValidation=Strict|Warn`); `null`s in fields that are not `nullable` are dropped
//!   first, so that their default applies;
//! - **validation** of custom resources against their CRD's structural schema: types,
//!   `nullable`, `required`, `enum`, `pattern`, lengths, bounds, item and property counts,
//!   `x-kubernetes-int-or-string`, `x-kubernetes-list-type` (`set` and `map` items must be
//!   unique), `allOf`/`anyOf`/`oneOf`/`not`; then the `x-kubernetes-validations` CEL rules (with
//!   kube-cel, which evaluates them like the API server, with `oldSelf` on updates);
//! - **defaulting** from the schema's `default`s (kube-cel's `apply_defaults`);
//! - for builtin kinds, the official OpenAPI definitions ([`crate::openapi`]) give unknown
//!   fields and `required` fields.
//!
//! Errors read like the real server's field errors (`spec.delivery.ackWait: Invalid value:
//! "soon": spec.delivery.ackWait in body should match '^...$'`).
//!
//! Simplifications: builtin kinds are checked for unknown and required fields only, not for
//! the rest of their Go validation (name formats, label syntax, selector/template agreement,
//! ...). `format`s are not checked. Validation ratcheting compares only the failing field's
//! value (see `admission::validate`), and CEL cost limits are not enforced.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value};

/// How a field error is classified (`StatusCause.reason`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ErrorType {
    Required,
    Invalid(Value),
    Duplicate(Value),
    NotSupported(Value),
    TooLong,
    TooMany(Value),
    Forbidden,
}

/// One field error, as `k8s.io/apimachinery/pkg/util/validation/field.Error`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FieldError {
    pub kind: ErrorType,
    pub field: String,
    pub detail: String,
}

impl FieldError {
    pub(crate) fn new(kind: ErrorType, field: &str, detail: impl Into<String>) -> Self {
        FieldError { kind, field: field.to_string(), detail: detail.into() }
    }

    /// `StatusCause.reason`.
    pub(crate) fn reason(&self) -> &'static str {
        match self.kind {
            ErrorType::Required => "FieldValueRequired",
            ErrorType::Invalid(_) => "FieldValueInvalid",
            ErrorType::Duplicate(_) => "FieldValueDuplicate",
            ErrorType::NotSupported(_) => "FieldValueNotSupported",
            ErrorType::TooLong => "FieldValueTooLong",
            ErrorType::TooMany(_) => "FieldValueTooMany",
            ErrorType::Forbidden => "FieldValueForbidden",
        }
    }

    /// The message without the field, as `field.Error.ErrorBody()` prints it.
    pub(crate) fn body(&self) -> String {
        let (name, value) = match &self.kind {
            ErrorType::Required => ("Required value", None),
            ErrorType::Invalid(v) => ("Invalid value", Some(v)),
            ErrorType::Duplicate(v) => ("Duplicate value", Some(v)),
            ErrorType::NotSupported(v) => ("Unsupported value", Some(v)),
            ErrorType::TooLong => ("Too long", None),
            ErrorType::TooMany(v) => ("Too many", Some(v)),
            ErrorType::Forbidden => ("Forbidden", None),
        };
        let mut s = match value {
            Some(v) => format!("{name}: {}", go_value(v)),
            None => name.to_string(),
        };
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

/// A JSON value the way Go's `%v`/`%q`/`%#v` prints the decoded value in field errors.
pub(crate) fn go_value(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        Value::Bool(_) | Value::Number(_) => v.to_string(),
        Value::Array(_) | Value::Object(_) => go_literal(v),
    }
}

fn go_literal(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys.iter().map(|k| format!("{:?}:{}", k, go_literal(&m[*k]))).collect();
            format!("map[string]interface {{}}{{{}}}", parts.join(", "))
        }
        Value::Array(a) => {
            format!("[]interface {{}}{{{}}}", a.iter().map(go_literal).collect::<Vec<_>>().join(", "))
        }
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        Value::Null => "interface {}(nil)".into(),
        other => other.to_string(),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// Schemas with `$ref`s into a definitions map (builtin kinds), or inline ones (CRDs).
#[derive(Clone, Copy)]
pub(crate) struct Schemas<'a> {
    pub defs: &'a Map<String, Value>,
    /// Custom resources: the full structural validation; builtin kinds: unknown and required
    /// fields only (see the module docs).
    pub structural: bool,
}

impl<'a> Schemas<'a> {
    /// Follow `$ref` (also the `allOf: [{$ref}]` form of OpenAPI v3).
    pub(crate) fn resolve(&self, s: &'a Value) -> &'a Value {
        let mut s = s;
        for _ in 0..8 {
            let r = s
                .get("$ref")
                .and_then(Value::as_str)
                .or_else(|| s.get("allOf")?.as_array().filter(|a| a.len() == 1)?[0].get("$ref")?.as_str());
            match r.and_then(|r| r.rsplit('/').next()).and_then(|name| self.defs.get(name)) {
                Some(target) => s = target,
                None => break,
            }
        }
        s
    }

    fn object_meta(&self) -> Option<&'a Value> {
        self.defs.get("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")
    }

    /// Drop what the schema does not declare; return the dropped fields' paths. `root`: the
    /// value is a whole object (apiVersion, kind and metadata are always known).
    pub(crate) fn prune(&self, v: &mut Value, schema: &Value, root: bool) -> Vec<String> {
        let mut unknown = Vec::new();
        self.prune_at(v, schema, "", root, &mut unknown);
        unknown
    }

    fn prune_at(&self, v: &mut Value, schema: &Value, path: &str, root: bool, unknown: &mut Vec<String>) {
        let s = self.resolve(schema);
        let preserve = s.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool) == Some(true);
        let embedded = s.get("x-kubernetes-embedded-resource").and_then(Value::as_bool) == Some(true);
        match v {
            Value::Object(m) => {
                let props = s.get("properties").and_then(Value::as_object);
                let additional = s.get("additionalProperties");
                // Builtin "any JSON" types (RawExtension, JSON, FieldsV1) declare nothing: keep all.
                let declares_nothing = props.is_none() && additional.is_none() && s.get("type").is_none();
                let keys: Vec<String> = m.keys().cloned().collect();
                for k in keys {
                    let here = child(path, &k);
                    if (root || embedded) && matches!(k.as_str(), "apiVersion" | "kind") {
                        continue;
                    }
                    if (root || embedded) && k == "metadata" {
                        if let (Some(meta_schema), Some(mv)) = (self.object_meta(), m.get_mut("metadata")) {
                            let meta_schemas = Schemas { defs: self.defs, structural: false };
                            meta_schemas.prune_at(mv, meta_schema, &here, false, unknown);
                        }
                        continue;
                    }
                    let sub = props.and_then(|p| p.get(&k)).or(additional.filter(|a| a.is_object()));
                    match sub {
                        Some(sub) => {
                            let sub_resolved = self.resolve(sub);
                            let nullable = sub_resolved.get("nullable").and_then(Value::as_bool) == Some(true);
                            if m.get(&k).is_some_and(Value::is_null) && (!nullable || !self.structural) {
                                m.remove(&k);
                                continue;
                            }
                            if let Some(cv) = m.get_mut(&k) {
                                self.prune_at(cv, sub, &here, false, unknown);
                            }
                        }
                        None if preserve || declares_nothing || additional == Some(&Value::Bool(true)) => {}
                        None => {
                            m.remove(&k);
                            unknown.push(here);
                        }
                    }
                }
            }
            Value::Array(items) => {
                if let Some(item_schema) = s.get("items") {
                    for (i, it) in items.iter_mut().enumerate() {
                        self.prune_at(it, item_schema, &index(path, i), false, unknown);
                    }
                }
            }
            _ => {}
        }
    }

    /// The fields of an applied configuration that the schema does not declare (server-side
    /// apply refuses those whatever `fieldValidation` says).
    pub(crate) fn undeclared(&self, v: &Value, schema: &Value, root: bool) -> Vec<String> {
        let mut copy = v.clone();
        self.prune(&mut copy, schema, root)
    }

    /// Validate `v` (see the module docs for what is checked).
    pub(crate) fn validate(&self, v: &Value, schema: &Value, root: bool) -> Vec<FieldError> {
        let mut errs = Vec::new();
        self.validate_at(v, schema, "", root, &mut errs);
        errs
    }

    fn validate_at(&self, v: &Value, schema: &Value, path: &str, root: bool, errs: &mut Vec<FieldError>) {
        let s = self.resolve(schema);
        let Some(s) = s.as_object() else { return };
        let invalid = |errs: &mut Vec<FieldError>, detail: String| {
            errs.push(FieldError::new(ErrorType::Invalid(v.clone()), path, detail));
        };
        let shown = if path.is_empty() { "body".to_string() } else { path.to_string() };
        if v.is_null() {
            if self.structural && s.get("nullable").and_then(Value::as_bool) != Some(true) && !root {
                errs.push(FieldError::new(
                    ErrorType::Invalid(Value::String("null".into())),
                    path,
                    format!("{shown} in body must be of type {}: \"null\"", type_name(s)),
                ));
            }
            return;
        }
        if self.structural {
            let int_or_string = s.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true);
            let actual = json_type(v);
            let type_ok = match s.get("type").and_then(Value::as_str) {
                _ if int_or_string => matches!(actual, "integer" | "string"),
                Some("number") => matches!(actual, "integer" | "number"),
                Some("integer") => actual == "integer" || v.as_f64().is_some_and(|f| f.fract() == 0.0),
                Some(t) => t == actual,
                None => true,
            };
            if !type_ok {
                let t = s.get("type").and_then(Value::as_str).unwrap_or("integer or string");
                errs.push(FieldError::new(
                    ErrorType::Invalid(Value::String(actual.into())),
                    path,
                    format!("{shown} in body must be of type {t}: \"{actual}\""),
                ));
                return;
            }
            if let Some(options) = s.get("enum").and_then(Value::as_array)
                && !options.contains(v)
            {
                let list: Vec<String> = options.iter().map(go_value).collect();
                errs.push(FieldError::new(
                    ErrorType::NotSupported(v.clone()),
                    path,
                    format!("supported values: {}", list.join(", ")),
                ));
            }
            self.check_bounds(v, s, path, &shown, errs, &invalid);
            for (k, junctor) in [("allOf", 0), ("anyOf", 1), ("oneOf", 2)] {
                let Some(subs) = s.get(k).and_then(Value::as_array) else { continue };
                let passing = subs
                    .iter()
                    .filter(|sub| {
                        let mut e = Vec::new();
                        self.validate_at(v, sub, path, root, &mut e);
                        e.is_empty()
                    })
                    .count();
                let ok = match junctor {
                    0 => passing == subs.len(),
                    1 => passing > 0,
                    _ => passing == 1,
                };
                if !ok {
                    let what = match junctor {
                        0 => "must validate all the schemas (allOf)",
                        1 => "must validate at least one schema (anyOf)",
                        _ => "must validate one and only one schema (oneOf)",
                    };
                    invalid(errs, format!("{shown} in body {what}"));
                }
            }
            if let Some(not) = s.get("not") {
                let mut e = Vec::new();
                self.validate_at(v, not, path, root, &mut e);
                if e.is_empty() {
                    invalid(errs, format!("{shown} in body must not validate the schema (not)"));
                }
            }
        }
        match v {
            Value::Object(m) => {
                for r in s.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                    if !m.contains_key(r) {
                        errs.push(FieldError::new(ErrorType::Required, &child(path, r), ""));
                    }
                }
                let props = s.get("properties").and_then(Value::as_object);
                let additional = s.get("additionalProperties").filter(|a| a.is_object());
                for (k, cv) in m {
                    if (root || s.get("x-kubernetes-embedded-resource").and_then(Value::as_bool) == Some(true))
                        && matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                    {
                        continue;
                    }
                    if let Some(sub) = props.and_then(|p| p.get(k)).or(additional) {
                        self.validate_at(cv, sub, &child(path, k), false, errs);
                    }
                }
            }
            Value::Array(items) => {
                if self.structural {
                    self.check_list_type(items, s, path, errs);
                }
                if let Some(item_schema) = s.get("items") {
                    for (i, it) in items.iter().enumerate() {
                        self.validate_at(it, item_schema, &index(path, i), false, errs);
                    }
                }
            }
            _ => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check_bounds(
        &self,
        v: &Value,
        s: &Map<String, Value>,
        path: &str,
        shown: &str,
        errs: &mut Vec<FieldError>,
        invalid: &dyn Fn(&mut Vec<FieldError>, String),
    ) {
        let num = |k: &str| s.get(k).and_then(Value::as_f64);
        let flag = |k: &str| s.get(k).and_then(Value::as_bool) == Some(true);
        let fmt_num = |f: f64| if f.fract() == 0.0 { format!("{}", f as i64) } else { f.to_string() };
        match v {
            Value::String(text) => {
                let len = text.chars().count();
                if let Some(max) = num("maxLength")
                    && len as f64 > max
                {
                    errs.push(FieldError::new(
                        ErrorType::TooLong,
                        path,
                        format!("may not be more than {} bytes", fmt_num(max)),
                    ));
                }
                if let Some(min) = num("minLength")
                    && (len as f64) < min
                {
                    invalid(errs, format!("{shown} in body should be at least {} chars long", fmt_num(min)));
                }
                if let Some(p) = s.get("pattern").and_then(Value::as_str)
                    && !pattern_matches(p, text)
                {
                    invalid(errs, format!("{shown} in body should match '{p}'"));
                }
            }
            Value::Number(n) => {
                let x = n.as_f64().unwrap_or_default();
                if let Some(min) = num("minimum") {
                    if flag("exclusiveMinimum") && x <= min {
                        invalid(errs, format!("{shown} in body should be greater than {}", fmt_num(min)));
                    } else if x < min {
                        invalid(errs, format!("{shown} in body should be greater than or equal to {}", fmt_num(min)));
                    }
                }
                if let Some(max) = num("maximum") {
                    if flag("exclusiveMaximum") && x >= max {
                        invalid(errs, format!("{shown} in body should be less than {}", fmt_num(max)));
                    } else if x > max {
                        invalid(errs, format!("{shown} in body should be less than or equal to {}", fmt_num(max)));
                    }
                }
                if let Some(m) = num("multipleOf")
                    && m != 0.0
                    && (x / m).fract() != 0.0
                {
                    invalid(errs, format!("{shown} in body should be a multiple of {}", fmt_num(m)));
                }
            }
            Value::Array(items) => {
                if let Some(max) = num("maxItems")
                    && items.len() as f64 > max
                {
                    errs.push(FieldError::new(
                        ErrorType::TooMany(Value::from(items.len())),
                        path,
                        format!("must have at most {} items", fmt_num(max)),
                    ));
                }
                if let Some(min) = num("minItems")
                    && (items.len() as f64) < min
                {
                    errs.push(FieldError::new(
                        ErrorType::Invalid(Value::from(items.len())),
                        path,
                        format!("{shown} in body should have at least {} items", fmt_num(min)),
                    ));
                }
            }
            Value::Object(m) => {
                if let Some(max) = num("maxProperties")
                    && m.len() as f64 > max
                {
                    errs.push(FieldError::new(
                        ErrorType::TooMany(Value::from(m.len())),
                        path,
                        format!("must have at most {} items", fmt_num(max)),
                    ));
                }
                if let Some(min) = num("minProperties")
                    && (m.len() as f64) < min
                {
                    errs.push(FieldError::new(
                        ErrorType::Invalid(Value::from(m.len())),
                        path,
                        format!("{shown} in body should have at least {} properties", fmt_num(min)),
                    ));
                }
            }
            _ => {}
        }
    }

    /// `x-kubernetes-list-type: set` and `map` lists hold no duplicates.
    fn check_list_type(&self, items: &[Value], s: &Map<String, Value>, path: &str, errs: &mut Vec<FieldError>) {
        match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => {
                let mut seen = Vec::new();
                for (i, it) in items.iter().enumerate() {
                    if seen.contains(&it) {
                        errs.push(FieldError::new(ErrorType::Duplicate(it.clone()), &index(path, i), ""));
                    } else {
                        seen.push(it);
                    }
                }
            }
            Some("map") => {
                let keys: Vec<&str> = s
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let mut seen = BTreeSet::new();
                for (i, it) in items.iter().enumerate() {
                    let key: Map<String, Value> =
                        keys.iter().filter_map(|k| it.get(*k).map(|v| (k.to_string(), v.clone()))).collect();
                    let key = Value::Object(key);
                    if !seen.insert(key.to_string()) {
                        errs.push(FieldError::new(ErrorType::Duplicate(key), &index(path, i), ""));
                    }
                }
            }
            _ => {}
        }
    }
}

fn type_name(s: &Map<String, Value>) -> &str {
    s.get("type").and_then(Value::as_str).unwrap_or("object")
}

thread_local! {
    static PATTERNS: RefCell<HashMap<String, Option<regex::Regex>>> = RefCell::new(HashMap::new());
}

/// Whether `text` matches an ECMA/RE2-style `pattern` (a pattern that does not compile
/// matches nothing, so the value is refused rather than waved through).
fn pattern_matches(pattern: &str, text: &str) -> bool {
    PATTERNS.with(|cache| {
        let mut cache = cache.borrow_mut();
        let re = cache.entry(pattern.to_string()).or_insert_with(|| regex::Regex::new(pattern).ok());
        re.as_ref().is_some_and(|re| re.is_match(text))
    })
}

thread_local! {
    static CEL: kube_cel::Validator = kube_cel::Validator::new();
}

/// The `x-kubernetes-validations` CEL rules of a CRD schema, on the (defaulted) object; on an
/// update `old` is the stored object, for transition rules.
pub(crate) fn cel_errors(
    schema: &Value,
    obj: &Value,
    old: Option<&Value>,
    root: &kube_cel::RootContext,
) -> Vec<FieldError> {
    let result = CEL.with(|v| v.validate_with_context(schema, obj, old, Some(root)));
    let Err(errors) = result else { return Vec::new() };
    errors
        .iter()
        .map(|e| {
            let at = value_at(obj, &e.field_path);
            let bad = Value::String(at.map(json_type).unwrap_or("object").to_string());
            let kind = match e.reason.as_deref() {
                Some("FieldValueRequired") => ErrorType::Required,
                Some("FieldValueForbidden") => ErrorType::Forbidden,
                Some("FieldValueDuplicate") => ErrorType::Duplicate(bad),
                _ => ErrorType::Invalid(bad),
            };
            let detail = match e.kind {
                kube_cel::ErrorKind::ValidationFailure => e.message.clone(),
                _ => format!("{} (rule: {})", e.message, e.rule),
            };
            FieldError::new(kind, &e.field_path, detail)
        })
        .collect()
}

/// The value at a field path like `spec.services[0].port`.
pub(crate) fn value_at<'v>(obj: &'v Value, path: &str) -> Option<&'v Value> {
    let mut cur = obj;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, rest) = part.split_once('[').unwrap_or((part, ""));
        if !name.is_empty() {
            cur = cur.get(name)?;
        }
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            cur = cur.get(idx.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn crd_schemas() -> Map<String, Value> {
        Map::new()
    }

    #[test]
    fn errors_print_like_field_errors() {
        let e = FieldError::new(
            ErrorType::Invalid(json!("soon")),
            "spec.ackWait",
            "spec.ackWait in body should match '^x$'",
        );
        assert_eq!(e.to_string(), "spec.ackWait: Invalid value: \"soon\": spec.ackWait in body should match '^x$'");
        let d = FieldError::new(ErrorType::Duplicate(json!({"name": "posts"})), "spec.services[1]", "");
        assert_eq!(d.to_string(), "spec.services[1]: Duplicate value: map[string]interface {}{\"name\":\"posts\"}");
        assert_eq!(
            FieldError::new(ErrorType::Required, "spec.services", "").to_string(),
            "spec.services: Required value"
        );
    }

    #[test]
    fn structural_validation_and_pruning() {
        let defs = crd_schemas();
        let s = Schemas { defs: &defs, structural: true };
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "required": ["n"],
            "properties": {"n": {"type": "integer", "minimum": 1}, "d": {"type": "string", "pattern": "^[0-9]+s$"},
                           "l": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}},
                                 "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}}}}});
        let mut obj = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a", "bogus": 1},
            "spec": {"n": 0, "d": "soon", "extra": true, "l": [{"name": "a"}, {"name": "a"}]}});
        assert_eq!(s.prune(&mut obj, &schema, true), ["spec.extra"]);
        let errs: Vec<String> = s.validate(&obj, &schema, true).iter().map(ToString::to_string).collect();
        assert_eq!(
            errs,
            [
                "spec.d: Invalid value: \"soon\": spec.d in body should match '^[0-9]+s$'",
                "spec.l[1]: Duplicate value: map[string]interface {}{\"name\":\"a\"}",
                "spec.n: Invalid value: 0: spec.n in body should be greater than or equal to 1",
            ]
        );
        let wrong = json!({"spec": {"n": "x"}});
        assert_eq!(
            s.validate(&wrong, &schema, true)[0].to_string(),
            "spec.n: Invalid value: \"string\": spec.n in body must be of type integer: \"string\""
        );
    }
}
