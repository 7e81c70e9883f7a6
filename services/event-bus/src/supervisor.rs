//! Keeps one delivery worker per route, and applies route changes (from the hot-reloaded
//! spec) by starting, restarting or stopping only the workers whose route changed.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::{Mutex, Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    access::Access,
    dashboard::CurrentSpec,
    delivery::{ParkedReports, PushMode, Worker},
    metrics::Metrics,
    routes::{self, Route},
    store::Store,
};

struct Running {
    route: Route,
    stop: CancellationToken,
    redrive: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

pub struct Supervisor {
    store: Store,
    head: watch::Receiver<i64>,
    client: reqwest::Client,
    metrics: Metrics,
    mode: PushMode,
    running: Mutex<BTreeMap<String, Running>>,
    pub parked: ParkedReports,
}

impl Supervisor {
    pub fn new(store: Store, head: watch::Receiver<i64>, metrics: Metrics, mode: PushMode) -> Arc<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .expect("a plain http client builds");
        Arc::new(Self {
            store,
            head,
            client,
            metrics,
            mode,
            running: Mutex::new(BTreeMap::new()),
            parked: ParkedReports::default(),
        })
    }

    /// Makes the running workers match `new`.
    pub async fn apply(&self, new: BTreeMap<String, Route>) {
        let mut running = self.running.lock().await;
        let old: BTreeMap<String, Route> = running.iter().map(|(k, r)| (k.clone(), r.route.clone())).collect();
        let d = routes::diff(&old, &new);
        for name in d.removed.iter().chain(d.changed.iter()) {
            if let Some(r) = running.remove(name) {
                r.stop.cancel();
                let _ = r.task.await;
            }
        }
        for name in d.added.iter().chain(d.changed.iter()) {
            let route = new[name].clone();
            let stop = CancellationToken::new();
            let redrive = Arc::new(Notify::new());
            let worker = Worker {
                store: self.store.clone(),
                route: route.clone(),
                head: self.head.clone(),
                client: self.client.clone(),
                redrive: redrive.clone(),
                stop: stop.clone(),
                metrics: self.metrics.clone(),
                mode: self.mode,
                parked: self.parked.clone(),
            };
            let redrives = tokio::spawn(worker.clone().run_redrives());
            let deliveries = tokio::spawn(worker.run());
            let task = tokio::spawn(async move {
                let _ = deliveries.await;
                let _ = redrives.await;
            });
            running.insert(name.clone(), Running { route, stop, redrive, task });
        }
        if d.added.len() + d.changed.len() + d.removed.len() > 0 {
            tracing::info!(added = ?d.added, changed = ?d.changed, removed = ?d.removed, "routes applied");
        }
    }

    /// Wakes the workers of `subscribers` to deliver their redriven dead letters.
    pub async fn notify_redrive(&self, subscribers: &[String]) {
        let running = self.running.lock().await;
        for s in subscribers {
            if let Some(r) = running.get(s) {
                r.redrive.notify_one();
            }
        }
    }

    pub async fn routes(&self) -> Vec<Route> {
        self.running.lock().await.values().map(|r| r.route.clone()).collect()
    }

    pub async fn shutdown(&self) {
        let mut running = self.running.lock().await;
        for r in running.values() {
            r.stop.cancel();
        }
        for (_, r) in std::mem::take(&mut *running) {
            let _ = r.task.await;
        }
    }
}

/// Re-reads the routes file every `interval` and applies it (routes, access, and the
/// parsed spec the dashboard draws) when its content changes. Polling, not inotify: a
/// Kubernetes ConfigMap volume updates by swapping a symlink, which file watches on the
/// path miss.
#[allow(clippy::too_many_arguments)]
pub async fn watch_routes(
    sup: Arc<Supervisor>,
    access: Arc<std::sync::RwLock<Access>>,
    spec: CurrentSpec,
    path: PathBuf,
    template: String,
    interval: Duration,
    mut last: String,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read routes file; keeping the current routes");
                continue;
            }
        };
        if text == last {
            continue;
        }
        last = text.clone();
        match busbar::spec::parse_manifest(&text) {
            Ok(bus) => {
                tracing::info!(path = %path.display(), "routes file changed; reloading");
                let routes = {
                    let mut access = access.write().expect("access lock");
                    access.set_spec(&bus.spec);
                    routes::routes_from_spec(&bus.spec, &template, &access)
                };
                *spec.write().expect("spec lock") = Some(bus);
                sup.apply(routes).await;
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "routes file is invalid; keeping the current routes")
            }
        }
    }
}
