//! `kube-fake serve`: the program real clients talk to. It serves HTTPS with the kubeconfig it
//! writes (admin token, its CA), refuses requests without a token, and stops on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};

fn kube_fake() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kube-fake"))
}

#[tokio::test]
async fn serve_writes_a_kubeconfig_that_a_client_can_use_and_stops_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("kube-fake-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    let mut child = kube_fake()
        .args(["serve", "--listen", "127.0.0.1:0", "--kubeconfig"])
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with("serving https://127.0.0.1:"), "{first}");

    let kc = Kubeconfig::read_from(&kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.unwrap();
    let url = config.cluster_url.to_string();
    let client = kube::Client::try_from(config.clone()).unwrap();
    let names: Vec<String> = Api::<Namespace>::all(client)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert_eq!(names, ["default", "kube-node-lease", "kube-public", "kube-system"]);

    // Without the token: 401.
    let mut anonymous = config.clone();
    anonymous.auth_info = Default::default();
    let err =
        Api::<Namespace>::all(kube::Client::try_from(anonymous).unwrap()).list(&Default::default()).await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 401), "{err:?} from {url}");

    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "kube-fake did not stop within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_arguments_get_a_clear_error() {
    let out = kube_fake().args(["serve", "--listen", "nowhere", "--kubeconfig", "x"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'nowhere' for '--listen"));
    let out = kube_fake().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--no-readiness") && help.contains("--kubeconfig"), "{help}");
}
