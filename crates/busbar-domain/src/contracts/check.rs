//! Checking a ServiceBus against its services' contracts: every publisher → subscriber edge
//! of its graph (the writer's schema against the reader's), and the manifest against the
//! code (a type the manifest says a service publishes must have a writer schema, or its
//! edges cannot be checked at all).

use std::collections::BTreeMap;

use super::{ServiceContract, fit::Mismatch};
use crate::{
    graph::{self, Edge},
    spec::ServiceBusSpec,
};

/// The outcome of one edge.
#[derive(Debug, Clone, PartialEq)]
pub enum EdgeVerdict {
    /// The subscriber's reader accepts everything the publisher's writer sends.
    Fits,
    /// It does not: one entry per field.
    Breaks(Vec<Mismatch>),
    /// The subscriber registers no handler for the type: nothing reads it, nothing breaks.
    NoReader,
    /// There is no writer schema (the sentence says why): the edge could not be checked.
    Unchecked(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct EdgeReport {
    pub edge: Edge,
    pub verdict: EdgeVerdict,
}

/// One incompatibility of one edge, as a line a person reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub publisher: String,
    pub event_type: String,
    pub subscriber: String,
    /// The field in the event's data (empty: the data itself).
    pub field: String,
    /// Why, naming both services.
    pub reason: String,
}

impl std::fmt::Display for Break {
    /// `PostCreated.title: posts → query: query requires it; posts does not send it`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = if self.field.is_empty() { String::new() } else { format!(".{}", self.field) };
        write!(f, "{}{at}: {} → {}: {}", self.event_type, self.publisher, self.subscriber, self.reason)
    }
}

