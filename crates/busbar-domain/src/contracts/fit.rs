//! The compatibility rules: does a reader accept everything a writer may send? A writer's
//! schema says what its serializer can emit; a reader's what its deserializer requires.
//! The reader fits when every value the writer can produce is one the reader takes:
//!
//! - every field the reader requires exists in the writer and is always present (a field
//!   the writer may leave out, or may set to null, breaks a reader that needs it);
//! - where both have a field, its type fits, recursively: the same JSON kind, an integer
//!   range inside the reader's, no value of an enum the reader does not know (a reader's
//!   enum must not be narrower than the writer's), no format the reader insists on that
//!   the writer does not promise;
//! - a reader that refuses unknown fields (`deny_unknown_fields`) breaks on any field it
//!   does not list, so such readers break whenever a writer adds one: prefer tolerant ones.
//!
//! Fields the reader does not mention are ignored, which is what lets a reader need less
//! than the writer sends, and a writer add fields. A writer's object is taken to send the
//! fields it lists and nothing else (serde serializes exactly those).

use std::collections::BTreeSet;

use serde_json::Value;

use super::schema::{Additional, Doc, View};

/// One way a reader may refuse what a writer sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Where, in the event's `data`: `title`, `author.name`, `tags[]`, `counts.*`; empty for
    /// the data itself.
    pub path: String,
    pub reason: Reason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The reader requires the field; the writer has no such field.
    Missing,
    /// The reader requires the field; the writer may leave it out.
    Optional,
    /// The reader refuses unknown fields; the writer sends this one.
    Refused,
    /// The writer may send null here; the reader does not accept null.
    Nullable,
    /// Another kind of value: `writer` and `reader` describe them.
    Kind { writer: String, reader: String },
    /// A value (of an enum or a const) the reader does not accept.
    Value { value: String, accepted: String },
    /// Numbers outside the reader's range.
    Range { writer: String, reader: String },
    /// The reader insists on a string format the writer does not promise.
    Format { reader: String },
    /// A tuple of another length.
    Length { writer: usize, reader: usize },
    /// Schemas the rules do not model, and that differ.
    Unsupported(String),
}

impl Reason {
    /// Why, naming the writer and the reader, e.g. `query requires it; posts does not send it`.
    pub fn explain(&self, writer: &str, reader: &str) -> String {
        match self {
            Reason::Missing => format!("{reader} requires it; {writer} does not send it"),
            Reason::Optional => format!("{reader} requires it; {writer} may leave it out"),
            Reason::Refused => format!("{reader} refuses unknown fields; {writer} sends it"),
            Reason::Nullable => format!("{writer} may send null; {reader} does not accept null"),
            Reason::Kind { writer: w, reader: r } => format!("{writer} sends {w}; {reader} expects {r}"),
            Reason::Value { value, accepted } => {
                format!("{writer} may send {value}, which {reader} does not accept (it takes {accepted})")
            }
            Reason::Range { writer: w, reader: r } => format!("{writer} sends {w}; {reader} takes only {r}"),
            Reason::Format { reader: f } => format!("{reader} expects {f} strings; {writer} does not promise that"),
            Reason::Length { writer: w, reader: r } => {
                format!("{writer} sends {w} items; {reader} expects {r}")
            }
            Reason::Unsupported(what) => {
                format!("cannot compare {what} between {writer} and {reader}; keep event schemas to plain data")
            }
        }
    }
}

/// Everything `writer` may send that `reader` would refuse; empty when the reader fits.
/// Both are whole schema documents (their `$ref`s resolve within each).
pub fn fit(writer: &Value, reader: &Value) -> Vec<Mismatch> {
    let mut f = Fitter { w: Doc::new(writer), r: Doc::new(reader), seen: BTreeSet::new(), out: vec![] };
    f.fit(writer, reader, "");
    let mut out = f.out;
    out.dedup();
    out
}

