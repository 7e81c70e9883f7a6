//! Property tests for the CloudEvents decoder (`envelope::decode_batch` / `decode_one`):
//! whatever arrives, it answers without panicking, either with events or with an error
//! that names the problem; and every valid event survives encode → decode unchanged.

use busbar::{
    AttributesReader, CloudEvent,
    envelope::{self, EnvelopeError},
};
use chrono::{DateTime, TimeZone, Utc};
use cloudevents::{EventBuilder, EventBuilderV10};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use testkit::spoil::{CONTEXT_ATTRIBUTES, Spoil};

/// Every message the decoder produces starts with one of these (see `EnvelopeError`).
const PREFIXES: &[&str] = &["invalid JSON: ", "invalid CloudEvent", "expected a CloudEvent object", "event "];

fn check_message(e: &EnvelopeError) -> Result<String, TestCaseError> {
    let msg = e.to_string();
    prop_assert!(PREFIXES.iter().any(|p| msg.starts_with(p)), "unexpected error shape: {msg:?}");
    prop_assert!(msg.len() < 4096, "error message is {} bytes long: {:.200}", msg.len(), msg);
    Ok(msg)
}

/// Arbitrary JSON, nested a few levels, with occasional huge strings.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "\\PC{0,16}".prop_map(Value::from),
        Just(Value::from("1.0")),
        (1usize..200_000).prop_map(|n| Value::from("x".repeat(n))),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,8}|specversion|id|source|type|data|time", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn any_time() -> impl Strategy<Value = DateTime<Utc>> {
    // Years 1970..2200, with nanoseconds.
    (0i64..7_258_118_400, 0u32..1_000_000_000).prop_map(|(s, n)| Utc.timestamp_opt(s, n).unwrap())
}

/// serde_json (without its `float_roundtrip` feature) may read a float with 17 significant
/// digits back one ulp off; data with such floats is not expected to survive unchanged.
fn short_floats(v: Value) -> Value {
    match v {
        Value::Number(n) if n.is_f64() => Value::from((n.as_f64().unwrap().clamp(-1e9, 1e9) * 8.0).round() / 8.0),
        Value::Array(a) => Value::Array(a.into_iter().map(short_floats).collect()),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, short_floats(v))).collect()),
        other => other,
    }
}

fn non_empty_text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "\\PC{1,24}",
        1 => (1usize..100_000).prop_map(|n| "é".repeat(n)),
    ]
}

/// Valid CloudEvents as the SDK builds them: arbitrary attributes, JSON data and extensions.
fn valid_event() -> impl Strategy<Value = CloudEvent> {
    (
        non_empty_text(),
        non_empty_text(),
        "[A-Za-z][A-Za-z0-9._-]{0,20}",
        proptest::option::of("\\PC{0,20}"),
        proptest::option::of(any_time()),
        proptest::option::of(any_json().prop_map(short_floats)),
        proptest::option::of(any::<i64>()),
        prop::collection::btree_map(
            "[a-z][a-z0-9]{0,10}".prop_filter("not a context attribute", |k| {
                !CONTEXT_ATTRIBUTES.contains(&k.as_str()) && !matches!(k.as_str(), "data" | "aggversion")
            }),
            prop_oneof!["\\PC{0,12}".prop_map(Value::from), any::<bool>().prop_map(Value::from)],
            0..3,
        ),
    )
        .prop_map(|(id, source, ty, subject, time, data, version, exts)| {
            let mut b = EventBuilderV10::new().id(id).source(source).ty(ty);
            if let Some(s) = subject {
                b = b.subject(s);
            }
            if let Some(t) = time {
                b = b.time(t);
            }
            if let Some(d) = data {
                b = b.data("application/json", d);
            }
            let mut ev = b.build().expect("id, source and type are set");
            if let Some(v) = version {
                ev.set_extension(envelope::VERSION_EXT, v);
            }
            for (k, v) in exts {
                match v {
                    Value::Bool(b) => ev.set_extension(&k, b),
                    Value::String(s) => ev.set_extension(&k, s),
                    _ => unreachable!(),
                }
            }
            ev
        })
}

