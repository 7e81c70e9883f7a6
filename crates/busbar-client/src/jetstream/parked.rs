//! What each subscriber holds parked, on JetStream.
//!
//! The built-in bus learns it from each push's receipt. JetStream learns nothing from a
//! subscriber but acks, so each subscriber reports it into the bus's key-value bucket
//! ([`parked_bucket`]): one key per durable, the latest [`Parked`] figure only (history 1).
//! The SDK's parking sweeper writes it when it changes, and at least every few seconds
//! as a heartbeat; an entry expires after [`PARKED_MAX_AGE`], so a subscriber that stopped
//! reporting (gone, or cut off from NATS) shows "unknown" rather than a stale figure.
//! `busbar status` and the operator read it; a missing bucket or entry is unknown, never
//! an error.

use std::{collections::BTreeMap, time::Duration};

use async_nats::jetstream::{kv, stream::StorageType};
use busbar_domain::names::{durable, parked_bucket};
use busbar_protocol::bus_api::Parked;

use super::{JetStream, unavailable};
use crate::TransportError;

/// How long a reported figure stands without being written again.
pub const PARKED_MAX_AGE: Duration = Duration::from_secs(60);

impl JetStream {
    /// Records that `subscriber` holds `parked` now (creating the bucket on first use).
    pub async fn report_parked(&self, subscriber: &str, parked: Parked) -> Result<(), TransportError> {
        let store = self
            .parked_store
            .get_or_try_init(|| async {
                let bucket = parked_bucket(self.bus());
                if let Ok(store) = self.context().get_key_value(&bucket).await {
                    return Ok(store);
                }
                self.context()
                    .create_key_value(kv::Config {
                        bucket: bucket.clone(),
                        description: format!("what each subscriber of bus {} holds parked", self.bus()),
                        history: 1,
                        max_age: PARKED_MAX_AGE,
                        storage: StorageType::Memory,
                        num_replicas: self.replicas,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| unavailable(format!("cannot create key-value bucket {bucket}: {e}")))
            })
            .await?;
        let value = serde_json::to_vec(&parked).expect("Parked serializes");
        store
            .put(durable(subscriber), value.into())
            .await
            .map(drop)
            .map_err(|e| unavailable(format!("cannot report parked events: {e}")))
    }

    /// What each of `durables` last reported holding parked, with the oldest's age brought
    /// up to now. Durables without a current report (or no bucket at all, or NATS not
    /// answering) are left out: unknown.
    pub async fn parked_figures(&self, durables: &[String]) -> BTreeMap<String, Parked> {
        let mut out = BTreeMap::new();
        let Ok(store) = self.context().get_key_value(parked_bucket(self.bus())).await else { return out };
        for name in durables {
            match store.entry(name.as_str()).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                    if let Ok(p) = serde_json::from_slice::<Parked>(&entry.value) {
                        out.insert(name.clone(), aged(p, entry.created.unix_timestamp_nanos()));
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(durable = name, error = %e, "cannot read what it holds parked"),
            }
        }
        out
    }
}

/// `p` as reported at `reported_nanos` (Unix time), its oldest age as of now.
fn aged(p: Parked, reported_nanos: i128) -> Parked {
    if p.count == 0 {
        return p;
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
    let since = ((now - reported_nanos) / 1_000_000).max(0) as u64;
    Parked { count: p.count, oldest_age_ms: p.oldest_age_ms + since }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_age_grows_from_the_report() {
        let ten_s_ago = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i128
            - 10_000_000_000;
        let p = aged(Parked { count: 2, oldest_age_ms: 5_000 }, ten_s_ago);
        assert_eq!(p.count, 2);
        assert!((15_000..16_000).contains(&p.oldest_age_ms), "{p:?}");
        assert_eq!(aged(Parked::default(), ten_s_ago), Parked::default(), "nothing parked has no age");
    }
}
