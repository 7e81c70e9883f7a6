//! Publishing to the bus's stream (pipelined, deduplicated by event id) and reading its
//! history back (replay, for backfill).

use async_nats::{
    HeaderMap,
    jetstream::consumer::{DeliverPolicy, pull},
};
use busbar_domain::names::{stream_name, subject};
use busbar_protocol::{
    AttributesReader,
    envelope::{self, CloudEvent},
};

use super::{JetStream, PUBLISH_TIMEOUT, PUBLISH_WINDOW, dlq, unavailable};
use crate::{ReplayPage, TransportError};

impl JetStream {
    /// Publishes `events` in order; `Ok` only once JetStream has stored every one.
    pub async fn publish(&self, events: &[CloudEvent]) -> Result<(), TransportError> {
        self.streams_ready.get_or_try_init(|| self.ensure_streams()).await?;
        // Pipelined in windows: send a window, then wait for its acknowledgements. async-nats
        // admits a bounded number of publishes awaiting acks (5000) and waits for a free slot
        // without a time limit, so unbounded batches from concurrent callers could deadlock.
        for window in events.chunks(PUBLISH_WINDOW) {
            let step = async {
                let mut acks = Vec::with_capacity(window.len());
                for ev in window {
                    let mut headers = HeaderMap::new();
                    headers.insert("Nats-Msg-Id", ev.id());
                    let payload = serde_json::to_vec(ev).expect("CloudEvents serialize");
                    let ack = self
                        .js
                        .publish_with_headers(subject(&self.bus, ev.ty()), headers, payload.into())
                        .await
                        .map_err(|e| unavailable(format!("publish {}: {e}", ev.id())))?;
                    acks.push(ack);
                }
                for ack in acks {
                    ack.await.map_err(|e| unavailable(format!("JetStream did not store the event: {e}")))?;
                }
                Ok::<_, TransportError>(())
            };
            tokio::time::timeout(PUBLISH_TIMEOUT, step)
                .await
                .map_err(|_| unavailable(format!("JetStream did not acknowledge within {PUBLISH_TIMEOUT:?}")))??;
        }
        Ok(())
    }

    /// Up to `limit` events of `types` (all if empty) stored after stream sequence `after`.
    /// The bus stream's last sequence now.
    pub async fn head(&self) -> Result<u64, TransportError> {
        let stream = self.context().get_stream(stream_name(&self.bus)).await.map_err(unavailable)?;
        Ok(stream.cached_info().state.last_sequence)
    }

    pub async fn replay(&self, after: u64, limit: usize, types: &[&str]) -> Result<ReplayPage, TransportError> {
        let subjects: Vec<String> = types.iter().map(|t| subject(&self.bus, t)).collect();
        let (filter_subject, filter_subjects) = match subjects.as_slice() {
            [one] => (one.clone(), vec![]),
            _ if self.multi_filter() => (String::new(), subjects),
            _ => (String::new(), vec![]),
        };
        let config = pull::Config {
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
            filter_subject,
            filter_subjects,
            ..Default::default()
        };
        let (messages, pending) = self.read_once(&stream_name(&self.bus), config, limit).await?;
        // Judged by what was pending, not by a short page: a fetch that ran out of time
        // early must not end a backfill.
        let done = messages.len() as u64 >= pending;
        let (mut events, mut next) = (vec![], after);
        for msg in messages {
            next = msg.info().map_err(unavailable)?.stream_sequence;
            if dlq::is_redrive(&msg) {
                // A copy of an earlier event put back for one subscriber: not history.
                continue;
            }
            let text = std::str::from_utf8(&msg.payload).map_err(unavailable)?;
            let ev = envelope::decode_one(text).map_err(unavailable)?;
            // Servers before 2.10 cannot filter on several subjects: filter here too.
            if types.is_empty() || types.contains(&ev.ty()) {
                events.push(ev);
            }
        }
        Ok(ReplayPage { events, next, done })
    }
}
