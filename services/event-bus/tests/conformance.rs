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
    transport::jetstream::{self, JetStream, SubscribeOptions},
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
            // Two lines: a NATS header cannot hold a line break, and must not panic on one.
            return Err(format!("poison event {id} refused by the handler\nsecond line of the error").into());
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
    db: Db,
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
    js: Option<JetStream>,
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
                let js = JetStream::connect(&testkit::nats_url(), &name).await.expect("connect to NATS");
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
        let consumer = Consumer::new(db.clone(), recorder.clone());
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
                    let stream = js.context().get_stream(busbar::names::stream_name(js.bus())).await.ok()?;
                    stream.consumer_info(name).await.ok().map(|_| ())
                })
                .await;
                task
            }
        };
        Sub { recorder, db, _dir: dir, _task: task }
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
                .list_dead_letters(Some(subscriber), 0, 100)
                .await
                .unwrap()
                .into_iter()
                .map(|d| (d.event_id.unwrap_or_default(), d.last_error))
                .collect(),
        }
    }

    /// Redrives every dead letter of `subscriber`: the bus's HTTP API or the SDK.
    async fn redrive_all(&self, subscriber: &str) {
        match self.kind {
            Kind::Http => {
                let (status, body) =
                    self.bus.as_ref().unwrap().post(&format!("/deadletters/redrive?subscriber={subscriber}")).await;
                assert_eq!(status, 200, "{body}");
            }
            Kind::JetStream => {
                self.js.as_ref().unwrap().redrive_all(Some(subscriber)).await.expect("redrive");
            }
        }
    }

    async fn cleanup(self) {
        self.stop.cancel();
        if let Some(js) = &self.js {
            let _ = js.context().delete_stream(busbar::names::stream_name(js.bus())).await;
            let _ = js.context().delete_stream(busbar::names::dead_letter_stream_name(js.bus())).await;
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

/// Version `v` of aggregate `agg`, as a producer emits it.
fn versioned(ty: &str, agg: &str, v: i64) -> CloudEvent {
    let mut ev = common::event(ty, v as u64);
    ev["subject"] = agg.into();
    ev["aggversion"] = v.into();
    busbar::envelope::decode_one(&ev.to_string()).unwrap()
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

/// Issue 8: a handler that always fails on A v2 dead-letters it after maxDeliver with its
/// error; B flows on in order; A v3 and v4 wait for v2 (parked, not applied, not lost);
/// once the handler is fixed, a redrive applies A v2, v3, v4 in order, each once.
async fn poison_parks_its_aggregate_and_redrive_resumes_it(kind: Kind) {
    let mut h = Harness::new(kind).await;
    let sub = h.subscribe("s", &["A", "B"], StartFrom::Beginning).await;
    let other = h.subscribe("other", &["A"], StartFrom::Beginning).await;
    let a: Vec<CloudEvent> = (1..=4).map(|v| versioned("A", "agg-a", v)).collect();
    let b: Vec<CloudEvent> = (1..=3).map(|v| versioned("B", "agg-b", v)).collect();
    let poison = a[1].id().to_owned();
    sub.recorder.poison.lock().unwrap().insert(poison.clone());
    // Interleaved, as producers would emit them: A1 B1 A2 B2 A3 B3 A4.
    let sent = [&a[0], &b[0], &a[1], &b[1], &a[2], &b[2], &a[3]].map(|e| e.clone());
    h.publish(&sent).await;

    let dead = testkit::wait_until(T, "the dead letter", || async {
        let d = h.dead_letters("s").await;
        (!d.is_empty()).then_some(d)
    })
    .await;
    assert_eq!(dead.len(), 1, "{kind:?}: {dead:?}");
    assert_eq!(dead[0].0, poison, "{kind:?}: A v2 is the dead letter");
    assert!(
        dead[0].1.contains(&format!("poison event {poison} refused by the handler")),
        "{kind:?}: reason {:?}",
        dead[0].1
    );
    // The rest flows: all of B and A v1; A v3 and v4 are parked behind the missing v2.
    testkit::wait_until(T, "A v3 and v4 parked", || async {
        (busbar::consumer::deferred_count(&sub.db).await.unwrap() == 2).then_some(())
    })
    .await;
    let want_before = vec![a[0].id().to_owned(), b[0].id().to_owned(), b[1].id().to_owned(), b[2].id().to_owned()];
    let got = sub.recorder.wait_for(4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sub.recorder.applied(), got, "{kind:?}: nothing more applied while A v2 is dead");
    assert_eq!(got, want_before, "{kind:?}: A v1 and B in order; A v3, v4 not before v2");

    // The fix, then the redrive.
    sub.recorder.poison.lock().unwrap().clear();
    h.redrive_all("s").await;
    let got = sub.recorder.wait_for(7).await;
    let mut want = want_before.clone();
    want.extend(a[1..].iter().map(|e| e.id().to_owned()));
    assert_eq!(got, want, "{kind:?}: A v2, v3, v4 right after the redrive, in order");
    testkit::wait_until(T, "an empty dead-letter store", || async {
        h.dead_letters("s").await.is_empty().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sub.recorder.applied(), want, "{kind:?}: each event applied exactly once");
    assert_eq!(busbar::consumer::deferred_count(&sub.db).await.unwrap(), 0, "{kind:?}: nothing left parked");
    assert_eq!(other.recorder.wait_for(4).await, ids(&a), "{kind:?}: another subscriber of A is not held up");
    assert_eq!(other.recorder.applied().len(), 4, "{kind:?}: nor handed the redrive a second time");
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

/// JetStream only: a redriven copy reaches only the subscriber it is for, replay leaves
/// it out, a dead letter is redriven once, and unknown ids are refused.
#[tokio::test]
async fn jetstream_redrive_targets_one_subscriber() {
    use busbar::transport::jetstream::dlq::{self, DeadLetterError};
    let mut h = Harness::new(Kind::JetStream).await;
    let js = h.js.clone().unwrap();
    let s = h.subscribe("s", &["A"], StartFrom::Beginning).await;
    let other = h.subscribe("other", &["A"], StartFrom::Beginning).await;
    let e = events("A", 0..3);
    s.recorder.poison.lock().unwrap().insert(e[1].id().to_owned());
    h.publish(&e).await;
    assert_eq!(other.recorder.wait_for(3).await, ids(&e));
    s.recorder.wait_for(2).await;
    let dead = testkit::wait_until(T, "the dead letter", || async {
        let d = js.list_dead_letters(Some("s"), 0, 10).await.unwrap();
        (!d.is_empty()).then_some(d)
    })
    .await;
    let dl = &dead[0];
    assert_eq!((dl.subscriber.as_str(), dl.event_id.as_deref(), dl.ty.as_deref()), ("s", Some(e[1].id()), Some("A")));
    assert_eq!(dl.attempts, MAX_DELIVER);
    assert!(dl.seq.is_some() && dl.dead_at > 0 && dl.event["id"] == e[1].id(), "{dl:?}");
    assert!(js.list_dead_letters(Some("other"), 0, 10).await.unwrap().is_empty());

    // A copy aimed at `other` with a fresh id: `s` must not apply it.
    let mut fresh = e[1].clone();
    busbar::AttributesWriter::set_id(&mut fresh, uuid::Uuid::now_v7().to_string());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(dlq::REDRIVE_FOR_HEADER, "other");
    js.context()
        .publish_with_headers(
            busbar::names::subject(js.bus(), "A"),
            headers,
            serde_json::to_vec(&fresh).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    other.recorder.wait_for(4).await;

    s.recorder.poison.lock().unwrap().clear();
    let done = js.redrive(dl.id, Some("s")).await.expect("redrive");
    assert_eq!(done.event_id.as_deref(), Some(e[1].id()));
    // Unversioned events: nothing orders e[2] after e[1].
    let s_want = vec![e[0].id().to_owned(), e[2].id().to_owned(), e[1].id().to_owned()];
    assert_eq!(s.recorder.wait_for(3).await, s_want, "s gets its dead letter back");
    assert!(matches!(js.redrive(dl.id, None).await, Err(DeadLetterError::NotFound { .. })), "redriven once");
    assert!(matches!(js.redrive(999_999, None).await, Err(DeadLetterError::NotFound { .. })));
    assert!(js.list_dead_letters(None, 0, 10).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.recorder.applied(), s_want, "the copy for `other` never reached s");
    assert_eq!(other.recorder.applied().len(), 4, "other: its three events and the copy for it");
    let page = h.transport.replay(0, 100, &["A"]).await.unwrap();
    assert_eq!(ids(&page.events), ids(&e), "replay: history without the copies");

    let missing = JetStream::connect_now(&testkit::nats_url(), "no-such-bus-7f3a").await.unwrap();
    let err = missing.list_dead_letters(None, 0, 10).await.unwrap_err();
    assert!(matches!(err, DeadLetterError::NoStream { .. }), "{err}");
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
    poison_parks_its_aggregate_and_redrive_resumes_it,
    new_subscribers_backfill_or_start_from_now
);
