//! JSON merge patch (RFC 7386), JSON patch (RFC 6902) and a strategic merge patch that
//! covers what clients send to builtin kinds.

use json_patch::{PatchErrorKind, PatchOperation};
use serde_json::Value;

use crate::fields::{ListKind, item_key, list_kind};

/// The content types of PATCH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchType {
    pub(crate) fn from_content_type(ct: &str) -> Option<Self> {
        let ct = ct.split(';').next().unwrap_or_default().trim();
        match ct {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" | "application/apply-patch+cbor" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PatchType::Merge => "merge",
            PatchType::Json => "json",
            PatchType::Strategic => "strategic",
            PatchType::Apply => "apply",
        }
    }
}

/// RFC 7386: `null` deletes a key, lists are replaced whole.
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// Why a JSON patch did not apply.
pub(crate) enum JsonPatchError {
    /// The body is not a list of operations.
    Malformed(String),
    /// An operation failed (a `test` that did not match, a path that does not exist).
    Failed(String),
}

/// RFC 6902, all or nothing. Like the real server (evanphx/json-patch), a `test` for `null`
/// passes on a path that does not exist: kube's finalizer helper relies on it.
pub(crate) fn json_patch(target: &Value, ops: &Value) -> Result<Value, JsonPatchError> {
    let patch: json_patch::Patch =
        serde_json::from_value(ops.clone()).map_err(|e| JsonPatchError::Malformed(e.to_string()))?;
    let mut doc = target.clone();
    for op in &patch.0 {
        if let PatchOperation::Test(t) = op
            && t.value.is_null()
            && doc.pointer(t.path.as_str()).is_none()
        {
            continue;
        }
        if let Err(e) = json_patch::patch(&mut doc, std::slice::from_ref(op)) {
            let msg = match e.kind {
                PatchErrorKind::TestFailed => format!("testing value {} failed: test failed", e.path),
                _ => format!("{} at {}", e.kind, e.path),
            };
            return Err(JsonPatchError::Failed(msg));
        }
    }
    Ok(doc)
}

fn is_directive(k: &str) -> bool {
    k == "$patch"
        || k == "$retainKeys"
        || k.starts_with("$setElementOrder/")
        || k.starts_with("$deleteFromPrimitiveList/")
}

fn without_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter().filter(|(k, _)| !is_directive(k)).map(|(k, v)| (k.clone(), without_directives(v))).collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_directives).collect()),
        other => other.clone(),
    }
}

/// Strategic merge patch, simplified: maps merge per key (`null` deletes), lists with a merge
/// key (the same table as server-side apply) merge per item (`$patch: delete` removes an item),
/// `finalizers` merge as a set, other lists are replaced. `$patch: replace` and
/// `$deleteFromPrimitiveList/<field>` are honoured; `$setElementOrder` and `$retainKeys` are
/// ignored.
pub(crate) fn strategic_merge(target: &mut Value, patch: &Value) {
    strategic(target, patch);
}

fn strategic(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = without_directives(patch);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Value::Array(gone)) = (t.get_mut(field), v) {
                items.retain(|it| !gone.contains(it));
            }
            continue;
        }
        if is_directive(k) {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (t.get_mut(k), v) {
            (Some(tv @ Value::Object(_)), Value::Object(_)) => strategic(tv, v),
            (Some(Value::Array(titems)), Value::Array(pitems)) => {
                match list_kind(None, Some(k), titems.iter().chain(pitems.iter().filter(|i| !is_delete(i)))) {
                    ListKind::Map(keys) => {
                        for pi in pitems {
                            let key = item_key(pi, &keys);
                            if is_delete(pi) {
                                titems.retain(|ti| item_key(ti, &keys) != key);
                            } else if let Some(ti) = titems.iter_mut().find(|ti| item_key(ti, &keys) == key) {
                                strategic(ti, pi);
                            } else {
                                titems.push(without_directives(pi));
                            }
                        }
                    }
                    ListKind::Set => {
                        for pi in pitems {
                            if !titems.contains(pi) {
                                titems.push(pi.clone());
                            }
                        }
                    }
                    ListKind::Atomic => *titems = pitems.iter().map(without_directives).collect(),
                }
            }
            _ => {
                t.insert(k.clone(), without_directives(v));
            }
        }
    }
}

fn is_delete(item: &Value) -> bool {
    item.get("$patch").and_then(Value::as_str) == Some("delete")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn strategic_merges_containers_by_name_and_deletes_with_null() {
        let mut t = json!({"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}], "x": 1}});
        strategic_merge(
            &mut t,
            &json!({"spec": {"containers": [{"name": "b", "image": "3"}, {"name": "c"}], "x": null}}),
        );
        assert_eq!(
            t,
            json!({"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "3"}, {"name": "c"}]}})
        );
        strategic_merge(&mut t, &json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}));
        assert_eq!(t["spec"]["containers"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn json_patch_test_null_on_missing_path_passes() {
        let doc = json!({"metadata": {"name": "x"}});
        let out = json_patch(
            &doc,
            &json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
                    {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}]),
        )
        .ok()
        .unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["f"]));
    }
}
