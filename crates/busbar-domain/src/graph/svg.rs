//! The event graph as SVG, laid out by busbar itself ([`super::layout`]): no Graphviz, and
//! no fonts or stylesheets from elsewhere (a generic `monospace` font, whose width busbar
//! can guess to size boxes and labels). Pure and deterministic.
//!
//! Unlike Mermaid and DOT, the event types that go from one publisher to one subscriber
//! share one edge here, stacked in its label: this layout has no room for parallel edges,
//! which would be drawn on top of each other. Each label takes a slot of the layout (in
//! the rank after its publisher's), so labels never overlap nodes or each other.

use std::{collections::BTreeMap, fmt::Write};

use super::{
    layout::{self, Route},
    render::Drawing,
};

/// Width of one character of the 13px monospace font, rounded up.
const CHAR_W: f64 = 8.0;
/// Height of one line of text.
const LINE: f64 = 16.0;
const NODE_H: f64 = 36.0;
const PAD: f64 = 12.0;
const MARGIN: f64 = 20.0;
/// Space between ranks, for the curves.
const GAP_X: f64 = 40.0;
/// Space between the vertices of a rank.
const GAP_Y: f64 = 16.0;
/// Height of a self-loop above its node.
const LOOP_H: f64 = 40.0;

/// The edges from one node to another: one or more event types.
struct Group {
    from: usize,
    to: usize,
    /// Each type's label ([`Drawing::label`]).
    types: Vec<String>,
    dashed: bool,
}

