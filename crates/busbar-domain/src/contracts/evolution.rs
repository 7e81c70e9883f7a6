//! Evolution: the contracts now against the lock committed before, like `buf breaking`.
//! Each writer or reader schema that was added, removed or changed is one [`Change`],
//! classified safe or breaking. The lock tells what is still out there while a change rolls
//! out: the old version of every service (running until its rollout finishes) and the
//! events already in the log (written by the locked writers, and replayed by backfill). So:
//!
//! - a **writer** change is safe when every reader of it fits the new writer: the readers
//!   as locked (still running) and as they are now. Adding a field is safe; removing one is
//!   safe once no reader needs it (step 3 of a rename), breaking while one does;
//! - a **reader** change is safe when it fits every writer of its type: as locked (events in
//!   the log, publishers not yet rolled) and now. A reader that needs less is safe; one that
//!   needs a field the locked writer does not send is breaking, even if the new writer
//!   sends it (roll the writer out first, lock, then the reader);
//! - removing a writer is breaking while someone subscribes to it; removing a reader is safe.
//!
//! The lock holds the last released contracts, not every one before: events older than
//! that in the log are the reader's own business (`#[serde(alias)]`, `#[serde(default)]`).

use std::collections::BTreeSet;

use serde_json::Value;

use super::{
    Lock, TypeSchema,
    check::Break,
    schema::{Additional, Doc, View},
};
use crate::{
    graph::{self, Edge},
    spec::ServiceBusSpec,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Publishes,
    Subscribes,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Publishes => "publishes",
            Role::Subscribes => "subscribes",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Removed,
    Changed,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Removed => "removed",
            ChangeKind::Changed => "changed",
        }
    }
}

/// One schema that is not as locked.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub service: String,
    pub role: Role,
    pub event_type: String,
    pub kind: ChangeKind,
    /// What changed in the data, e.g. "added optional field `subtitle`".
    pub details: Vec<String>,
    /// Why it breaks a reader; empty when the change is safe.
    pub breaks: Vec<Break>,
    /// Why it breaks, when no single field is to blame (a writer removed under a reader).
    pub notes: Vec<String>,
}

impl Change {
    pub fn safe(&self) -> bool {
        self.breaks.is_empty() && self.notes.is_empty()
    }
}

impl std::fmt::Display for Change {
    /// `safe      posts publishes PostCreated: changed (added optional field `subtitle`)`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.safe() { "safe" } else { "breaking" };
        write!(f, "{verdict:<9} {} {} {}: {}", self.service, self.role.as_str(), self.event_type, self.kind.as_str())?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details.join("; "))?;
        }
        Ok(())
    }
}

/// Every schema of `now` that is not as in `locked`, classified; edges come from `spec`
/// (the manifest as it is now).
pub fn compare(spec: &ServiceBusSpec, locked: &Lock, now: &Lock) -> Vec<Change> {
    let edges = graph::analyze(spec).edges;
    let mut out = vec![];
    let names: BTreeSet<&String> = locked.services.keys().chain(now.services.keys()).collect();
    for service in names {
        for role in [Role::Publishes, Role::Subscribes] {
            let before = locked.services.get(service).map(|c| schemas(c, role)).unwrap_or_default();
            let after = now.services.get(service).map(|c| schemas(c, role)).unwrap_or_default();
            let types: BTreeSet<&String> = before.iter().chain(after.iter()).map(|(t, _)| *t).collect();
            for ty in types {
                let old = before.iter().find(|(t, _)| *t == ty).map(|(_, s)| *s);
                let new = after.iter().find(|(t, _)| *t == ty).map(|(_, s)| *s);
                let kind = match (old, new) {
                    (Some(o), Some(n)) if o.same_schema(n) => continue,
                    (Some(_), Some(_)) => ChangeKind::Changed,
                    (None, Some(_)) => ChangeKind::Added,
                    (Some(_), None) => ChangeKind::Removed,
                    (None, None) => continue,
                };
                let mut change = Change {
                    service: service.clone(),
                    role,
                    event_type: ty.clone(),
                    kind,
                    details: match (old, new) {
                        (Some(o), Some(n)) => changed_details(&o.schema, &n.schema),
                        _ => vec![],
                    },
                    breaks: vec![],
                    notes: vec![],
                };
                classify(&mut change, new, &edges, locked, now);
                out.push(change);
            }
        }
    }
    out
}

