//! The built-in bus's HTTP API, as types. The bus serves them, the SDK's receiver answers
//! pushes with them, and `busbar dlq`, `busbar status` and the operator read them: nobody
//! writes or parses this JSON by hand.
//!
//! | route | request | answer |
//! |---|---|---|
//! | `POST /events` | a CloudEvent or an array | [`Accepted`] |
//! | `GET /events?after&limit&type` ([`ReplayQuery`]) | | a JSON array of CloudEvents; [`NEXT_AFTER_HEADER`], [`HEAD_HEADER`] |
//! | push: `POST <subscriber>/events` | an array of CloudEvents | [`Receipt`], or [`PushFailure`] with 4xx/5xx |
//! | `GET /subscribers` | | `[`[`SubscriberStatus`]`]` |
//! | `GET /deadletters?subscriber&limit` | | `[`[`DeadLetter`]`]` |
//! | `POST /deadletters` | [`NewDeadLetter`] | [`RecordedDeadLetter`] |
//! | `POST /deadletters/redrive?subscriber`, `POST /deadletters/{id}/redrive` | | [`RedriveResult`] |
//!
//! Every error is [`ErrorBody`] (`{"error": "..."}`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Replay answer header: the `after` to pass for the next page.
pub const NEXT_AFTER_HEADER: &str = "x-busbar-next-after";
/// Replay answer header: the log's last sequence when the page was read.
pub const HEAD_HEADER: &str = "x-busbar-head";
/// Content type of a batch of CloudEvents (a JSON array), as pushes and publishes send it.
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";
/// Content type of one CloudEvent in structured mode.
pub const EVENT_CONTENT_TYPE: &str = "application/cloudevents+json";

/// Any error answer: what went wrong, in a sentence that says what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// `POST /events` answered 200: the events are durable (duplicates count as accepted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Accepted {
    pub accepted: usize,
}

/// `GET /events`' query. All optional: plain `GET /events` is the first page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayQuery {
    /// Events stored after this sequence (default 0: from the start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<i64>,
    /// At most this many (default 1,000, at most 10,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// Only these types, comma-separated (a comma cannot occur in an event type).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub ty: Option<String>,
}

/// What a subscriber holds back: events parked until an earlier version of their
/// aggregate arrives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Parked {
    pub count: u64,
    /// How long the oldest has waited, in milliseconds (0 when none is parked).
    pub oldest_age_ms: u64,
}

/// A subscriber's 200 answer to a push: every event is committed, and how each went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Receipt {
    /// Events handled: all of them.
    pub handled: usize,
    /// Applied by the handler (parked successors applied right after count too).
    pub applied: usize,
    /// Already handled before: no effect.
    pub duplicates: usize,
    /// Parked until an earlier version of their aggregate arrives.
    pub deferred: usize,
    /// Older than what was applied: ignored.
    pub stale: usize,
    /// Everything the subscriber holds parked after this push, when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked: Option<Parked>,
}

/// A subscriber's answer when it could not handle a whole push: the events before
/// `handled` are committed; the bus resumes from there. 422 means the event itself can
/// never be handled (its data is not what its type says); 500 that handling failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PushFailure {
    pub error: String,
    /// Leading events of the push that did commit.
    #[serde(default)]
    pub handled: usize,
    /// The event that failed, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

/// One subscriber as `GET /subscribers` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriberStatus {
    pub name: String,
    /// Where its events are pushed.
    pub endpoint: String,
    /// The event types it receives.
    pub types: Vec<String>,
    /// The log sequence it has been given everything up to.
    pub position: i64,
    /// Events in the log after its position (of any type).
    pub lag: i64,
    /// Events of its types after its position: what it has yet to be given.
    #[serde(default)]
    pub pending: i64,
    /// How long the oldest of those has waited, in milliseconds (none when nothing is
    /// pending).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_pending_age_ms: Option<u64>,
    /// Failed attempts at the event it is stuck on (0 when it is not).
    pub attempts: u32,
    /// The error of the event it is stuck on, else of its newest dead letter (JetStream
    /// knows only the latter).
    pub last_error: Option<String>,
    /// Its dead letters.
    pub dead_letters: i64,
    /// What it holds parked, as it last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked: Option<Parked>,
}

/// Whether a dead letter waits for a person, or is being delivered again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeadLetterState {
    #[default]
    Dead,
    Redriving,
}

impl std::fmt::Display for DeadLetterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeadLetterState::Dead => "dead",
            DeadLetterState::Redriving => "redriving",
        })
    }
}

