//! Drawings of the event graph: Mermaid and Graphviz DOT source, and SVG laid out by busbar
//! itself ([`svg`]). Pure and deterministic.
//!
//! Every service of the spec is a node, even one with no routes. Each route is an edge
//! labelled with its event type, from publisher to subscriber. What looks wrong is drawn,
//! not only said: a subscription to a type nobody publishes comes from a dashed
//! "(no publisher)" node, a type nobody subscribes to goes to a dashed "(no subscriber)"
//! node; the warning sentences go along as comments (Mermaid, DOT), the graph's label
//! (DOT) or a block of text (SVG).
//!
//! Mermaid and DOT get one edge per event type, even where several types go from the same
//! publisher to the same subscriber: their layout engines spread parallel edges apart, and
//! one edge per route reads like `busbar graph`'s text (one line per route). The SVG
//! layout is simpler, so there the types between one pair share one edge with the types
//! stacked in its label (see [`svg`]).
//!
//! A drawing of a live bus ([`Drawing::with_figures`]) also carries each subscriber's
//! figures (events pending, dead letters) in the labels of the edges into it:
//! `CommentCreated · pending 3 · dead 1`. They are the subscriber's, over all the types it
//! receives, so every edge into it shows the same. Without figures the labels are the bare
//! event types.

use std::collections::BTreeMap;

use super::Graph;
use crate::spec::ServiceBusSpec;

pub use super::svg::svg;

/// The label of the placeholder node that subscriptions to unpublished types come from.
pub const NO_PUBLISHER: &str = "(no publisher)";
/// The label of the placeholder node that unsubscribed types go to.
pub const NO_SUBSCRIBER: &str = "(no subscriber)";

/// What is drawn, whatever the format.
#[derive(Debug, Clone, PartialEq)]
pub struct Drawing {
    /// The ServiceBus's name.
    pub name: String,
    /// The services, in the spec's order, then the placeholders that are needed.
    pub nodes: Vec<Node>,
    /// The routes (sorted as in [`Graph::edges`]), then the dangling ends.
    pub edges: Vec<Arrow>,
    pub warnings: Vec<String>,
    /// Each subscriber's figures, by service name (empty for a manifest).
    pub figures: BTreeMap<String, Figures>,
}

/// A subscriber's figures on a live bus, as its ServiceBus's status reports them. A figure
/// the status does not report is `None` and not drawn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    /// Events of its types not yet delivered to it.
    pub pending: Option<u64>,
    /// Its dead letters.
    pub dead: Option<u64>,
}

impl Figures {
    /// What follows an event type in a label: ` · pending 3 · dead 1`, only the figures
    /// there are (empty with none).
    pub fn suffix(&self) -> String {
        let mut s = String::new();
        if let Some(n) = self.pending {
            s.push_str(&format!(" · pending {n}"));
        }
        if let Some(n) = self.dead {
            s.push_str(&format!(" · dead {n}"));
        }
        s
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Unique among the nodes, and safe as a Mermaid or DOT identifier: `[A-Za-z0-9_]+`.
    pub id: String,
    pub label: String,
    /// A "(no publisher)" or "(no subscriber)" node, drawn dashed.
    pub placeholder: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrow {
    /// Indices into [`Drawing::nodes`].
    pub from: usize,
    pub to: usize,
    pub event_type: String,
    /// To or from a placeholder: drawn dashed.
    pub dashed: bool,
}

impl Drawing {
    /// The drawing of `spec` (of the ServiceBus `name`), whose graph is `graph`
    /// ([`super::analyze`] of the same spec).
    pub fn new(name: &str, spec: &ServiceBusSpec, graph: &Graph) -> Drawing {
        let mut nodes: Vec<Node> = vec![];
        let mut index: BTreeMap<&str, usize> = BTreeMap::new();
        let mut ids = std::collections::BTreeSet::new();
        for s in &spec.services {
            if index.contains_key(s.name.as_str()) {
                continue;
            }
            let base = node_id(&s.name);
            let id =
                (1..).map(|n| if n == 1 { base.clone() } else { format!("{base}_{n}") }).find(|id| !ids.contains(id));
            let id = id.expect("an unused id");
            ids.insert(id.clone());
            index.insert(&s.name, nodes.len());
            nodes.push(Node { id, label: s.name.clone(), placeholder: false });
        }
        let mut edges = vec![];
        for e in &graph.edges {
            if let (Some(&from), Some(&to)) = (index.get(e.publisher.as_str()), index.get(e.subscriber.as_str())) {
                edges.push(Arrow { from, to, event_type: e.event_type.clone(), dashed: false });
            }
        }
        // Placeholder ids have no `svc_` prefix, so no service's id can be the same.
        if !graph.unpublished.is_empty() {
            let from = nodes.len();
            nodes.push(Node { id: "no_publisher".into(), label: NO_PUBLISHER.into(), placeholder: true });
            for d in &graph.unpublished {
                if let Some(&to) = index.get(d.service.as_str()) {
                    edges.push(Arrow { from, to, event_type: d.event_type.clone(), dashed: true });
                }
            }
        }
        if !graph.unsubscribed.is_empty() {
            let to = nodes.len();
            nodes.push(Node { id: "no_subscriber".into(), label: NO_SUBSCRIBER.into(), placeholder: true });
            for d in &graph.unsubscribed {
                if let Some(&from) = index.get(d.service.as_str()) {
                    edges.push(Arrow { from, to, event_type: d.event_type.clone(), dashed: true });
                }
            }
        }
        Drawing { name: name.to_string(), nodes, edges, warnings: graph.warnings.clone(), figures: BTreeMap::new() }
    }

    /// The same drawing with each subscriber's figures (by service name) in the labels of
    /// the edges into it. Figures of a name that is no service's are not drawn.
    pub fn with_figures(mut self, figures: BTreeMap<String, Figures>) -> Drawing {
        self.figures = figures;
        self
    }

    /// The label of an edge: its event type, then its subscriber's figures if there are
    /// any (none into a placeholder).
    pub fn label(&self, e: &Arrow) -> String {
        let to = &self.nodes[e.to];
        match self.figures.get(&to.label) {
            Some(f) if !to.placeholder => format!("{}{}", e.event_type, f.suffix()),
            _ => e.event_type.clone(),
        }
    }

    /// The number of routes between services (edges that are not dashed).
    pub fn routes(&self) -> usize {
        self.edges.iter().filter(|e| !e.dashed).count()
    }
}

/// The identifier of a service's node: `svc_` and its name with every character other than
/// an ASCII letter or digit replaced by `_` (`user-products` is `svc_user_products`). The
/// prefix keeps it clear of words Mermaid reserves (`end`) and of the placeholders' ids.
pub fn node_id(name: &str) -> String {
    let mut id = String::from("svc_");
    id.extend(name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }));
    id
}

