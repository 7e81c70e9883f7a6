//! Each subscriber's figures on JetStream, in the same shape as the built-in bus's
//! `GET /subscribers`: what `busbar status` prints for either transport.

use std::collections::BTreeMap;

use async_nats::jetstream::{consumer, stream::Stream};
use busbar_domain::names::{all_dead_letter_subjects, dead_letter_stream_name, dead_letter_subject, stream_name};
use busbar_protocol::bus_api::SubscriberStatus;
use futures::TryStreamExt;

use super::{JetStream, dlq::ERROR_HEADER, unavailable};
use crate::TransportError;

impl JetStream {
    /// One row per durable consumer of the bus's stream, by name. What a subscriber holds
    /// parked is what it last reported ([`Self::parked_figures`]; none when unknown). Its
    /// last error is its newest dead letter's.
    pub async fn subscriber_status(&self) -> Result<Vec<SubscriberStatus>, TransportError> {
        let bus = self.bus().to_owned();
        let stream = self
            .context()
            .get_stream(stream_name(&bus))
            .await
            .map_err(|e| unavailable(format!("no stream {} for bus {bus}: {e}", stream_name(&bus))))?;
        let last = stream.cached_info().state.last_sequence;
        let dead = self.dead_letter_counts().await?;
        let infos: Vec<consumer::Info> = stream
            .consumers()
            .try_collect()
            .await
            .map_err(|e| unavailable(format!("cannot list the consumers: {e}")))?;
        let parked = self.parked_figures(&infos.iter().map(|i| i.name.clone()).collect::<Vec<_>>()).await;
        let mut rows = Vec::with_capacity(infos.len());
        for info in infos {
            let subjects = filter_subjects(&info.config);
            let dead_subject = dead_letter_subject(&bus, &info.name);
            let dead_letters = dead.get(&dead_subject).copied().unwrap_or(0);
            let last_error = if dead_letters == 0 { None } else { self.newest_error(&dead_subject).await };
            let pending = info.num_pending + info.num_ack_pending as u64;
            let oldest = if pending == 0 {
                None
            } else {
                oldest_after(&stream, &subjects, &bus, info.ack_floor.stream_sequence + 1).await
            };
            let prefix = format!("busbar.{}.", busbar_domain::names::token(&bus));
            rows.push(SubscriberStatus {
                endpoint: format!("JetStream durable {}", info.name),
                types: subjects.iter().map(|s| s.strip_prefix(&prefix).unwrap_or(s).to_owned()).collect(),
                position: info.ack_floor.stream_sequence as i64,
                lag: last.saturating_sub(info.ack_floor.stream_sequence) as i64,
                pending: pending as i64,
                oldest_pending_age_ms: oldest,
                attempts: info.num_redelivered as u32,
                last_error,
                dead_letters: dead_letters as i64,
                parked: parked.get(&info.name).copied(),
                name: info.name,
            });
        }
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(rows)
    }

    /// The error recorded with the newest dead letter on `dead_subject`, if any.
    async fn newest_error(&self, dead_subject: &str) -> Option<String> {
        let dlq = self.context().get_stream(dead_letter_stream_name(self.bus())).await.ok()?;
        let newest = dlq.get_last_raw_message_by_subject(dead_subject).await.ok()?;
        newest.headers.get(ERROR_HEADER).map(|v| v.as_str().to_owned())
    }

    /// Dead letters per dead-letter subject (none when the stream does not exist yet).
    pub async fn dead_letter_counts(&self) -> Result<BTreeMap<String, usize>, TransportError> {
        let Ok(dlq) = self.context().get_stream(dead_letter_stream_name(self.bus())).await else {
            return Ok(BTreeMap::new());
        };
        dlq.info_with_subjects(all_dead_letter_subjects(self.bus()))
            .await
            .map_err(|e| unavailable(format!("cannot read the dead letters: {e}")))?
            .try_collect()
            .await
            .map_err(|e| unavailable(format!("cannot read the dead letters: {e}")))
    }
}

/// The subjects a consumer is filtered on (the whole bus when none).
fn filter_subjects(c: &consumer::Config) -> Vec<String> {
    let mut subjects = c.filter_subjects.clone();
    if !c.filter_subject.is_empty() {
        subjects.push(c.filter_subject.clone());
    }
    subjects
}

/// Age in milliseconds of the first message at or after `from` on any of `subjects`.
async fn oldest_after(stream: &Stream, subjects: &[String], bus: &str, from: u64) -> Option<u64> {
    let all = [busbar_domain::names::all_subjects(bus)];
    let subjects = if subjects.is_empty() { &all[..] } else { subjects };
    let mut oldest_nanos: Option<i128> = None;
    for s in subjects {
        if let Ok(m) = stream.get_first_raw_message_by_subject(s, from).await {
            let at = m.time.unix_timestamp_nanos();
            oldest_nanos = Some(oldest_nanos.map_or(at, |o| o.min(at)));
        }
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos() as i128;
    Some(((now - oldest_nanos?) / 1_000_000).max(0) as u64)
}