/// An event a subscriber gave up on after `delivery.maxDeliver` attempts, with the last
/// error. The same shape on both transports: the built-in bus's `GET /deadletters`, and
/// JetStream's dead-letter stream as the SDK reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeadLetter {
    /// What to redrive it by: the bus's dead-letter id, or on JetStream its sequence in
    /// the dead-letter stream.
    pub id: u64,
    /// The subscriber that gave up on it.
    pub subscriber: String,
    /// The event's sequence in the bus's log or stream, when known.
    #[serde(default)]
    pub seq: Option<u64>,
    /// `None` when the payload is not a CloudEvent (it was dead-lettered for that).
    #[serde(default)]
    pub event_id: Option<String>,
    #[serde(default, rename = "type")]
    pub ty: Option<String>,
    pub attempts: u32,
    pub last_error: String,
    /// When it was dead-lettered, in milliseconds since the Unix epoch.
    pub dead_at: i64,
    #[serde(default)]
    pub state: DeadLetterState,
    /// The event: its JSON, or its text if it is not JSON.
    #[serde(default)]
    pub event: serde_json::Value,
}

/// `POST /deadletters`: a subscriber gives up on an event it had already taken from the
/// bus (one parked too long waiting for an earlier version, or one that kept failing once
/// its turn came). With a bus key, a service may record dead letters only as itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NewDeadLetter {
    pub subscriber: String,
    /// The CloudEvent, as JSON.
    pub event: serde_json::Value,
    pub attempts: u32,
    pub error: String,
}

/// Answer to `POST /deadletters`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RecordedDeadLetter {
    pub id: u64,
}

/// Answer to a redrive request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RedriveResult {
    /// Dead letters now being delivered again.
    pub redriving: u64,
    /// Whose.
    pub subscribers: Vec<String>,
}

/// The JSON Schema of every type above, by name, for documentation and for clients in
/// other languages.
pub fn schemas() -> Vec<(&'static str, schemars::Schema)> {
    vec![
        ("ErrorBody", schemars::schema_for!(ErrorBody)),
        ("Parked", schemars::schema_for!(Parked)),
        ("Accepted", schemars::schema_for!(Accepted)),
        ("ReplayQuery", schemars::schema_for!(ReplayQuery)),
        ("Receipt", schemars::schema_for!(Receipt)),
        ("PushFailure", schemars::schema_for!(PushFailure)),
        ("SubscriberStatus", schemars::schema_for!(SubscriberStatus)),
        ("DeadLetter", schemars::schema_for!(DeadLetter)),
        ("NewDeadLetter", schemars::schema_for!(NewDeadLetter)),
        ("RecordedDeadLetter", schemars::schema_for!(RecordedDeadLetter)),
        ("RedriveResult", schemars::schema_for!(RedriveResult)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_failure_reads_with_or_without_its_optional_fields() {
        let f: PushFailure = serde_json::from_str(r#"{"error":"boom"}"#).unwrap();
        assert_eq!((f.handled, f.event_id), (0, None));
        let f: PushFailure = serde_json::from_str(r#"{"error":"boom","handled":3,"event_id":"e"}"#).unwrap();
        assert_eq!((f.handled, f.event_id.as_deref()), (3, Some("e")));
    }

    #[test]
    fn subscriber_status_speaks_camel_case_and_dead_letters_snake_case() {
        let s = SubscriberStatus {
            name: "query".into(),
            endpoint: "http://q/events".into(),
            types: vec!["A".into()],
            position: 4,
            lag: 1,
            pending: 1,
            oldest_pending_age_ms: Some(40),
            attempts: 0,
            last_error: None,
            dead_letters: 2,
            parked: None,
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!((v["lastError"].is_null(), v["deadLetters"].as_i64()), (true, Some(2)));
        let d: DeadLetter = serde_json::from_str(
            r#"{"id":1,"subscriber":"q","event_id":"e","type":"A","attempts":3,"last_error":"x","dead_at":5}"#,
        )
        .unwrap();
        assert_eq!((d.state, d.seq, d.event.is_null()), (DeadLetterState::Dead, None, true));
    }

    #[test]
    fn every_type_has_a_schema() {
        let names: Vec<_> = schemas().into_iter().map(|(n, s)| (n, s.as_value().is_object())).collect();
        assert!(names.iter().all(|(_, ok)| *ok) && names.len() == 11, "{names:?}");
    }
}
