//! One conformance suite for both transports: the same scenarios, run against the
//! built-in bus (http) and against NATS JetStream. Subscribers are real: an SDK
//! `Consumer` over a SQLite database, fed by `POST /events` on a loopback server (http)
//! or by a durable pull consumer (JetStream).

mod common;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use busbar::{
    AttributesReader, CloudEvent, Consumer, Db, DbOptions, Handler, HandlerError, Transport, Tx,
    spec::StartFrom,
    transport::jetstream::{self, JetStreamTransport, SubscribeOptions},
};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
enum Kind {
    Http,
    JetStream,
}

/// Records applied event ids in order; fails as told.
#[derive(Default)]
struct Recorder {
    applied: Mutex<Vec<String>>,
    poison: Mutex<HashSet<String>>,
    fail_times: Mutex<std::collections::HashMap<String, u32>>,
}

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, _tx: &mut Tx, ev: &CloudEvent) -> Result<(), HandlerError> {
        let id = ev.id().to_owned();
        if self.poison.lock().unwrap().contains(&id) {
            return Err(format!("poison event {id} refused by the handler").into());
        }
        if let Some(n) = self.fail_times.lock().unwrap().get_mut(&id)
            && *n > 0
        {
            *n -= 1;
            return Err("transient failure".into());
        }
        self.applied.lock().unwrap().push(id);
        Ok(())
    }
}

impl Recorder {
    fn applied(&self) -> Vec<String> {
        self.applied.lock().unwrap().clone()
    }
    async fn wait_for(&self, n: usize) -> Vec<String> {
        testkit::wait_until(T, &format!("{n} applied events"), || async {
            let a = self.applied();
            (a.len() >= n).then_some(a)
        })
        .await
    }
}

struct Sub {
    recorder: Arc<Recorder>,
    _dir: testkit::TempDir,
    _task: tokio::task::JoinHandle<()>,
}

struct Harness {
    kind: Kind,
    dir: testkit::TempDir,
    transport: Arc<dyn Transport>,
    // http
    bus: Option<common::Bus>,
    routes: Vec<String>,
    // jetstream
    js: Option<JetStreamTransport>,
    stop: CancellationToken,
}

const MAX_DELIVER: u32 = 3;

