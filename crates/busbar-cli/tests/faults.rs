//! Fault injection: the blog under steady load on each transport while a random process
//! (a service, the bus, or the test's own nats-server) is killed with SIGKILL at random
//! moments and restarted, and deliveries are duplicated, delayed and reordered. Once the
//! faults stop, every read model must equal the source of truth: no comment lost, none
//! moderated twice, query identical to posts + comments. Each run prints what it checked.
//!
//! - `BUSBAR_FAULT_SECS` (default 20): how long each transport runs under faults.
//! - `BUSBAR_FAULT_SEED` (default random, always printed): the seed of the requests, the
//!   kills and the injected deliveries. The schedule replays; the processes' timing does not.
//!
//! A longer soak: `BUSBAR_FAULT_SECS=600 cargo test -p busbar-cli --test faults -- --nocapture`.

mod common;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use busbar::{AttributesReader, transport::jetstream::JetStream};
use common::{Backend, Blog, Options, SERVICES};
use futures::StreamExt;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde_json::{Value, json};
use tokio::time::Instant;

/// Requests per second of the open-loop load.
const RATE: u64 = 40;
/// Share of requests that create a post; the rest comment on an acknowledged post.
const POST_SHARE: f64 = 0.2;
/// Share of comments that moderation rejects (they contain "orange").
const ORANGE_SHARE: f64 = 0.25;
/// How long one request may keep retrying through outages before the run fails.
const REQUEST_DEADLINE: Duration = Duration::from_secs(60);
/// Requests in flight at most; a tick beyond it is shed (and counted).
const MAX_IN_FLIGHT: usize = 256;
/// Longest wait, once the faults stop, for every read model to converge.
const CONVERGE: Duration = Duration::from_secs(120);
/// Attempts the bus makes before dead-lettering. The harness shortens the backoff to
/// 50 ms, 200 ms, so the blog's 10 would give up on a subscriber down for about 2 s; 100
/// rides out 20 s, as the shipped backoff (1 s, 5 s, 30 s) with 10 attempts rides out minutes.
const MAX_DELIVER: u32 = 100;

/// The transports take turns: each run loads the 2-core machine on its own.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Settings {
    secs: u64,
    seed: u64,
}

fn settings(transport: &str) -> Settings {
    let secs = match std::env::var("BUSBAR_FAULT_SECS") {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("BUSBAR_FAULT_SECS={v:?}: use a whole number of seconds")),
        Err(_) => 20,
    };
    let seed = match std::env::var("BUSBAR_FAULT_SEED") {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("BUSBAR_FAULT_SEED={v:?}: use a number printed by a run")),
        Err(_) => rand::random(),
    };
    println!("faults[{transport}]: seed={seed}, {secs} s of faults (replay: BUSBAR_FAULT_SEED={seed})");
    Settings { secs, seed }
}

