//! In-process subscribers that note when each event arrived and acknowledge it, nothing
//! else. Running them in the benchmark's process lets them share the publishers' clock.
//!
//! - built-in bus: an HTTP server on a loopback port that takes the bus's pushes
//!   (`POST /events`, a JSON array of CloudEvents) and answers 200;
//! - JetStream: a durable pull consumer on its own NATS connection, acknowledging each
//!   message as it arrives (a plain ack: waiting for the server to confirm every ack
//!   would make the subscriber, not the server, the limit).

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard},
};

use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull};
use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{StatusCode, header},
    response::IntoResponse,
    routing::post,
};
use futures::StreamExt;
use serde::Deserialize;

use crate::clock;

/// What one subscriber saw during the current phase.
#[derive(Default)]
pub struct Recorder {
    phase: u32,
    /// Bit `n` is set once event `n` of the phase arrived.
    seen: Vec<u64>,
    /// Events of this phase received at least once.
    pub distinct: u64,
    /// Redeliveries of events already received (the bus is at-least-once).
    pub duplicates: u64,
    /// Events from an earlier phase (late redeliveries).
    pub stray: u64,
    /// Push bodies (JetStream: messages) that were not the expected JSON (answered 400;
    /// JetStream: acknowledged and skipped).
    pub malformed: u64,
    /// JetStream: errors from the message stream or from sending an ack.
    pub receive_errors: u64,
    /// Receive time minus publish stamp of each first delivery, in ns.
    pub latencies_ns: Vec<u64>,
    /// When the most recent first delivery arrived (`clock::now_ns`).
    pub last_recv_ns: u64,
}

impl Recorder {
    fn record(&mut self, stamp: &Stamp, recv_ns: u64) {
        if stamp.phase != self.phase {
            self.stray += 1;
            return;
        }
        let (word, bit) = ((stamp.n / 64) as usize, 1u64 << (stamp.n % 64));
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= bit;
        self.distinct += 1;
        self.latencies_ns.push(recv_ns.saturating_sub(stamp.sent_ns));
        self.last_recv_ns = self.last_recv_ns.max(recv_ns);
    }

    /// Whether event `n` of the current phase has arrived.
    pub fn has(&self, n: u64) -> bool {
        self.seen.get((n / 64) as usize).is_some_and(|w| w & (1u64 << (n % 64)) != 0)
    }
}

/// The part of a pushed CloudEvent the benchmark reads; everything else is ignored.
#[derive(Deserialize)]
struct Pushed {
    data: Stamp,
}

/// The benchmark event's `data`: which phase, which event of it, and when it was published.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stamp {
    pub phase: u32,
    pub n: u64,
    pub sent_ns: u64,
}

pub struct Subscriber {
    rec: Arc<Mutex<Recorder>>,
    /// The HTTP server or the JetStream receive loop; stopped when dropped.
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// An HTTP subscriber for the built-in bus, and the loopback port it listens on.
    pub async fn http() -> anyhow::Result<(Subscriber, u16)> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .context("cannot bind a loopback port for a subscriber")?;
        let port = listener.local_addr()?.port();
        let rec = Arc::new(Mutex::new(Recorder::default()));
        let app = Router::new()
            .route("/events", post(receive))
            // The bus's push batch size is configurable; never let a large one be refused.
            .layer(DefaultBodyLimit::max(256 << 20))
            .with_state(rec.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((Subscriber { rec, task }, port))
    }

    /// A JetStream subscriber: creates the durable pull consumer `config` on `stream`
    /// over its own connection to `url` (as a separate service would have), and starts
    /// receiving.
    pub async fn jetstream(url: &str, stream: &str, config: pull::Config) -> anyhow::Result<Subscriber> {
        let durable = config.durable_name.clone().unwrap_or_default();
        let client = crate::nats::connect(url, &format!("busbar-bench {durable}")).await?;
        let js = jetstream::new(client);
        let stream = js.get_stream(stream).await.with_context(|| format!("cannot open stream {stream}"))?;
        let consumer =
            stream.create_consumer(config).await.with_context(|| format!("cannot create the consumer {durable}"))?;
        let mut messages = consumer.messages().await.with_context(|| format!("cannot pull from {durable}"))?;
        let rec = Arc::new(Mutex::new(Recorder::default()));
        let mine = rec.clone();
        let task = tokio::spawn(async move {
            while let Some(msg) = messages.next().await {
                let now = clock::now_ns();
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        // Missed heartbeats and the like; the stream carries on.
                        note_error(&mine, &durable, &e);
                        continue;
                    }
                };
                match serde_json::from_slice::<Pushed>(&msg.payload) {
                    Ok(ev) => mine.lock().expect("recorder lock poisoned").record(&ev.data, now),
                    Err(_) => mine.lock().expect("recorder lock poisoned").malformed += 1,
                }
                if let Err(e) = msg.ack().await {
                    note_error(&mine, &durable, &e);
                }
            }
            eprintln!("[jetstream] the message stream of consumer {durable} ended");
        });
        Ok(Subscriber { rec, task })
    }

    /// Forgets everything and starts counting events of `phase`.
    pub fn begin_phase(&self, phase: u32) {
        *self.lock() = Recorder { phase, ..Recorder::default() };
    }

    pub fn lock(&self) -> MutexGuard<'_, Recorder> {
        self.rec.lock().expect("recorder lock poisoned")
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Counts a receive error, printing the first few so a broken run says why.
fn note_error(rec: &Mutex<Recorder>, durable: &str, e: &dyn std::fmt::Display) {
    let mut r = rec.lock().expect("recorder lock poisoned");
    r.receive_errors += 1;
    if r.receive_errors <= 3 {
        eprintln!("[jetstream] consumer {durable}: {e}");
    }
}

async fn receive(State(rec): State<Arc<Mutex<Recorder>>>, body: Bytes) -> impl IntoResponse {
    // One reading for the whole batch: its events arrived together.
    let now = clock::now_ns();
    let json = [(header::CONTENT_TYPE, "application/json")];
    match serde_json::from_slice::<Vec<Pushed>>(&body) {
        Ok(events) => {
            let mut r = rec.lock().expect("recorder lock poisoned");
            for ev in &events {
                r.record(&ev.data, now);
            }
            (StatusCode::OK, json, "{}")
        }
        Err(_) => {
            rec.lock().expect("recorder lock poisoned").malformed += 1;
            (StatusCode::BAD_REQUEST, json, r#"{"error":"busbar-bench expects a JSON array of its own BenchEvents"}"#)
        }
    }
}