impl Harness {
    async fn new(kind: Kind) -> Harness {
        let dir = testkit::temp_dir();
        match kind {
            Kind::Http => {
                let bus = common::Bus::start(dir.path(), &routes(&[]), None, &[]).await;
                let transport = Arc::new(busbar::HttpTransport::new(&bus.url, None));
                Harness {
                    kind,
                    dir,
                    transport,
                    bus: Some(bus),
                    routes: vec![],
                    js: None,
                    stop: CancellationToken::new(),
                }
            }
            Kind::JetStream => {
                let name = format!("conf-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
                let js = JetStreamTransport::connect(&testkit::nats_url(), &name).await.expect("connect to NATS");
                tokio::time::timeout(Duration::from_secs(10), js.ensure_streams())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("NATS with JetStream is required at {}; run via `cargo xtask test`", testkit::nats_url())
                    })
                    .unwrap();
                Harness {
                    kind,
                    dir,
                    transport: Arc::new(js.clone()),
                    bus: None,
                    routes: vec![],
                    js: Some(js),
                    stop: CancellationToken::new(),
                }
            }
        }
    }

    async fn subscribe(&mut self, name: &str, types: &[&str], start_from: StartFrom) -> Sub {
        let dir = testkit::temp_dir();
        let db = Db::connect(name, &format!("sqlite://{}/{name}.db", dir.path().display()), DbOptions::default())
            .await
            .unwrap();
        let recorder = Arc::new(Recorder::default());
        let consumer = Consumer::new(db, recorder.clone());
        let task = match self.kind {
            Kind::Http => {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let port = listener.local_addr().unwrap().port();
                let app = busbar::receive::router(consumer);
                let task = tokio::spawn(async move {
                    let _ = axum::serve(listener, app).await;
                });
                let bus = self.bus.as_ref().unwrap();
                let from = if start_from == StartFrom::Now { "now" } else { "beginning" };
                let ty: Vec<String> = types.iter().map(|t| format!("{{type: {t}}}")).collect();
                self.routes.push(format!(
                    "  - name: {name}\n    port: {port}\n    startFrom: {from}\n    subscribes: [{}]\n",
                    ty.join(", ")
                ));
                std::fs::write(&bus.routes, routes(&self.routes)).unwrap();
                testkit::wait_until(T, "the bus to pick up the route", || async {
                    let (_, _, subs) = bus.get("/subscribers").await;
                    subs.as_array().unwrap().iter().any(|s| s["name"] == name).then_some(())
                })
                .await;
                task
            }
            Kind::JetStream => {
                let opts = SubscribeOptions {
                    durable: name.to_owned(),
                    types: types.iter().map(|t| t.to_string()).collect(),
                    start_from,
                    max_deliver: MAX_DELIVER,
                    ack_wait: Duration::from_secs(2),
                    backoff: vec![Duration::from_millis(20), Duration::from_millis(40)],
                };
                let js = self.js.clone().unwrap();
                let task = tokio::spawn(jetstream::run_subscriber(js.clone(), opts, consumer, self.stop.clone()));
                // Subscribed once the durable exists.
                testkit::wait_until(T, "the durable consumer", || async {
                    let stream = js.context().get_stream(jetstream::stream_name(js.bus())).await.ok()?;
                    stream.consumer_info(name).await.ok().map(|_| ())
                })
                .await;
                task
            }
        };
        Sub { recorder, _dir: dir, _task: task }
    }

    async fn publish(&self, events: &[CloudEvent]) {
        self.transport.publish(events).await.expect("publish");
    }

    /// (event id, reason) of each dead letter for `subscriber`.
    async fn dead_letters(&self, subscriber: &str) -> Vec<(String, String)> {
        match self.kind {
            Kind::Http => {
                let (_, _, v) = self.bus.as_ref().unwrap().get(&format!("/deadletters?subscriber={subscriber}")).await;
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|d| (d["event_id"].as_str().unwrap().to_owned(), d["last_error"].as_str().unwrap().to_owned()))
                    .collect()
            }
            Kind::JetStream => self
                .js
                .as_ref()
                .unwrap()
                .dead_letters(subscriber, 100)
                .await
                .unwrap()
                .into_iter()
                .map(|(e, r)| (e.id().to_owned(), r))
                .collect(),
        }
    }

    async fn cleanup(self) {
        self.stop.cancel();
        if let Some(js) = &self.js {
            let _ = js.context().delete_stream(jetstream::stream_name(js.bus())).await;
            let _ = js.context().delete_stream(jetstream::dead_letter_stream_name(js.bus())).await;
        }
        drop(self.dir);
    }
}

fn routes(subscribers: &[String]) -> String {
    format!(
        "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nmetadata: {{name: conformance}}\nspec:\n  delivery: {{maxDeliver: {MAX_DELIVER}, backoff: [20ms, 40ms], ackWait: 2s}}\n  services:\n  - name: producer\n    publishes: [A, B]\n{}",
        subscribers.concat()
    )
}

fn events(ty: &str, range: std::ops::Range<u64>) -> Vec<CloudEvent> {
    range.map(|n| busbar::envelope::decode_one(&common::event(ty, n).to_string()).unwrap()).collect()
}

fn ids(events: &[CloudEvent]) -> Vec<String> {
    events.iter().map(|e| e.id().to_owned()).collect()
}

// ---- the scenarios, each run against both transports ----

