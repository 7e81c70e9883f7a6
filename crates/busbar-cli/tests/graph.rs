//! `busbar graph --format text|mermaid|dot|svg` on the blog (k8s/base/servicebus.yaml), the
//! shop (k8s/shop/servicebus.yaml) and a spec with warnings
//! (tests/fixtures/graph-warnings.yaml), compared with the golden files in
//! tests/golden/graph/ (`<case>.<format>`). The binary runs from the repository root with
//! a relative manifest path, so the text format's header names no machine path.
//!
//! After a deliberate change to what busbar prints, write the golden files anew with
//!
//!     BUSBAR_BLESS=1 cargo test -p busbar-cli --test graph
//!
//! and review their diff before committing it.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

const CASES: [(&str, &str); 3] = [
    ("blog", "k8s/base/servicebus.yaml"),
    ("shop", "k8s/shop/servicebus.yaml"),
    ("warnings", "crates/busbar-cli/tests/fixtures/graph-warnings.yaml"),
];
const FORMATS: [&str; 4] = ["text", "mermaid", "dot", "svg"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// `busbar graph <args>` run from the repository root: its stdout; it must succeed.
fn busbar_graph(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_busbar")).current_dir(root()).arg("graph").args(args).output().unwrap();
    assert!(out.status.success(), "busbar graph {args:?}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn draw(format: &str, manifest: &str) -> String {
    busbar_graph(&["--format", format, "-f", manifest])
}

#[test]
fn every_format_matches_its_golden_file() {
    let bless = std::env::var_os("BUSBAR_BLESS").is_some_and(|v| v == "1");
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/graph");
    let mut failures = vec![];
    for (case, manifest) in CASES {
        for format in FORMATS {
            let got = draw(format, manifest);
            let file = golden.join(format!("{case}.{format}"));
            if bless {
                std::fs::create_dir_all(&golden).unwrap();
                std::fs::write(&file, &got).unwrap();
                continue;
            }
            let Ok(want) = std::fs::read_to_string(&file) else {
                failures.push(format!("{} is missing (BUSBAR_BLESS=1 writes it)", file.display()));
                continue;
            };
            if got != want {
                let (n, (w, g)) = want
                    .lines()
                    .chain(std::iter::repeat("<end>"))
                    .zip(got.lines().chain(std::iter::repeat("<end>")))
                    .enumerate()
                    .find(|(_, (w, g))| w != g)
                    .unwrap_or((0, ("<same lines>", "<same lines>")));
                failures.push(format!(
                    "busbar graph --format {format} -f {manifest} differs from {} at line {}:\n  want: {w}\n  got:  {g}",
                    file.display(),
                    n + 1
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}\n(BUSBAR_BLESS=1 rewrites the golden files)", failures.join("\n"));
}

#[test]
fn text_is_what_it_always_was_and_the_default() {
    let want = "ServiceBus blog (k8s/base/servicebus.yaml): 4 services, 6 routes
  comments --CommentCreated--> moderation
  comments --CommentCreated--> query
  comments --CommentUpdated--> query
  moderation --CommentModerated--> comments
  posts --PostCreated--> comments
  posts --PostCreated--> query
";
    assert_eq!(draw("text", "k8s/base/servicebus.yaml"), want);
    assert_eq!(busbar_graph(&["-f", "k8s/base/servicebus.yaml"]), want);
    let root = root().display().to_string();
    for (_, manifest) in CASES {
        for format in FORMATS {
            assert!(!draw(format, manifest).contains(&root), "{format} of {manifest} names {root}");
        }
    }
}

/// Every service's name and every event type of the manifest (published or subscribed).
fn names_and_types(manifest: &str) -> (Vec<String>, BTreeSet<String>) {
    let bus = busbar::spec::load_manifest(&root().join(manifest)).unwrap();
    let names = bus.spec.services.iter().map(|s| s.name.clone()).collect();
    let types = bus
        .spec
        .services
        .iter()
        .flat_map(|s| s.publishes.iter().cloned().chain(s.subscribed_types().into_iter().map(String::from)))
        .collect();
    (names, types)
}

#[test]
fn svg_is_xml_that_names_every_service_and_event_type() {
    for (case, manifest) in CASES {
        let svg = draw("svg", manifest);
        let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{case}: not XML: {e}\n{svg}"));
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg", "{case}");
        assert_eq!(root.tag_name().namespace(), Some("http://www.w3.org/2000/svg"), "{case}");
        for dim in ["width", "height"] {
            let v: f64 = root.attribute(dim).unwrap().parse().unwrap();
            assert!(v > 100.0, "{case}: {dim} {v}");
        }
        let texts: BTreeSet<&str> =
            doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).collect();
        let (names, types) = names_and_types(manifest);
        assert!(names.len() >= 4 && types.len() >= 4, "{case}: {names:?} {types:?}");
        for want in names.iter().chain(&types) {
            assert!(texts.contains(want.as_str()), "{case}: no <text>{want}</text> in {texts:?}");
        }
        // One box per service (and per placeholder), one arrow per publisher-subscriber pair.
        let boxes = doc.descendants().filter(|n| n.has_tag_name("rect") && n.attribute("rx").is_some()).count();
        let placeholders = ["(no publisher)", "(no subscriber)"].iter().filter(|p| texts.contains(*p)).count();
        assert_eq!(boxes, names.len() + placeholders, "{case}");
        assert!(doc.descendants().any(|n| n.has_tag_name("marker")), "{case}");
    }
}

#[test]
fn warnings_are_drawn_in_every_drawing() {
    let manifest = CASES[2].1;
    let text = draw("text", manifest);
    let warnings: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("warning: ")).collect();
    assert_eq!(
        warnings,
        [
            "payments subscribes to RefundRequested but no service publishes it",
            "orders publishes OrderAudited but no service subscribes to it"
        ]
    );
    let mermaid = draw("mermaid", manifest);
    for line in [
        "    no_publisher[\"(no publisher)\"]:::missing",
        "    no_publisher -.->|\"RefundRequested\"| svc_payments",
        "    svc_orders -.->|\"OrderAudited\"| no_subscriber",
        "    svc_audit_log[\"audit-log\"]",
        "    svc_idle[\"idle\"]",
    ] {
        assert!(mermaid.lines().any(|l| l == line), "{line:?} not in:\n{mermaid}");
    }
    let dot = draw("dot", manifest);
    assert!(dot.contains("\"no_publisher\" -> \"svc_payments\" [label=\"RefundRequested\", style=dashed];"), "{dot}");
    assert!(dot.contains("\"svc_orders\" -> \"no_subscriber\" [label=\"OrderAudited\", style=dashed];"), "{dot}");
    let svg = draw("svg", manifest);
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let texts: Vec<&str> = doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).collect();
    for w in &warnings {
        assert!(mermaid.contains(&format!("%% warning: {w}\n")), "{w}: {mermaid}");
        assert!(dot.contains(&format!("warning: {w}\\l")), "{w}: {dot}");
        assert!(texts.contains(&format!("warning: {w}").as_str()), "{w}: {texts:?}");
    }
    let dashed = doc.descendants().filter(|n| n.attribute("stroke-dasharray").is_some()).count();
    assert_eq!(dashed, 4, "two placeholder boxes and two edges, dashed:\n{svg}");
}
