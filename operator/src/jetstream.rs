//! JetStream provisioning: the bus's stream and dead-letter stream, and one durable pull
//! consumer per subscribing service, with the same configuration the SDK's subscriber
//! asks for (`SubscribeOptions::consumer_config`), so the two never fight over it.
//!
//! Every consumer on the stream `BUSBAR_<BUS>` belongs to this ServiceBus: the stream's
//! name is busbar's, so consumers of services that left the spec are deleted. Streams are
//! kept on delete, like the built-in bus's volume: they hold the events.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use async_nats::jetstream::consumer::pull;
use busbar_client::jetstream::{JetStream, SubscribeOptions};
use busbar_domain::{
    names::{dead_letter_stream_name, dead_letter_subject, stream_name},
    spec::ServiceBusSpec,
};
use futures::TryStreamExt;
use tokio::sync::Mutex;

use crate::plan::{SubscriberStats, TransportState};

/// Bounds one provisioning pass, so an unreachable NATS fails a reconcile instead of hanging it.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Keeps one NATS connection per (url, bus) across reconciles.
#[derive(Default)]
pub struct Provisioner {
    conns: Mutex<HashMap<(String, String), JetStream>>,
    /// The admin token per (url, bus), when the bus has a key: NATS configured with
    /// `nats_auth::authorization_block` admits the operator only with it.
    tokens: Mutex<HashMap<(String, String), String>>,
}

/// The consumers a spec needs, by durable name.
pub fn desired_consumers(bus: &str, spec: &ServiceBusSpec, multi_filter: bool) -> BTreeMap<String, pull::Config> {
    spec.services
        .iter()
        .filter(|s| !s.subscribes.is_empty())
        .map(|s| {
            let opts = SubscribeOptions {
                durable: s.name.clone(),
                types: s.subscribed_types().into_iter().map(str::to_owned).collect(),
                start_from: s.start_from(),
                max_deliver: spec.max_deliver(),
                ack_wait: spec.ack_wait(),
                backoff: spec.backoff(),
            };
            let config = opts.consumer_config(bus, multi_filter);
            (config.durable_name.clone().unwrap_or_default(), config)
        })
        .collect()
}

/// What to do with one existing consumer. JetStream cannot change where a consumer starts
/// (its deliver policy); recreating it would lose its position and redeliver or skip
/// events, so the consumer is kept as it is and the change is reported.
#[derive(Debug, PartialEq)]
pub enum ConsumerChange {
    Unchanged,
    Update(Box<pull::Config>),
    /// Updated except for the deliver policy, which stays; the sentence says why.
    KeepStart(Box<pull::Config>, String),
}

pub fn consumer_change(existing: &pull::Config, desired: &pull::Config) -> ConsumerChange {
    let mut next = desired.clone();
    let mut warning = None;
    if existing.deliver_policy != desired.deliver_policy {
        warning = Some(format!(
            "consumer {} keeps its start position ({:?}): JetStream cannot change where an existing consumer starts; delete the consumer to start it again from {:?}",
            desired.durable_name.as_deref().unwrap_or_default(),
            existing.deliver_policy,
            desired.deliver_policy
        ));
        next.deliver_policy = existing.deliver_policy;
    }
    let same = existing.filter_subject == next.filter_subject
        && existing.filter_subjects == next.filter_subjects
        && existing.ack_wait == next.ack_wait
        && existing.max_deliver == next.max_deliver
        && existing.ack_policy == next.ack_policy;
    match (same, warning) {
        (true, None) => ConsumerChange::Unchanged,
        (true, Some(w)) => ConsumerChange::KeepStart(Box::new(existing.clone()), w),
        (false, None) => ConsumerChange::Update(Box::new(next)),
        (false, Some(w)) => ConsumerChange::KeepStart(Box::new(next), w),
    }
}

impl Provisioner {
    /// Connects to (url, bus) as the admin user from now on. A server without
    /// authorization ignores the credentials, so this is safe either way.
    pub async fn authenticate(&self, url: &str, bus: &str, admin_token: String) {
        let key = (url.to_owned(), bus.to_owned());
        let mut tokens = self.tokens.lock().await;
        if tokens.get(&key) != Some(&admin_token) {
            tokens.insert(key.clone(), admin_token);
            self.conns.lock().await.remove(&key);
        }
    }

    async fn transport(&self, url: &str, bus: &str) -> Result<JetStream, String> {
        let key = (url.to_owned(), bus.to_owned());
        if let Some(t) = self.conns.lock().await.get(&key) {
            return Ok(t.clone());
        }
        let token = self.tokens.lock().await.get(&key).cloned();
        let t = match token {
            Some(token) => JetStream::connect_as(url, bus, busbar_domain::credentials::ADMIN, &token).await,
            None => JetStream::connect(url, bus).await,
        }
        .map_err(|e| e.to_string())?;
        self.conns.lock().await.insert(key, t.clone());
        Ok(t)
    }

    /// Ensures the streams and consumers; returns the transport's state and per-subscriber figures.
    pub async fn provision(
        &self,
        url: &str,
        bus: &str,
        spec: &ServiceBusSpec,
    ) -> (TransportState, BTreeMap<String, SubscriberStats>) {
        let mut warnings = vec![];
        let mut stats = BTreeMap::new();
        let result = tokio::time::timeout(TIMEOUT, self.provision_inner(url, bus, spec, &mut warnings, &mut stats))
            .await
            .unwrap_or_else(|_| Err(format!("did not answer within {}s", TIMEOUT.as_secs())))
            .map_err(|e| format!("NATS at {url}: {e}"));
        (TransportState::JetStream { result, warnings }, stats)
    }