fn schemas(c: &super::ServiceContract, role: Role) -> Vec<(&String, &TypeSchema)> {
    match role {
        Role::Publishes => c.publishes.iter().collect(),
        Role::Subscribes => c.subscribes.iter().collect(),
    }
}

fn classify(change: &mut Change, new: Option<&TypeSchema>, edges: &[Edge], locked: &Lock, now: &Lock) {
    let (service, ty) = (&change.service, &change.event_type);
    let schema = |lock: &Lock, who: &str, role: Role| lock.services.get(who).and_then(|c| c.schema(role, ty)).cloned();
    match (change.role, new) {
        (Role::Publishes, None) => {
            for e in edges.iter().filter(|e| &e.publisher == service && &e.event_type == ty) {
                change.notes.push(format!("{} still subscribes to {ty} from {service}", e.subscriber));
            }
        }
        (Role::Subscribes, None) => {}
        (Role::Publishes, Some(writer)) => {
            for e in edges.iter().filter(|e| &e.publisher == service && &e.event_type == ty) {
                let current = schema(now, &e.subscriber, Role::Subscribes);
                let old = schema(locked, &e.subscriber, Role::Subscribes);
                let mut readers = vec![];
                readers.extend(current.clone().map(|r| (e.subscriber.clone(), r)));
                if let Some(o) = old.filter(|o| current.as_ref().is_none_or(|c| !c.same_schema(o))) {
                    readers.push((format!("{} (locked)", e.subscriber), o));
                }
                for (reader, r) in readers {
                    let edge = Edge { publisher: service.clone(), event_type: ty.clone(), subscriber: reader };
                    change.breaks.extend(super::fit(&writer.schema, &r.schema).iter().map(|m| Break::of(&edge, m)));
                }
            }
        }
        (Role::Subscribes, Some(reader)) => {
            for e in edges.iter().filter(|e| &e.subscriber == service && &e.event_type == ty) {
                let current = schema(now, &e.publisher, Role::Publishes);
                let old = schema(locked, &e.publisher, Role::Publishes);
                let mut writers = vec![];
                writers.extend(current.clone().map(|w| (e.publisher.clone(), w)));
                if let Some(o) = old.filter(|o| current.as_ref().is_none_or(|c| !c.same_schema(o))) {
                    writers.push((format!("{} (locked)", e.publisher), o));
                }
                for (writer, w) in writers {
                    let edge = Edge { publisher: writer, event_type: ty.clone(), subscriber: service.clone() };
                    change.breaks.extend(super::fit(&w.schema, &reader.schema).iter().map(|m| Break::of(&edge, m)));
                }
            }
        }
    }
}

fn changed_details(old: &Value, new: &Value) -> Vec<String> {
    let mut out = differences(old, new);
    if out.is_empty() {
        out.push("descriptions or layout only".into());
    }
    out
}

/// What changed in the data between two schemas of one type, in words: fields added (and
/// whether required), removed, made optional or required, values added to or removed from
/// an enum, a different kind of value. For people; the classification does not use it.
pub fn differences(old: &Value, new: &Value) -> Vec<String> {
    let mut out = vec![];
    diff(Doc::new(old), Doc::new(new), old, new, "", &mut out, 0);
    out
}

fn field(path: &str) -> String {
    if path.is_empty() { "the data".into() } else { format!("`{path}`") }
}

