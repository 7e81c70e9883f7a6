//! Property test against one real bus on loopback: generated requests to `POST /events`,
//! `GET /events` and the dead-letter endpoints (malformed JSON, wrong types, unknown
//! fields, missing attributes, wrong specversion, bodies around `--max-body-bytes`,
//! batches mixing valid and invalid events, non-UTF-8 bytes, odd content types and query
//! strings). Every answer is 2xx or 4xx, every 4xx is `{"error": "<message>"}`, a batch
//! with any invalid event stores nothing, and afterwards the log holds exactly the events
//! that were accepted.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{Bus, FAST, routes_yaml};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};
use serde_json::{Value, json};
use testkit::spoil::{CONTEXT_ATTRIBUTES, Spoil};

const MAX_BODY: usize = 8192;
const CASES: u32 = 200;
/// The whole run (generation, shrinking included) must finish within this.
const WALL: Duration = Duration::from_secs(240);

/// An event template; the test gives each one a fresh id when it sends it.
#[derive(Debug, Clone)]
struct Ev {
    ty: &'static str,
    subject: Option<String>,
    data: Value,
    /// Extension attributes (CloudEvents' "unknown fields" are extensions).
    ext: Vec<(String, Value)>,
}

#[derive(Debug, Clone)]
enum Req {
    /// Valid events, as one object or an array.
    Publish {
        events: Vec<Ev>,
        single: bool,
        content_type: Option<&'static str>,
    },
    /// A batch in which the event at `at` is spoiled.
    Spoiled {
        events: Vec<Ev>,
        at: usize,
        how: Spoil,
    },
    /// One of the already accepted events again (its id is the same): accepted, not stored twice.
    Republish,
    /// A valid event whose body is `MAX_BODY + delta` bytes.
    Sized {
        delta: i64,
    },
    /// Raw bytes: junk, near-JSON, non-UTF-8.
    Raw(Vec<u8>),
    Replay(Vec<(String, String)>),
    ListDeadLetters(Vec<(String, String)>),
    RedriveOne(String),
    RedriveAll(Vec<(String, String)>),
}

fn small_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn ev() -> impl Strategy<Value = Ev> {
    (
        prop_oneof![Just("A"), Just("B"), Just("Weird.Type_1-x")],
        proptest::option::of("[a-z0-9-]{1,12}"),
        small_json(),
        prop::collection::vec(
            (
                "[a-z][a-z0-9]{0,8}".prop_filter("extension name", |k| {
                    !CONTEXT_ATTRIBUTES.contains(&k.as_str()) && !k.starts_with("data")
                }),
                prop_oneof!["\\PC{0,8}".prop_map(Value::from), any::<bool>().prop_map(Value::from)],
            ),
            0..2,
        ),
    )
        .prop_map(|(ty, subject, data, ext)| Ev { ty, subject, data, ext })
}

fn spoil() -> impl Strategy<Value = Spoil> {
    let required = prop_oneof![Just("id"), Just("source"), Just("type")];
    prop_oneof![
        prop_oneof![Just("specversion"), Just("id"), Just("source"), Just("type")].prop_map(Spoil::Remove),
        required.clone().prop_map(Spoil::Empty),
        (required, prop_oneof![Just(json!(5)), Just(json!(null)), Just(json!([])), Just(json!({"a": 1}))])
            .prop_map(|(a, v)| Spoil::NotAString(a, v)),
        prop_oneof![Just(json!("0.3")), Just(json!("2.0")), Just(json!(1.0)), Just(json!(null)), Just(json!(""))]
            .prop_map(Spoil::SpecVersion),
        Just(Spoil::BadTime("yesterday".into())),
        Just(Spoil::BadExtension(json!({"nested": [1]}))),
        prop_oneof![Just(json!(1)), Just(json!("event")), Just(json!([])), Just(json!(null))]
            .prop_map(Spoil::NotAnObject),
    ]
}

