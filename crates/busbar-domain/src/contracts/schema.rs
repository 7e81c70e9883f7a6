//! Reading a JSON Schema as the handful of shapes serde data takes: null, booleans,
//! integers and numbers with their ranges, strings with their format, fixed values (enums
//! and consts), arrays, tuples and objects, and unions of those. That is what schemars
//! writes for Rust types (draft 2020-12, with `$defs` and `$ref`), and all the compatibility
//! rules need. Keywords that only constrain further (`minLength`, `pattern`, ...) are not
//! read: the rules compare what data can be, not every constraint on it.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// A schema document: the root that `$ref`s (`#/$defs/X`, `#/definitions/X`) point into.
#[derive(Clone, Copy)]
pub struct Doc<'a> {
    pub root: &'a Value,
}

/// An inclusive range of numbers; `None` is unbounded on that side.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Range {
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Range {
    /// Every value of `self` lies in `outer`.
    pub fn within(&self, outer: &Range) -> bool {
        let min_ok = match (outer.min, self.min) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(o), Some(s)) => s >= o,
        };
        let max_ok = match (outer.max, self.max) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(o), Some(s)) => s <= o,
        };
        min_ok && max_ok
    }

    pub fn contains(&self, n: f64) -> bool {
        self.min.is_none_or(|m| n >= m) && self.max.is_none_or(|m| n <= m)
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.min, self.max) {
            (None, None) => write!(f, "any"),
            (Some(a), None) => write!(f, "≥ {a}"),
            (None, Some(b)) => write!(f, "≤ {b}"),
            (Some(a), Some(b)) => write!(f, "{a}..={b}"),
        }
    }
}

/// What an object says about fields it does not list.
#[derive(Debug, Clone, Copy)]
pub enum Additional<'a> {
    /// Anything goes (serde's default: unknown fields are ignored).
    Open,
    /// Refused (`deny_unknown_fields`).
    Closed,
    /// Each such field holds this (a map's values).
    Schema(&'a Value),
}

/// One alternative of a schema.
#[derive(Debug, Clone)]
pub enum View<'a> {
    /// Any JSON value (`true`, `{}`, serde_json::Value).
    Any,
    Null,
    Bool,
    Integer(Range),
    /// Any number, fractions included.
    Number(Range),
    String {
        format: Option<&'a str>,
    },
    /// Exactly this value (one member of an `enum`, or a `const`).
    Value(&'a Value),
    Array {
        items: Option<&'a Value>,
    },
    /// A fixed-length array (`prefixItems`).
    Tuple(&'a [Value]),
    Object {
        properties: Vec<(&'a str, &'a Value)>,
        required: BTreeSet<&'a str>,
        additional: Additional<'a>,
    },
    /// Something these rules do not model; compared only for equality.
    Unsupported {
        node: &'a Value,
        why: String,
    },
}

impl View<'_> {
    /// A few words for messages: `a string`, `an integer (0..=255)`, `"approved"`.
    pub fn describe(&self) -> String {
        match self {
            View::Any => "any value".into(),
            View::Null => "null".into(),
            View::Bool => "a boolean".into(),
            View::Integer(r) if *r == Range::default() => "an integer".into(),
            View::Integer(r) => format!("an integer ({r})"),
            View::Number(r) if *r == Range::default() => "a number".into(),
            View::Number(r) => format!("a number ({r})"),
            View::String { format: None } => "a string".into(),
            View::String { format: Some(f) } => format!("a {f} string"),
            View::Value(v) => v.to_string(),
            View::Array { .. } => "an array".into(),
            View::Tuple(items) => format!("a tuple of {}", items.len()),
            View::Object { .. } => "an object".into(),
            View::Unsupported { why, .. } => why.clone(),
        }
    }

    /// The JSON kind, for matching a writer's alternative with a reader's.
    pub fn kind(&self) -> &'static str {
        match self {
            View::Any => "any",
            View::Null => "null",
            View::Bool => "boolean",
            View::Integer(_) | View::Number(_) => "number",
            View::String { .. } => "string",
            View::Value(v) => match v {
                Value::Null => "null",
                Value::Bool(_) => "boolean",
                Value::Number(_) => "number",
                Value::String(_) => "string",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
            },
            View::Array { .. } | View::Tuple(_) => "array",
            View::Object { .. } => "object",
            View::Unsupported { .. } => "unsupported",
        }
    }
}

const MAX_REFS: usize = 64;

impl<'a> Doc<'a> {
    pub fn new(root: &'a Value) -> Self {
        Doc { root }
    }