/// An SVG document of the drawing.
pub fn svg(d: &Drawing) -> String {
    let mut by_pair: BTreeMap<(usize, usize), Group> = BTreeMap::new();
    for e in &d.edges {
        let g = by_pair.entry((e.from, e.to)).or_insert(Group { from: e.from, to: e.to, types: vec![], dashed: false });
        g.types.push(d.label(e));
        g.dashed |= e.dashed;
    }
    let groups: Vec<Group> = by_pair.into_values().collect();
    let pairs: Vec<(usize, usize)> = groups.iter().map(|g| (g.from, g.to)).collect();
    let lay = layout::layered(d.nodes.len(), &pairs);
    let n = d.nodes.len();

    // The size of every vertex: nodes (with room above for a self-loop and its label),
    // labels (a line per event type), and bends (nothing).
    let node_w = d.nodes.iter().map(|node| text_w(&node.label) + 2.0 * PAD).fold(80.0, f64::max);
    let label_size =
        |g: &Group| (g.types.iter().map(|t| text_w(t)).fold(0.0, f64::max) + 8.0, g.types.len() as f64 * LINE + 4.0);
    let mut size: Vec<(f64, f64)> =
        (0..lay.rank.len()).map(|v| if v < n { (node_w, NODE_H) } else { (0.0, 0.0) }).collect();
    let mut above = vec![0.0; n];
    for (i, g) in groups.iter().enumerate() {
        match &lay.routes[i] {
            Route::Chain { via, .. } => size[via[0]] = label_size(g),
            Route::SelfLoop => above[g.from] = LOOP_H + label_size(g).1,
        }
    }
    for (s, a) in size.iter_mut().zip(&above) {
        s.1 += a;
    }
    // Columns: each rank as wide as its widest vertex; rows: each rank's vertices stacked,
    // centred on the tallest rank.
    let mut x = vec![0.0; lay.ranks.len()];
    let mut width = vec![0.0; lay.ranks.len()];
    let mut next = 0.0;
    for (r, vs) in lay.ranks.iter().enumerate() {
        x[r] = next;
        width[r] = vs.iter().map(|&v| size[v].0).fold(0.0, f64::max);
        next += width[r] + GAP_X;
    }
    let heights: Vec<f64> =
        lay.ranks.iter().map(|vs| vs.iter().map(|&v| size[v].1 + GAP_Y).sum::<f64>() - GAP_Y).collect();
    let tallest = heights.iter().copied().fold(0.0, f64::max);
    let mut top = vec![0.0; lay.rank.len()];
    for (r, vs) in lay.ranks.iter().enumerate() {
        let mut y = (tallest - heights[r]) / 2.0;
        for &v in vs {
            top[v] = y;
            y += size[v].1 + GAP_Y;
        }
    }
    let left = |v: usize| x[lay.rank[v]];
    let right = |v: usize| x[lay.rank[v]] + width[lay.rank[v]];
    // Middle of a vertex (of a node's box, below its self-loop).
    let mid = |v: usize| if v < n { top[v] + above[v] + NODE_H / 2.0 } else { top[v] + size[v].1 / 2.0 };

    // Where edges leave and enter a node's sides: spread out, in the order of where they go
    // or come from, so they neither meet nor cross at the node.
    let (mut outs, mut ins) = (vec![vec![]; n], vec![vec![]; n]);
    let mut ends = vec![(0, 0); groups.len()];
    for (i, g) in groups.iter().enumerate() {
        if let Route::Chain { via, reversed } = &lay.routes[i] {
            let (a, b) = if *reversed { (g.to, g.from) } else { (g.from, g.to) };
            ends[i] = (a, b);
            outs[a].push((mid(via[0]), i));
            ins[b].push((mid(*via.last().expect("a label")), i));
        }
    }
    let out_at = spread(&mut outs, groups.len());
    let in_at = spread(&mut ins, groups.len());

    let mut b = Bounds::default();
    let mut edges = String::new();
    let mut labels = String::new();
    for (i, g) in groups.iter().enumerate() {
        let (path, (lx, ly)) = match &lay.routes[i] {
            Route::Chain { via, reversed } => {
                let (a, z) = ends[i];
                let mut pts = vec![(right(a), mid(a) + out_at[i])];
                for &v in via {
                    pts.push((left(v), mid(v)));
                    pts.push((right(v), mid(v)));
                }
                pts.push((left(z), mid(z) + in_at[i]));
                if *reversed {
                    pts.reverse();
                }
                let mut p = format!("M{} {}", num(pts[0].0), num(pts[0].1));
                // Even segments cross a gap between ranks (an S-curve), odd ones go
                // straight through a rank, through the label or past the vertices there.
                for (k, w) in pts.windows(2).enumerate() {
                    let ((x1, y1), (x2, y2)) = (w[0], w[1]);
                    if k % 2 == 0 {
                        let c = (x2 - x1) / 2.0;
                        write!(p, " C{} {} {} {} {} {}", num(x1 + c), num(y1), num(x2 - c), num(y2), num(x2), num(y2))
                            .unwrap();
                    } else {
                        write!(p, " L{} {}", num(x2), num(y2)).unwrap();
                    }
                }
                for &(px, py) in &pts {
                    b.add(px, py);
                }
                let l = via[0];
                (p, ((left(l) + right(l)) / 2.0, mid(l)))
            }
            Route::SelfLoop => {
                let (cx, y, dx) = (left(g.from) + node_w / 2.0, top[g.from] + above[g.from], node_w / 4.0);
                let p = format!(
                    "M{} {} C{} {} {} {} {} {}",
                    num(cx + dx),
                    num(y),
                    num(cx + dx),
                    num(y - LOOP_H),
                    num(cx - dx),
                    num(y - LOOP_H),
                    num(cx - dx),
                    num(y)
                );
                // Above the loop, in the room left above the node.
                (p, (cx, top[g.from] + label_size(g).1 / 2.0))
            }
        };
        let (stroke, dash) = if g.dashed { ("#888888", " stroke-dasharray=\"6 4\"") } else { ("#555555", "") };
        writeln!(
            edges,
            "  <path d=\"{path}\" fill=\"none\" stroke=\"{stroke}\" stroke-width=\"1.5\"{dash} marker-end=\"url(#arrow)\"/>"
        )
        .unwrap();
        // The types, one a line, on a white block that hides the edge's line behind them.
        let (w, h) = label_size(g);
        let (x0, y0) = (lx - w / 2.0, ly - h / 2.0);
        b.add(x0, y0);
        b.add(x0 + w, y0 + h);
        writeln!(
            labels,
            "  <rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"#ffffff\"/>",
            num(x0),
            num(y0),
            num(w),
            num(h)
        )
        .unwrap();
        for (k, t) in g.types.iter().enumerate() {
            let y = y0 + 2.0 + (k as f64 + 1.0) * LINE - 4.0;
            let fill = if g.dashed { "#666666" } else { "#333333" };
            writeln!(
                labels,
                "  <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"{fill}\">{}</text>",
                num(lx),
                num(y),
                xml(t)
            )
            .unwrap();
        }
    }

    let mut nodes = String::new();
    for (v, node) in d.nodes.iter().enumerate() {
        let (x, y) = (left(v), top[v] + above[v]);
        b.add(x, top[v]);
        b.add(x + node_w, y + NODE_H);
        let (fill, stroke, dash, text) = if node.placeholder {
            ("#ffffff", "#888888", " stroke-dasharray=\"5 3\"", "#666666")
        } else {
            ("#eef2ff", "#334466", "", "#111111")
        };
        writeln!(
            nodes,
            "  <rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"6\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"1.5\"{dash}/>",
            num(x),
            num(y),
            num(node_w),
            num(NODE_H)
        )
        .unwrap();
        writeln!(
            nodes,
            "  <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"{text}\">{}</text>",
            num(x + node_w / 2.0),
            num(y + NODE_H / 2.0 + 4.5),
            xml(&node.label)
        )
        .unwrap();
    }

    let mut warnings = String::new();
    if !d.warnings.is_empty() {
        let (x, mut y) = (if b.x0.is_finite() { b.x0 } else { 0.0 }, if b.y1.is_finite() { b.y1 + 12.0 } else { 0.0 });
        for w in &d.warnings {
            y += LINE + 2.0;
            let line = format!("warning: {w}");
            b.add(x, y - LINE);
            b.add(x + text_w(&line), y + 4.0);
            writeln!(warnings, "  <text x=\"{}\" y=\"{}\" fill=\"#aa4400\">{}</text>", num(x), num(y), xml(&line))
                .unwrap();
        }
    }
    if !b.x0.is_finite() {
        b.add(0.0, 0.0);
    }

    let (x0, y0) = (b.x0 - MARGIN, b.y0 - MARGIN);
    let (w, h) = (b.x1 - b.x0 + 2.0 * MARGIN, b.y1 - b.y0 + 2.0 * MARGIN);
    let mut s = String::new();
    writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" viewBox=\"{} {} {} {}\" font-family=\"monospace\" font-size=\"13\">",
        num(w),
        num(h),
        num(x0),
        num(y0),
        num(w),
        num(h)
    )
    .unwrap();
    writeln!(s, "  <title>ServiceBus {}</title>", xml(&d.name)).unwrap();
    s.push_str("  <defs>\n    <marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\">\n");
    s.push_str("      <path d=\"M0 0L10 5L0 10z\" fill=\"#555555\"/>\n    </marker>\n  </defs>\n");
    writeln!(
        s,
        "  <rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"#ffffff\"/>",
        num(x0),
        num(y0),
        num(w),
        num(h)
    )
    .unwrap();
    s.push_str(&edges);
    s.push_str(&nodes);
    s.push_str(&labels);
    s.push_str(&warnings);
    s.push_str("</svg>\n");
    s
}