/// One independent random stream per part of a run, all from the run's seed.
fn rng(seed: u64, part: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ part.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_bus_through_kills_duplicates_and_reordering_loses_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Settings { secs, seed } = settings("builtin");
    let started = Instant::now();
    let proxy = Proxy::start(rng(seed, 3)).await;
    let options = Options { endpoint_template: proxy.endpoint_template(), max_deliver: MAX_DELIVER };
    let mut blog = Blog::start_with(Backend::Sqlite, options).await;

    let load = tokio::spawn(run_load(blog.url("posts"), blog.url("comments"), secs, rng(seed, 1)));
    let kills = run_faults(&mut blog, None, secs, rng(seed, 2)).await;
    proxy.inject.store(false, Relaxed);
    let load = load.await.unwrap();
    load.assert_no_errors();
    proxy.drain().await;

    let truth = converge(&blog).await;
    let moderated = bus_moderations(&blog.url("event-bus")).await;
    let checked = check(&truth, &load, &moderated);
    let dead = common::get(&format!("{}/deadletters", blog.url("event-bus"))).await;
    assert_eq!(dead.as_array().map(Vec::len), Some(0), "nothing dead-lettered: {dead}");
    let c = &proxy.counts;
    println!(
        "faults[builtin]: seed={seed}, {checked}; kills: {}; proxied batches {}, duplicated {} ({} concurrently), \
         held and re-sent later {} (after newer batches), delayed {}, split and reordered {}, answers lost after delivery {}; load retries {}, \
         shed {}; 0 dead letters; all read models equal the source of truth ({:.0?})",
        kill_summary(&kills),
        c.forwarded.load(Relaxed),
        c.duplicated.load(Relaxed),
        c.concurrent.load(Relaxed),
        c.resent.load(Relaxed),
        c.delayed.load(Relaxed),
        c.reordered.load(Relaxed),
        c.answers_lost.load(Relaxed),
        load.retries,
        load.shed,
        started.elapsed(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_through_kills_and_republished_copies_loses_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Settings { secs, seed } = settings("jetstream");
    let started = Instant::now();
    let mut nats = testkit::Nats::new();
    nats.start().await;
    let bus = format!("faults-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let mut blog = Blog::start_on_jetstream(&nats.url(), &bus);
    blog.wait_all_ready().await;

    let copies = Arc::new(CopyCounts::default());
    let load = tokio::spawn(run_load(blog.url("posts"), blog.url("comments"), secs, rng(seed, 1)));
    let injector = tokio::spawn(republish_copies(nats.url(), bus.clone(), secs, rng(seed, 3), copies.clone()));
    let kills = run_faults(&mut blog, Some(&mut nats), secs, rng(seed, 2)).await;
    let load = load.await.unwrap();
    load.assert_no_errors();
    injector.await.unwrap();

    let truth = converge(&blog).await;
    let js = JetStream::connect(&nats.url(), &bus).await.unwrap();
    let moderated = stream_moderations(&js).await;
    let checked = check(&truth, &load, &moderated);
    let dead = js.context().get_stream(busbar::names::dead_letter_stream_name(&bus)).await.unwrap();
    assert_eq!(dead.cached_info().state.messages, 0, "nothing dead-lettered");
    let by_type: Vec<String> = copies.by_type.lock().unwrap().iter().map(|(t, n)| format!("{t} {n}")).collect();
    println!(
        "faults[jetstream]: seed={seed}, {checked}; kills: {}; copies re-published under fresh Nats-Msg-Ids {} ({}), \
         on average {} stream positions after their original; load retries {}, shed {}; 0 dead letters; \
         all read models equal the source of truth ({:.0?})",
        kill_summary(&kills),
        copies.published.load(Relaxed),
        by_type.join(", "),
        copies.distance.load(Relaxed) / copies.published.load(Relaxed).max(1),
        load.retries,
        load.shed,
        started.elapsed(),
    );
    nats.kill9();
}

// ---- load ------------------------------------------------------------------------------

#[derive(Default)]
struct LoadLog {
    /// Acknowledged (201) posts: (id, title).
    posts: Vec<(String, String)>,
    /// Acknowledged (201) comments.
    comments: Vec<Acked>,
    /// Every title and (post, content) ever sent: a retried request may have committed
    /// before its answer was lost, so the services may hold a few unacknowledged ones.
    titles_sent: HashSet<String>,
    comments_sent: HashSet<(String, String)>,
    retries: u64,
    shed: u64,
    errors: Vec<String>,
}

impl LoadLog {
    fn assert_no_errors(&self) {
        let first: Vec<&str> = self.errors.iter().take(10).map(String::as_str).collect();
        assert!(self.errors.is_empty(), "{} requests failed; the first:\n{}", self.errors.len(), first.join("\n"));
    }
}

struct Acked {
    id: String,
    post: String,
    content: String,
}

/// Open-loop load for `secs`: RATE requests a second whatever the answers, each retried
/// until it is created. Comments go to posts already acknowledged.
async fn run_load(posts_url: String, comments_url: String, secs: u64, mut rng: StdRng) -> LoadLog {
    let log = Arc::new(Mutex::new(LoadLog::default()));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut n = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        n += 1;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            log.lock().unwrap().shed += 1;
            continue;
        };
        let (client, log2) = (client.clone(), log.clone());
        // The target post, or None for a new post.
        let target = {
            let l = log.lock().unwrap();
            (!l.posts.is_empty() && !rng.random_bool(POST_SHARE))
                .then(|| l.posts[rng.random_range(0..l.posts.len())].0.clone())
        };
        if let Some(post) = target {
            let content = if rng.random_bool(ORANGE_SHARE) { format!("c{n} orange") } else { format!("c{n}") };
            log.lock().unwrap().comments_sent.insert((post.clone(), content.clone()));
            let url = format!("{comments_url}/posts/{post}/comments");
            tasks.spawn(async move {
                let r = create(&client, &url, json!({ "content": content }), &log2).await;
                let mut l = log2.lock().unwrap();
                // 201 carries the post's whole comment array; ours is the newest with our content.
                let mine = r.as_ref().ok().and_then(|v| {
                    v.as_array()?.iter().rev().find(|c| c["content"] == content.as_str())?["id"]
                        .as_str()
                        .map(str::to_owned)
                });
                match (r, mine) {
                    (Ok(_), Some(id)) => l.comments.push(Acked { id, post, content }),
                    (Ok(v), None) => l.errors.push(format!("comment {content:?}: 201 without it: {v}")),
                    (Err(e), _) => l.errors.push(e),
                }
                drop(permit);
            });
        } else {
            let title = format!("p{n}");
            log.lock().unwrap().titles_sent.insert(title.clone());
            let url = format!("{posts_url}/posts");
            tasks.spawn(async move {
                let r = create(&client, &url, json!({ "title": title }), &log2).await;
                let mut l = log2.lock().unwrap();
                match r {
                    Ok(v) if v["title"] == title.as_str() && v["id"].is_string() => {
                        l.posts.push((v["id"].as_str().unwrap().to_owned(), title))
                    }
                    Ok(v) => l.errors.push(format!("post {title}: 201 with {v}")),
                    Err(e) => l.errors.push(e),
                }
                drop(permit);
            });
        }
    }
    while tasks.join_next().await.is_some() {}
    Arc::try_unwrap(log).ok().expect("all requests finished").into_inner().unwrap()
}

/// POSTs `body` until it is created (201), retrying refused connections, timeouts, 5xx, and
/// the 404 of a post comments has not heard of yet. Any other answer fails at once.
async fn create(client: &reqwest::Client, url: &str, body: Value, log: &Mutex<LoadLog>) -> Result<Value, String> {
    let start = Instant::now();
    loop {
        let last = match client.post(url).json(&body).send().await {
            Ok(r) if r.status() == StatusCode::CREATED => match r.json::<Value>().await {
                Ok(v) => return Ok(v),
                Err(e) => format!("201 with a body cut off: {e}"),
            },
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                if status.is_client_error() && status != StatusCode::NOT_FOUND {
                    return Err(format!("POST {url} {body}: {status}: {text}"));
                }
                format!("{status}: {text:.200}")
            }
            Err(e) => e.to_string(),
        };
        if start.elapsed() > REQUEST_DEADLINE {
            return Err(format!("POST {url} {body}: not created within {REQUEST_DEADLINE:?}; last answer: {last}"));
        }
        log.lock().unwrap().retries += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- kills -----------------------------------------------------------------------------

/// For `secs`, at random moments: SIGKILL one of the services, the bus (built-in) or
/// nats-server (when `nats` is given), keep it down 0.2-2 s, restart it on the same
/// database or storage. Targets come in rounds, each a random order of all of them, so a
/// short run still kills each one. One fault at a time; everything is up again on return.
async fn run_faults(
    blog: &mut Blog,
    mut nats: Option<&mut testkit::Nats>,
    secs: u64,
    mut rng: StdRng,
) -> BTreeMap<&'static str, u32> {
    let mut targets: Vec<&'static str> = SERVICES.to_vec();
    targets.push(if nats.is_some() { "nats-server" } else { "event-bus" });
    let mut kills: BTreeMap<&'static str, u32> = targets.iter().map(|t| (*t, 0)).collect();
    let end = Instant::now() + Duration::from_secs(secs);
    for round in 0.. {
        if round % targets.len() == 0 {
            targets.shuffle(&mut rng);
        }
        let at = Instant::now() + Duration::from_millis(rng.random_range(300..2000));
        if at >= end {
            break;
        }
        tokio::time::sleep_until(at).await;
        let target = targets[round % targets.len()];
        let down = Duration::from_millis(rng.random_range(200..2000));
        match (target, nats.as_deref_mut()) {
            ("nats-server", Some(n)) => n.kill9(),
            (name, _) => blog.kill9(name),
        }
        *kills.get_mut(target).unwrap() += 1;
        tokio::time::sleep(down).await;
        match (target, nats.as_deref_mut()) {
            ("nats-server", Some(n)) => n.start().await,
            (name, _) => blog.start_process(name).await,
        }
    }
    tokio::time::sleep_until(end).await;
    kills
}

fn kill_summary(kills: &BTreeMap<&str, u32>) -> String {
    kills.iter().map(|(t, n)| format!("{t} {n}")).collect::<Vec<_>>().join(", ")
}

// ---- built-in bus: a proxy between the bus and the subscribers -------------------------

#[derive(Default)]
struct ProxyCounts {
    forwarded: AtomicU64,
    duplicated: AtomicU64,
    concurrent: AtomicU64,
    held: AtomicU64,
    resent: AtomicU64,
    delayed: AtomicU64,
    reordered: AtomicU64,
    answers_lost: AtomicU64,
    /// Held copies not yet re-sent.
    outstanding: AtomicI64,
}

struct ProxyState {
    client: reqwest::Client,
    rng: Mutex<StdRng>,
    counts: Arc<ProxyCounts>,
    inject: Arc<AtomicBool>,
}

/// Sits between the bus and each subscriber's `POST /events`: the bus pushes to
/// `/{name}/{port}/events` and the proxy forwards to `127.0.0.1:{port}/events` with the
/// bus's headers (its bearer token too) and answers with the subscriber's answer. While
/// `inject` is set it also, at random, delivers a batch twice (one after the other or
/// concurrently), keeps a copy and re-sends it 0.3-3 s later (after newer batches), holds
/// a batch back before forwarding it, sends a batch's later events before the whole batch,
/// or forwards a batch and answers 502 as if the subscriber's answer were lost.
struct Proxy {
    port: u16,
    counts: Arc<ProxyCounts>,
    inject: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(rng: StdRng) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (counts, inject) = (Arc::new(ProxyCounts::default()), Arc::new(AtomicBool::new(true)));
        let state = Arc::new(ProxyState {
            client: reqwest::Client::builder().timeout(Duration::from_secs(35)).build().unwrap(),
            rng: Mutex::new(rng),
            counts: counts.clone(),
            inject: inject.clone(),
        });
        let app = Router::new().route("/{name}/{port}/events", post(relay)).with_state(state);
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Proxy { port, counts, inject, task }
    }

    fn endpoint_template(&self) -> String {
        format!("http://127.0.0.1:{}/{{name}}/{{port}}/events", self.port)
    }

    /// Waits (bounded) until every held copy has been re-sent.
    async fn drain(&self) {
        testkit::wait_until(Duration::from_secs(10), "held copies to be re-sent", || async {
            (self.counts.outstanding.load(Relaxed) == 0).then_some(())
        })
        .await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Fault {
    None,
    Duplicate { concurrent: bool },
    Hold(Duration),
    Delay(Duration),
    SplitReorder,
    LoseAnswer,
}

async fn relay(
    State(s): State<Arc<ProxyState>>,
    Path((name, port)): Path<(String, u16)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let url = format!("http://127.0.0.1:{port}/events");
    let mut headers = headers;
    for h in [header::HOST, header::CONTENT_LENGTH, header::CONNECTION, header::TRANSFER_ENCODING] {
        headers.remove(h);
    }
    let fault = if s.inject.load(Relaxed) {
        let mut rng = s.rng.lock().unwrap();
        match rng.random_range(0..100) {
            0..8 => Fault::Duplicate { concurrent: rng.random_bool(0.5) },
            8..14 => Fault::Hold(Duration::from_millis(rng.random_range(300..3000))),
            14..17 => Fault::Delay(Duration::from_millis(rng.random_range(20..400))),
            17..25 => Fault::SplitReorder,
            25..28 => Fault::LoseAnswer,
            _ => Fault::None,
        }
    } else {
        Fault::None
    };
    s.counts.forwarded.fetch_add(1, Relaxed);
    let send = |body: Bytes| forward(&s.client, &url, headers.clone(), body);
    let answer = match fault {
        Fault::None => send(body).await,
        Fault::Duplicate { concurrent: false } => {
            s.counts.duplicated.fetch_add(1, Relaxed);
            let first = send(body.clone()).await;
            let _ = send(body).await;
            first
        }
        Fault::Duplicate { concurrent: true } => {
            s.counts.duplicated.fetch_add(1, Relaxed);
            s.counts.concurrent.fetch_add(1, Relaxed);
            let (first, _) = tokio::join!(send(body.clone()), send(body));
            first
        }
        Fault::Hold(after) => {
            s.counts.held.fetch_add(1, Relaxed);
            s.counts.outstanding.fetch_add(1, Relaxed);
            let (s2, url, headers, copy) = (s.clone(), url.clone(), headers.clone(), body.clone());
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = forward(&s2.client, &url, headers, copy).await;
                s2.counts.resent.fetch_add(1, Relaxed);
                s2.counts.outstanding.fetch_sub(1, Relaxed);
            });
            send(body).await
        }
        Fault::Delay(d) => {
            s.counts.delayed.fetch_add(1, Relaxed);
            tokio::time::sleep(d).await;
            send(body).await
        }
        Fault::SplitReorder => match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Array(events)) if events.len() >= 2 => {
                s.counts.reordered.fetch_add(1, Relaxed);
                let later = serde_json::to_vec(&events[1..]).unwrap();
                let _ = send(later.into()).await;
                send(body).await
            }
            _ => send(body).await,
        },
        Fault::LoseAnswer => {
            s.counts.answers_lost.fetch_add(1, Relaxed);
            let _ = send(body).await;
            Err("the answer was lost (injected)".into())
        }
    };
    match answer {
        Ok((status, content_type, body)) => {
            let mut r = (status, body).into_response();
            if let Some(ct) = content_type {
                r.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            r
        }
        Err(e) => {
            (StatusCode::BAD_GATEWAY, axum::Json(json!({ "error": format!("proxy: {name}: {e}") }))).into_response()
        }
    }
}

