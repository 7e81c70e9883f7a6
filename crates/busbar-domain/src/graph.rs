//! The event graph of a ServiceBus: who feeds whom, and what looks wrong. Pure.
//!
//! [`render`] draws it (Mermaid, Graphviz DOT, or SVG laid out by [`layout`]).

pub mod layout;
pub mod render;
mod svg;

use std::collections::{BTreeMap, BTreeSet};

use crate::spec::ServiceBusSpec;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    pub publisher: String,
    pub event_type: String,
    pub subscriber: String,
}

#[derive(Debug, Default, PartialEq)]
pub struct Graph {
    pub edges: Vec<Edge>,
    /// Readable sentences, e.g. "query subscribes to CommentDeleted but no service publishes it".
    pub warnings: Vec<String>,
    /// Subscriptions to a type no service publishes (also among the warnings), sorted.
    pub unpublished: Vec<Dangling>,
    /// Published types no service subscribes to (also among the warnings), sorted.
    pub unsubscribed: Vec<Dangling>,
}

/// One end of a route with nothing at the other end: a service and an event type.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dangling {
    pub service: String,
    pub event_type: String,
}

pub fn analyze(spec: &ServiceBusSpec) -> Graph {
    let mut publishers: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut subscribers: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut names = BTreeMap::new();
    for s in &spec.services {
        *names.entry(s.name.as_str()).or_insert(0) += 1;
        for t in &s.publishes {
            publishers.entry(t).or_default().insert(&s.name);
        }
        for t in s.subscribed_types() {
            subscribers.entry(t).or_default().insert(&s.name);
        }
    }
    let mut g = Graph::default();
    for (name, n) in names {
        if n > 1 {
            g.warnings.push(format!("service name {name} is used {n} times"));
        }
    }
    for (t, subs) in &subscribers {
        match publishers.get(t) {
            None => {
                for s in subs {
                    g.warnings.push(format!("{s} subscribes to {t} but no service publishes it"));
                    g.unpublished.push(Dangling { service: s.to_string(), event_type: t.to_string() });
                }
            }
            Some(pubs) => {
                for p in pubs {
                    for s in subs {
                        g.edges.push(Edge {
                            publisher: p.to_string(),
                            event_type: t.to_string(),
                            subscriber: s.to_string(),
                        });
                    }
                }
            }
        }
    }
    for (t, pubs) in &publishers {
        if !subscribers.contains_key(t) {
            for p in pubs {
                g.warnings.push(format!("{p} publishes {t} but no service subscribes to it"));
                g.unsubscribed.push(Dangling { service: p.to_string(), event_type: t.to_string() });
            }
        }
    }
    g.edges.sort();
    g.unpublished.sort();
    g.unsubscribed.sort();
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_manifest;

    fn spec(services: &str) -> ServiceBusSpec {
        parse_manifest(&format!("apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nspec:\n  services: {services}\n"))
            .unwrap()
            .spec
    }

    #[test]
    fn edges_connect_publishers_to_subscribers() {
        let g = analyze(&spec("[{name: a, publishes: [X]}, {name: b, port: 1, subscribes: [{type: X}]}]"));
        assert_eq!(g.edges, vec![Edge { publisher: "a".into(), event_type: "X".into(), subscriber: "b".into() }]);
        assert!(g.warnings.is_empty());
    }

    #[test]
    fn dangling_ends_are_warned_about() {
        let g = analyze(&spec(
            "[{name: a, publishes: [X, Y]}, {name: query, port: 1, subscribes: [{type: X}, {type: CommentDeleted}]}]",
        ));
        assert_eq!(
            g.warnings,
            vec![
                "query subscribes to CommentDeleted but no service publishes it",
                "a publishes Y but no service subscribes to it"
            ]
        );
        let d = |s: &str, t: &str| Dangling { service: s.into(), event_type: t.into() };
        assert_eq!(g.unpublished, vec![d("query", "CommentDeleted")]);
        assert_eq!(g.unsubscribed, vec![d("a", "Y")]);
    }
}
