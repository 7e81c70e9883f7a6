//! Group commit: concurrent publishes are gathered into one transaction, so the log pays
//! one commit (and, with `--sync full`, one fsync) for many requests. A publisher is
//! answered only after the transaction holding its events has committed.

use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    metrics::Metrics,
    store::{NewEvent, Store},
};

/// Most events committed in one transaction.
const MAX_GROUP: usize = 4096;

struct Job {
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<(), String>>,
}

#[derive(Clone)]
pub struct Ingest {
    jobs: mpsc::Sender<Job>,
}

impl Ingest {
    /// Starts the writer. `head` receives the highest stored sequence after each commit.
    pub fn spawn(store: Store, head: watch::Sender<i64>, metrics: Metrics) -> (Ingest, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(1024);
        let task = tokio::spawn(run(store, rx, head, metrics));
        (Ingest { jobs: tx }, task)
    }

    /// Stores `events` durably; `Ok` means committed.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.jobs.send(Job { events, reply }).await.map_err(|_| "the bus is shutting down".to_owned())?;
        rx.await.map_err(|_| "the bus is shutting down".to_owned())?
    }
}

async fn run(store: Store, mut rx: mpsc::Receiver<Job>, head: watch::Sender<i64>, metrics: Metrics) {
    // Runs until every Ingest handle is dropped (the HTTP server has stopped), so requests
    // accepted before shutdown are still committed and answered.
    while let Some(first) = rx.recv().await {
        let mut size = first.events.len();
        let mut jobs = vec![first];
        while size < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => {
                    size += job.events.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let all: Vec<NewEvent> = jobs.iter().flat_map(|j| j.events.iter().cloned()).collect();
        match store.append(&all).await {
            Ok((stored, new_head)) => {
                metrics.published.inc_by(stored);
                metrics.duplicates.inc_by(all.len() as u64 - stored);
                metrics.head.set(new_head);
                head.send_replace(new_head);
                for job in jobs {
                    let _ = job.reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, events = all.len(), "storing events failed; publishers will retry");
                for job in jobs {
                    let _ = job.reply.send(Err(format!("cannot store events: {e}")));
                }
            }
        }
    }
}
