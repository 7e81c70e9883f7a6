//! A valid CloudEvent's JSON with one thing broken, for the property tests of every
//! CloudEvents decoder (the SDK's envelope, the bus's HTTP input). Each test draws the
//! spoils from its own strategy; what they do to an event is defined once, here.

use serde_json::{Value, json};

/// CloudEvents 1.0 context attributes: a generated extension must not take these names.
pub const CONTEXT_ATTRIBUTES: [&str; 8] =
    ["id", "source", "type", "specversion", "subject", "time", "datacontenttype", "dataschema"];

#[derive(Debug, Clone)]
pub enum Spoil {
    /// Drop a required attribute.
    Remove(&'static str),
    /// Set an attribute to the empty string.
    Empty(&'static str),
    /// Set a string attribute to another JSON type.
    NotAString(&'static str, Value),
    SpecVersion(Value),
    /// A `time` that is not an RFC 3339 timestamp.
    BadTime(String),
    /// An extension attribute whose value CloudEvents does not allow.
    BadExtension(Value),
    /// Replace the whole event with something that is not an object.
    NotAnObject(Value),
}

impl Spoil {
    pub fn apply(&self, event: &mut Value) {
        if let Spoil::NotAnObject(x) = self {
            *event = x.clone();
            return;
        }
        let o = event.as_object_mut().expect("spoil a CloudEvent object");
        match self {
            Spoil::Remove(a) => {
                o.remove(*a);
            }
            Spoil::Empty(a) => {
                o.insert((*a).into(), json!(""));
            }
            Spoil::NotAString(a, x) => {
                o.insert((*a).into(), x.clone());
            }
            Spoil::SpecVersion(x) => {
                o.insert("specversion".into(), x.clone());
            }
            Spoil::BadTime(t) => {
                o.insert("time".into(), json!(t));
            }
            Spoil::BadExtension(x) => {
                o.insert("weirdext".into(), x.clone());
            }
            Spoil::NotAnObject(_) => unreachable!("handled above"),
        }
    }
}
