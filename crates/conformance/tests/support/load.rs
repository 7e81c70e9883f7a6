//! Steady emit load, bounded in events and time: requests of a few events each go to the
//! publisher replicas in turn; a replica that does not answer (killed, restarting) is
//! skipped and the request goes to the next one. Only acknowledged events are recorded;
//! a request cut off by a kill may still have committed, so the publisher's database
//! (`GET /emitted`) stays the truth.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use busbar_conformance::{
    events::TYPES,
    wire::{EmitItem, EmitRequest, Emitted},
};

pub struct LoadSpec {
    /// Base URLs of the publisher replicas.
    pub targets: Vec<String>,
    /// The aggregates the events go to, in turn.
    pub aggregates: Vec<String>,
    /// Events per request.
    pub per_request: usize,
    /// Pause between requests, to leave the 2 cores to the processes under test.
    pub pause: Duration,
    pub max_events: usize,
    pub max_time: Duration,
}

#[derive(Debug, Default)]
pub struct LoadLog {
    pub acked: Vec<Emitted>,
    pub failed_requests: usize,
    pub first_errors: Vec<String>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    log: Arc<Mutex<LoadLog>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    pub fn start(spec: LoadSpec) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(Mutex::new(LoadLog::default()));
        let task = tokio::spawn(run(spec, stop.clone(), acked.clone(), log.clone()));
        Load { stop, acked, log, task }
    }

    /// Events acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until `n` more events than now have been acknowledged (bounded).
    pub async fn progress(&self, n: usize, timeout: Duration, what: &str) {
        let target = self.acked() + n;
        testkit::wait_until(timeout, what, || async { (self.acked() >= target).then_some(()) }).await;
    }

    pub async fn stop(self) -> LoadLog {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

async fn run(spec: LoadSpec, stop: Arc<AtomicBool>, acked: Arc<AtomicUsize>, log: Arc<Mutex<LoadLog>>) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let start = Instant::now();
    let (mut next_target, mut next_item) = (0usize, 0usize);
    while !stop.load(Ordering::Relaxed)
        && acked.load(Ordering::Relaxed) < spec.max_events
        && start.elapsed() < spec.max_time
    {
        let items: Vec<EmitItem> = (0..spec.per_request)
            .map(|i| {
                let n = next_item + i;
                EmitItem::new(
                    spec.aggregates[n % spec.aggregates.len()].clone(),
                    TYPES[(n / spec.aggregates.len()) % TYPES.len()],
                )
            })
            .collect();
        let req = EmitRequest { items, per_tx: None };
        let target = &spec.targets[next_target % spec.targets.len()];
        next_target += 1;
        match client.post(format!("{target}/emit")).json(&req).send().await {
            Ok(r) if r.status().is_success() => match r.json::<Vec<Emitted>>().await {
                Ok(done) => {
                    next_item += spec.per_request;
                    acked.fetch_add(done.len(), Ordering::Relaxed);
                    log.lock().unwrap().acked.extend(done);
                }
                Err(e) => note(&log, format!("{target}: {e}")),
            },
            Ok(r) => note(&log, format!("{target}: {}", r.status())),
            Err(e) => note(&log, format!("{target}: {e}")),
        }
        tokio::time::sleep(spec.pause).await;
    }
}

fn note(log: &Mutex<LoadLog>, error: String) {
    let mut l = log.lock().unwrap();
    l.failed_requests += 1;
    if l.first_errors.len() < 10 {
        l.first_errors.push(error);
    }
}