/// For each list of (where the other end is, edge), sorted by the first: the offset of each
/// edge from the middle of the node's side.
fn spread(lists: &mut [Vec<(f64, usize)>], edges: usize) -> Vec<f64> {
    let mut at = vec![0.0; edges];
    for l in lists {
        l.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let k = l.len() as f64;
        for (i, &(_, e)) in l.iter().enumerate() {
            at[e] = (i as f64 + 1.0) * NODE_H / (k + 1.0) - NODE_H / 2.0;
        }
    }
    at
}

/// The box around everything drawn.
struct Bounds {
    x0: f64,
    y0: f64,
    x1: f64,
    y1: f64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds { x0: f64::INFINITY, y0: f64::INFINITY, x1: f64::NEG_INFINITY, y1: f64::NEG_INFINITY }
    }
}

impl Bounds {
    fn add(&mut self, x: f64, y: f64) {
        self.x0 = self.x0.min(x);
        self.y0 = self.y0.min(y);
        self.x1 = self.x1.max(x);
        self.y1 = self.y1.max(y);
    }
}

/// How wide `text` is, about, in the 13px monospace font.
fn text_w(text: &str) -> f64 {
    text.chars().count() as f64 * CHAR_W
}

/// A coordinate: at most one decimal, no `-0`, and nothing drawn at infinity (an empty
/// drawing's bounds).
fn num(x: f64) -> String {
    let x = if x.is_finite() { (x * 10.0).round() / 10.0 + 0.0 } else { 0.0 };
    format!("{x}")
}