    async fn provision_inner(
        &self,
        url: &str,
        bus: &str,
        spec: &ServiceBusSpec,
        warnings: &mut Vec<String>,
        stats: &mut BTreeMap<String, SubscriberStats>,
    ) -> Result<(), String> {
        let t = self.transport(url, bus).await?;
        t.ensure_streams().await.map_err(|e| e.to_string())?;
        let js = t.context();
        let stream = js.get_stream(stream_name(bus)).await.map_err(|e| e.to_string())?;
        let desired = desired_consumers(bus, spec, t.multi_filter());
        let existing: Vec<String> = stream.consumer_names().try_collect().await.map_err(|e| e.to_string())?;
        for name in existing.iter().filter(|n| !desired.contains_key(*n)) {
            stream.delete_consumer(name).await.map_err(|e| format!("cannot delete consumer {name}: {e}"))?;
            tracing::info!(bus, consumer = %name, "deleted a consumer no longer in the spec");
        }
        let dlq = js.get_stream(dead_letter_stream_name(bus)).await.map_err(|e| e.to_string())?;
        for (name, config) in &desired {
            let change = match stream.consumer_info(name).await {
                Ok(info) => consumer_change(&info.config.clone().into_pull(), config),
                Err(_) => ConsumerChange::Update(Box::new(config.clone())),
            };
            let write = match change {
                ConsumerChange::Unchanged => None,
                ConsumerChange::Update(c) => Some(*c),
                ConsumerChange::KeepStart(c, w) => {
                    warnings.push(w);
                    Some(*c)
                }
            };
            if let Some(c) = write {
                stream.create_consumer(c).await.map_err(|e| format!("cannot create or update consumer {name}: {e}"))?;
                tracing::info!(bus, consumer = %name, "consumer created or updated");
            }
            let info = stream.consumer_info(name).await.map_err(|e| e.to_string())?;
            let subject = dead_letter_subject(bus, name);
            let dead: usize = dlq
                .info_with_subjects(&subject)
                .await
                .map_err(|e| e.to_string())?
                .try_fold(0, |n, (_, count)| async move { Ok(n + count) })
                .await
                .map_err(|e| e.to_string())?;
            stats.insert(
                name.clone(),
                SubscriberStats {
                    pending: Some(info.num_pending),
                    redelivered: Some(info.num_redelivered as u64),
                    dead_lettered: Some(dead as u64),
                },
            );
        }
        Ok(())
    }

    /// Deletes the consumers of `services` (on ServiceBus deletion). Missing ones are fine.
    pub async fn remove_consumers(&self, url: &str, bus: &str) -> Result<(), String> {
        let work = async {
            let t = self.transport(url, bus).await?;
            let stream = match t.context().get_stream(stream_name(bus)).await {
                Ok(s) => s,
                Err(_) => return Ok(()),
            };
            let names: Vec<String> = stream.consumer_names().try_collect().await.map_err(|e| e.to_string())?;
            for name in names {
                stream.delete_consumer(&name).await.map_err(|e| format!("cannot delete consumer {name}: {e}"))?;
            }
            Ok(())
        };
        tokio::time::timeout(TIMEOUT, work).await.unwrap_or_else(|_| Err(format!("NATS at {url} did not answer")))
    }
}

trait IntoPull {
    fn into_pull(self) -> pull::Config;
}

impl IntoPull for async_nats::jetstream::consumer::Config {
    fn into_pull(self) -> pull::Config {
        pull::Config {
            durable_name: self.durable_name,
            deliver_policy: self.deliver_policy,
            ack_policy: self.ack_policy,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            filter_subject: self.filter_subject,
            filter_subjects: self.filter_subjects,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::blog_spec;
    use async_nats::jetstream::consumer::DeliverPolicy;

    #[test]
    fn one_consumer_per_subscriber_with_the_sdk_config() {
        let spec = blog_spec();
        let c = desired_consumers("blog", &spec, true);
        assert_eq!(c.keys().collect::<Vec<_>>(), ["comments", "moderation", "query"]);
        assert_eq!(c["moderation"].filter_subject, "busbar.blog.CommentCreated");
        assert_eq!(c["query"].filter_subjects.len(), 3);
    }

    #[test]
    fn a_start_position_change_keeps_the_consumer_and_is_reported() {
        let spec = blog_spec();
        let existing = desired_consumers("blog", &spec, true)["query"].clone();
        assert_eq!(consumer_change(&existing, &existing), ConsumerChange::Unchanged);
        let now = pull::Config { deliver_policy: DeliverPolicy::New, ..existing.clone() };
        let ConsumerChange::KeepStart(kept, why) = consumer_change(&existing, &now) else { panic!() };
        assert_eq!(kept.deliver_policy, DeliverPolicy::All);
        assert!(why.contains("cannot change where an existing consumer starts"), "{why}");
        let slower = pull::Config { ack_wait: Duration::from_secs(99), ..existing.clone() };
        assert_eq!(consumer_change(&existing, &slower), ConsumerChange::Update(Box::new(slower)));
    }
}
