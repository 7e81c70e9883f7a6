//! Does a live object already carry what the operator would apply? The answer decides
//! whether there is a write at all, so that a reconcile with nothing to change writes
//! nothing. Live objects have more than the operator sets (defaults the API server fills
//! in, fields other managers own), so the test is "covers", not equality: every field of
//! the desired object is in the live one with the same value. The operator's own objects
//! also carry a digest of the desired object ([`fingerprinted`]), so a field it stops
//! setting counts as a change although the live object still has it.

use k8s_openapi::{Metadata, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::names::APPLIED_HASH_ANNOTATION;

/// Whether `live` has every field of `desired` with the same value. Lists whose items all
/// have a `name` match item by item by name (as server-side apply merges `containers`,
/// `env`, `ports`, `volumes`...); other lists must have the same length and cover item by
/// item in order.
pub fn covers(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (_, Value::Null) => true,
        (Value::Object(l), Value::Object(d)) => d.iter().all(|(k, dv)| l.get(k).is_some_and(|lv| covers(lv, dv))),
        (Value::Array(l), Value::Array(d)) => match named_items(d) {
            Some(names) => names.into_iter().zip(d).all(|(name, dv)| {
                l.iter()
                    .find(|lv| lv.get("name").and_then(Value::as_str) == Some(name))
                    .is_some_and(|lv| covers(lv, dv))
            }),
            None => l.len() == d.len() && l.iter().zip(d).all(|(lv, dv)| covers(lv, dv)),
        },
        (l, d) => l == d,
    }
}

fn named_items(items: &[Value]) -> Option<Vec<&str>> {
    if items.is_empty() {
        return None;
    }
    items.iter().map(|i| i.get("name").and_then(Value::as_str)).collect()
}

/// [`covers`] for typed objects; a missing live object covers nothing.
pub fn live_covers<L: Serialize, D: Serialize>(live: Option<&L>, desired: &D) -> bool {
    live.is_some_and(|l| covers(&to_json(l), &to_json(desired)))
}

fn to_json<T: Serialize>(o: &T) -> Value {
    serde_json::to_value(o).expect("Kubernetes objects serialize")
}

/// `obj` with [`APPLIED_HASH_ANNOTATION`] set to a digest of everything else in it.
pub fn fingerprinted<K: Metadata<Ty = ObjectMeta> + Serialize>(mut obj: K) -> K {
    let bytes = serde_json::to_vec(&obj).expect("Kubernetes objects serialize");
    let digest: String = Sha256::digest(&bytes).iter().take(8).map(|b| format!("{b:02x}")).collect();
    obj.metadata_mut().annotations.get_or_insert_default().insert(APPLIED_HASH_ANNOTATION.into(), digest);
    obj
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn defaults_and_other_managers_fields_do_not_count_as_drift() {
        let desired = json!({ "spec": { "containers": [
            { "name": "app", "env": [ { "name": "A", "value": "1" } ], "args": ["--x", "1"] } ] } });
        let live = json!({ "spec": { "replicas": 2, "containers": [
            { "name": "sidecar" },
            { "name": "app", "imagePullPolicy": "Always", "args": ["--x", "1"],
              "env": [ { "name": "USER", "value": "u" }, { "name": "A", "value": "1" } ] } ] } });
        assert!(covers(&live, &desired));
    }

    #[test]
    fn a_changed_missing_or_extra_owned_value_is_drift() {
        let desired = json!({ "env": [ { "name": "A", "value": "1" } ], "args": ["--x", "1"] });
        for live in [
            json!({ "env": [ { "name": "A", "value": "2" } ], "args": ["--x", "1"] }),
            json!({ "env": [ { "name": "B", "value": "1" } ], "args": ["--x", "1"] }),
            json!({ "env": [ { "name": "A", "value": "1" } ], "args": ["--x", "1", "--y"] }),
            json!({ "env": [ { "name": "A", "value": "1" } ] }),
        ] {
            assert!(!covers(&live, &desired), "{live} is drift");
        }
    }

    #[test]
    fn the_fingerprint_follows_the_content() {
        use k8s_openapi::api::core::v1::ConfigMap;
        let cm = |v: &str| ConfigMap {
            metadata: ObjectMeta { name: Some("c".into()), ..Default::default() },
            data: Some([("k".to_owned(), v.to_owned())].into()),
            ..Default::default()
        };
        let hash = |c: ConfigMap| fingerprinted(c).metadata.annotations.unwrap()[APPLIED_HASH_ANNOTATION].clone();
        assert_eq!(hash(cm("a")), hash(cm("a")));
        assert_ne!(hash(cm("a")), hash(cm("b")));
        assert!(live_covers(Some(&fingerprinted(cm("a"))), &fingerprinted(cm("a"))));
        assert!(!live_covers(Some(&fingerprinted(cm("a"))), &fingerprinted(cm("b"))));
        assert!(!live_covers(None::<&ConfigMap>, &cm("a")));
    }
}