type Answer = (StatusCode, Option<header::HeaderValue>, Bytes);

async fn forward(client: &reqwest::Client, url: &str, headers: HeaderMap, body: Bytes) -> Result<Answer, String> {
    let r = client.post(url).headers(headers).body(body).send().await.map_err(|e| e.to_string())?;
    let (status, ct) = (r.status(), r.headers().get(header::CONTENT_TYPE).cloned());
    let body = r.bytes().await.map_err(|e| e.to_string())?;
    Ok((status, ct, body))
}

// ---- JetStream: copies of earlier events, re-published ---------------------------------

#[derive(Default)]
struct CopyCounts {
    published: AtomicU64,
    /// Sum over copies of how many stream positions later than the original they landed.
    distance: AtomicU64,
    by_type: Mutex<BTreeMap<String, u64>>,
}

/// For `secs`, every 100-400 ms: copies 1-3 events from a random earlier point of the
/// stream and publishes them again with a fresh `Nats-Msg-Id`, so JetStream's duplicate
/// window does not drop them and every consumer gets them again, late and out of order.
/// Attempts while nats-server is down fail and are skipped.
async fn republish_copies(url: String, bus: String, secs: u64, mut rng: StdRng, counts: Arc<CopyCounts>) {
    let js = JetStream::connect(&url, &bus).await.unwrap();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..400))).await;
        let _ = tokio::time::timeout(Duration::from_secs(8), copy_some(&js, &bus, &mut rng, &counts)).await;
    }
}

