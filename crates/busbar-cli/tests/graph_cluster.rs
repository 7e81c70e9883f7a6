//! `busbar graph --cluster NAME`: the built binary reads a ServiceBus, and the figures in its
//! status, from kube-fake (an in-process fake Kubernetes API server with busbar's CRD,
//! k8s/base/operator/crd.yaml) through a kubeconfig in a temporary directory, as it would
//! from a real cluster through the user's.

use std::path::{Path, PathBuf};

use kube_fake::FakeApiServer;
use serde_json::{Value, json};

const NS: &str = "blog";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// A kubeconfig for `server` whose context's namespace is `blog`.
fn kubeconfig(dir: &Path, server: &str) -> PathBuf {
    let path = dir.join("kubeconfig");
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "me", "user": {}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me", "namespace": NS}}],
        "current-context": "fake",
    });
    std::fs::write(&path, serde_yaml_ng::to_string(&doc).unwrap()).unwrap();
    path
}

/// A fake cluster with busbar's CRD and the blog's ServiceBus in `blog`, whose status
/// reports figures for `query` (pending and dead letters) and `moderation` (pending only).
async fn cluster_with_the_blog() -> FakeApiServer {
    let api = FakeApiServer::start().await;
    api.install_crd(include_str!("../../../k8s/base/operator/crd.yaml")).expect("the CRD installs");
    let manifest = std::fs::read_to_string(root().join("k8s/base/servicebus.yaml")).unwrap();
    let mut bus: Value = serde_yaml_ng::from_str(&manifest).unwrap();
    bus["metadata"]["namespace"] = json!(NS);
    api.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})).unwrap();
    api.create(bus).expect("the ServiceBus is created");
    api.patch_status(
        "servicebuses.busbar.dev",
        NS,
        "blog",
        json!({"totalPending": 3, "services": [
            {"name": "query", "deployment": "query", "deploymentFound": true, "wired": true, "pending": 3, "deadLettered": 1},
            {"name": "moderation", "deployment": "moderation", "deploymentFound": true, "wired": true, "pending": 0},
        ]}),
    )
    .expect("the status is patched");
    api
}

/// `busbar graph <args>` with `kubeconfig`: (success, stdout, stderr).
async fn busbar_graph(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_busbar"))
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .arg("graph")
        .args(args)
        .output()
        .await
        .unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_graph_carries_each_subscribers_figures() {
    let api = cluster_with_the_blog().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(dir.path(), &api.url());

    // The namespace is the kubeconfig context's.
    let (ok, text, err) = busbar_graph(&kc, &["--cluster", "blog"]).await;
    assert!(ok, "{err}");
    assert!(text.starts_with("ServiceBus blog (namespace blog): 4 services, 6 routes\n"), "{text}");
    for line in [
        "  comments --CommentCreated--> query · pending 3 · dead 1\n",
        "  comments --CommentCreated--> moderation · pending 0\n",
    ] {
        assert!(text.contains(line), "{line:?} not in:\n{text}");
    }
    // query's three routes and moderation's; the status reports nothing for comments.
    let with_figures = text.lines().filter(|l| l.contains(" · ")).count();
    assert_eq!(with_figures, 4, "{text}");

    let (ok, svg, err) = busbar_graph(&kc, &["--cluster", "-n", NS, "blog", "--format", "svg"]).await;
    assert!(ok, "{err}");
    let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("not XML: {e}\n{svg}"));
    let texts: Vec<&str> = doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).collect();
    for label in ["CommentCreated · pending 3 · dead 1", "CommentCreated · pending 0"] {
        assert!(texts.contains(&label), "{label:?} not in {texts:?}");
    }

    let (ok, mermaid, err) = busbar_graph(&kc, &["--cluster", "blog", "--format", "mermaid"]).await;
    assert!(ok, "{err}");
    assert!(mermaid.contains("svc_comments -->|\"CommentCreated · pending 3 · dead 1\"| svc_query\n"), "{mermaid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bus_or_crd_or_cluster_is_said_plainly() {
    let api = cluster_with_the_blog().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(dir.path(), &api.url());

    let (ok, out, err) = busbar_graph(&kc, &["--cluster", "-n", "shop", "blog"]).await;
    assert!(!ok && out.is_empty(), "{out}");
    assert_eq!(err, "busbar: no ServiceBus blog in namespace shop; `kubectl get sbus -A` lists them\n");

    let bare = FakeApiServer::start().await;
    let kc = kubeconfig(dir.path(), &bare.url());
    let (ok, _, err) = busbar_graph(&kc, &["--cluster", "blog"]).await;
    assert!(!ok);
    assert!(err.contains("has no ServiceBus kind (CRD servicebuses.busbar.dev v1alpha1 is not installed)"), "{err}");

    // Nothing listens there any more.
    let url = bare.url();
    bare.shutdown().await;
    let kc = kubeconfig(dir.path(), &url);
    let (ok, _, err) = busbar_graph(&kc, &["--cluster", "blog"]).await;
    assert!(!ok);
    assert!(err.starts_with("busbar: cannot reach the cluster at ") && err.contains("is kubectl configured?"), "{err}");

    let (ok, _, err) = busbar_graph(&dir.path().join("missing"), &["--cluster", "blog"]).await;
    assert!(!ok);
    assert!(err.starts_with("busbar: cannot reach the cluster: ") && err.contains("is kubectl configured?"), "{err}");
}