impl Break {
    pub fn of(edge: &Edge, m: &Mismatch) -> Break {
        Break {
            publisher: edge.publisher.clone(),
            event_type: edge.event_type.clone(),
            subscriber: edge.subscriber.clone(),
            field: m.path.clone(),
            reason: m.reason.explain(&edge.publisher, &edge.subscriber),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Every edge of the graph, in the graph's order.
    pub edges: Vec<EdgeReport>,
    /// What makes the check fail besides broken edges: a service without a contract, a
    /// published type without a writer schema.
    pub problems: Vec<String>,
    /// What looks wrong but breaks no reader.
    pub warnings: Vec<String>,
}

impl Report {
    pub fn breaks(&self) -> Vec<Break> {
        self.edges
            .iter()
            .flat_map(|e| match &e.verdict {
                EdgeVerdict::Breaks(ms) => ms.iter().map(|m| Break::of(&e.edge, m)).collect(),
                _ => vec![],
            })
            .collect()
    }

    /// Nothing breaks and nothing is missing.
    pub fn passes(&self) -> bool {
        self.problems.is_empty() && self.edges.iter().all(|e| !matches!(e.verdict, EdgeVerdict::Breaks(_)))
    }
}

/// Checks every edge of `spec` with the services' `contracts` (by name in the manifest).
pub fn check(spec: &ServiceBusSpec, contracts: &BTreeMap<String, ServiceContract>) -> Report {
    let mut report = Report::default();
    for s in &spec.services {
        let Some(c) = contracts.get(&s.name) else {
            report.problems.push(format!("service {} has no contract, so none of its edges can be checked", s.name));
            continue;
        };
        for t in &s.publishes {
            if !c.publishes.contains_key(t) {
                report.problems.push(format!(
                    "{} publishes {t} in the manifest, but its code does not declare it: add \
                     `.publishes::<{t}>()` to its handlers",
                    s.name
                ));
            }
        }
        for t in c.publishes.keys().filter(|t| !s.publishes.contains(t)) {
            report.warnings.push(format!(
                "{}'s code publishes {t}, which the manifest does not list under its `publishes`: the bus refuses it",
                s.name
            ));
        }
        for t in s.subscribed_types().into_iter().filter(|t| !c.subscribes.contains_key(*t)) {
            report.warnings.push(format!(
                "{} subscribes to {t} in the manifest but handles no {t}: those events are ignored",
                s.name
            ));
        }
    }
    for edge in graph::analyze(spec).edges {
        let verdict = edge_verdict(&edge, contracts);
        report.edges.push(EdgeReport { edge, verdict });
    }
    report
}

/// The verdict on one edge.
pub fn edge_verdict(edge: &Edge, contracts: &BTreeMap<String, ServiceContract>) -> EdgeVerdict {
    let writer = contracts.get(&edge.publisher).map(|c| c.publishes.get(&edge.event_type));
    let reader = contracts.get(&edge.subscriber).map(|c| c.subscribes.get(&edge.event_type));
    match (writer, reader) {
        (None, _) => EdgeVerdict::Unchecked(format!("no contract for {}", edge.publisher)),
        (Some(None), _) => EdgeVerdict::Unchecked(format!(
            "{}'s contract has no writer schema for {}",
            edge.publisher, edge.event_type
        )),
        (_, None) => EdgeVerdict::Unchecked(format!("no contract for {}", edge.subscriber)),
        (_, Some(None)) => EdgeVerdict::NoReader,
        (Some(Some(w)), Some(Some(r))) => match super::fit(&w.schema, &r.schema) {
            found if found.is_empty() => EdgeVerdict::Fits,
            found => EdgeVerdict::Breaks(found),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::TypeSchema;
    use serde_json::json;

    fn spec() -> ServiceBusSpec {
        crate::spec::parse_manifest(
            "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nspec:\n  services:\n  - {name: posts, publishes: [PostCreated]}\n  - {name: comments, port: 1, subscribes: [{type: PostCreated}]}\n  - {name: query, port: 2, subscribes: [{type: PostCreated}]}\n",
        )
        .unwrap()
        .spec
    }

    fn object(fields: &[&str]) -> TypeSchema {
        let props: serde_json::Map<String, serde_json::Value> =
            fields.iter().map(|f| (f.to_string(), json!({"type": "string"}))).collect();
        TypeSchema::new(json!({"type": "object", "properties": props, "required": fields}))
    }

    fn contracts(writer: &[&str]) -> BTreeMap<String, ServiceContract> {
        let publishes = |fields: &[&str]| [("PostCreated".to_owned(), object(fields))].into();
        [
            ("posts".to_owned(), ServiceContract { publishes: publishes(writer), subscribes: BTreeMap::new() }),
            ("comments".to_owned(), ServiceContract { publishes: BTreeMap::new(), subscribes: publishes(&["id"]) }),
            (
                "query".to_owned(),
                ServiceContract { publishes: BTreeMap::new(), subscribes: publishes(&["id", "title"]) },
            ),
        ]
        .into()
    }

    #[test]
    fn a_renamed_field_breaks_only_the_reader_that_needs_it() {
        let ok = check(&spec(), &contracts(&["id", "title"]));
        assert!(ok.passes(), "{ok:?}");
        assert_eq!(ok.edges.len(), 2);

        let renamed = check(&spec(), &contracts(&["id", "headline"]));
        assert!(!renamed.passes());
        let lines: Vec<String> = renamed.breaks().iter().map(ToString::to_string).collect();
        assert_eq!(lines, ["PostCreated.title: posts → query: query requires it; posts does not send it"]);
        let comments = renamed.edges.iter().find(|e| e.edge.subscriber == "comments").unwrap();
        assert_eq!(comments.verdict, EdgeVerdict::Fits);
    }

    #[test]
    fn the_manifest_and_the_code_must_agree_on_what_is_published() {
        let mut c = contracts(&["id", "title"]);
        c.get_mut("posts").unwrap().publishes.clear();
        c.get_mut("query").unwrap().publishes.insert("PostDeleted".into(), object(&["id"]));
        c.get_mut("comments").unwrap().subscribes.clear();
        let r = check(&spec(), &c);
        assert!(!r.passes());
        assert_eq!(r.problems.len(), 1);
        assert!(
            r.problems[0].contains("posts publishes PostCreated in the manifest, but its code does not declare it")
        );
        assert!(r.edges.iter().all(|e| matches!(e.verdict, EdgeVerdict::Unchecked(_))));
        assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
        assert!(r.warnings.iter().any(|w| w.contains("query's code publishes PostDeleted")));
        assert!(
            r.warnings.iter().any(|w| w.contains("comments subscribes to PostCreated in the manifest but handles no"))
        );

        let mut missing = contracts(&["id", "title"]);
        missing.remove("query");
        let r = check(&spec(), &missing);
        assert_eq!(r.problems, ["service query has no contract, so none of its edges can be checked"]);
    }
}