/// One way to spoil a valid event's JSON ([`Spoil`]); [`named_in`] says what the error
/// must then mention.
fn spoil() -> impl Strategy<Value = Spoil> {
    let attr = prop_oneof![Just("specversion"), Just("id"), Just("source"), Just("type")];
    let required = prop_oneof![Just("id"), Just("source"), Just("type")];
    let not_a_string = any_json().prop_filter("not a string", |v| !v.is_string());
    prop_oneof![
        attr.clone().prop_map(Spoil::Remove),
        required.clone().prop_map(Spoil::Empty),
        (required, not_a_string).prop_map(|(a, v)| Spoil::NotAString(a, v)),
        prop_oneof![
            Just(json!("0.3")),
            Just(json!("2.0")),
            Just(json!("1")),
            Just(json!(1.0)),
            Just(json!(1)),
            Just(json!(null)),
            Just(json!("")),
            Just(json!(" 1.0")),
            Just(Value::from("1.0".repeat(50_000))),
            any_json().prop_filter("not 1.0", |v| v != "1.0"),
        ]
        .prop_map(Spoil::SpecVersion),
        "[a-z ]{1,12}|2024-13-01T00:00:00Z|yesterday".prop_map(Spoil::BadTime),
        prop_oneof![Just(json!({"nested": true})), Just(json!([1, 2])), Just(json!(1.5)), Just(json!(u64::MAX))]
            .prop_map(Spoil::BadExtension),
    ]
}

/// A JSON object that may or may not be a CloudEvent: each attribute absent, well formed or
/// malformed, `data` or `data_base64` of any kind, and extensions of any JSON.
fn event_like_object() -> impl Strategy<Value = Map<String, Value>> {
    let text = || prop_oneof![4 => "\\PC{1,12}".prop_map(Value::from), 1 => Just(json!("")), 1 => any_json()];
    let required = || proptest::option::weighted(0.95, text());
    let optional = |good: BoxedStrategy<Value>| {
        proptest::option::of(prop_oneof![6 => good, 1 => Just(Value::Null), 1 => any_json()])
    };
    let content_type = prop_oneof![
        Just(json!("application/json")),
        Just(json!("text/json; charset=utf-8")),
        Just(json!("application/cloudevents+json")),
        Just(json!("text/plain")),
        Just(json!("application/octet-stream")),
    ];
    let schema = prop_oneof![
        Just(json!("urn:busbar:schema:T:sha256:00")),
        Just(json!("https://example.com/s")),
        Just(json!("not a uri"))
    ];
    let time = prop_oneof![
        any_time().prop_map(|t| json!(t.to_rfc3339())),
        Just(json!("2024-02-30T00:00:00Z")),
        Just(json!("yesterday")),
    ];
    // {"a":1}, the bytes 0 1 2, "hello" (not JSON), and text that is not base64.
    let base64 = prop_oneof![
        Just(json!("eyJhIjoxfQ==")),
        Just(json!("AAEC")),
        Just(json!("aGVsbG8=")),
        Just(json!("!!")),
        any_json()
    ];
    let extensions = prop::collection::btree_map(
        "[a-z][a-z0-9_]{0,10}".prop_filter("not an attribute", |k| {
            !CONTEXT_ATTRIBUTES.contains(&k.as_str()) && !matches!(k.as_str(), "data" | "data_base64")
        }),
        prop_oneof![
            "\\PC{0,12}".prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any_json()
        ],
        0..4,
    );
    (
        (
            proptest::option::weighted(0.95, prop_oneof![9 => Just(json!("1.0")), 1 => any_json()]),
            required(),
            required(),
            required(),
        ),
        (
            optional(content_type.boxed()),
            optional(schema.boxed()),
            optional("\\PC{0,12}".prop_map(Value::from).boxed()),
            optional(time.boxed()),
        ),
        (proptest::option::weighted(0.8, any_json()), proptest::option::weighted(0.1, base64)),
        extensions,
    )
        .prop_map(|((spec, id, source, ty), (ct, schema, subject, time), (data, data_base64), extensions)| {
            let mut m: Map<String, Value> = extensions.into_iter().collect();
            for (name, value) in [
                ("specversion", spec),
                ("id", id),
                ("source", source),
                ("type", ty),
                ("datacontenttype", ct),
                ("dataschema", schema),
                ("subject", subject),
                ("time", time),
                ("data", data),
                ("data_base64", data_base64),
            ] {
                if let Some(v) = value {
                    m.insert(name.into(), v);
                }
            }
            m
        })
}

/// busbar's rules on top of the SDK's: specversion "1.0"; id, source and type non-empty strings.
fn meets_busbars_own_rules(m: &Map<String, Value>) -> bool {
    m.get("specversion").is_some_and(|v| v == "1.0")
        && ["id", "source", "type"].iter().all(|a| m.get(*a).and_then(Value::as_str).is_some_and(|s| !s.is_empty()))
}

