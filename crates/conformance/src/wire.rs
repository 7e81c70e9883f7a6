//! The probe's HTTP API bodies.

use serde::{Deserialize, Serialize};

use crate::events::Poison;

/// `POST /emit`: the items are emitted in order, each event in its own transaction
/// unless `per_tx` groups several, and the answer comes only after every commit.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmitRequest {
    pub items: Vec<EmitItem>,
    /// Events per transaction (default 1). Only to make long histories cheap to write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_tx: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmitItem {
    pub aggregate: String,
    #[serde(rename = "type")]
    pub ty: String,
    /// How many events of this type, one after the other (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// Emit exactly this version instead of the aggregate's next one (with `count` 1), to
    /// publish versions out of order on purpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poison: Option<Poison>,
}

impl EmitItem {
    pub fn new(aggregate: impl Into<String>, ty: &str) -> Self {
        Self { aggregate: aggregate.into(), ty: ty.to_owned(), count: None, version: None, poison: None }
    }

    pub fn count(mut self, n: usize) -> Self {
        self.count = Some(n);
        self
    }

    pub fn version(mut self, v: i64) -> Self {
        self.version = Some(v);
        self
    }

    pub fn poison(mut self, p: Poison) -> Self {
        self.poison = Some(p);
        self
    }
}

/// One event the probe emitted (committed), as `POST /emit` and `GET /emitted` report it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Emitted {
    pub id: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub aggregate: String,
    pub version: i64,
}

/// One application of a received event, as `GET /applied` lists them (application order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub seq: i64,
    pub id: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub aggregate: String,
    pub version: Option<i64>,
    /// Milliseconds since the Unix epoch.
    pub at: i64,
}

/// `GET /stats`: cheap counts to wait on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub applied: i64,
    pub emitted: i64,
    /// Events parked in the inbox waiting for an earlier version.
    pub parked: i64,
}

/// `POST /cure`: `fail` poison on these aggregates passes from now on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cure {
    pub aggregates: Vec<String>,
}