fn diff<'a>(od: Doc<'a>, nd: Doc<'a>, o: &'a Value, n: &'a Value, path: &str, out: &mut Vec<String>, depth: usize) {
    const MAX_DEPTH: usize = 8;
    let (Ok(o), Ok(n)) = (od.resolve(o), nd.resolve(n)) else { return };
    if depth > MAX_DEPTH {
        return;
    }
    let (ov, nv) = (od.views(o), nd.views(n));
    let at = |name: &str| if path.is_empty() { name.to_owned() } else { format!("{path}.{name}") };
    match (ov.as_slice(), nv.as_slice()) {
        (
            [View::Object { properties: op, required: or, additional: oa }],
            [View::Object { properties: np, required: nr, additional: na }],
        ) => {
            for (name, ns) in np {
                match op.iter().find(|(m, _)| m == name) {
                    None => out.push(format!(
                        "added {} field `{}`",
                        if nr.contains(name) { "required" } else { "optional" },
                        at(name)
                    )),
                    Some((_, os)) => {
                        match (or.contains(name), nr.contains(name)) {
                            (true, false) => out.push(format!("`{}` became optional", at(name))),
                            (false, true) => out.push(format!("`{}` became required", at(name))),
                            _ => {}
                        }
                        diff(od, nd, os, ns, &at(name), out, depth + 1);
                    }
                }
            }
            for (name, _) in op.iter().filter(|(m, _)| !np.iter().any(|(k, _)| k == m)) {
                out.push(format!("removed field `{}`", at(name)));
            }
            match (oa, na) {
                (Additional::Closed, Additional::Open) => {
                    out.push(format!("{} accepts unknown fields now", field(path)))
                }
                (Additional::Open, Additional::Closed) => {
                    out.push(format!("{} refuses unknown fields now", field(path)))
                }
                _ => {}
            }
        }
        ([View::Array { items: Some(oi) }], [View::Array { items: Some(ni) }]) => {
            diff(od, nd, oi, ni, &format!("{path}[]"), out, depth + 1)
        }
        _ => {
            let values = |vs: &[View]| -> Option<Vec<String>> {
                vs.iter().map(|v| if let View::Value(x) = v { Some(x.to_string()) } else { None }).collect()
            };
            match (values(&ov), values(&nv)) {
                (Some(a), Some(b)) => {
                    let added: Vec<&String> = b.iter().filter(|v| !a.contains(v)).collect();
                    let removed: Vec<&String> = a.iter().filter(|v| !b.contains(v)).collect();
                    if !added.is_empty() {
                        out.push(format!("{} now also takes {}", field(path), join(&added)));
                    }
                    if !removed.is_empty() {
                        out.push(format!("{} no longer takes {}", field(path), join(&removed)));
                    }
                }
                _ => {
                    let say = |vs: &[View]| vs.iter().map(View::describe).collect::<Vec<_>>().join(" or ");
                    let (before, after) = (say(&ov), say(&nv));
                    if before != after {
                        out.push(format!("{}: {before} → {after}", field(path)));
                    }
                }
            }
        }
    }
}