    /// Follows `$ref`s to the schema they name.
    pub fn resolve(&self, mut node: &'a Value) -> Result<&'a Value, String> {
        for _ in 0..MAX_REFS {
            let Some(r) = node.get("$ref").and_then(Value::as_str) else { return Ok(node) };
            node = r
                .strip_prefix('#')
                .and_then(|pointer| self.root.pointer(pointer))
                .ok_or_else(|| format!("a $ref that does not resolve in the schema: {r}"))?;
        }
        Err("$refs that point at each other".into())
    }

    /// The alternatives `node` allows, unions flattened. Empty: nothing is allowed.
    pub fn views(&self, node: &'a Value) -> Vec<View<'a>> {
        let mut out = vec![];
        self.collect(node, &mut out, 0);
        out
    }

    fn collect(&self, node: &'a Value, out: &mut Vec<View<'a>>, depth: usize) {
        if depth > MAX_REFS {
            out.push(View::Unsupported { node, why: "unions nested too deep".into() });
            return;
        }
        let node = match self.resolve(node) {
            Ok(n) => n,
            Err(why) => return out.push(View::Unsupported { node, why }),
        };
        let obj = match node {
            Value::Bool(true) => return out.push(View::Any),
            Value::Bool(false) => return,
            Value::Object(o) => o,
            _ => return out.push(View::Unsupported { node, why: "a schema that is not an object".into() }),
        };
        if let Some(c) = obj.get("const") {
            return out.push(View::Value(c));
        }
        if let Some(values) = obj.get("enum").and_then(Value::as_array) {
            out.extend(values.iter().map(View::Value));
            return;
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(branches) = obj.get(key).and_then(Value::as_array) {
                for b in branches {
                    self.collect(b, out, depth + 1);
                }
                return;
            }
        }
        if let Some(parts) = obj.get("allOf").and_then(Value::as_array) {
            return self.all_of(node, obj, parts, out, depth);
        }
        for key in ["not", "if", "patternProperties", "dependentSchemas", "unevaluatedItems"] {
            if obj.contains_key(key) {
                return out.push(View::Unsupported { node, why: format!("a schema using `{key}`") });
            }
        }
        let types: Vec<&str> = match obj.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ if obj.contains_key("properties") || obj.contains_key("additionalProperties") => vec!["object"],
            _ if obj.contains_key("items") || obj.contains_key("prefixItems") => vec!["array"],
            _ => return out.push(View::Any),
        };
        for t in types {
            out.push(match t {
                "null" => View::Null,
                "boolean" => View::Bool,
                "integer" => View::Integer(range(obj, true)),
                "number" => View::Number(range(obj, false)),
                "string" => View::String { format: obj.get("format").and_then(Value::as_str) },
                "array" => array(obj),
                "object" => object(obj),
                other => View::Unsupported { node, why: format!("a schema of type `{other}`") },
            });
        }
        // OpenAPI 3.0's way of saying `null` is allowed too.
        if obj.get("nullable") == Some(&Value::Bool(true)) {
            out.push(View::Null);
        }
    }

    /// `allOf` of objects (schemars writes it for `#[serde(flatten)]` in some cases): one
    /// object with all their fields. Anything else is not modelled.
    fn all_of(
        &self,
        node: &'a Value,
        obj: &'a Map<String, Value>,
        parts: &'a [Value],
        out: &mut Vec<View<'a>>,
        d: usize,
    ) {
        let mut merged: Option<View<'a>> = None;
        let own = obj.contains_key("properties").then(|| object(obj));
        let mut views: Vec<View<'a>> = own.into_iter().collect();
        for p in parts {
            let mut alts = vec![];
            self.collect(p, &mut alts, d + 1);
            match alts.as_slice() {
                [one @ View::Object { .. }] => views.push(one.clone()),
                _ => {
                    return out
                        .push(View::Unsupported { node, why: "an `allOf` of something other than objects".into() });
                }
            }
        }
        for v in views {
            merged = Some(match (merged, v) {
                (None, v) => v,
                (
                    Some(View::Object { mut properties, mut required, additional }),
                    View::Object { properties: p, required: r, additional: a },
                ) => {
                    properties.extend(p);
                    required.extend(r);
                    let additional = match (additional, a) {
                        (Additional::Closed, _) | (_, Additional::Closed) => Additional::Closed,
                        (Additional::Schema(s), _) | (_, Additional::Schema(s)) => Additional::Schema(s),
                        _ => Additional::Open,
                    };
                    View::Object { properties, required, additional }
                }
                _ => unreachable!("only objects are merged"),
            });
        }
        out.extend(merged);
    }
}

fn number(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64)
}

