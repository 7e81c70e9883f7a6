//! How long the operator takes to reconcile one ServiceBus, and how much memory it uses,
//! with 10, 100 and 1,000 services, against the in-process fake API server.
//!
//!     cargo run --release -p busbar-operator --example reconcile_bench [-- --sizes 10,100,1000]
//!
//! Each size runs in its own child process, so each peak RSS (VmHWM) is that size's own.
//! The process holds the fake API server too: "fake only" is its peak RSS once the
//! Deployments are created and before the operator starts; the operator's share is the
//! difference. "wired" is the time from creating the ServiceBus until every Deployment
//! carries its wiring and status says Wired; "settled" adds the status write after it.
//! A benchmark, not a test: it prints figures and asserts no timings.

use std::{sync::Arc, time::Duration};

use busbar_operator::{
    controller::{self, RunConfig},
    crd::ServiceBus,
    fixtures::{chain_spec, deployment, service_bus},
    metrics::Metrics,
    plan::{Settings, WIRING_HASH_ANNOTATION},
};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use kube_fake::FakeApiServer;
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
    if let Some(n) = args.iter().position(|a| a == "--one").and_then(|i| args.get(i + 1)) {
        let n: usize = n.parse().expect("--one N");
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        rt.block_on(one(n));
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
        "{:>8} {:>10} {:>11} {:>9} {:>9} {:>14} {:>14}",
        "services", "wired ms", "settled ms", "requests", "writes", "peak RSS MiB", "fake only MiB"
    );
    let exe = std::env::current_exe().unwrap();
    for n in sizes {
        let out = std::process::Command::new(&exe).args(["--one", &n.to_string()]).output().expect("run a child");
        if !out.status.success() {
            eprintln!("size {n} failed:\n{}", String::from_utf8_lossy(&out.stderr));
            std::process::exit(1);
        }
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

fn load() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!("load average {}", l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

async fn one(n: usize) {
    let api = FakeApiServer::start().await;
    api.install_crd(busbar_operator::crd::crd_yaml()).unwrap();
    for i in 0..n {
        api.create(serde_json::to_value(deployment(NS, &format!("svc-{i}"))).unwrap()).unwrap();
    }
    let fake_only = peak_rss_kib();
    let stop = CancellationToken::new();
    let cfg = RunConfig {
        settings: Settings { bus_stats: false, ..Settings::default() },
        identity: "bench".into(),
        lease: None,
    };
    let op = tokio::spawn(controller::run(api.client(), cfg, Arc::new(Metrics::default()), stop.clone()));
    // Let the operator's watches list the Deployments before the clock starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
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
    println!(
        "{n:>8} {:>10.1} {:>11.1} {:>9} {:>9} {:>14.1} {:>14.1}",
        wired.as_secs_f64() * 1e3,
        settled.as_secs_f64() * 1e3,
        api.request_count(),
        api.write_count(),
        peak_rss_kib() as f64 / 1024.0,
        fake_only as f64 / 1024.0
    );
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), op).await;
}