fn join(items: &[&String]) -> String {
    items.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::ServiceContract;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn spec() -> ServiceBusSpec {
        crate::spec::parse_manifest(
            "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nspec:\n  services:\n  - {name: posts, publishes: [PostCreated]}\n  - {name: comments, port: 1, subscribes: [{type: PostCreated}]}\n  - {name: query, port: 2, subscribes: [{type: PostCreated}]}\n",
        )
        .unwrap()
        .spec
    }

    fn object(fields: &[(&str, bool)]) -> TypeSchema {
        let props: serde_json::Map<String, Value> =
            fields.iter().map(|(f, _)| (f.to_string(), json!({"type": "string"}))).collect();
        let required: Vec<&str> = fields.iter().filter(|(_, r)| *r).map(|(f, _)| *f).collect();
        TypeSchema::new(json!({"type": "object", "properties": props, "required": required}))
    }

    /// The blog's PostCreated edges with these fields (all required unless said).
    fn lock(writer: &[&str], query: &[&str]) -> Lock {
        fn req<'a>(fs: &[&'a str]) -> Vec<(&'a str, bool)> {
            fs.iter().map(|f| (*f, true)).collect()
        }
        let one = |s: TypeSchema| [("PostCreated".to_owned(), s)].into();
        Lock::new(
            [
                (
                    "posts".to_owned(),
                    ServiceContract { publishes: one(object(&req(writer))), subscribes: BTreeMap::new() },
                ),
                (
                    "comments".to_owned(),
                    ServiceContract { publishes: BTreeMap::new(), subscribes: one(object(&req(&["id"]))) },
                ),
                (
                    "query".to_owned(),
                    ServiceContract { publishes: BTreeMap::new(), subscribes: one(object(&req(query))) },
                ),
            ]
            .into(),
        )
    }

    fn verdicts(before: &Lock, after: &Lock) -> Vec<String> {
        compare(&spec(), before, after).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_rename_in_one_step_breaks_and_in_two_steps_is_safe_at_every_step() {
        let start = lock(&["id", "title"], &["id", "title"]);
        let at_once = lock(&["id", "headline"], &["id", "title"]);
        let changes = compare(&spec(), &start, &at_once);
        assert_eq!(changes.len(), 1);
        assert!(!changes[0].safe());
        assert_eq!(
            changes[0].to_string(),
            "breaking  posts publishes PostCreated: changed (added required field `headline`; removed field `title`)"
        );
        assert_eq!(
            changes[0].breaks[0].to_string(),
            "PostCreated.title: posts → query: query requires it; posts does not send it"
        );

        // 1. posts sends both; 2. query reads the new one; 3. posts drops the old one.
        let step1 = lock(&["id", "title", "headline"], &["id", "title"]);
        let step2 = lock(&["id", "title", "headline"], &["id", "headline"]);
        let step3 = lock(&["id", "headline"], &["id", "headline"]);
        assert_eq!(
            verdicts(&start, &step1),
            ["safe      posts publishes PostCreated: changed (added required field `headline`)"]
        );
        assert_eq!(
            verdicts(&step1, &step2),
            [
                "safe      query subscribes PostCreated: changed (added required field `headline`; removed field `title`)"
            ]
        );
        assert_eq!(
            verdicts(&step2, &step3),
            ["safe      posts publishes PostCreated: changed (removed field `title`)"]
        );

        // Moving the reader before the writer sends the new field breaks it: the locked
        // posts (and every event it wrote) has no headline.
        let early = lock(&["id", "title", "headline"], &["id", "headline"]);
        let changes = compare(&spec(), &start, &early);
        let reader = changes.iter().find(|c| c.role == Role::Subscribes).unwrap();
        assert_eq!(
            reader.breaks.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["PostCreated.headline: posts (locked) → query: query requires it; posts (locked) does not send it"]
        );
    }

    #[test]
    fn removing_a_writer_breaks_while_someone_subscribes() {
        let start = lock(&["id", "title"], &["id", "title"]);
        let mut gone = start.clone();
        gone.services.get_mut("posts").unwrap().publishes.clear();
        let changes = compare(&spec(), &start, &gone);
        assert_eq!(changes[0].kind, ChangeKind::Removed);
        assert_eq!(
            changes[0].notes,
            ["comments still subscribes to PostCreated from posts", "query still subscribes to PostCreated from posts"]
        );
        let mut unread = start.clone();
        unread.services.get_mut("query").unwrap().subscribes.clear();
        assert_eq!(verdicts(&start, &unread), ["safe      query subscribes PostCreated: removed"]);
    }

    #[test]
    fn differences_in_words() {
        let old = json!({"type": "object", "properties": {
            "a": {"type": "string"}, "b": {"type": "string"}, "s": {"enum": ["x", "y"]}, "n": {"type": "integer"},
            "l": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}, "required": ["k"]}}
        }, "required": ["a", "s", "n", "l"]});
        let new = json!({"type": "object", "properties": {
            "a": {"type": "string"}, "b": {"type": "string"}, "s": {"enum": ["y", "z"]}, "n": {"type": "string"},
            "c": {"type": "boolean"},
            "l": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}}}
        }, "required": ["b", "s", "n", "l"], "additionalProperties": false});
        assert_eq!(
            differences(&old, &new),
            [
                "`a` became optional",
                "`b` became required",
                "added optional field `c`",
                "`l[].k` became optional",
                "`n`: an integer → a string",
                "`s` now also takes \"z\"",
                "`s` no longer takes \"x\"",
                "the data refuses unknown fields now",
            ]
        );
        assert!(differences(&old, &old).is_empty());
    }
}