/// The range an integer or number schema allows: its `format` (schemars writes `uint8`,
/// `int32`, ...) narrowed by `minimum`/`maximum` (and their exclusive forms).
fn range(obj: &Map<String, Value>, integer: bool) -> Range {
    let by_format = match obj.get("format").and_then(Value::as_str) {
        Some("int8") => Range { min: Some(i8::MIN as f64), max: Some(i8::MAX as f64) },
        Some("int16") => Range { min: Some(i16::MIN as f64), max: Some(i16::MAX as f64) },
        Some("int32") => Range { min: Some(i32::MIN as f64), max: Some(i32::MAX as f64) },
        Some("int64" | "int") => Range { min: Some(i64::MIN as f64), max: Some(i64::MAX as f64) },
        Some("uint8") => Range { min: Some(0.0), max: Some(u8::MAX as f64) },
        Some("uint16") => Range { min: Some(0.0), max: Some(u16::MAX as f64) },
        Some("uint32") => Range { min: Some(0.0), max: Some(u32::MAX as f64) },
        Some("uint64" | "uint") => Range { min: Some(0.0), max: Some(u64::MAX as f64) },
        _ => Range::default(),
    };
    let step = if integer { 1.0 } else { 0.0 };
    let min = [number(obj.get("minimum")), number(obj.get("exclusiveMinimum")).map(|m| m + step), by_format.min]
        .into_iter()
        .flatten()
        .reduce(f64::max);
    let max = [number(obj.get("maximum")), number(obj.get("exclusiveMaximum")).map(|m| m - step), by_format.max]
        .into_iter()
        .flatten()
        .reduce(f64::min);
    Range { min, max }
}

fn array(obj: &Map<String, Value>) -> View<'_> {
    match (obj.get("prefixItems"), obj.get("items")) {
        (Some(Value::Array(prefix)), _) => View::Tuple(prefix),
        // Draft 7's tuple form.
        (None, Some(Value::Array(prefix))) => View::Tuple(prefix),
        (_, items) => View::Array { items },
    }
}

fn object(obj: &Map<String, Value>) -> View<'_> {
    let properties = obj
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.iter().map(|(k, v)| (k.as_str(), v)).collect())
        .unwrap_or_default();
    let required =
        obj.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let additional = match obj.get("additionalProperties").or_else(|| obj.get("unevaluatedProperties")) {
        None | Some(Value::Bool(true)) => Additional::Open,
        Some(Value::Bool(false)) => Additional::Closed,
        Some(Value::Object(o)) if o.is_empty() => Additional::Open,
        Some(s) => Additional::Schema(s),
    };
    View::Object { properties, required, additional }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kinds(schema: &Value) -> Vec<String> {
        Doc::new(schema).views(schema).iter().map(View::describe).collect()
    }

    #[test]
    fn schemars_shapes_are_read_as_alternatives() {
        assert_eq!(kinds(&json!({"type": ["string", "null"]})), ["a string", "null"]);
        assert_eq!(
            kinds(&json!({"type": "integer", "format": "uint8", "minimum": 0, "maximum": 255})),
            ["an integer (0..=255)"]
        );
        assert_eq!(
            kinds(&json!({"type": "integer", "format": "uint32", "minimum": 0})),
            ["an integer (0..=4294967295)"]
        );
        assert_eq!(kinds(&json!({"type": "string", "enum": ["a", "b"]})), [r#""a""#, r#""b""#]);
        assert_eq!(kinds(&json!({"oneOf": [{"const": "A"}, {"type": "string", "const": "B"}]})), [r#""A""#, r#""B""#]);
        assert_eq!(
            kinds(&json!({"anyOf": [{"$ref": "#/$defs/X"}, {"type": "null"}], "$defs": {"X": {"type": "boolean"}}})),
            ["a boolean", "null"]
        );
        assert_eq!(kinds(&json!(true)), ["any value"]);
        assert_eq!(kinds(&json!({"description": "anything"})), ["any value"]);
        assert!(kinds(&json!(false)).is_empty());
        assert_eq!(kinds(&json!({"not": {"type": "string"}})), ["a schema using `not`"]);
    }

    #[test]
    fn refs_resolve_and_loops_are_refused() {
        let s = json!({"$ref": "#/$defs/A", "$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"type": "string"}}});
        assert_eq!(kinds(&s), ["a string"]);
        let looped = json!({"$ref": "#/$defs/A", "$defs": {"A": {"$ref": "#/$defs/A"}}});
        assert_eq!(kinds(&looped), ["$refs that point at each other"]);
        let dangling = json!({"$ref": "#/$defs/Gone"});
        assert_eq!(kinds(&dangling), ["a $ref that does not resolve in the schema: #/$defs/Gone"]);
    }

    #[test]
    fn all_of_objects_merge() {
        let s = json!({"allOf": [
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            {"type": "object", "properties": {"b": {"type": "string"}}, "additionalProperties": false}
        ]});
        let doc = Doc::new(&s);
        let views = doc.views(&s);
        let [View::Object { properties, required, additional }] = views.as_slice() else { panic!() };
        assert_eq!(properties.iter().map(|p| p.0).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(required.iter().copied().collect::<Vec<_>>(), ["a"]);
        assert!(matches!(additional, Additional::Closed));
    }

    #[test]
    fn ranges_nest() {
        let u8r = Range { min: Some(0.0), max: Some(255.0) };
        let i32r = Range { min: Some(i32::MIN as f64), max: Some(i32::MAX as f64) };
        assert!(u8r.within(&i32r) && !i32r.within(&u8r));
        assert!(u8r.within(&Range::default()) && !Range::default().within(&u8r));
        assert!(u8r.contains(7.0) && !u8r.contains(-1.0));
    }
}
