//! The `busbar-operator` program itself, against the fake API server through a kubeconfig:
//! it refuses to start without the CRD, serves its probes and metrics, wires a ServiceBus,
//! and stops cleanly on SIGTERM.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

mod support;

use kube_fake::FakeApiServer;
use support::{blog_spec, deployment, service_bus};

fn kubeconfig(api: &FakeApiServer, dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: '{}'}}}}]\n\
             users: [{{name: me, user: {{}}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, user: me}}}}]\n\
             current-context: fake\n",
            api.url()
        ),
    )
    .unwrap();
    path
}

fn operator(kubeconfig: &std::path::Path, port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_busbar-operator"));
    cmd.env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("RUST_LOG", "info")
        .args(["--listen", &format!("127.0.0.1:{port}"), "--identity", "binary-test"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[tokio::test]
async fn without_the_crd_it_says_so_and_exits_non_zero() {
    let api = FakeApiServer::start().await;
    let dir = testkit::temp_dir();
    let out = tokio::task::spawn_blocking({
        let mut cmd = operator(&kubeconfig(&api, dir.path()), testkit::free_port());
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the ServiceBus CRD (servicebuses.busbar.dev) is not installed"), "{stderr}");
}

#[tokio::test]
async fn it_serves_probes_wires_the_blog_and_stops_on_sigterm() {
    let api = FakeApiServer::start().await;
    api.install_crd(busbar_operator::crd::crd_yaml()).unwrap();
    for d in ["posts", "comments", "moderation", "query"] {
        api.create(serde_json::to_value(deployment("shop", d)).unwrap()).unwrap();
    }
    let dir = testkit::temp_dir();
    let port = testkit::free_port();
    let mut child = operator(&kubeconfig(&api, dir.path()), port).spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    testkit::wait_until(Duration::from_secs(20), "the operator answers /readyz", || async {
        http.get(format!("{base}/readyz")).send().await.ok().filter(|r| r.status().is_success())
    })
    .await;
    api.create(serde_json::to_value(service_bus("shop", "blog", blog_spec())).unwrap()).unwrap();
    testkit::wait_until(Duration::from_secs(20), "query is wired", || async {
        let d = api.get("deployments", "shop", "query")?;
        d["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()?
            .iter()
            .any(|e| e["name"] == "BUSBAR_URL")
            .then_some(())
    })
    .await;
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let reconciles: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("busbar_operator_reconciles_total "))
        .expect("a reconcile counter")
        .parse()
        .unwrap();
    assert!(reconciles >= 1.0, "{metrics}");
    assert!(metrics.contains("busbar_operator_reconcile_duration_seconds_bucket"), "{metrics}");

    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            assert!(std::time::Instant::now() < deadline, "the operator did not stop within 10 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}
