//! The strict CloudEvents decoder, reading each attribute from the body's bytes once.
//!
//! Why not `serde_json::from_slice::<cloudevents::Event>`: the SDK's `Deserialize` first
//! builds a `serde_json::Value` of the whole event, then a `Map` from that, then each
//! attribute from its entry (and `data` is rebuilt once more), and our own checks, which
//! say which attribute is missing or not a string, needed the `Value` beforehand. Every
//! consumer decodes every pushed event, so those trees were a tenth of a busy read model's
//! CPU. Here each attribute is read straight into what it becomes; only `data`, which the
//! event keeps as a `Value`, is built as one.
//!
//! The rules are the SDK's for CloudEvents 1.0 structured JSON (null attributes count as
//! absent; `data` is JSON unless `datacontenttype` says otherwise; `data_base64`;
//! extensions are strings, booleans or integers), plus busbar's (`specversion` must be
//! `"1.0"`; `id`, `source` and `type` must be non-empty strings). The property tests in
//! `crates/busbar/tests/envelope_props.rs` check that both decoders accept and produce the
//! same events.

use std::collections::HashMap;
use std::fmt;

use base64::prelude::*;
use chrono::{DateTime, Utc};
use cloudevents::{AttributesWriter, Data, EventBuilder, EventBuilderV10, event::ExtensionValue};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::CloudEvent;