struct Fitter<'a> {
    w: Doc<'a>,
    r: Doc<'a>,
    /// Pairs of (writer, reader) schema nodes already being compared: a recursive type
    /// fits if it fits everywhere else.
    seen: BTreeSet<(usize, usize)>,
    out: Vec<Mismatch>,
}

const MAX_DEPTH: usize = 64;

fn join(path: &str, step: &str) -> String {
    if path.is_empty() { step.to_owned() } else { format!("{path}.{step}") }
}

impl<'a> Fitter<'a> {
    fn push(&mut self, path: &str, reason: Reason) {
        self.out.push(Mismatch { path: path.to_owned(), reason });
    }

    fn fit(&mut self, w: &'a Value, r: &'a Value, path: &str) {
        let (Ok(wn), Ok(rn)) = (self.w.resolve(w), self.r.resolve(r)) else {
            return self.push(path, Reason::Unsupported("schemas with unresolvable $refs".into()));
        };
        let key = (wn as *const Value as usize, rn as *const Value as usize);
        if self.seen.contains(&key) || path.matches('.').count() > MAX_DEPTH {
            return;
        }
        self.seen.insert(key);
        let writers = self.w.views(wn);
        let readers = self.r.views(rn);
        if !readers.iter().any(|v| matches!(v, View::Any)) {
            for wv in &writers {
                self.alternative(wv, &readers, path);
            }
        }
        self.seen.remove(&key);
    }