/// `text` as XML character data or an attribute value. Characters XML 1.0 forbids become
/// U+FFFD.
pub(crate) fn xml(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '"' => s.push_str("&quot;"),
            '\'' => s.push_str("&apos;"),
            '\t' | '\n' | '\r' => s.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => s.push('\u{fffd}'),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::render::{Arrow, Node, tests::drawing};

    #[test]
    fn weird_names_are_escaped_and_parse_back() {
        let weird = "a<b>&\"c\" 'd'";
        let d = Drawing {
            name: "x&y".into(),
            nodes: vec![
                Node { id: "svc_a".into(), label: weird.into(), placeholder: false },
                Node { id: "svc_b".into(), label: "b".into(), placeholder: false },
            ],
            edges: vec![Arrow { from: 0, to: 1, event_type: "T<1>".into(), dashed: false }],
            warnings: vec!["x & <y>\u{1}".into()],
            figures: Default::default(),
        };
        let s = svg(&d);
        assert!(s.contains(">a&lt;b&gt;&amp;&quot;c&quot; &apos;d&apos;</text>"), "{s}");
        assert!(s.contains(">T&lt;1&gt;</text>") && s.contains("<title>ServiceBus x&amp;y</title>"), "{s}");
        let doc = roxmltree::Document::parse(&s).unwrap_or_else(|e| panic!("not XML: {e}\n{s}"));
        let texts: Vec<&str> = doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).collect();
        assert_eq!(texts, ["a<b>&\"c\" 'd'", "b", "T<1>", "warning: x & <y>\u{fffd}"]);
    }

    #[test]
    fn size_fits_the_layout() {
        let d = drawing("[{name: a, publishes: [X]}, {name: b, port: 1, subscribes: [{type: X}]}, {name: c}]");
        let s = svg(&d);
        let doc = roxmltree::Document::parse(&s).unwrap();
        let root = doc.root_element();
        let w: f64 = root.attribute("width").unwrap().parse().unwrap();
        let h: f64 = root.attribute("height").unwrap().parse().unwrap();
        // Two layers (a then b; c alone in the first), each box at least 80 wide.
        assert!(w > 2.0 * 80.0 && h > 2.0 * NODE_H, "{w} x {h}");
        assert_eq!(root.attribute("viewBox").unwrap().split(' ').nth(2).unwrap().parse::<f64>().unwrap(), w);
        let rects = doc.descendants().filter(|n| n.has_tag_name("rect") && n.attribute("rx").is_some()).count();
        assert_eq!(rects, 3, "{s}");
        assert!(s.contains("marker-end=\"url(#arrow)\""), "{s}");
    }

    #[test]
    fn cycles_and_self_loops_are_drawn() {
        let d = drawing(
            "[{name: a, port: 1, publishes: [X, S], subscribes: [{type: Y}, {type: S}]}, \
             {name: b, port: 2, publishes: [Y], subscribes: [{type: X}]}]",
        );
        let s = svg(&d);
        roxmltree::Document::parse(&s).unwrap();
        assert_eq!(s.matches("marker-end=").count(), 3, "a->b, b->a, a->a:\n{s}");
    }
}