/// Query parameters: mostly the ones the endpoint knows, some junk, sometimes repeated.
fn query(keys: &'static [&'static str]) -> impl Strategy<Value = Vec<(String, String)>> {
    let key = prop_oneof![
        6 => prop::sample::select(keys).prop_map(str::to_owned),
        1 => "[a-z]{1,6}",
    ];
    let value = prop_oneof![
        Just("0".to_owned()),
        (0i64..40).prop_map(|n| n.to_string()),
        (1i64..=10_000).prop_map(|n| n.to_string()),
        prop_oneof![Just(-1i64), Just(0), Just(10_001), Just(i64::MAX), Just(i64::MIN)].prop_map(|n| n.to_string()),
        Just("99999999999999999999".to_owned()),
        prop_oneof![Just("A"), Just("B"), Just("A,B"), Just(" A , ,B"), Just("Weird.Type_1-x"), Just("s")]
            .prop_map(str::to_owned),
        "\\PC{0,8}",
        Just(String::new()),
    ];
    prop::collection::vec((key, value), 0..4)
}

fn req() -> impl Strategy<Value = Req> {
    prop_oneof![
        6 => (prop::collection::vec(ev(), 1..5), any::<bool>(), prop_oneof![
            4 => Just(None),
            1 => Just(Some("application/json")),
            1 => Just(Some("application/cloudevents+json")),
            1 => Just(Some("application/cloudevents-batch+json")),
            1 => Just(Some("text/plain")),
            1 => Just(Some("application/xml")),
            1 => Just(Some("multipart/form-data; boundary=x")),
        ])
            .prop_map(|(events, single, content_type)| Req::Publish { single: single && events.len() == 1, events, content_type }),
        4 => (prop::collection::vec(ev(), 1..5), any::<prop::sample::Index>(), spoil())
            .prop_map(|(events, at, how)| Req::Spoiled { at: at.index(events.len()), events, how }),
        1 => Just(Req::Republish),
        2 => prop_oneof![(-12i64..=0), (1i64..200), Just(1_000_000i64)].prop_map(|delta| Req::Sized { delta }),
        3 => prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            prop::collection::vec(prop_oneof![
                Just(&b"{"[..]), Just(&b"}"[..]), Just(&b"["[..]), Just(&b"]"[..]), Just(&b","[..]),
                Just(&b":"[..]), Just(&b"\"specversion\""[..]), Just(&b"\"1.0\""[..]), Just(&b"\"id\""[..]),
                Just(&b"\xff\xfe"[..]), Just(&b"\"\\ud800\""[..]), Just(&b" "[..]), Just(&b"[]"[..]),
            ], 0..24).prop_map(|p| p.concat()),
            Just(b"[]".to_vec()),
            Just(b"{}".to_vec()),
            Just(b"null".to_vec()),
            Just(Vec::new()),
        ].prop_map(Req::Raw),
        3 => query(&["after", "limit", "type"]).prop_map(Req::Replay),
        1 => query(&["subscriber", "limit"]).prop_map(Req::ListDeadLetters),
        1 => prop_oneof![
            (0i64..1000).prop_map(|n| n.to_string()),
            Just("-1".to_owned()),
            Just("99999999999999999999".to_owned()),
            "\\PC{1,10}",
            Just("%ff%fe".to_owned()),
        ].prop_map(Req::RedriveOne),
        1 => query(&["subscriber"]).prop_map(Req::RedriveAll),
    ]
}

fn to_json(e: &Ev, id: &str) -> Value {
    let mut v = json!({
        "specversion": "1.0", "id": id, "source": "producer", "type": e.ty,
        "datacontenttype": "application/json", "data": e.data,
    });
    if let Some(s) = &e.subject {
        v["subject"] = json!(s);
    }
    for (k, x) in &e.ext {
        v[k] = x.clone();
    }
    v
}

/// `s` with everything but unreserved characters percent-encoded.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn qs(params: &[(String, String)]) -> String {
    if params.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = params.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect();
    format!("?{}", parts.join("&"))
}

/// What a query string must be answered with: `Ok(parsed)` for 200, `Err(())` for 400.
fn query_oracle(params: &[(String, String)], known: &[&str]) -> Result<Vec<(String, String)>, ()> {
    let mut seen = std::collections::BTreeSet::new();
    for (k, _) in params {
        if !known.contains(&k.as_str()) || !seen.insert(k.as_str()) {
            return Err(());
        }
    }
    Ok(params.to_vec())
}

struct State {
    bus: Bus,
    client: reqwest::Client,
    /// Ids of accepted events and their types, in the order they were accepted.
    accepted: Vec<(String, String)>,
    sent: usize,
    /// The request before this one, for failure messages.
    last: String,
}

