//! Dead letters on JetStream: list them, and redrive them once the handler is fixed.
//!
//! A subscriber that gives up on an event copies it to the bus's dead-letter stream
//! `BUSBAR_<BUS>_DLQ`, on subject `busbar-dlq.<bus>.<subscriber>`, with the last error,
//! the attempts, the event's subject and its sequence in the bus's stream as headers,
//! then terminates the original. A dead letter's id is its sequence in that stream.
//!
//! **Redrive** publishes the event again on its own subject in the bus's stream, so the
//! subscriber's durable consumer (whose filter already covers that subject, on any
//! server version) receives it after everything it has seen. The copy carries
//! [`REDRIVE_FOR_HEADER`] naming that subscriber: other subscribers of the type
//! acknowledge it without handling it, and replay leaves it out, so only the subscriber
//! that dead-lettered the event sees it again, and history keeps one copy of each event.
//! (A subject of its own per subscriber would save the others that acknowledgement,
//! but a consumer filtered on one event type would then need two filter subjects,
//! which servers before 2.10 cannot do.) Its `Nats-Msg-Id` is
//! `<event id>:redrive:<dead-letter id>`: the original publish used the event id, which
//! JetStream would still drop as a duplicate within its window, and redriving the same
//! dead letter twice stores one copy.
//!
//! The dead letter is deleted only after JetStream has acknowledged the copy. A crash in
//! between leaves it listed; redriving it again at worst delivers the event twice, which
//! the subscriber's inbox drops.

use async_nats::{
    HeaderMap,
    jetstream::{
        self,
        consumer::{DeliverPolicy, pull},
        stream::{DeleteMessageErrorKind, LastRawMessageErrorKind},
    },
};
use busbar_domain::names::{dead_letter_stream_name, dead_letter_subject, subject, token};
use busbar_protocol::{AttributesReader, bus_api::DeadLetter, envelope};
use bytes::Bytes;

use super::{JetStream, unavailable};
use crate::TransportError;

/// The handler's last error.
pub const ERROR_HEADER: &str = "Busbar-Error";
/// How many times the subscriber tried.
pub const ATTEMPTS_HEADER: &str = "Busbar-Attempts";
/// The event's subject in the bus's stream.
pub const SUBJECT_HEADER: &str = "Busbar-Subject";
/// The event's sequence in the bus's stream.
pub const SEQUENCE_HEADER: &str = "Busbar-Stream-Sequence";
/// On a redriven copy: the one subscriber (durable) it is for.
pub const REDRIVE_FOR_HEADER: &str = "Busbar-Redrive-For";
/// On a redriven copy: the dead letter it came from.
pub const REDRIVEN_FROM_HEADER: &str = "Busbar-Redriven-From";

/// Longest error text kept in a header; NATS headers travel with every message.
const MAX_ERROR_LEN: usize = 4096;
/// Dead letters read per request while redriving them all.
const PAGE: usize = 500;

/// A dead letter as read from the stream, with what redriving it needs.
struct Stored {
    letter: DeadLetter,
    /// The event's subject in the bus's stream, when recorded.
    subject: Option<String>,
    payload: Bytes,
}

/// A redrive done: the dead letter and where its copy now sits in the bus's stream.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Redriven {
    pub id: u64,
    pub subscriber: String,
    pub event_id: Option<String>,
    pub seq: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("no dead letter {id} on bus {bus}{}; `busbar dlq list` shows the ids",
        subscriber.as_ref().map(|s| format!(" for subscriber {s}")).unwrap_or_default())]
    NotFound { bus: String, id: u64, subscriber: Option<String> },
    #[error(
        "bus {bus} has no dead-letter stream {stream}: check the bus name (its subscribers create it when they start)"
    )]
    NoStream { bus: String, stream: String },
    #[error("dead letter {id} cannot be redriven: {reason}")]
    Unroutable { id: u64, reason: String },
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Whether `msg` is for the subscriber `durable`: true unless it is a redriven copy for
/// another one.
pub fn is_for(msg: &jetstream::Message, durable: &str) -> bool {
    match msg.headers.as_ref().and_then(|h| h.get(REDRIVE_FOR_HEADER)) {
        Some(target) => target.as_str() == token(durable),
        None => true,
    }
}

/// Whether `msg` is a redriven copy of an earlier event.
pub fn is_redrive(msg: &jetstream::Message) -> bool {
    msg.headers.as_ref().is_some_and(|h| h.get(REDRIVE_FOR_HEADER).is_some())
}

/// `text` as a header value: one line (NATS headers cannot hold line breaks), at most
/// [`MAX_ERROR_LEN`] bytes.
pub fn header_text(text: &str) -> String {
    busbar_protocol::text::one_line_bytes(text, MAX_ERROR_LEN)
}