async fn copy_some(js: &JetStream, bus: &str, rng: &mut StdRng, counts: &CopyCounts) -> Result<(), String> {
    let ctx = js.context();
    let stream = ctx.get_stream(busbar::names::stream_name(bus)).await.map_err(|e| e.to_string())?;
    let last = stream.cached_info().state.last_sequence;
    if last == 0 {
        return Ok(());
    }
    let after = rng.random_range(0..last);
    let page = js.replay(after, 8, &[]).await.map_err(|e| e.to_string())?;
    for _ in 0..rng.random_range(1..=3) {
        if page.events.is_empty() {
            break;
        }
        let ev = &page.events[rng.random_range(0..page.events.len())];
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("copy-{}", uuid::Uuid::now_v7()).as_str());
        let payload = serde_json::to_vec(ev).unwrap();
        let ack = ctx
            .publish_with_headers(busbar::names::subject(bus, ev.ty()), headers, payload.into())
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        counts.published.fetch_add(1, Relaxed);
        counts.distance.fetch_add(ack.sequence.saturating_sub(after + 1), Relaxed);
        *counts.by_type.lock().unwrap().entry(ev.ty().to_owned()).or_default() += 1;
    }
    Ok(())
}

// ---- convergence and the checks --------------------------------------------------------

/// The sources of truth (posts' posts, comments' comments) and query's view, read at once.
struct Truth {
    /// id -> title, from posts.
    posts: BTreeMap<String, String>,
    /// post id -> `[{id,content,status}]`, from comments.
    comments: BTreeMap<String, Vec<Value>>,
    /// Query's `GET /posts`.
    view: Value,
}