struct Answer {
    status: u16,
    body: Value,
    text: String,
}

impl State {
    async fn send(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        ct: Option<&str>,
    ) -> Result<Answer, TestCaseError> {
        self.sent += 1;
        let before =
            std::mem::replace(&mut self.last, format!("{method} {path} ({} bytes)", body.as_ref().map_or(0, Vec::len)));
        let mut r = self.client.request(method.clone(), format!("{}{path}", self.bus.url));
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        if let Some(b) = body {
            r = r.body(b);
        }
        let resp = r
            .send()
            .await
            .map_err(|e| TestCaseError::fail(format!("{method} {path}: no answer: {e:?} (after {before})")))?;
        let status = resp.status().as_u16();
        let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let text = resp.text().await.map_err(|e| TestCaseError::fail(format!("{method} {path}: body cut off: {e}")))?;
        prop_assert!(
            (200..300).contains(&status) || (400..500).contains(&status),
            "{method} {path}: status {status}: {text:.300}"
        );
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status >= 400 {
            prop_assert!(
                ct.starts_with("application/json"),
                "{method} {path}: {status} with content-type {ct:?}: {text:.200}"
            );
            let msg = body["error"].as_str().unwrap_or_default();
            prop_assert!(!msg.trim().is_empty(), "{method} {path}: {status} without an error message: {text:.200}");
        }
        Ok(Answer { status, body, text })
    }

    /// Sends `events` (JSON values with fresh ids) and checks the answer against `expect_ok`.
    async fn publish(
        &mut self,
        body: Vec<u8>,
        ct: Option<&str>,
        stored: Vec<(String, String)>,
    ) -> Result<Answer, TestCaseError> {
        let n = stored.len();
        let a = self.send(reqwest::Method::POST, "/events", Some(body), ct).await?;
        if a.status == 200 {
            prop_assert_eq!(&a.body, &json!({"accepted": n}));
            for (id, ty) in stored {
                if !self.accepted.iter().any(|(known, _)| *known == id) {
                    self.accepted.push((id, ty));
                }
            }
        }
        Ok(a)
    }

