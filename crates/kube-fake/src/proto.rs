//! Kubernetes protobuf request bodies, for the kinds clients send that way: client-go's typed
//! clients use `application/vnd.kubernetes.protobuf` (accepting JSON back) for builtin kinds,
//! so kubectl posts TokenRequests (`kubectl create token`) and access reviews (`kubectl auth
//! can-i`, `kubectl auth whoami`) and creates namespaces that way, and helm keeps its release
//! records in Secrets through them (create, update, delete with protobuf DeleteOptions). Those
//! bodies are decoded here into JSON; any other kind sent as protobuf gets 415 (`kubectl apply`,
//! `kubectl get` and helm's manifests are JSON).
//!
//! The wire format: the magic `k8s\0`, then a `runtime.Unknown` message (type meta, raw bytes of
//! the object). Only the fields the handlers read are decoded.

use serde_json::{Map, Value, json};

/// One protobuf field: its number and value.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(out);
        }
    }
    None
}

/// The fields of one message, in order; `None` if the bytes are not protobuf.
fn fields(buf: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let (num, wire) = (key >> 3, key & 7);
        let f = match wire {
            0 => Field::Varint(varint(buf, &mut pos)?),
            1 => {
                pos += 8;
                Field::Bytes(buf.get(pos - 8..pos)?)
            }
            2 => {
                let len = varint(buf, &mut pos)? as usize;
                let end = pos.checked_add(len)?;
                let b = buf.get(pos..end)?;
                pos = end;
                Field::Bytes(b)
            }
            5 => {
                pos += 4;
                Field::Bytes(buf.get(pos - 4..pos)?)
            }
            _ => return None,
        };
        out.push((num, f));
    }
    Some(out)
}

fn string_fields(buf: &[u8], names: &[(u64, &str)]) -> Map<String, Value> {
    let mut m = Map::new();
    for (num, f) in fields(buf).unwrap_or_default() {
        if let (Some((_, name)), Field::Bytes(b)) = (names.iter().find(|(n, _)| *n == num), f) {
            m.insert(name.to_string(), json!(String::from_utf8_lossy(b)));
        }
    }
    m
}

fn message(buf: &[u8], num: u64) -> Option<&[u8]> {
    fields(buf)?.into_iter().find_map(|(n, f)| match f {
        Field::Bytes(b) if n == num => Some(b),
        _ => None,
    })
}

fn text(b: &[u8]) -> Value {
    json!(String::from_utf8_lossy(b))
}

/// A `map<string, string>` (or bytes, base64-encoded as JSON has them) field.
fn map_field(buf: &[u8], num: u64, bytes: bool) -> Option<Value> {
    let mut m = Map::new();
    for (n, f) in fields(buf).unwrap_or_default() {
        let Field::Bytes(entry) = f else { continue };
        if n != num {
            continue;
        }
        let mut key = String::new();
        let mut value: &[u8] = &[];
        for (en, ef) in fields(entry).unwrap_or_default() {
            match (en, ef) {
                (1, Field::Bytes(k)) => key = String::from_utf8_lossy(k).into_owned(),
                (2, Field::Bytes(v)) => value = v,
                _ => {}
            }
        }
        let v = if bytes {
            serde_json::to_value(k8s_openapi::ByteString(value.to_vec())).unwrap_or(Value::Null)
        } else {
            text(value)
        };
        m.insert(key, v);
    }
    (!m.is_empty()).then_some(Value::Object(m))
}

fn repeated_strings(buf: &[u8], num: u64) -> Vec<Value> {
    fields(buf)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(n, f)| match f {
            Field::Bytes(b) if n == num => Some(text(b)),
            _ => None,
        })
        .collect()
}

/// ObjectMeta: the fields a client sets.
fn object_meta(buf: &[u8]) -> Value {
    let mut m =
        string_fields(buf, &[(1, "name"), (2, "generateName"), (3, "namespace"), (5, "uid"), (6, "resourceVersion")]);
    m.retain(|_, v| v.as_str().is_some_and(|s| !s.is_empty()));
    if let Some(l) = map_field(buf, 11, false) {
        m.insert("labels".into(), l);
    }
    if let Some(a) = map_field(buf, 12, false) {
        m.insert("annotations".into(), a);
    }
    let finalizers = repeated_strings(buf, 14);
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), json!(finalizers));
    }
    let mut owners = Vec::new();
    for (n, f) in fields(buf).unwrap_or_default() {
        let Field::Bytes(r) = f else { continue };
        if n != 13 {
            continue;
        }
        let mut o = string_fields(r, &[(1, "kind"), (3, "name"), (4, "uid"), (5, "apiVersion")]);
        for (rn, rf) in fields(r).unwrap_or_default() {
            match (rn, rf) {
                (6, Field::Varint(v)) => {
                    o.insert("controller".into(), json!(v != 0));
                }
                (7, Field::Varint(v)) => {
                    o.insert("blockOwnerDeletion".into(), json!(v != 0));
                }
                _ => {}
            }
        }
        owners.push(Value::Object(o));
    }
    if !owners.is_empty() {
        m.insert("ownerReferences".into(), json!(owners));
    }
    Value::Object(m)
}

