//! How long the operator takes to reconcile one ServiceBus, and how much memory it uses,
//! with 10, 100 and 1,000 services, against the in-process fake API server.
//!
//!     cargo run --release -p busbar-operator --example reconcile_bench [-- --sizes 10,100,1000]
//!
//! The fake API server runs in this process; the operator runs in a child process of its
//! own (this program with `--operator URL`), so its peak RSS (VmHWM) is the operator's
//! alone, one child per size. "wired" is the time from creating the ServiceBus until every
//! Deployment carries its wiring and status says Wired; "settled" is when the API server
//! saw its last write (nothing more for a second). A benchmark, not a test: it prints
//! figures and asserts no timings.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

#[path = "../tests/support/mod.rs"]
mod support;

use busbar_operator::{
    controller::{self, RunConfig},
    crd::ServiceBus,
    metrics::Metrics,
    names::WIRING_HASH_ANNOTATION,
    settings::Settings,
};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use kube_fake::FakeApiServer;
use support::{chain_spec, deployment, service_bus};
use tokio_util::sync::CancellationToken;

const NS: &str = "bench";

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    if let Some(url) = args.iter().position(|a| a == "--operator").and_then(|i| args.get(i + 1)) {
        rt.block_on(operator(url));
        return;
    }
    let sizes: Vec<usize> = args
        .iter()
        .position(|a| a == "--sizes")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(|n| n.trim().parse().expect("--sizes 10,100,1000")).collect())
        .unwrap_or_else(|| vec![10, 100, 1000]);
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("reconcile one ServiceBus against the fake API server ({cpus} CPUs; {})", load());
    println!(
        "{:>8} {:>10} {:>11} {:>9} {:>9} {:>22}",
        "services", "wired ms", "settled ms", "requests", "writes", "operator peak RSS MiB"
    );
    for n in sizes {
        rt.block_on(one(n));
    }
}

fn load() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!("load average {}", l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// The child: runs the operator against `url` until its stdin closes, then prints its peak RSS.
async fn operator(url: &str) {
    let client = kube::Client::try_from(kube::Config::new(url.parse().expect("a URL"))).unwrap();
    let stop = CancellationToken::new();
    let on_eof = stop.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        on_eof.cancel();
    });
    let cfg = RunConfig {
        settings: Settings { bus_stats: false, ..Settings::default() },
        identity: "bench".into(),
        lease: None,
    };
    println!("started");
    controller::run(client, cfg, Arc::new(Metrics::default()), stop).await;
    println!("{}", peak_rss_kib());
}

async fn one(n: usize) {
    let api = FakeApiServer::start().await;
    api.install_crd(busbar_operator::crd::crd_yaml()).unwrap();
    for i in 0..n {
        api.create(serde_json::to_value(deployment(NS, &format!("svc-{i}"))).unwrap()).unwrap();
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--operator", &api.url()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the operator process");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "started", "the operator process did not start");
    // Let the operator's watches list the Deployments before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.clear_requests();
    let started = tokio::time::Instant::now();
    let sb: ServiceBus = service_bus(NS, "bench", chain_spec(n));
    Api::<ServiceBus>::namespaced(api.client(), NS)
        .patch("bench", &PatchParams::apply("bench").force(), &Patch::Apply(serde_json::to_value(&sb).unwrap()))
        .await
        .unwrap();
    let deadline = started + Duration::from_secs(300);
    let wired_all = || {
        (0..n).all(|i| {
            api.get("deployments", NS, &format!("svc-{i}"))
                .is_some_and(|d| d["spec"]["template"]["metadata"]["annotations"][WIRING_HASH_ANNOTATION].is_string())
        })
    };
    let wired_cond = || {
        api.get("servicebuses.busbar.dev", NS, "bench").is_some_and(|b| {
            b["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Wired" && c["status"] == "True")
        })
    };
    while !(wired_all() && wired_cond()) {
        assert!(tokio::time::Instant::now() < deadline, "not wired within 300 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wired = started.elapsed();
    // Settled: a further second without any write.
    let mut last = api.write_count();
    let mut settled = started.elapsed();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = api.write_count();
        if now == last && started.elapsed() > settled + Duration::from_secs(1) {
            break;
        }
        if now != last {
            last = now;
            settled = started.elapsed();
        }
    }
    let (requests, writes) = (api.request_count(), api.write_count());
    drop(child.stdin.take()); // the operator stops and reports
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let _ = child.wait();
    let rss_kib: f64 = rest.trim().parse().unwrap_or(f64::NAN);
    println!(
        "{n:>8} {:>10.1} {:>11.1} {requests:>9} {writes:>9} {:>22.1}",
        wired.as_secs_f64() * 1e3,
        settled.as_secs_f64() * 1e3,
        rss_kib / 1024.0
    );
}