    async fn run(&mut self, req: Req) -> Result<(), TestCaseError> {
        let new_id = || uuid::Uuid::now_v7().to_string();
        match req {
            Req::Publish { events, single, content_type } => {
                let ids: Vec<(String, String)> = events.iter().map(|e| (new_id(), e.ty.to_owned())).collect();
                let values: Vec<Value> = events.iter().zip(&ids).map(|(e, (id, _))| to_json(e, id)).collect();
                let body = if single { values[0].to_string() } else { Value::from(values).to_string() };
                if body.len() > MAX_BODY {
                    return Ok(()); // Sizes are the business of `Sized`.
                }
                let a = self.publish(body.into_bytes(), content_type, ids).await?;
                match content_type {
                    // The bus reads the body as structured CloudEvents whatever the label says; a
                    // stricter bus may refuse a foreign content type, but with 415.
                    Some("text/plain" | "application/xml" | "multipart/form-data; boundary=x") => {
                        prop_assert!(a.status == 200 || a.status == 415, "{}: {:.200}", a.status, a.text)
                    }
                    _ => prop_assert_eq!(a.status, 200, "valid events refused: {:.300}", a.text),
                }
            }
            Req::Spoiled { events, at, how } => {
                let mut values: Vec<Value> = events.iter().map(|e| to_json(e, &new_id())).collect();
                how.apply(&mut values[at]);
                let body = Value::from(values).to_string();
                let a = self.send(reqwest::Method::POST, "/events", Some(body.into_bytes()), None).await?;
                prop_assert_eq!(a.status, 400, "{:?} at {}: {:.300}", how, at, a.text);
                let msg = a.body["error"].as_str().unwrap();
                prop_assert!(msg.contains(&format!("at index {at}")), "{how:?} at {at}: {msg}");
                let named = match &how {
                    Spoil::Remove(x) | Spoil::Empty(x) | Spoil::NotAString(x, _) => Some(format!("`{x}`")),
                    Spoil::SpecVersion(_) => Some("specversion".into()),
                    Spoil::NotAnObject(_) => Some("expected a JSON object".into()),
                    _ => None,
                };
                if let Some(named) = named {
                    prop_assert!(msg.contains(&named), "{how:?}: {msg} lacks {named}");
                }
            }
            Req::Republish => {
                let Some((id, ty)) = self.accepted.first().cloned() else { return Ok(()) };
                let ev = Ev { ty: "A", subject: None, data: json!({"again": true}), ext: vec![] };
                let mut v = to_json(&ev, &id);
                v["type"] = json!(ty.clone());
                let before = self.accepted.len();
                let a = self.publish(v.to_string().into_bytes(), None, vec![(id, ty)]).await?;
                prop_assert_eq!(a.status, 200, "{}", a.text);
                prop_assert_eq!(self.accepted.len(), before);
            }
            Req::Sized { delta } => {
                let id = new_id();
                let mut v = to_json(&Ev { ty: "B", subject: None, data: json!(""), ext: vec![] }, &id);
                let base = v.to_string().len() as i64;
                let target = MAX_BODY as i64 + delta;
                v["data"] = json!("x".repeat((target - base).max(0) as usize));
                let body = v.to_string();
                prop_assert_eq!(body.len() as i64, target);
                let a = self.publish(body.into_bytes(), None, vec![(id, "B".into())]).await?;
                if delta <= 0 {
                    prop_assert_eq!(a.status, 200, "{} bytes refused: {:.200}", target, a.text);
                } else {
                    prop_assert_eq!(a.status, 413, "{} bytes: {:.200}", target, a.text);
                    prop_assert!(a.body["error"].as_str().unwrap().contains("larger than"), "{}", a.text);
                }
            }
            Req::Raw(bytes) => {
                // The decoder is the oracle for what is acceptable.
                let expect = busbar::envelope::decode_batch(&bytes).ok().filter(|e| !e.is_empty());
                let stored = expect
                    .iter()
                    .flatten()
                    .map(|e| (busbar::AttributesReader::id(e).to_owned(), busbar::AttributesReader::ty(e).to_owned()))
                    .collect();
                let a = self.publish(bytes.clone(), None, stored).await?;
                prop_assert_eq!(
                    a.status,
                    if expect.is_some() { 200 } else { 400 },
                    "{:?}: {:.200}",
                    String::from_utf8_lossy(&bytes),
                    a.text
                );
            }
            Req::Replay(params) => {
                let a = self.send(reqwest::Method::GET, &format!("/events{}", qs(&params)), None, None).await?;
                let valid = query_oracle(&params, &["after", "limit", "type"]).ok().and_then(|p| {
                    let get = |k: &str| p.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
                    let after = get("after").map(str::parse::<i64>).unwrap_or(Ok(0)).ok().filter(|a| *a >= 0)?;
                    let limit = get("limit")
                        .map(str::parse::<i64>)
                        .unwrap_or(Ok(1000))
                        .ok()
                        .filter(|l| (1..=10_000).contains(l))?;
                    let types: Vec<String> = get("type")
                        .map(|t| t.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect())
                        .unwrap_or_default();
                    Some((after, limit, types))
                });
                let Some((_after, limit, types)) = valid else {
                    prop_assert_eq!(a.status, 400, "{:?}: {:.200}", params, a.text);
                    return Ok(());
                };
                prop_assert_eq!(a.status, 200, "{:?}: {:.200}", params, a.text);
                let got =
                    a.body.as_array().ok_or_else(|| TestCaseError::fail(format!("not an array: {:.200}", a.text)))?;
                prop_assert!(got.len() as i64 <= limit);
                // What comes back is accepted events, in the order they were accepted, of the asked types.
                let mut last = None;
                for e in got {
                    let id = e["id"].as_str().unwrap_or_default();
                    let pos = self.accepted.iter().position(|(x, _)| x == id);
                    prop_assert!(pos.is_some(), "replayed an event that was never accepted: {e}");
                    prop_assert!(pos > last, "out of order: {e}");
                    last = pos;
                    if !types.is_empty() {
                        prop_assert!(types.iter().any(|t| e["type"] == **t), "{types:?} but got {e}");
                    }
                }
            }
            Req::ListDeadLetters(params) => {
                let a = self.send(reqwest::Method::GET, &format!("/deadletters{}", qs(&params)), None, None).await?;
                let ok = query_oracle(&params, &["subscriber", "limit"])
                    .is_ok_and(|p| p.iter().all(|(k, v)| k != "limit" || v.parse::<i64>().is_ok()));
                prop_assert_eq!(a.status, if ok { 200 } else { 400 }, "{:?}: {:.200}", params, a.text);
                if ok {
                    prop_assert_eq!(&a.body, &json!([]), "nothing was ever dead-lettered");
                }
            }
            Req::RedriveOne(seg) => {
                let path = if seg == "%ff%fe" {
                    format!("/deadletters/{seg}/redrive")
                } else {
                    format!("/deadletters/{}/redrive", enc(&seg))
                };
                let a = self.send(reqwest::Method::POST, &path, None, None).await?;
                // `.` and `..` are dot-segments: the client resolves them away, leaving no route.
                let want = if seg.parse::<i64>().is_ok() || seg == "." || seg == ".." { 404 } else { 400 };
                prop_assert_eq!(a.status, want, "{}: {:.200}", path, a.text);
            }
            Req::RedriveAll(params) => {
                let a = self
                    .send(reqwest::Method::POST, &format!("/deadletters/redrive{}", qs(&params)), None, None)
                    .await?;
                let ok = query_oracle(&params, &["subscriber"]).is_ok();
                prop_assert_eq!(a.status, if ok { 200 } else { 400 }, "{:?}: {:.200}", params, a.text);
                if ok {
                    prop_assert_eq!(&a.body["redriving"], &json!(0));
                }
            }
        }
        Ok(())
    }
}