/// Mermaid `flowchart LR` source.
pub fn mermaid(d: &Drawing) -> String {
    let mut s = String::from("flowchart LR\n");
    s.push_str(&format!(
        "    %% ServiceBus {}: {} services, {} routes\n",
        one_line(&d.name),
        d.nodes.iter().filter(|n| !n.placeholder).count(),
        d.routes()
    ));
    for w in &d.warnings {
        s.push_str(&format!("    %% warning: {}\n", one_line(w)));
    }
    for n in &d.nodes {
        let class = if n.placeholder { ":::missing" } else { "" };
        s.push_str(&format!("    {}[\"{}\"]{class}\n", n.id, mermaid_text(&n.label)));
    }
    for e in &d.edges {
        let arrow = if e.dashed { "-.->" } else { "-->" };
        let (from, to) = (&d.nodes[e.from].id, &d.nodes[e.to].id);
        s.push_str(&format!("    {from} {arrow}|\"{}\"| {to}\n", mermaid_text(&d.label(e))));
    }
    if d.nodes.iter().any(|n| n.placeholder) {
        s.push_str("    classDef missing stroke-dasharray: 5 5,color:#666\n");
    }
    s
}

/// Graphviz `digraph` source, left to right.
pub fn dot(d: &Drawing) -> String {
    let mut s = format!("digraph \"{}\" {{\n", dot_text(&d.name));
    s.push_str(&format!(
        "    // ServiceBus {}: {} services, {} routes\n",
        one_line(&d.name),
        d.nodes.iter().filter(|n| !n.placeholder).count(),
        d.routes()
    ));
    s.push_str("    rankdir=LR;\n    node [shape=box, style=rounded, fontname=\"sans-serif\"];\n");
    s.push_str("    edge [fontname=\"sans-serif\", fontsize=10];\n");
    for n in &d.nodes {
        let style = if n.placeholder { ", style=\"rounded,dashed\", fontcolor=\"#666666\"" } else { "" };
        s.push_str(&format!("    \"{}\" [label=\"{}\"{style}];\n", n.id, dot_text(&n.label)));
    }
    for e in &d.edges {
        let style = if e.dashed { ", style=dashed" } else { "" };
        let (from, to) = (&d.nodes[e.from].id, &d.nodes[e.to].id);
        s.push_str(&format!("    \"{from}\" -> \"{to}\" [label=\"{}\"{style}];\n", dot_text(&d.label(e))));
    }
    if !d.warnings.is_empty() {
        // `\l` ends a left-justified line of the label.
        let lines: String = d.warnings.iter().map(|w| format!("warning: {}\\l", dot_text(&one_line(w)))).collect();
        s.push_str("    labelloc=b;\n    labeljust=l;\n    fontname=\"sans-serif\";\n    fontcolor=\"#aa4400\";\n");
        s.push_str(&format!("    label=\"{lines}\";\n"));
    }
    s.push_str("}\n");
    s
}

