//! JetStream: the bus's stream and dead-letter stream, and one durable pull consumer per
//! subscribing service, with the configuration the SDK's subscriber asks for
//! (`SubscribeOptions::consumer_config`), so the two never fight over it.
//!
//! Every consumer on the stream `BUSBAR_<BUS>` belongs to this ServiceBus (the stream's name
//! is busbar's), so consumers of services that left the spec are deleted. Streams are kept on
//! delete, like the built-in bus's volume: they hold the events.

use std::collections::BTreeMap;

use async_nats::jetstream::consumer::pull;
use busbar_client::jetstream::SubscribeOptions;
use busbar_domain::spec::ServiceBusSpec;

use super::{actions::Action, observed::JetStreamObserved};

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
/// events, so the consumer keeps its start and the change is reported.
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
            "consumer {} keeps its start position ({:?}): JetStream cannot change where an existing consumer \
             starts; delete the consumer to start it again from {:?}",
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

/// The JetStream writes a spec needs, and the changes JetStream cannot make (as warnings).
/// Consumers that left the spec go first: a service renamed in the spec then never has
/// two consumers reading for it.
pub fn actions(bus: &str, spec: &ServiceBusSpec, live: &JetStreamObserved) -> (Vec<Action>, Vec<String>) {
    let desired = desired_consumers(bus, spec, live.multi_filter);
    let mut actions = vec![];
    let mut warnings = vec![];
    if !live.streams {
        actions.push(Action::CreateStreams);
    }
    for name in live.consumers.keys().filter(|n| !desired.contains_key(*n)) {
        actions.push(Action::DeleteConsumer(name.clone()));
    }
    for (name, config) in desired {
        let change = match live.consumers.get(&name) {
            Some(existing) => consumer_change(existing, &config),
            None => ConsumerChange::Update(Box::new(config)),
        };
        match change {
            ConsumerChange::Unchanged => {}
            ConsumerChange::Update(c) => actions.push(Action::PutConsumer(c)),
            ConsumerChange::KeepStart(c, why) => {
                warnings.push(why);
                if live.consumers.get(&name) != Some(&*c) {
                    actions.push(Action::PutConsumer(c));
                }
            }
        }
    }
    (actions, warnings)
}