#[test]
fn generated_requests_get_2xx_or_a_json_4xx_and_the_log_holds_exactly_what_was_accepted() {
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = testkit::temp_dir();
    let max = MAX_BODY.to_string();
    let bus = rt.block_on(Bus::start(dir.path(), &routes_yaml(&[], FAST), None, &["--max-body-bytes", &max]));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    let state = Arc::new(Mutex::new(Some(State { bus, client, accepted: vec![], sent: 0, last: String::new() })));

    let config = Config {
        cases: CASES,
        max_shrink_iters: 64,
        max_shrink_time: 30_000,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&req(), |r| {
        if started.elapsed() > WALL {
            return Err(TestCaseError::fail(format!("the run took longer than {WALL:?}")));
        }
        let mut guard = state.lock().unwrap();
        let s = guard.as_mut().unwrap();
        rt.block_on(s.run(r))
    });
    let mut s = state.lock().unwrap().take().unwrap();
    if let Err(e) = result {
        panic!("{e}\nbus log:\n{}", s.bus.proc.log_tail());
    }

    // Still serving, and the log is exactly what was accepted: count, ids and order.
    rt.block_on(async {
        let (status, _, _) = s.bus.get("/healthz").await;
        assert_eq!(status, 200);
        let a = s.send(reqwest::Method::GET, "/events?limit=10000", None, None).await.unwrap();
        assert_eq!(a.status, 200);
        let got: Vec<&str> = a.body.as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
        let want: Vec<&str> = s.accepted.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(got, want, "the log holds exactly the accepted events, in order");
        assert!(want.len() >= 20, "too few accepted events ({}) for the test to mean much", want.len());
        assert!(s.sent >= CASES as usize / 2, "sent only {} requests", s.sent);
    });
    drop(s);
    assert!(started.elapsed() < WALL + Duration::from_secs(60));
}

/// An oversize body is refused with 413 and `Connection: close` (the server does not read
/// the rest of it, so the connection cannot carry another request); a pooling client's
/// next request then goes over a fresh connection instead of failing on the dead one.
#[tokio::test]
async fn after_an_oversize_body_the_next_request_on_the_same_client_is_answered() {
    let dir = testkit::temp_dir();
    let bus = Bus::start(dir.path(), &routes_yaml(&[], FAST), None, &["--max-body-bytes", "8192"]).await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    for round in 0..5 {
        let big = json!({"specversion": "1.0", "id": "x", "source": "p", "type": "A", "data": "x".repeat(1 << 20)});
        let r = client.post(format!("{}/events", bus.url)).body(big.to_string()).send().await.unwrap();
        assert_eq!(r.status(), 413);
        assert_eq!(r.headers().get("connection").and_then(|v| v.to_str().ok()), Some("close"));
        assert!(r.text().await.unwrap().contains("larger than"));
        let next = client.get(format!("{}/healthz", bus.url)).send().await;
        assert!(next.as_ref().is_ok_and(|r| r.status() == 200), "round {round}: {next:?}");
    }
}