impl Truth {
    /// What query must show: exactly posts + comments.
    fn expected_view(&self) -> Value {
        Value::Object(
            self.posts
                .iter()
                .map(|(id, title)| (id.clone(), json!({ "id": id, "title": title, "comments": self.comments[id] })))
                .collect(),
        )
    }

    fn pending(&self) -> usize {
        self.comments.values().flatten().filter(|c| c["status"] == "pending").count()
    }
}

async fn read_truth(blog: &Blog) -> Result<Truth, String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let get = |url: String| {
        let client = client.clone();
        async move {
            let r = client.get(&url).send().await.map_err(|e| format!("GET {url}: {e}"))?;
            r.json::<Value>().await.map_err(|e| format!("GET {url}: {e}"))
        }
    };
    let posts: BTreeMap<String, String> = get(format!("{}/posts", blog.url("posts")))
        .await?
        .as_object()
        .ok_or("posts' GET /posts is not an object")?
        .iter()
        .map(|(id, p)| (id.clone(), p["title"].as_str().unwrap_or_default().to_owned()))
        .collect();
    let comments_url = blog.url("comments");
    let comments: Vec<Result<(String, Vec<Value>), String>> = futures::stream::iter(posts.keys().cloned())
        .map(|id| {
            let f = get(format!("{comments_url}/posts/{id}/comments"));
            async move {
                let v = f.await?;
                Ok((id, v.as_array().ok_or_else(|| format!("comments of a post: {v}"))?.clone()))
            }
        })
        .buffered(8)
        .collect()
        .await;
    let comments = comments.into_iter().collect::<Result<_, _>>()?;
    let view = get(format!("{}/posts", blog.url("query"))).await?;
    Ok(Truth { posts, comments, view })
}