    /// One alternative the writer may send, against all the reader accepts.
    fn alternative(&mut self, wv: &View<'a>, readers: &[View<'a>], path: &str) {
        let candidates: Vec<&View<'a>> = readers.iter().filter(|rv| same_kind(wv, rv)).collect();
        let mut best: Option<Vec<Mismatch>> = None;
        for rv in &candidates {
            let found = self.attempt(|f| f.one(wv, rv, path));
            if found.is_empty() {
                return;
            }
            if best.as_ref().is_none_or(|b| found.len() < b.len()) {
                best = Some(found);
            }
        }
        match (wv, best) {
            (View::Value(v), _) if candidates.iter().all(|c| matches!(c, View::Value(_))) => {
                let accepted: Vec<String> = readers.iter().map(View::describe).collect();
                self.push(path, Reason::Value { value: v.to_string(), accepted: accepted.join(", ") })
            }
            (_, Some(found)) => self.out.extend(found),
            (View::Null, None) => self.push(path, Reason::Nullable),
            (_, None) => {
                let reader = readers.iter().map(View::describe).collect::<Vec<_>>().join(" or ");
                let reader = if reader.is_empty() { "nothing at all".into() } else { reader };
                self.push(path, Reason::Kind { writer: wv.describe(), reader })
            }
        }
    }

    /// The mismatches `run` finds, without keeping them.
    fn attempt(&mut self, run: impl FnOnce(&mut Self)) -> Vec<Mismatch> {
        let before = self.out.len();
        run(self);
        self.out.split_off(before)
    }

    /// One writer alternative against one reader alternative of the same kind.
    fn one(&mut self, wv: &View<'a>, rv: &View<'a>, path: &str) {
        match (wv, rv) {
            (View::Unsupported { node: a, .. }, View::Unsupported { node: b, .. })
                if super::canonical(a) == super::canonical(b) => {}
            (View::Unsupported { why, .. }, _) | (_, View::Unsupported { why, .. }) => {
                self.push(path, Reason::Unsupported(why.clone()))
            }
            (_, View::Any) | (View::Null, View::Null | View::Value(Value::Null)) | (View::Bool, View::Bool) => {}
            (View::Value(a), View::Value(b)) if a == b => {}
            (View::Value(v), _) => {
                if !value_fits(v, rv) {
                    self.push(path, Reason::Value { value: v.to_string(), accepted: rv.describe() });
                }
            }
            (View::Integer(w), View::Integer(r) | View::Number(r)) | (View::Number(w), View::Number(r)) => {
                if !w.within(r) {
                    self.push(path, Reason::Range { writer: wv.describe(), reader: rv.describe() });
                }
            }
            (View::Number(_), View::Integer(_)) => {
                self.push(path, Reason::Kind { writer: wv.describe(), reader: rv.describe() })
            }
            (View::String { format: wf }, View::String { format: rf }) => {
                if let Some(rf) = rf.filter(|f| strict_format(f))
                    && *wf != Some(rf)
                {
                    self.push(path, Reason::Format { reader: rf.to_owned() });
                }
            }
            (View::Array { items: wi }, View::Array { items: ri }) => match (wi, ri) {
                (_, None) => {}
                (Some(wi), Some(ri)) => self.fit(wi, ri, &format!("{path}[]")),
                (None, Some(ri)) => self.fit(&Value::Bool(true), ri, &format!("{path}[]")),
            },
            (View::Tuple(wi), View::Tuple(ri)) => {
                if wi.len() != ri.len() {
                    return self.push(path, Reason::Length { writer: wi.len(), reader: ri.len() });
                }
                for (i, (a, b)) in wi.iter().zip(ri.iter()).enumerate() {
                    self.fit(a, b, &format!("{path}[{i}]"));
                }
            }
            (View::Tuple(wi), View::Array { items: Some(ri) }) => {
                for (i, a) in wi.iter().enumerate() {
                    self.fit(a, ri, &format!("{path}[{i}]"));
                }
            }
            (View::Tuple(_), View::Array { items: None }) => {}
            (
                View::Object { properties: wp, required: wr, additional: wa },
                View::Object { properties: rp, required: rr, additional: ra },
            ) => self.objects((wp, wr, *wa), (rp, rr, *ra), path),
            _ => self.push(path, Reason::Kind { writer: wv.describe(), reader: rv.describe() }),
        }
    }

    fn objects(&mut self, w: Obj<'a, '_>, r: Obj<'a, '_>, path: &str) {
        let (wp, wr, wa) = w;
        let (rp, rr, ra) = r;
        let writer_field = |name: &str| wp.iter().find(|(n, _)| *n == name).map(|(_, s)| *s);
        for (name, rs) in rp.iter() {
            let at = join(path, name);
            match writer_field(name) {
                Some(ws) => {
                    if rr.contains(name) && !wr.contains(name) {
                        self.push(&at, Reason::Optional);
                    }
                    self.fit(ws, rs, &at);
                }
                None => match wa {
                    // The writer is a map: it may or may not send this key.
                    Additional::Schema(ms) => {
                        if rr.contains(name) {
                            self.push(&at, Reason::Optional);
                        }
                        self.fit(ms, rs, &at);
                    }
                    Additional::Open | Additional::Closed => {
                        if rr.contains(name) {
                            self.push(&at, Reason::Missing);
                        }
                    }
                },
            }
        }
        for (name, ws) in wp.iter().filter(|(n, _)| !rp.iter().any(|(m, _)| m == n)) {
            let at = join(path, name);
            match ra {
                Additional::Open => {}
                Additional::Closed => self.push(&at, Reason::Refused),
                Additional::Schema(rs) => self.fit(ws, rs, &at),
            }
        }
        if let Additional::Schema(ms) = wa {
            let at = join(path, "*");
            match ra {
                Additional::Open => {}
                Additional::Closed => self.push(&at, Reason::Refused),
                Additional::Schema(rs) => self.fit(ms, rs, &at),
            }
        }
    }
}

type Obj<'a, 'b> = (&'b Vec<(&'a str, &'a Value)>, &'b BTreeSet<&'a str>, Additional<'a>);

/// Formats whose deserializers refuse other strings (a `Uuid`, a `DateTime`, ...).
fn strict_format(f: &str) -> bool {
    matches!(f, "date-time" | "date" | "time" | "duration" | "uuid" | "email" | "uri" | "ipv4" | "ipv6" | "hostname")
}