/// The object of a protobuf body as JSON, for the kinds listed in the module docs.
pub(crate) fn decode(body: &[u8]) -> Result<Value, String> {
    let unknown = body.strip_prefix(b"k8s\0").ok_or("not a Kubernetes protobuf body (no k8s magic)")?;
    let type_meta =
        message(unknown, 1).map(|tm| string_fields(tm, &[(1, "apiVersion"), (2, "kind")])).unwrap_or_default();
    let raw = message(unknown, 2).unwrap_or_default();
    let kind = type_meta.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let mut obj = json!({"kind": kind});
    if let Some(av) = type_meta.get("apiVersion") {
        obj["apiVersion"] = av.clone();
    }
    if let Some(meta) = message(raw, 1) {
        obj["metadata"] = object_meta(meta);
    }
    match kind.as_str() {
        "Secret" => {
            if let Some(d) = map_field(raw, 2, true) {
                obj["data"] = d;
            }
            if let Some(d) = map_field(raw, 4, false) {
                obj["stringData"] = d;
            }
            if let Some(t) = string_fields(raw, &[(3, "type")]).remove("type") {
                obj["type"] = t;
            }
            for (n, f) in fields(raw).unwrap_or_default() {
                if let (5, Field::Varint(v)) = (n, f) {
                    obj["immutable"] = json!(v != 0);
                }
            }
            return Ok(obj);
        }
        "ConfigMap" => {
            if let Some(d) = map_field(raw, 2, false) {
                obj["data"] = d;
            }
            if let Some(d) = map_field(raw, 3, true) {
                obj["binaryData"] = d;
            }
            return Ok(obj);
        }
        "Namespace" | "ServiceAccount" => return Ok(obj),
        "DeleteOptions" => {
            let mut o = Map::new();
            for (n, f) in fields(raw).unwrap_or_default() {
                match (n, f) {
                    (1, Field::Varint(v)) => {
                        o.insert("gracePeriodSeconds".into(), json!(v as i64));
                    }
                    (2, Field::Bytes(p)) => {
                        o.insert(
                            "preconditions".into(),
                            Value::Object(string_fields(p, &[(1, "uid"), (2, "resourceVersion")])),
                        );
                    }
                    (3, Field::Varint(v)) => {
                        o.insert("orphanDependents".into(), json!(v != 0));
                    }
                    (4, Field::Bytes(p)) => {
                        o.insert("propagationPolicy".into(), text(p));
                    }
                    (5, Field::Bytes(p)) => {
                        if let Some(a) = o.entry("dryRun").or_insert_with(|| json!([])).as_array_mut() {
                            a.push(text(p));
                        }
                    }
                    _ => {}
                }
            }
            return Ok(Value::Object(o));
        }
        _ => {}
    }
    let spec = message(raw, 2).unwrap_or_default();
    let spec_json = match kind.as_str() {
        "TokenRequest" => {
            let mut s = Map::new();
            let mut audiences = Vec::new();
            for (n, f) in fields(spec).unwrap_or_default() {
                match (n, f) {
                    (1, Field::Bytes(b)) => audiences.push(json!(String::from_utf8_lossy(b))),
                    (4, Field::Varint(v)) => {
                        s.insert("expirationSeconds".into(), json!(v as i64));
                    }
                    _ => {}
                }
            }
            s.insert("audiences".into(), json!(audiences));
            Value::Object(s)
        }
        "SelfSubjectAccessReview" | "SubjectAccessReview" => {
            let mut s = Map::new();
            if let Some(r) = message(spec, 1) {
                let names = [
                    (1, "namespace"),
                    (2, "verb"),
                    (3, "group"),
                    (4, "version"),
                    (5, "resource"),
                    (6, "subresource"),
                    (7, "name"),
                ];
                s.insert("resourceAttributes".into(), Value::Object(string_fields(r, &names)));
            }
            if let Some(r) = message(spec, 2) {
                s.insert("nonResourceAttributes".into(), Value::Object(string_fields(r, &[(1, "path"), (2, "verb")])));
            }
            if kind == "SubjectAccessReview" {
                let m = string_fields(spec, &[(3, "user"), (6, "uid")]);
                s.extend(m);
                let groups: Vec<Value> = fields(spec)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(n, f)| match f {
                        Field::Bytes(b) if n == 4 => Some(json!(String::from_utf8_lossy(b))),
                        _ => None,
                    })
                    .collect();
                s.insert("groups".into(), json!(groups));
            }
            Value::Object(s)
        }
        "SelfSubjectRulesReview" => Value::Object(string_fields(spec, &[(1, "namespace")])),
        "SelfSubjectReview" => json!({}),
        other => return Err(format!("protobuf bodies are not supported for {other:?}; send JSON")),
    };
    obj["spec"] = spec_json;
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(num: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![((num << 3) | 2) as u8, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn a_self_subject_access_review_decodes() {
        let attrs = [field(1, b"blog"), field(2, b"patch"), field(3, b"apps"), field(5, b"deployments")].concat();
        let spec = field(1, &attrs);
        let raw = field(2, &spec);
        let type_meta = [field(1, b"authorization.k8s.io/v1"), field(2, b"SelfSubjectAccessReview")].concat();
        let body = [b"k8s\0".to_vec(), field(1, &type_meta), field(2, &raw)].concat();
        let v = decode(&body).unwrap();
        assert_eq!(
            v["spec"]["resourceAttributes"],
            json!({"namespace": "blog", "verb": "patch", "group": "apps",
                                                            "resource": "deployments"})
        );
    }
}