/// Waits (bounded) until no comment is pending and query equals posts + comments.
async fn converge(blog: &Blog) -> Truth {
    let start = Instant::now();
    loop {
        let last = match read_truth(blog).await {
            Ok(t) if t.pending() == 0 && t.view == t.expected_view() => return t,
            Ok(t) => {
                let shown: usize = t
                    .view
                    .as_object()
                    .map(|o| o.values().map(|p| p["comments"].as_array().map_or(0, Vec::len)).sum())
                    .unwrap_or(0);
                format!(
                    "{} posts, {} comments ({} pending); query shows {} posts, {shown} comments; {}",
                    t.posts.len(),
                    t.comments.values().map(Vec::len).sum::<usize>(),
                    t.pending(),
                    t.view.as_object().map_or(0, |o| o.len()),
                    differences(&t.view, &t.expected_view()),
                )
            }
            Err(e) => e,
        };
        if start.elapsed() > CONVERGE {
            // The verdict first: a long failure's output may be cut in the middle.
            eprintln!("read models did not converge within {CONVERGE:?}: {last}");
            for (name, p) in &blog.procs {
                eprintln!("---- {name}\n{}", p.log_tail());
            }
            if blog.procs.contains_key("event-bus") {
                eprintln!("---- subscribers: {}", common::get(&format!("{}/subscribers", blog.url("event-bus"))).await);
            }
            panic!("read models did not converge within {CONVERGE:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The first few posts where query's view differs from what it must show, each side's
/// comments as `id:status` in the order shown.
fn differences(view: &Value, want: &Value) -> String {
    let empty = serde_json::Map::new();
    let (view, want) = (view.as_object().unwrap_or(&empty), want.as_object().unwrap_or(&empty));
    let side = |p: Option<&Value>| match p {
        None => "absent".to_owned(),
        Some(p) => {
            let comments = p["comments"].as_array().map(Vec::as_slice).unwrap_or_default();
            let listed: Vec<String> = comments
                .iter()
                .map(|c| format!("{}:{}", c["id"].as_str().unwrap_or("?"), c["status"].as_str().unwrap_or("?")))
                .collect();
            format!("title {}, comments [{}]", p["title"], listed.join(" "))
        }
    };
    let differ: Vec<String> = want
        .keys()
        .chain(view.keys().filter(|id| !want.contains_key(*id)))
        .filter(|id| view.get(*id) != want.get(*id))
        .take(3)
        .map(|id| format!("post {id}: query {} / want {}", side(view.get(id)), side(want.get(id))))
        .collect();
    if differ.is_empty() { "no post differs".to_owned() } else { differ.join("; ") }
}

/// comment id -> the distinct `CommentModerated` event ids about it, and how many
/// `CommentModerated` entries were read (copies included).
struct Moderations {
    by_comment: HashMap<String, HashSet<String>>,
    entries: usize,
}

fn moderation(ev_id: &str, comment: &str, m: &mut Moderations) {
    m.by_comment.entry(comment.to_owned()).or_default().insert(ev_id.to_owned());
    m.entries += 1;
}

/// Every `CommentModerated` in the bus's log, through its paged replay.
async fn bus_moderations(bus: &str) -> Moderations {
    let mut m = Moderations { by_comment: HashMap::new(), entries: 0 };
    let mut after = 0i64;
    for _ in 0..10_000 {
        let r = reqwest::get(format!("{bus}/events?type=CommentModerated&after={after}&limit=1000")).await.unwrap();
        let next: i64 = r.headers()["x-busbar-next-after"].to_str().unwrap().parse().unwrap();
        let page: Vec<Value> = r.json().await.unwrap();
        for e in &page {
            moderation(
                e["id"].as_str().unwrap(),
                e["data"]["id"].as_str().expect("CommentModerated has an id"),
                &mut m,
            );
        }
        if page.is_empty() || next == after {
            return m;
        }
        after = next;
    }
    panic!("the bus's replay did not end");
}

/// Every `CommentModerated` in the JetStream stream, re-published copies included.
async fn stream_moderations(js: &JetStream) -> Moderations {
    let mut m = Moderations { by_comment: HashMap::new(), entries: 0 };
    let mut after = 0;
    for _ in 0..10_000 {
        let page = js.replay(after, 500, &["CommentModerated"]).await.unwrap();
        for e in &page.events {
            let data = busbar::envelope::data::<blog_events::CommentModerated>(e).unwrap();
            moderation(e.id(), &data.id, &mut m);
        }
        if page.done {
            return m;
        }
        after = page.next;
    }
    panic!("the stream's replay did not end");
}

/// Asserts that every read model equals the source of truth; returns the counts checked.
fn check(t: &Truth, load: &LoadLog, moderated: &Moderations) -> String {
    // Every acknowledged post is in posts with its title (query equals posts: converge).
    for (id, title) in &load.posts {
        assert_eq!(t.posts.get(id), Some(title), "acknowledged post {id} ({title}) is missing from posts");
    }
    // Nothing extra: every post is one the load sent (a retry may add one whose answer was lost).
    for (id, title) in &t.posts {
        assert!(load.titles_sent.contains(title), "posts holds {id} ({title}), which no request created");
    }
    let all: HashMap<&str, (&str, &Value)> = t
        .comments
        .iter()
        .flat_map(|(p, cs)| cs.iter().map(move |c| (c["id"].as_str().unwrap(), (p.as_str(), c))))
        .collect();
    // Every acknowledged comment is in comments under its post, with its content.
    for a in &load.comments {
        let (post, c) =
            all.get(a.id.as_str()).unwrap_or_else(|| panic!("acknowledged comment {} ({:?}) is lost", a.id, a.content));
        assert_eq!((*post, c["content"].as_str()), (a.post.as_str(), Some(a.content.as_str())), "comment {}", a.id);
    }
    let mut rejected = 0;
    for (id, (post, c)) in &all {
        let content = c["content"].as_str().unwrap();
        assert!(
            load.comments_sent.contains(&(post.to_string(), content.to_owned())),
            "comments holds {id} ({content:?}) under {post}, which no request created"
        );
        let want = if content.contains("orange") { "rejected" } else { "approved" };
        assert_eq!(c["status"], want, "comment {id} ({content:?}) does not follow the policy");
        rejected += usize::from(want == "rejected");
        // Moderated exactly once: one decision event, however often it was delivered.
        let events = moderated.by_comment.get(*id).map_or(0, HashSet::len);
        assert_eq!(events, 1, "comment {id} ({content:?}) has {events} distinct CommentModerated events");
    }
    for id in moderated.by_comment.keys() {
        assert!(all.contains_key(id.as_str()), "CommentModerated for {id}, which comments does not hold");
    }
    // Query is identical to posts + comments (converge waited for exactly this).
    assert_eq!(t.view, t.expected_view(), "query equals posts + comments");
    format!(
        "{} posts ({} acknowledged), {} comments ({} acknowledged, {rejected} rejected, 0 pending), \
         {} CommentModerated entries read = {} distinct decisions, one per comment; query identical to posts + comments",
        t.posts.len(),
        load.posts.len(),
        all.len(),
        load.comments.len(),
        moderated.entries,
        moderated.by_comment.values().map(HashSet::len).sum::<usize>(),
    )
}