impl JetStream {
    /// Records that subscriber `durable` gave up on `event`, which it had already
    /// acknowledged (e.g. one parked too long): a copy goes to the dead-letter stream with
    /// the reason, as [`Self::record_dead_letter`] does for a message in hand.
    pub async fn record_dead_letter_event(
        &self,
        durable: &str,
        event: &busbar_protocol::CloudEvent,
        attempts: u32,
        error: &str,
    ) -> Result<(), TransportError> {
        let mut headers = HeaderMap::new();
        headers.insert(ERROR_HEADER, header_text(error).as_str());
        headers.insert(ATTEMPTS_HEADER, attempts.to_string().as_str());
        headers.insert(SUBJECT_HEADER, subject(&self.bus, event.ty()).as_str());
        let payload = serde_json::to_vec(event).expect("CloudEvents serialize");
        self.js
            .publish_with_headers(dead_letter_subject(&self.bus, durable), headers, payload.into())
            .await
            .map_err(|e| unavailable(format!("dead-letter publish failed: {e}")))?
            .await
            .map_err(|e| unavailable(format!("dead-letter store failed: {e}")))?;
        Ok(())
    }

    /// Records that subscriber `durable` gave up on `msg` after `attempts` attempts: copies
    /// it, with the error and where it came from, to the dead-letter stream, then
    /// terminates the original so JetStream stops redelivering it.
    pub async fn record_dead_letter(
        &self,
        durable: &str,
        msg: &jetstream::Message,
        attempts: u32,
        error: &str,
    ) -> Result<(), TransportError> {
        let mut headers = HeaderMap::new();
        headers.insert(ERROR_HEADER, header_text(error).as_str());
        headers.insert(ATTEMPTS_HEADER, attempts.to_string().as_str());
        headers.insert(SUBJECT_HEADER, msg.subject.as_str());
        if let Ok(info) = msg.info() {
            headers.insert(SEQUENCE_HEADER, info.stream_sequence.to_string().as_str());
        }
        self.js
            .publish_with_headers(dead_letter_subject(&self.bus, durable), headers, msg.payload.clone())
            .await
            .map_err(|e| unavailable(format!("dead-letter publish failed: {e}")))?
            .await
            .map_err(|e| unavailable(format!("dead-letter store failed: {e}")))?;
        tracing::warn!(%durable, attempts, %error, "giving up on event: moved to the dead-letter stream");
        msg.ack_with(async_nats::jetstream::AckKind::Term).await.map_err(|e| unavailable(format!("term failed: {e}")))
    }