/// Words the error message must contain.
fn named_in(how: &Spoil) -> Vec<String> {
    match how {
        Spoil::Remove(a) if *a == "specversion" => vec!["missing required attribute `specversion`".into()],
        Spoil::Remove(a) => vec![format!("missing required attribute `{a}`")],
        Spoil::Empty(a) => vec![format!("`{a}` must not be empty")],
        Spoil::NotAString(a, _) => vec![format!("`{a}` must be a string")],
        Spoil::SpecVersion(_) => vec!["specversion".into(), "1.0".into()],
        Spoil::BadTime(_) => vec!["invalid CloudEvent".into()],
        Spoil::BadExtension(_) => vec!["invalid CloudEvent".into()],
        Spoil::NotAnObject(_) => vec!["object".into()],
    }
}

fn as_object(ev: &CloudEvent) -> Map<String, Value> {
    match serde_json::to_value(ev).unwrap() {
        Value::Object(m) => m,
        other => panic!("a CloudEvent serialises to an object, got {other}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_and_errors_are_readable(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..1024),
            // Near-JSON: JSON punctuation and CloudEvents words glued together.
            prop::collection::vec(prop_oneof![
                Just(&b"{"[..]), Just(&b"}"[..]), Just(&b"["[..]), Just(&b"]"[..]), Just(&b","[..]),
                Just(&b":"[..]), Just(&b"\"specversion\""[..]), Just(&b"\"1.0\""[..]), Just(&b"\"id\""[..]),
                Just(&b"null"[..]), Just(&b"\xff\xfe"[..]), Just(&b"\"\\ud800\""[..]), Just(&b"1e999"[..]),
            ], 0..64).prop_map(|parts| parts.concat()),
        ]
    ) {
        match envelope::decode_batch(&body) {
            Ok(events) => {
                // Anything accepted is well-formed enough to be written out again.
                let again = envelope::decode_batch(&envelope::encode_batch(&events)).unwrap();
                prop_assert_eq!(again, events);
            }
            Err(e) => { check_message(&e)?; }
        }
        if let Ok(text) = std::str::from_utf8(&body)
            && let Err(e) = envelope::decode_one(text)
        {
            check_message(&e)?;
        }
    }

    #[test]
    fn arbitrary_json_never_panics_and_errors_are_readable(v in any_json()) {
        let body = serde_json::to_vec(&v).unwrap();
        match envelope::decode_batch(&body) {
            Ok(events) => {
                // Only an object (or array of objects) with the four required attributes passes.
                let items = match &v { Value::Array(a) => a.clone(), other => vec![other.clone()] };
                prop_assert_eq!(items.len(), events.len());
                for (item, ev) in items.iter().zip(&events) {
                    prop_assert_eq!(&item["specversion"], "1.0");
                    prop_assert_eq!(item["id"].as_str(), Some(ev.id()));
                    prop_assert_eq!(item["type"].as_str(), Some(ev.ty()));
                }
            }
            Err(e) => {
                let msg = check_message(&e)?;
                if let Value::Array(items) = &v {
                    if let Some(i) = items.iter().position(|x| !x.is_object()) {
                        // A non-object element is pointed at, unless an earlier one already failed.
                        prop_assert!(msg.contains(" at index "), "{msg}");
                        let at: usize = msg.split(" at index ").nth(1).unwrap()
                            .split(':').next().unwrap().parse().unwrap();
                        prop_assert!(at <= i, "{msg} but index {i} is the first non-object");
                    }
                } else if !v.is_object() {
                    prop_assert!(msg.starts_with("expected a CloudEvent object"), "{msg}");
                }
            }
        }
    }

    /// The decoder reads attributes straight from the bytes (for speed) instead of through
    /// the SDK's `Deserialize`; for anything that meets busbar's own rules, both must agree
    /// on whether it is an event and on the event, and anything else is refused.
    #[test]
    fn the_decoder_agrees_with_the_cloudevents_sdk(obj in event_like_object()) {
        let text = Value::Object(obj.clone()).to_string();
        let ours = envelope::decode_one(&text);
        if meets_busbars_own_rules(&obj) {
            let sdk = serde_json::from_str::<CloudEvent>(&text);
            prop_assert_eq!(ours.as_ref().ok(), sdk.as_ref().ok(), "{} -> ours {:?}, the SDK's {:?}", text, ours.as_ref().err(), sdk.as_ref().err().map(ToString::to_string));
            let batch = envelope::decode_batch(format!("[{text},{text}]").as_bytes());
            prop_assert_eq!(batch.ok(), sdk.ok().map(|ev| vec![ev.clone(), ev]));
        } else {
            prop_assert!(ours.is_err(), "{text} breaks busbar's rules but was accepted");
        }
        if let Err(e) = ours {
            check_message(&e)?;
        }
    }

    #[test]
    fn valid_events_round_trip(ev in valid_event()) {
        let text = serde_json::to_string(&ev).unwrap();
        let one = envelope::decode_one(&text).unwrap();
        prop_assert_eq!(&one, &ev);
        prop_assert_eq!(envelope::aggregate_version(&one), envelope::aggregate_version(&ev));
        let batch = envelope::decode_batch(text.as_bytes()).unwrap();
        prop_assert_eq!(batch, vec![ev]);
    }

    #[test]
    fn valid_batches_round_trip(events in prop::collection::vec(valid_event(), 0..8)) {
        let back = envelope::decode_batch(&envelope::encode_batch(&events)).unwrap();
        prop_assert_eq!(back, events);
    }

    #[test]
    fn a_spoiled_event_is_refused_with_the_attribute_named(ev in valid_event(), how in spoil()) {
        let mut event = Value::Object(as_object(&ev));
        how.apply(&mut event);
        let text = event.to_string();
        let err = envelope::decode_one(&text).unwrap_err();
        let msg = check_message(&err)?;
        for want in named_in(&how) {
            prop_assert!(msg.contains(&want), "{how:?}: {msg:.300} lacks {want:?}");
        }
        prop_assert!(msg.len() < 1024, "the error echoes too much: {} bytes", msg.len());
    }

    #[test]
    fn a_batch_with_one_spoiled_event_is_refused_whole_and_points_at_it(
        events in prop::collection::vec(valid_event(), 1..6),
        bad_at in any::<prop::sample::Index>(),
        how in spoil(),
        extra_junk in proptest::option::of(any_json().prop_filter("not an object", |v| !v.is_object())),
    ) {
        let mut items: Vec<Value> = events.iter().map(|e| Value::Object(as_object(e))).collect();
        let i = bad_at.index(items.len());
        how.apply(&mut items[i]);
        if let Some(junk) = extra_junk {
            items.push(junk);
        }
        let err = envelope::decode_batch(Value::Array(items).to_string().as_bytes()).unwrap_err();
        let msg = check_message(&err)?;
        prop_assert!(msg.contains(&format!(" at index {i}:")), "{how:?} at {i}: {msg:.300}");
    }
}