/// What one JSON value turned out to be. A value that is JSON but not a valid event is kept
/// as such rather than returned as a serde error, so that (a) the parse goes on and a body
/// that is not JSON further on is still reported as not JSON, and (b) the message names the
/// attribute without serde_json's line and column.
// Nearly every element is an event: boxing it to shrink the rare error variants would add
// an allocation per event.
#[allow(clippy::large_enum_variant)]
pub(super) enum Element {
    Event(CloudEvent),
    NotAnObject(&'static str),
    Invalid(String),
}

impl<'de> Deserialize<'de> for Element {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ElementVisitor;
        impl<'de> Visitor<'de> for ElementVisitor {
            type Value = Element;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a CloudEvent")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Element, A::Error> {
                event_from_map(map)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Element, A::Error> {
                drain_seq(seq)?;
                Ok(Element::NotAnObject("an array"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Element, E> {
                Ok(Element::NotAnObject("null"))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Element, E> {
                Ok(Element::NotAnObject("a boolean"))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Element, E> {
                Ok(Element::NotAnObject("a number"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Element, E> {
                Ok(Element::NotAnObject("a number"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Element, E> {
                Ok(Element::NotAnObject("a number"))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Element, E> {
                Ok(Element::NotAnObject("a string"))
            }
        }
        d.deserialize_any(ElementVisitor)
    }
}

/// Skips the rest of an array. Read as `Value`s rather than ignored, so that nesting deeper
/// than serde_json's recursion limit is refused as invalid JSON wherever it appears, as it
/// was when the whole body was read as a `Value` first.
fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<Value>()?.is_some() {}
    Ok(())
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<de::IgnoredAny, Value>()?.is_some() {}
    Ok(())
}

/// A member name of an event object. The attributes are recognised without allocating;
/// anything else is an extension.
enum Key {
    SpecVersion,
    Id,
    Source,
    Type,
    DataContentType,
    DataSchema,
    Subject,
    Time,
    Data,
    DataBase64,
    Extension(String),
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
                Ok(Key::known(s).unwrap_or_else(|| Key::Extension(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Key, E> {
                Ok(Key::known(&s).unwrap_or(Key::Extension(s)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl Key {
    fn known(s: &str) -> Option<Key> {
        Some(match s {
            "specversion" => Key::SpecVersion,
            "id" => Key::Id,
            "source" => Key::Source,
            "type" => Key::Type,
            "datacontenttype" => Key::DataContentType,
            "dataschema" => Key::DataSchema,
            "subject" => Key::Subject,
            "time" => Key::Time,
            "data" => Key::Data,
            "data_base64" => Key::DataBase64,
            _ => return None,
        })
    }
}

/// An attribute's or extension's value as read, before it is checked.
enum Scalar {
    Null,
    Str(String),
    Bool(bool),
    Int(i64),
    /// Anything else, by the name of its kind.
    Other(&'static str),
}

impl Scalar {
    fn kind(&self) -> &'static str {
        match self {
            Scalar::Null => "null",
            Scalar::Str(_) => "a string",
            Scalar::Bool(_) => "a boolean",
            Scalar::Int(_) => "a number",
            Scalar::Other(kind) => kind,
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar::Null)
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(b))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(n))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Scalar, E> {
                Ok(i64::try_from(n).map_or(Scalar::Other("a number"), Scalar::Int))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scalar, E> {
                Ok(Scalar::Other("a number"))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(s.to_owned()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Scalar, E> {
                Ok(Scalar::Str(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar, A::Error> {
                drain_seq(seq)?;
                Ok(Scalar::Other("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Scalar, A::Error> {
                drain_map(map)?;
                Ok(Scalar::Other("an object"))
            }
        }
        d.deserialize_any(ScalarVisitor)
    }
}

/// An event object's members as read. A member given twice keeps its last value, as a
/// JSON object read into a map does.
#[derive(Default)]
struct Members {
    specversion: Option<Value>,
    id: Option<Scalar>,
    source: Option<Scalar>,
    ty: Option<Scalar>,
    datacontenttype: Option<Scalar>,
    dataschema: Option<Scalar>,
    subject: Option<Scalar>,
    time: Option<Scalar>,
    data: Option<Value>,
    data_base64: Option<Scalar>,
    extensions: HashMap<String, Scalar>,
}

fn event_from_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Element, A::Error> {
    let mut m = Members::default();
    while let Some(key) = map.next_key::<Key>()? {
        match key {
            Key::SpecVersion => m.specversion = Some(map.next_value()?),
            Key::Id => m.id = Some(map.next_value()?),
            Key::Source => m.source = Some(map.next_value()?),
            Key::Type => m.ty = Some(map.next_value()?),
            Key::DataContentType => m.datacontenttype = Some(map.next_value()?),
            Key::DataSchema => m.dataschema = Some(map.next_value()?),
            Key::Subject => m.subject = Some(map.next_value()?),
            Key::Time => m.time = Some(map.next_value()?),
            Key::Data => m.data = Some(map.next_value()?),
            Key::DataBase64 => m.data_base64 = Some(map.next_value()?),
            Key::Extension(name) => {
                let value = map.next_value()?;
                m.extensions.insert(name, value);
            }
        }
    }
    Ok(match m.into_event() {
        Ok(ev) => Element::Event(ev),
        Err(reason) => Element::Invalid(reason),
    })
}

impl Members {
    /// The event, or why these members are not one. Attributes are checked in the order the
    /// SDK checks them, so the first problem named is the same.
    fn into_event(self) -> Result<CloudEvent, String> {
        // Checked here rather than left to the SDK's rules so that the error names the
        // attribute the way the spec does, and so that an empty string counts as missing.
        match &self.specversion {
            None => return Err("missing required attribute `specversion`".into()),
            Some(Value::String(v)) if v == "1.0" => {}
            Some(other) => {
                return Err(format!(
                    "unsupported specversion {}; busbar speaks CloudEvents \"1.0\"",
                    crate::text::shorten(&other.to_string(), 40)
                ));
            }
        }
        let id = required("id", self.id)?;
        let source = required("source", self.source)?;
        let ty = required("type", self.ty)?;
        let datacontenttype = optional("datacontenttype", self.datacontenttype)?;
        let dataschema = optional("dataschema", self.dataschema)?
            .map(|s| {
                url::Url::parse(&s).map_err(|e| format!("attribute `dataschema` is not a URI ({}): {e}", quoted(&s)))
            })
            .transpose()?;
        let subject = optional("subject", self.subject)?;
        let time = optional("time", self.time)?
            .map(|s| {
                DateTime::parse_from_rfc3339(&s)
                    .map(DateTime::<Utc>::from)
                    .map_err(|e| format!("attribute `time` is not an RFC 3339 timestamp ({}): {e}", quoted(&s)))
            })
            .transpose()?;
        let is_json = is_json_content_type(datacontenttype.as_deref().unwrap_or("application/json"));
        let data = match (self.data, self.data_base64) {
            (Some(_), Some(_)) => return Err("an event cannot carry both `data` and `data_base64`".into()),
            (Some(d), None) if is_json => Some(Data::Json(d)),
            (Some(Value::String(s)), None) => Some(Data::String(s)),
            (Some(other), None) => {
                return Err(format!(
                    "`data` must be a string when `datacontenttype` is not JSON, got {}",
                    kind_of(&other)
                ));
            }
            (None, Some(Scalar::Str(b64))) => {
                let bytes =
                    BASE64_STANDARD.decode(b64).map_err(|e| format!("attribute `data_base64` is not base64: {e}"))?;
                Some(match serde_json::from_slice(&bytes) {
                    Ok(v) if is_json => Data::Json(v),
                    _ => Data::Binary(bytes),
                })
            }
            (None, Some(other)) => {
                return Err(format!("attribute `data_base64` must be a string, got {}", other.kind()));
            }
            (None, None) => None,
        };

        let mut ev = EventBuilderV10::new().id(id).source(source).ty(ty).build().map_err(|e| e.to_string())?;
        ev.set_datacontenttype(datacontenttype);
        ev.set_dataschema(dataschema);
        ev.set_subject(subject);
        ev.set_time(time);
        if let Some(data) = data {
            ev.set_data_unchecked(data);
        }
        for (name, value) in self.extensions {
            let value = match value {
                Scalar::Null => continue,
                Scalar::Str(s) => ExtensionValue::String(s),
                Scalar::Bool(b) => ExtensionValue::Boolean(b),
                Scalar::Int(n) => ExtensionValue::Integer(n),
                Scalar::Other(kind) => {
                    return Err(format!(
                        "extension `{}` must be a string, a boolean or an integer, got {kind}",
                        crate::text::shorten(&name, 40)
                    ));
                }
            };
            ev.set_extension(&name, value);
        }
        Ok(ev)
    }
}

/// A required string attribute: present, a string, not empty.
fn required(attr: &str, value: Option<Scalar>) -> Result<String, String> {
    match value {
        Some(Scalar::Str(s)) if !s.is_empty() => Ok(s),
        Some(Scalar::Str(_)) => Err(format!("attribute `{attr}` must not be empty")),
        Some(other) => Err(format!("attribute `{attr}` must be a string, got {}", other.kind())),
        None => Err(format!("missing required attribute `{attr}`")),
    }
}

/// An optional string attribute; null counts as absent.
fn optional(attr: &str, value: Option<Scalar>) -> Result<Option<String>, String> {
    match value {
        None | Some(Scalar::Null) => Ok(None),
        Some(Scalar::Str(s)) => Ok(Some(s)),
        Some(other) => Err(format!("attribute `{attr}` must be a string, got {}", other.kind())),
    }
}

/// `s` as a short JSON string, for an error message that shows the value it refuses.
fn quoted(s: &str) -> String {
    crate::text::shorten(&Value::from(s).to_string(), 40)
}

/// The SDK's rule for which content types carry JSON `data`.
fn is_json_content_type(ct: &str) -> bool {
    ct.starts_with("application/json") || ct.starts_with("text/json") || ct.ends_with("+json")
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