async fn delivers_in_order_per_subscriber(kind: Kind) {
    let mut h = Harness::new(kind).await;
    let all = h.subscribe("all", &["A", "B"], StartFrom::Beginning).await;
    let only_b = h.subscribe("bonly", &["B"], StartFrom::Beginning).await;
    let mut sent = vec![];
    for i in 0..10u64 {
        let batch: Vec<CloudEvent> = events(if i % 3 == 0 { "B" } else { "A" }, i * 5..i * 5 + 5);
        h.publish(&batch).await;
        sent.extend(batch);
    }
    assert_eq!(all.recorder.wait_for(50).await, ids(&sent), "{kind:?}: all events, in publish order");
    let want_b: Vec<String> = sent.iter().filter(|e| e.ty() == "B").map(|e| e.id().to_owned()).collect();
    assert_eq!(only_b.recorder.wait_for(want_b.len()).await, want_b, "{kind:?}: only B, in order");
    h.cleanup().await;
}

async fn duplicate_publish_has_one_effect(kind: Kind) {
    let mut h = Harness::new(kind).await;
    let sub = h.subscribe("s", &["A"], StartFrom::Beginning).await;
    let e = events("A", 0..2);
    h.publish(&e[..1]).await;
    h.publish(&e[..1]).await; // a relay retrying after a lost acknowledgement
    h.publish(&e).await;
    sub.recorder.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sub.recorder.applied(), ids(&e), "{kind:?}: each event applied once");
    h.cleanup().await;
}

async fn failed_handling_is_retried_in_order(kind: Kind) {
    let mut h = Harness::new(kind).await;
    let sub = h.subscribe("s", &["A"], StartFrom::Beginning).await;
    let e = events("A", 0..3);
    sub.recorder.fail_times.lock().unwrap().insert(e[0].id().to_owned(), 2);
    h.publish(&e).await;
    assert_eq!(sub.recorder.wait_for(3).await, ids(&e), "{kind:?}: applied after two failures, order kept");
    h.cleanup().await;
}

async fn poison_goes_to_dead_letters_with_the_reason(kind: Kind) {
    let mut h = Harness::new(kind).await;
    let sub = h.subscribe("s", &["A"], StartFrom::Beginning).await;
    let e = events("A", 0..4);
    sub.recorder.poison.lock().unwrap().insert(e[1].id().to_owned());
    h.publish(&e).await;
    let applied = sub.recorder.wait_for(3).await;
    assert_eq!(applied, vec![e[0].id().to_owned(), e[2].id().to_owned(), e[3].id().to_owned()], "{kind:?}");
    let dead = testkit::wait_until(T, "the dead letter", || async {
        let d = h.dead_letters("s").await;
        (!d.is_empty()).then_some(d)
    })
    .await;
    assert_eq!(dead.len(), 1, "{kind:?}: {dead:?}");
    assert_eq!(dead[0].0, e[1].id());
    assert!(dead[0].1.contains("refused by the handler"), "{kind:?}: reason {:?}", dead[0].1);
    h.cleanup().await;
}

async fn new_subscribers_backfill_or_start_from_now(kind: Kind) {
    let mut h = Harness::new(kind).await;
    let history = events("A", 0..10);
    h.publish(&history).await;
    let from_start = h.subscribe("late", &["A"], StartFrom::Beginning).await;
    assert_eq!(from_start.recorder.wait_for(10).await, ids(&history), "{kind:?}: backfilled");
    let from_now = h.subscribe("fresh", &["A"], StartFrom::Now).await;
    let new = events("A", 10..13);
    h.publish(&new).await;
    assert_eq!(from_now.recorder.wait_for(3).await, ids(&new), "{kind:?}: only what came after");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(from_now.recorder.applied().len(), 3, "{kind:?}: no history");
    h.cleanup().await;
}

macro_rules! both_transports {
    ($($scenario:ident),*) => {
        mod http {
            $(#[tokio::test] async fn $scenario() { super::$scenario(super::Kind::Http).await })*
        }
        mod js {
            $(#[tokio::test] async fn $scenario() { super::$scenario(super::Kind::JetStream).await })*
        }
    };
}

both_transports!(
    delivers_in_order_per_subscriber,
    duplicate_publish_has_one_effect,
    failed_handling_is_retried_in_order,
    poison_goes_to_dead_letters_with_the_reason,
    new_subscribers_backfill_or_start_from_now
);