fn same_kind(w: &View, r: &View) -> bool {
    matches!(r, View::Any)
        || w.kind() == r.kind()
        || matches!(w, View::Unsupported { .. })
        || matches!(r, View::Unsupported { .. })
}

/// Whether the reader alternative `r` accepts the fixed value `v`.
fn value_fits(v: &Value, r: &View) -> bool {
    match (v, r) {
        (_, View::Any) => true,
        (_, View::Value(x)) => v == *x,
        (Value::Null, View::Null) | (Value::Bool(_), View::Bool) => true,
        (Value::Number(n), View::Integer(range)) => n.as_f64().is_some_and(|f| f.fract() == 0.0 && range.contains(f)),
        (Value::Number(n), View::Number(range)) => n.as_f64().is_some_and(|f| range.contains(f)),
        (Value::String(_), View::String { format }) => format.is_none_or(|f| !strict_format(f)),
        (Value::Array(_), View::Array { items: None }) | (Value::Object(_), View::Object { .. }) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(props: Value, required: &[&str]) -> Value {
        json!({"type": "object", "properties": props, "required": required})
    }

    fn explained(writer: &Value, reader: &Value) -> Vec<String> {
        fit(writer, reader).iter().map(|m| format!("{}: {}", m.path, m.reason.explain("w", "r"))).collect()
    }

    #[test]
    fn a_reader_that_needs_a_subset_fits() {
        let w = obj(json!({"id": {"type": "string"}, "title": {"type": "string"}}), &["id", "title"]);
        let r = obj(json!({"id": {"type": "string"}}), &["id"]);
        assert!(fit(&w, &r).is_empty());
        assert!(fit(&w, &w).is_empty());
    }

    #[test]
    fn each_rule_names_the_field_and_why() {
        let str_ = json!({"type": "string"});
        let cases: Vec<(Value, Value, &str)> = vec![
            (
                obj(json!({"id": str_}), &["id"]),
                obj(json!({"title": str_}), &["title"]),
                "title: r requires it; w does not send it",
            ),
            (
                obj(json!({"title": str_}), &[]),
                obj(json!({"title": str_}), &["title"]),
                "title: r requires it; w may leave it out",
            ),
            (
                obj(json!({"title": {"type": ["string", "null"]}}), &["title"]),
                obj(json!({"title": str_}), &["title"]),
                "title: w may send null; r does not accept null",
            ),
            (
                obj(json!({"n": {"type": "integer", "format": "uint32", "minimum": 0}}), &["n"]),
                obj(json!({"n": {"type": "integer", "format": "uint8", "minimum": 0, "maximum": 255}}), &["n"]),
                "n: w sends an integer (0..=4294967295); r takes only an integer (0..=255)",
            ),
            (
                obj(json!({"n": {"type": "number"}}), &["n"]),
                obj(json!({"n": {"type": "integer"}}), &["n"]),
                "n: w sends a number; r expects an integer",
            ),
            (
                obj(json!({"s": {"type": "string", "enum": ["a", "b", "c"]}}), &["s"]),
                obj(json!({"s": {"type": "string", "enum": ["a", "b"]}}), &["s"]),
                r#"s: w may send "c", which r does not accept (it takes "a", "b")"#,
            ),
            (
                obj(json!({"s": str_}), &["s"]),
                obj(json!({"s": {"enum": ["a"]}}), &["s"]),
                r#"s: w sends a string; r expects "a""#,
            ),
            (
                obj(json!({"id": str_, "x": str_}), &["id", "x"]),
                json!({"type": "object", "properties": {"id": str_}, "required": ["id"], "additionalProperties": false}),
                "x: r refuses unknown fields; w sends it",
            ),
            (
                obj(json!({"at": str_}), &["at"]),
                obj(json!({"at": {"type": "string", "format": "date-time"}}), &["at"]),
                "at: r expects date-time strings; w does not promise that",
            ),
            (
                obj(json!({"tags": {"type": "array", "items": {"type": "integer"}}}), &["tags"]),
                obj(json!({"tags": {"type": "array", "items": str_}}), &["tags"]),
                "tags[]: w sends an integer; r expects a string",
            ),
            (
                obj(json!({"m": {"type": "object", "additionalProperties": {"type": "integer"}}}), &["m"]),
                obj(
                    json!({"m": {"type": "object", "properties": {"k": {"type": "integer"}}, "required": ["k"]}}),
                    &["m"],
                ),
                "m.k: r requires it; w may leave it out",
            ),
        ];
        for (w, r, want) in cases {
            assert_eq!(explained(&w, &r), [want], "writer {w}\nreader {r}");
        }
    }

    #[test]
    fn writer_narrowing_is_fine() {
        let ok: Vec<(Value, Value)> = vec![
            (json!({"enum": ["a"]}), json!({"enum": ["a", "b"]})),
            (
                json!({"type": "integer", "format": "uint8", "minimum": 0, "maximum": 255}),
                json!({"type": "integer", "format": "int64"}),
            ),
            (json!({"type": "integer"}), json!({"type": "number"})),
            (json!({"type": "string"}), json!({"type": ["string", "null"]})),
            (json!({"type": "string", "format": "uuid"}), json!({"type": "string"})),
            (json!({"const": "x"}), json!({"type": "string"})),
            (json!({"type": "string"}), json!(true)),
            (json!({"type": "integer"}), json!({})),
            (json!({"type": ["string", "null"]}), json!({"anyOf": [{"type": "string"}, {"const": null}]})),
        ];
        for (w, r) in ok {
            assert_eq!(explained(&w, &r), Vec::<String>::new(), "writer {w}\nreader {r}");
        }
    }

    #[test]
    fn an_optional_reader_field_fits_a_writer_without_it_but_not_one_of_another_type() {
        let r = obj(json!({"id": {"type": "string"}, "note": {"type": ["string", "null"]}}), &["id"]);
        assert!(fit(&obj(json!({"id": {"type": "string"}}), &["id"]), &r).is_empty());
        let w = obj(json!({"id": {"type": "string"}, "note": {"type": "integer"}}), &["id", "note"]);
        assert_eq!(explained(&w, &r), ["note: w sends an integer; r expects a string or null"]);
    }

    #[test]
    fn tagged_unions_match_by_variant_and_recursive_types_terminate() {
        let variant = |tag: &str, field: &str| json!({"type": "object", "properties": {"kind": {"const": tag}, field: {"type": "string"}}, "required": ["kind", field]});
        let w = json!({"oneOf": [variant("One", "a"), variant("Two", "b")]});
        let r = json!({"oneOf": [variant("One", "a")]});
        let found = fit(&w, &r);
        assert!(found.iter().any(|m| m.path == "kind"), "{found:?}");
        assert!(fit(&r, &w).is_empty(), "a writer of fewer variants fits");

        let tree = json!({"$ref": "#/$defs/Node", "$defs": {"Node": {"type": "object",
            "properties": {"name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
            "required": ["name", "children"]}}});
        assert!(fit(&tree, &tree).is_empty());
        let mut renamed = tree.clone();
        renamed["$defs"]["Node"]["properties"]["title"] = json!({"type": "string"});
        renamed["$defs"]["Node"]["required"] = json!(["title", "children"]);
        assert_eq!(explained(&tree, &renamed), ["title: r requires it; w does not send it"]);
    }

    #[test]
    fn unmodelled_schemas_fit_only_when_equal() {
        let odd = json!({"not": {"type": "string"}});
        assert!(fit(&odd, &odd).is_empty());
        let other = json!({"not": {"type": "integer"}});
        assert_eq!(
            explained(&odd, &other),
            [": cannot compare a schema using `not` between w and r; keep event schemas to plain data"]
        );
    }
}