/// `text` on one line (for a comment).
fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// `text` inside a quoted Mermaid label: its entity codes for what would end the quote or
/// be read as markup.
fn mermaid_text(text: &str) -> String {
    let mut s = String::new();
    for c in one_line(text).chars() {
        match c {
            '#' => s.push_str("#35;"),
            '"' => s.push_str("#quot;"),
            '&' => s.push_str("#amp;"),
            '<' => s.push_str("#lt;"),
            '>' => s.push_str("#gt;"),
            c => s.push(c),
        }
    }
    s
}

/// `text` inside a quoted DOT string.
fn dot_text(text: &str) -> String {
    let mut s = String::new();
    for c in one_line(text).chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::{graph::analyze, spec::parse_manifest};

    pub(crate) fn drawing(services: &str) -> Drawing {
        let spec = parse_manifest(&format!(
            "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nmetadata: {{name: t}}\nspec:\n  services: {services}\n"
        ))
        .unwrap()
        .spec;
        Drawing::new("t", &spec, &analyze(&spec))
    }

    #[test]
    fn ids_are_sanitised_and_unique() {
        assert_eq!(node_id("user-products"), "svc_user_products");
        assert_eq!(node_id("end"), "svc_end");
        assert_eq!(node_id("a b\"c<d"), "svc_a_b_c_d");
        // Names that sanitise alike (the spec's validation forbids `_`, but a spec built in
        // code may have it) still get distinct ids.
        let mut spec = parse_manifest(
            "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nmetadata: {name: t}\nspec: {services: [{name: a}]}\n",
        )
        .unwrap()
        .spec;
        spec.services = ["a-b", "a_b", "a.b"]
            .iter()
            .map(|n| crate::spec::ServiceSpec { name: n.to_string(), ..spec.services[0].clone() })
            .collect();
        let d = Drawing::new("t", &spec, &analyze(&spec));
        let ids: Vec<&str> = d.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["svc_a_b", "svc_a_b_2", "svc_a_b_3"]);
        assert!(mermaid(&d).contains("    svc_a_b_2[\"a_b\"]\n"));
    }

    #[test]
    fn every_service_is_a_node_and_every_route_an_edge() {
        let d = drawing(
            "[{name: a, publishes: [X, Y]}, {name: b, port: 1, subscribes: [{type: X}, {type: Y}]}, {name: lonely}]",
        );
        let m = mermaid(&d);
        assert!(m.starts_with("flowchart LR\n"), "{m}");
        for line in ["    svc_lonely[\"lonely\"]\n", "    svc_a -->|\"X\"| svc_b\n", "    svc_a -->|\"Y\"| svc_b\n"] {
            assert!(m.contains(line), "{line:?} not in:\n{m}");
        }
        assert!(!m.contains("no_publisher") && !m.contains("%% warning"), "{m}");
        let g = dot(&d);
        assert!(g.contains("rankdir=LR;"), "{g}");
        assert!(g.contains("    \"svc_lonely\" [label=\"lonely\"];\n"), "{g}");
        assert!(g.contains("    \"svc_a\" -> \"svc_b\" [label=\"X\"];\n"), "{g}");
    }

    #[test]
    fn warnings_are_drawn_as_dashed_placeholders() {
        let d = drawing(
            "[{name: a, publishes: [X, Orphan]}, {name: query, port: 1, subscribes: [{type: X}, {type: Ghost}]}]",
        );
        assert_eq!(
            d.nodes.last().unwrap(),
            &Node { id: "no_subscriber".into(), label: NO_SUBSCRIBER.into(), placeholder: true }
        );
        let m = mermaid(&d);
        for line in [
            "    no_publisher[\"(no publisher)\"]:::missing\n",
            "    no_subscriber[\"(no subscriber)\"]:::missing\n",
            "    no_publisher -.->|\"Ghost\"| svc_query\n",
            "    svc_a -.->|\"Orphan\"| no_subscriber\n",
            "    svc_a -->|\"X\"| svc_query\n",
            "    %% warning: query subscribes to Ghost but no service publishes it\n",
            "    %% warning: a publishes Orphan but no service subscribes to it\n",
            "    classDef missing stroke-dasharray: 5 5,color:#666\n",
        ] {
            assert!(m.contains(line), "{line:?} not in:\n{m}");
        }
        let g = dot(&d);
        for line in [
            "    \"no_publisher\" [label=\"(no publisher)\", style=\"rounded,dashed\", fontcolor=\"#666666\"];\n",
            "    \"no_publisher\" -> \"svc_query\" [label=\"Ghost\", style=dashed];\n",
            "    \"svc_a\" -> \"no_subscriber\" [label=\"Orphan\", style=dashed];\n",
            "    label=\"warning: query subscribes to Ghost but no service publishes it\\lwarning: a publishes Orphan but no service subscribes to it\\l\";\n",
        ] {
            assert!(g.contains(line), "{line:?} not in:\n{g}");
        }
        let s = svg(&d);
        assert_eq!(s.matches("stroke-dasharray").count(), 4, "two dashed nodes and two dashed edges:\n{s}");
        assert!(s.contains(">(no publisher)</text>") && s.contains(">(no subscriber)</text>"), "{s}");
        assert!(s.contains(">warning: query subscribes to Ghost but no service publishes it</text>"), "{s}");
    }

    #[test]
    fn figures_go_into_the_labels_of_the_edges_into_their_subscriber() {
        let d = drawing(
            "[{name: a, publishes: [X, Y, Orphan]}, {name: b, port: 1, subscribes: [{type: X}, {type: Y}, {type: Ghost}]}, \
             {name: c, port: 2, subscribes: [{type: X}]}]",
        );
        let plain = (mermaid(&d), dot(&d), svg(&d));
        let figures = BTreeMap::from([
            ("b".to_string(), Figures { pending: Some(3), dead: Some(1) }),
            ("c".to_string(), Figures { pending: Some(0), dead: None }),
            ("nobody".to_string(), Figures { pending: Some(9), dead: Some(9) }),
        ]);
        let d = d.with_figures(figures);
        let labels: Vec<String> = d.edges.iter().map(|e| d.label(e)).collect();
        assert_eq!(
            labels,
            [
                "X · pending 3 · dead 1",
                "X · pending 0",
                "Y · pending 3 · dead 1",
                "Ghost · pending 3 · dead 1",
                "Orphan"
            ]
        );
        let m = mermaid(&d);
        for line in [
            "    svc_a -->|\"X · pending 3 · dead 1\"| svc_b\n",
            "    svc_a -->|\"X · pending 0\"| svc_c\n",
            "    no_publisher -.->|\"Ghost · pending 3 · dead 1\"| svc_b\n",
            "    svc_a -.->|\"Orphan\"| no_subscriber\n",
        ] {
            assert!(m.contains(line), "{line:?} not in:\n{m}");
        }
        let g = dot(&d);
        assert!(g.contains("    \"svc_a\" -> \"svc_b\" [label=\"Y · pending 3 · dead 1\"];\n"), "{g}");
        let s = svg(&d);
        let doc = roxmltree::Document::parse(&s).unwrap();
        let texts: Vec<&str> = doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).collect();
        for t in ["X · pending 3 · dead 1", "Y · pending 3 · dead 1", "X · pending 0", "Orphan"] {
            assert!(texts.contains(&t), "{t:?} not in {texts:?}");
        }
        // No figures, no change.
        let none = drawing(
            "[{name: a, publishes: [X, Y, Orphan]}, {name: b, port: 1, subscribes: [{type: X}, {type: Y}, {type: Ghost}]}, \
             {name: c, port: 2, subscribes: [{type: X}]}]",
        )
        .with_figures(BTreeMap::from([("b".to_string(), Figures::default())]));
        assert_eq!((mermaid(&none), dot(&none), svg(&none)), plain);
    }

    #[test]
    fn figures_show_only_what_is_reported() {
        assert_eq!(Figures::default().suffix(), "");
        assert_eq!(Figures { pending: Some(3), dead: Some(1) }.suffix(), " · pending 3 · dead 1");
        assert_eq!(Figures { pending: None, dead: Some(2) }.suffix(), " · dead 2");
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(mermaid_text("a\"b<c>&#"), "a#quot;b#lt;c#gt;#amp;#35;");
        assert_eq!(dot_text("a\"b\\c\nd"), "a\\\"b\\\\c d");
    }

    #[test]
    fn the_same_spec_draws_the_same_every_time() {
        let spec = "[{name: z, publishes: [B, A]}, {name: y, port: 1, publishes: [C], subscribes: [{type: A}, {type: B}]}, \
                    {name: x, port: 2, publishes: [A], subscribes: [{type: C}, {type: D}]}]";
        let first = drawing(spec);
        let outputs = (mermaid(&first), dot(&first), svg(&first));
        for _ in 0..20 {
            let d = drawing(spec);
            assert_eq!((mermaid(&d), dot(&d), svg(&d)), outputs);
        }
        // Routes come sorted, whatever order the spec lists the types in.
        let types: Vec<&str> = first.edges.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, ["A", "C", "A", "B", "D"]);
    }
}
