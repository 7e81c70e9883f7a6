//! The CloudEvents 1.0 envelope every busbar event travels in (structured JSON mode).
//!
//! The envelope is `cloudevents::Event`; this module adds what busbar needs on top of it:
//! a typed [`Event`] trait, the aggregate-version extension, and a strict decoder whose
//! errors say exactly which attribute is wrong.

use std::collections::BTreeMap;

mod decode;

use chrono::Utc;
use cloudevents::{AttributesReader, Data, EventBuilder, EventBuilderV10};
use serde::{Serialize, de::DeserializeOwned};

/// The envelope type itself. Re-exported so services need not depend on the SDK crate.
pub type CloudEvent = cloudevents::Event;

/// Extension attribute carrying the aggregate version (1, 2, 3, ... per aggregate).
/// CloudEvents extension names must be lower-case alphanumerics, so no separator.
pub const VERSION_EXT: &str = "aggversion";
/// Extension attribute carrying the W3C trace context.
pub const TRACEPARENT_EXT: &str = "traceparent";
/// Extension attribute carrying, for the event's aggregate, the last version of each event
/// type emitted before this one, as `Type:version` pairs joined by `,` (e.g.
/// `ProductAdded:1,ProductRenamed:4`). A subscriber that takes only some types finds its
/// own predecessor in it (see the SDK's `ordering` module). Event types cannot hold `:`
/// or `,`.
pub const PREDECESSORS_EXT: &str = "aggprev";

/// A typed domain event. `TYPE` becomes the CloudEvents `type`, `aggregate_id()` the `subject`.
pub trait Event: Serialize + DeserializeOwned {
    const TYPE: &'static str;
    fn aggregate_id(&self) -> String;
}