    /// Up to `limit` dead letters of this bus after id `after` (0 for the first),
    /// oldest first; only `subscriber`'s when given.
    pub async fn list_dead_letters(
        &self,
        subscriber: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, DeadLetterError> {
        self.dead_letter_stream().await?;
        let config = pull::Config {
            filter_subject: subscriber.map(|s| dead_letter_subject(&self.bus, s)).unwrap_or_default(),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
            ..Default::default()
        };
        let (messages, _) = self.read_once(&dead_letter_stream_name(&self.bus), config, limit).await?;
        let mut out = Vec::with_capacity(messages.len());
        for msg in messages {
            let info = msg.info().map_err(unavailable)?;
            let empty = HeaderMap::new();
            let headers = msg.headers.as_ref().unwrap_or(&empty);
            out.push(
                self.parse(info.stream_sequence, &msg.subject, headers, msg.payload.clone(), info.published).letter,
            );
        }
        Ok(out)
    }

    /// Redrives dead letter `id` (see the module docs). With `subscriber`, the dead
    /// letter must be that subscriber's.
    pub async fn redrive(&self, id: u64, subscriber: Option<&str>) -> Result<Redriven, DeadLetterError> {
        let stream = self.dead_letter_stream().await?;
        let not_found =
            || DeadLetterError::NotFound { bus: self.bus.clone(), id, subscriber: subscriber.map(str::to_owned) };
        let raw = match stream.get_raw_message(id).await {
            Ok(m) => m,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Err(not_found()),
            Err(e) => return Err(unavailable(format!("cannot read dead letter {id}: {e}")).into()),
        };
        let dl = self.parse(raw.sequence, &raw.subject, &raw.headers, raw.payload, raw.time);
        if subscriber.is_some_and(|s| token(s) != dl.letter.subscriber) {
            return Err(not_found());
        }
        self.redrive_one(&stream, dl).await
    }

    /// Redrives every dead letter there is now (only `subscriber`'s when given), oldest
    /// first. Dead letters added meanwhile, including events that fail again, wait for
    /// the next call.
    pub async fn redrive_all(&self, subscriber: Option<&str>) -> Result<Vec<Redriven>, DeadLetterError> {
        let mut stream = self.dead_letter_stream().await?;
        let last = stream.info().await.map_err(unavailable)?.state.last_sequence;
        let (mut after, mut done) = (0, vec![]);
        // Each page moves `after` forward, and no id passes `last`: the loop ends.
        while after < last {
            let page = self.list_dead_letters(subscriber, after, PAGE).await?;
            let Some(end) = page.last().map(|d| d.id) else { break };
            for dl in page.into_iter().filter(|d| d.id <= last) {
                // Read again with its headers: the listing keeps only what it shows.
                let raw = match stream.get_raw_message(dl.id).await {
                    Ok(m) => m,
                    Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => continue,
                    Err(e) => return Err(unavailable(format!("cannot read dead letter {}: {e}", dl.id)).into()),
                };
                let stored = self.parse(raw.sequence, &raw.subject, &raw.headers, raw.payload, raw.time);
                done.push(self.redrive_one(&stream, stored).await?);
            }
            after = end;
        }
        Ok(done)
    }

    async fn redrive_one(
        &self,
        stream: &jetstream::stream::Stream,
        stored: Stored,
    ) -> Result<Redriven, DeadLetterError> {
        let Stored { letter: dl, subject: recorded_subject, payload } = stored;
        let subject = match (&recorded_subject, &dl.ty) {
            (Some(s), _) => s.clone(),
            (None, Some(ty)) => subject(&self.bus, ty),
            (None, None) => {
                return Err(DeadLetterError::Unroutable {
                    id: dl.id,
                    reason: "it is not a CloudEvent and its subject was not recorded".into(),
                });
            }
        };
        let mut headers = HeaderMap::new();
        let msg_id = match &dl.event_id {
            Some(event_id) => format!("{event_id}:redrive:{}", dl.id),
            None => format!("{}:redrive:{}", dead_letter_stream_name(&self.bus), dl.id),
        };
        headers.insert("Nats-Msg-Id", header_text(&msg_id).as_str());
        headers.insert(REDRIVE_FOR_HEADER, dl.subscriber.as_str());
        headers.insert(REDRIVEN_FROM_HEADER, dl.id.to_string().as_str());
        let ack = self
            .js
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| unavailable(format!("redrive {}: {e}", dl.id)))?;
        let ack = tokio::time::timeout(super::PUBLISH_TIMEOUT, ack)
            .await
            .map_err(|_| unavailable(format!("JetStream did not acknowledge redrive {} in time", dl.id)))?
            .map_err(|e| unavailable(format!("JetStream did not store redrive {}: {e}", dl.id)))?;
        // Only now that the copy is stored. Already gone (a concurrent redrive) is fine.
        match stream.delete_message(dl.id).await {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), DeleteMessageErrorKind::JetStream(_)) => {
                tracing::debug!(id = dl.id, error = %e, "dead letter already gone");
            }
            Err(e) => return Err(unavailable(format!("redriven {} but could not delete it: {e}", dl.id)).into()),
        }
        tracing::info!(id = dl.id, subscriber = %dl.subscriber, event_id = ?dl.event_id, seq = ack.sequence, "dead letter redriven");
        Ok(Redriven { id: dl.id, subscriber: dl.subscriber, event_id: dl.event_id, seq: ack.sequence })
    }

    async fn dead_letter_stream(&self) -> Result<jetstream::stream::Stream, DeadLetterError> {
        let name = dead_letter_stream_name(&self.bus);
        match self.js.get_stream(&name).await {
            Ok(s) => Ok(s),
            Err(e) if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) => {
                Err(DeadLetterError::NoStream { bus: self.bus.clone(), stream: name })
            }
            Err(e) => Err(unavailable(format!("cannot open stream {name}: {e}")).into()),
        }
    }

    fn parse(
        &self,
        id: u64,
        msg_subject: &str,
        headers: &HeaderMap,
        payload: Bytes,
        time: async_nats::datetime::DateTime,
    ) -> Stored {
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        let prefix = format!("busbar-dlq.{}.", token(&self.bus));
        let subscriber = msg_subject.strip_prefix(&prefix).unwrap_or(msg_subject).to_owned();
        let text = String::from_utf8_lossy(&payload);
        let decoded = envelope::decode_one(&text).ok();
        let letter = DeadLetter {
            id,
            subscriber,
            seq: header(SEQUENCE_HEADER).and_then(|s| s.parse().ok()),
            event_id: decoded.as_ref().map(|e| e.id().to_owned()),
            ty: decoded.as_ref().map(|e| e.ty().to_owned()),
            attempts: header(ATTEMPTS_HEADER).and_then(|s| s.parse().ok()).unwrap_or(0),
            last_error: header(ERROR_HEADER).unwrap_or_default(),
            dead_at: (time.unix_timestamp_nanos() / 1_000_000) as i64,
            state: Default::default(),
            event: serde_json::from_str(&text).unwrap_or_else(|_| serde_json::Value::String(text.into_owned())),
        };
        Stored { letter, subject: header(SUBJECT_HEADER), payload }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_text_is_one_bounded_line() {
        assert_eq!(header_text("a\r\nb\nc"), "a  b c");
        let long = "é".repeat(MAX_ERROR_LEN);
        let cut = header_text(&long);
        assert!(cut.len() <= MAX_ERROR_LEN + '…'.len_utf8() && cut.ends_with('…'));
        let _ = async_nats::HeaderValue::from(cut.as_str()); // would panic on a line break
    }
}