#[test]
fn deep_nesting_and_huge_bodies_are_refused_without_overflowing_the_stack() {
    for body in ["[".repeat(100_000), "{\"a\":".repeat(100_000), format!("{}1{}", "[".repeat(200), "]".repeat(200))] {
        let msg = envelope::decode_batch(body.as_bytes()).unwrap_err().to_string();
        assert!(msg.starts_with("invalid JSON"), "{msg:.200}");
    }
    // Deep (but parseable) junk inside `data` is just data.
    let mut data = json!(1);
    for _ in 0..100 {
        data = json!([data]);
    }
    let ev = json!({"specversion": "1.0", "id": "1", "source": "s", "type": "T", "data": data});
    let got = envelope::decode_batch(ev.to_string().as_bytes()).unwrap();
    assert_eq!(got.len(), 1);
    // A 4 MB id is odd but not invalid; the error for a 4 MB specversion does not echo it.
    let big = "v".repeat(4 << 20);
    let ev = json!({"specversion": big, "id": "1", "source": "s", "type": "T"});
    let msg = envelope::decode_batch(ev.to_string().as_bytes()).unwrap_err().to_string();
    assert!(msg.contains("specversion") && msg.len() < 1024, "{} bytes: {msg:.200}", msg.len());
}

#[test]
fn an_empty_array_decodes_to_no_events() {
    // The decoder leaves "is an empty batch acceptable?" to the caller (the bus refuses it).
    assert!(envelope::decode_batch(b"[]").unwrap().is_empty());
    assert!(envelope::decode_batch(b" \n[ ] ").unwrap().is_empty());
}

#[test]
fn non_objects_inside_a_batch_are_pointed_at() {
    let good = json!({"specversion": "1.0", "id": "1", "source": "s", "type": "T"});
    let msg = envelope::decode_batch(json!([good, good, 7]).to_string().as_bytes()).unwrap_err().to_string();
    assert!(msg.contains("at index 2") && msg.contains("got a number"), "{msg}");
}

/// `time` keeps its precision through the round trip (the bus stores the JSON text).
#[test]
fn time_round_trips_to_the_nanosecond() {
    let t = Utc.timestamp_opt(1_700_000_000, 123_456_789).unwrap();
    let ev = EventBuilderV10::new().id("1").source("s").ty("T").time(t).build().unwrap();
    let back = envelope::decode_one(&serde_json::to_string(&ev).unwrap()).unwrap();
    assert_eq!(back.time(), Some(&t));
}