/// A domain event plus the version of its aggregate after the change it reports.
#[derive(Debug, Clone)]
pub struct Versioned<E> {
    pub event: E,
    pub version: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("invalid CloudEvent{at}: {reason}")]
    Invalid { at: String, reason: String },
    #[error("expected a CloudEvent object or an array of them, got {0}")]
    NotAnEvent(&'static str),
    #[error("event {id} has type `{got}`, expected `{expected}`")]
    WrongType { id: String, got: String, expected: &'static str },
    /// The data is not what the reader's type says. `dataschema` is the event's own claim
    /// about what wrote it (the writer schema's digest), so a dead letter names both sides.
    #[error("event {id}: data does not match {ty} ({}): {reason}", about_dataschema(dataschema.as_deref()))]
    Data { id: String, ty: &'static str, reason: String, dataschema: Option<String> },
}

fn about_dataschema(d: Option<&str>) -> String {
    match d {
        Some(d) => format!("its dataschema: {d}"),
        None => "it carries no dataschema".into(),
    }
}

/// A CloudEvents `dataschema` value (a URI), parsed once per event type so that emitting
/// only copies it.
pub type SchemaUri = url::Url;

/// `text` as a [`SchemaUri`].
pub fn schema_uri(text: &str) -> Result<SchemaUri, String> {
    url::Url::parse(text).map_err(|e| format!("`{text}` is not a URI: {e}"))
}

/// Sets the event's `dataschema`.
pub fn set_dataschema(ev: &mut CloudEvent, uri: &SchemaUri) {
    cloudevents::AttributesWriter::set_dataschema(ev, Some(uri.clone()));
}

/// The event's `dataschema`, if it carries one.
pub fn dataschema(ev: &CloudEvent) -> Option<String> {
    ev.dataschema().map(|u| u.to_string())
}

/// The event's `data` as JSON, whichever way it was carried; `None` when it has none or it
/// is not JSON.
pub fn data_json(ev: &CloudEvent) -> Option<serde_json::Value> {
    match ev.data()? {
        Data::Json(v) => Some(v.clone()),
        Data::String(s) => serde_json::from_str(s).ok(),
        Data::Binary(b) => serde_json::from_slice(b).ok(),
    }
}

/// Builds the envelope for a typed event published by `source`.
pub fn build<E: Event>(source: &str, event: &E, version: i64) -> CloudEvent {
    let data = serde_json::to_value(event).expect("event types serialize to JSON");
    let mut ev = EventBuilderV10::new()
        .id(uuid::Uuid::now_v7().to_string())
        .source(source)
        .ty(E::TYPE)
        .subject(event.aggregate_id())
        .time(Utc::now())
        .data("application/json", data)
        .build()
        .expect("all required attributes are set");
    ev.set_extension(VERSION_EXT, version);
    ev
}

/// The aggregate version carried by the event, if any. Accepts the integer form and,
/// for lenient producers, a decimal string.
pub fn aggregate_version(ev: &CloudEvent) -> Option<i64> {
    match ev.extension(VERSION_EXT)? {
        cloudevents::event::ExtensionValue::Integer(v) => Some(*v),
        cloudevents::event::ExtensionValue::String(s) => s.parse().ok(),
        cloudevents::event::ExtensionValue::Boolean(_) => None,
    }
}

/// The event's map of last versions per type before it ([`PREDECESSORS_EXT`]); `None` when
/// it carries none or one that does not parse (the consumer then assumes the previous
/// version is the predecessor, which can only make it wait longer, never skip).
pub fn predecessors(ev: &CloudEvent) -> Option<BTreeMap<String, i64>> {
    let text = match ev.extension(PREDECESSORS_EXT)? {
        cloudevents::event::ExtensionValue::String(s) => s,
        _ => return None,
    };
    let mut map = BTreeMap::new();
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let (ty, v) = pair.split_once(':')?;
        map.insert(ty.to_owned(), v.parse().ok()?);
    }
    Some(map)
}

/// Writes `map` as the event's [`PREDECESSORS_EXT`].
pub fn set_predecessors(ev: &mut CloudEvent, map: &BTreeMap<String, i64>) {
    let text = map.iter().map(|(t, v)| format!("{t}:{v}")).collect::<Vec<_>>().join(",");
    ev.set_extension(PREDECESSORS_EXT, text);
}

/// Names span `ctx` as the one the event was emitted in: its handlers continue that trace.
pub fn set_trace(ev: &mut CloudEvent, ctx: &crate::trace::TraceContext) {
    ev.set_extension(TRACEPARENT_EXT, ctx.header());
}

/// The trace the event was emitted in, if it carries a valid `traceparent`.
pub fn trace(ev: &CloudEvent) -> Option<crate::trace::TraceContext> {
    match ev.extension(TRACEPARENT_EXT)? {
        cloudevents::event::ExtensionValue::String(s) => crate::trace::TraceContext::parse(s),
        _ => None,
    }
}

/// The `data` of `ev` decoded as `E`, after checking that the type matches.
pub fn data<E: Event>(ev: &CloudEvent) -> Result<E, EnvelopeError> {
    if ev.ty() != E::TYPE {
        return Err(EnvelopeError::WrongType { id: ev.id().to_owned(), got: ev.ty().to_owned(), expected: E::TYPE });
    }
    let err = |reason: String| EnvelopeError::Data {
        id: ev.id().to_owned(),
        ty: E::TYPE,
        reason,
        dataschema: dataschema(ev),
    };
    match ev.data() {
        Some(Data::Json(v)) => E::deserialize(v).map_err(|e| err(e.to_string())),
        Some(Data::String(s)) => serde_json::from_str(s).map_err(|e| err(e.to_string())),
        Some(Data::Binary(b)) => serde_json::from_slice(b).map_err(|e| err(e.to_string())),
        None => Err(err("the event has no data".into())),
    }
}

/// Decodes a request body holding one CloudEvent or a JSON array of them.
pub fn decode_batch(body: &[u8]) -> Result<Vec<CloudEvent>, EnvelopeError> {
    let json = |e: serde_json::Error| EnvelopeError::Json(e.to_string());
    // An array is read as elements; anything else is one element, which names its kind
    // when it is not an object.
    if body.trim_ascii_start().starts_with(b"[") {
        let items: Vec<decode::Element> = serde_json::from_slice(body).map_err(json)?;
        items.into_iter().enumerate().map(|(i, e)| checked(e, Some(i))).collect()
    } else {
        Ok(vec![checked(serde_json::from_slice(body).map_err(json)?, None)?])
    }
}

/// Decodes one CloudEvent from JSON text.
pub fn decode_one(text: &str) -> Result<CloudEvent, EnvelopeError> {
    checked(serde_json::from_str(text).map_err(|e| EnvelopeError::Json(e.to_string()))?, None)
}

/// The event, or the error naming what is wrong with it and, inside a batch, where it is.
fn checked(element: decode::Element, index: Option<usize>) -> Result<CloudEvent, EnvelopeError> {
    let at = || index.map(|i| format!(" at index {i}")).unwrap_or_default();
    match element {
        decode::Element::Event(ev) => Ok(ev),
        decode::Element::NotAnObject(kind) if index.is_none() => Err(EnvelopeError::NotAnEvent(kind)),
        decode::Element::NotAnObject(kind) => {
            Err(EnvelopeError::Invalid { at: at(), reason: format!("expected a JSON object, got {kind}") })
        }
        decode::Element::Invalid(reason) => Err(EnvelopeError::Invalid { at: at(), reason }),
    }
}

/// Serialises events as the JSON array that `POST /events` accepts.
pub fn encode_batch(events: &[CloudEvent]) -> Vec<u8> {
    serde_json::to_vec(events).expect("CloudEvents serialize to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::AttributesWriter;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Renamed {
        id: String,
        name: String,
    }
    impl Event for Renamed {
        const TYPE: &'static str = "Renamed";
        fn aggregate_id(&self) -> String {
            self.id.clone()
        }
    }

    #[test]
    fn build_then_decode_round_trips_type_subject_version_and_data() {
        let ev = build("users", &Renamed { id: "u1".into(), name: "Ada".into() }, 3);
        let text = serde_json::to_string(&ev).unwrap();
        let back = decode_one(&text).unwrap();
        assert_eq!(back.ty(), "Renamed");
        assert_eq!(back.subject(), Some("u1"));
        assert_eq!(back.source().as_str(), "users");
        assert_eq!(aggregate_version(&back), Some(3));
        assert_eq!(data::<Renamed>(&back).unwrap(), Renamed { id: "u1".into(), name: "Ada".into() });
        // Course clients read `type` and `data` at the top level.
        let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(raw["type"], "Renamed");
        assert_eq!(raw["data"]["name"], "Ada");
    }

    #[test]
    fn predecessors_round_trip_and_garbage_reads_as_none() {
        let mut ev = build("s", &Renamed { id: "a".into(), name: "x".into() }, 5);
        assert_eq!(predecessors(&ev), None);
        let map: BTreeMap<String, i64> = [("Added".to_owned(), 1), ("Renamed".to_owned(), 4)].into();
        set_predecessors(&mut ev, &map);
        let back = decode_one(&serde_json::to_string(&ev).unwrap()).unwrap();
        assert_eq!(predecessors(&back), Some(map));
        set_predecessors(&mut ev, &BTreeMap::new());
        assert_eq!(predecessors(&ev), Some(BTreeMap::new()), "a first event has an empty map");
        ev.set_extension(PREDECESSORS_EXT, "Added=1");
        assert_eq!(predecessors(&ev), None);
        ev.set_extension(PREDECESSORS_EXT, 3i64);
        assert_eq!(predecessors(&ev), None);
    }

    #[test]
    fn ids_are_unique_and_time_ordered() {
        let a = build("s", &Renamed { id: "a".into(), name: "x".into() }, 1);
        let b = build("s", &Renamed { id: "a".into(), name: "x".into() }, 2);
        assert!(a.id() < b.id(), "UUIDv7 ids sort by creation time");
    }

    #[test]
    fn decoder_names_the_missing_or_wrong_attribute() {
        let cases = [
            (r#"{"id":"1","source":"s","type":"T"}"#, "missing required attribute `specversion`"),
            (r#"{"specversion":"0.3","id":"1","source":"s","type":"T"}"#, "unsupported specversion"),
            (r#"{"specversion":"1.0","source":"s","type":"T"}"#, "missing required attribute `id`"),
            (r#"{"specversion":"1.0","id":"1","source":"s"}"#, "missing required attribute `type`"),
            (r#"{"specversion":"1.0","id":"","source":"s","type":"T"}"#, "`id` must not be empty"),
            (r#"{"specversion":"1.0","id":7,"source":"s","type":"T"}"#, "`id` must be a string"),
            (r#"{"specversion":"1.0","id":"1","source":"s","type":"T","time":"yesterday"}"#, "invalid CloudEvent"),
            (r#"[1]"#, "got a number"),
            (r#""hi""#, "got a string"),
            (r#"{"specversion":"1.0""#, "invalid JSON"),
        ];
        for (body, want) in cases {
            let err = decode_batch(body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{body}: expected error containing {want:?}, got {err:?}");
        }
    }

    #[test]
    fn batch_errors_point_at_the_bad_index() {
        let good = serde_json::to_value(build("s", &Renamed { id: "a".into(), name: "x".into() }, 1)).unwrap();
        let body = serde_json::json!([good, {"specversion":"1.0","id":"2","source":"s"}]);
        let err = decode_batch(body.to_string().as_bytes()).unwrap_err().to_string();
        assert!(err.contains("at index 1"), "{err}");
    }

    #[test]
    fn typed_data_rejects_wrong_type_and_bad_data() {
        let mut ev = build("s", &Renamed { id: "a".into(), name: "x".into() }, 1);
        ev.set_type("Other");
        assert!(matches!(data::<Renamed>(&ev), Err(EnvelopeError::WrongType { .. })));
        let ev = decode_one(r#"{"specversion":"1.0","id":"1","source":"s","type":"Renamed","data":{"id":1}}"#).unwrap();
        assert!(matches!(data::<Renamed>(&ev), Err(EnvelopeError::Data { .. })));
    }

    #[test]
    fn a_data_error_names_the_dataschema_the_event_carries() {
        let mut ev =
            decode_one(r#"{"specversion":"1.0","id":"1","source":"s","type":"Renamed","data":{"id":"a"}}"#).unwrap();
        let err = data::<Renamed>(&ev).unwrap_err().to_string();
        assert!(
            err.starts_with("event 1: data does not match Renamed (it carries no dataschema): missing field `name`"),
            "{err}"
        );
        set_dataschema(&mut ev, &schema_uri("urn:busbar:schema:Renamed:sha256:00").unwrap());
        let back = decode_one(&serde_json::to_string(&ev).unwrap()).unwrap();
        assert_eq!(dataschema(&back).as_deref(), Some("urn:busbar:schema:Renamed:sha256:00"));
        let err = data::<Renamed>(&back).unwrap_err().to_string();
        assert!(err.contains("(its dataschema: urn:busbar:schema:Renamed:sha256:00)"), "{err}");
        assert_eq!(data_json(&back), Some(serde_json::json!({"id": "a"})));
        assert!(schema_uri("not a uri").is_err());
    }

    #[test]
    fn escaped_member_names_are_the_attributes_they_spell() {
        let ev = decode_one(r#"{"specversion":"1.0","\u0069d":"1","source":"s","typ\u0065":"T","aggv\u0065rsion":4}"#)
            .unwrap();
        assert_eq!((ev.id(), ev.ty(), aggregate_version(&ev)), ("1", "T", Some(4)));
    }

    #[test]
    fn a_member_given_twice_keeps_its_last_value_as_the_sdk_does() {
        let text = r#"{"specversion":"1.0","id":"1","id":"2","source":"s","type":"T","data":{"a":1},"data":[2],"x":"a","x":null}"#;
        let ev = decode_one(text).unwrap();
        assert_eq!(ev.id(), "2");
        assert_eq!(data_json(&ev), Some(serde_json::json!([2])));
        assert_eq!(ev.extension("x"), None, "a null extension is no extension");
        assert_eq!(ev, serde_json::from_str::<CloudEvent>(text).unwrap());
    }

    #[test]
    fn optional_attributes_of_the_wrong_kind_are_named() {
        let cases = [
            (r#""subject":7"#, "attribute `subject` must be a string, got a number"),
            (r#""dataschema":"no uri""#, "attribute `dataschema` is not a URI (\"no uri\")"),
            (r#""time":"yesterday""#, "attribute `time` is not an RFC 3339 timestamp (\"yesterday\")"),
            (
                r#""datacontenttype":"text/plain","data":{}"#,
                "`data` must be a string when `datacontenttype` is not JSON",
            ),
            (r#""data":1,"data_base64":"AAEC""#, "both `data` and `data_base64`"),
            (r#""data_base64":"!!""#, "attribute `data_base64` is not base64"),
            (r#""ext":1.5"#, "extension `ext` must be a string, a boolean or an integer, got a number"),
            (r#""ext":{"a":1}"#, "extension `ext` must be a string, a boolean or an integer, got an object"),
        ];
        for (members, want) in cases {
            let text = format!(r#"{{"specversion":"1.0","id":"1","source":"s","type":"T",{members}}}"#);
            let err = decode_one(&text).unwrap_err().to_string();
            assert!(err.starts_with("invalid CloudEvent: ") && err.contains(want), "{text}: {err}");
            assert!(serde_json::from_str::<CloudEvent>(&text).is_err(), "the SDK refuses {text} too");
        }
    }

    proptest::proptest! {
        #[test]
        fn decoder_never_panics_on_arbitrary_bytes(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode_batch(&body);
        }

        #[test]
        fn decoder_never_panics_on_arbitrary_json_objects(
            id in proptest::option::of(".{0,8}"),
            ty in proptest::option::of(".{0,8}"),
            spec in proptest::option::of(proptest::prop_oneof![proptest::strategy::Just("1.0".to_string()), ".{0,4}"]),
        ) {
            let mut m = serde_json::Map::new();
            if let Some(v) = id { m.insert("id".into(), v.into()); }
            if let Some(v) = ty { m.insert("type".into(), v.into()); }
            if let Some(v) = spec { m.insert("specversion".into(), v.into()); }
            m.insert("source".into(), "s".into());
            let ok = decode_batch(serde_json::Value::Object(m.clone()).to_string().as_bytes()).is_ok();
            let valid = m.get("specversion").and_then(|v| v.as_str()) == Some("1.0")
                && m.get("id").and_then(|v| v.as_str()).is_some_and(|s| !s.is_empty())
                && m.get("type").and_then(|v| v.as_str()).is_some_and(|s| !s.is_empty());
            proptest::prop_assert_eq!(ok, valid);
        }
    }
}
