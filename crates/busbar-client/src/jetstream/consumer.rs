//! A subscriber's durable pull consumer: its configuration, from the spec's delivery policy.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use busbar_domain::{
    Backoff,
    names::{all_subjects, durable, subject},
    spec::StartFrom,
};

/// A durable subscription's settings, from the spec.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// The consumer's durable name: the subscribing service.
    pub durable: String,
    pub types: Vec<String>,
    pub start_from: StartFrom,
    pub max_deliver: u32,
    pub ack_wait: Duration,
    pub backoff: Vec<Duration>,
}

impl SubscribeOptions {
    /// The consumer configuration. `max_deliver` and the backoff are applied by the
    /// subscriber (which retries in place and dead-letters with the reason), not by the
    /// server: a server that reaches its own max_deliver drops the message with only an
    /// advisory, and deliveries to pull requests left over from a lost connection count
    /// towards it, so messages were lost across NATS restarts. The server redelivers an
    /// unacknowledged message after `ack_wait`, without limit. Several event types need a server
    /// that filters on several subjects (NATS 2.10+); on older servers the consumer takes
    /// the whole bus and the subscriber skips other types (`multi_filter = false`).
    pub fn consumer_config(&self, bus: &str, multi_filter: bool) -> pull::Config {
        pull::Config {
            durable_name: Some(durable(&self.durable)),
            deliver_policy: match self.start_from {
                StartFrom::Beginning => DeliverPolicy::All,
                StartFrom::Now => DeliverPolicy::New,
            },
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: -1,
            filter_subject: match self.types.as_slice() {
                [one] => subject(bus, one),
                _ if multi_filter => String::new(),
                _ => all_subjects(bus),
            },
            filter_subjects: if self.types.len() > 1 && multi_filter {
                self.types.iter().map(|t| subject(bus, t)).collect()
            } else {
                vec![]
            },
            ..Default::default()
        }
    }

    /// The spec's `delivery.backoff` as a schedule.
    pub fn backoff(&self) -> Backoff {
        Backoff::schedule(self.backoff.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_config_follows_the_spec_and_fits_jetstream_rules() {
        let o = SubscribeOptions {
            durable: "query".into(),
            types: vec!["A".into(), "B".into()],
            start_from: StartFrom::Now,
            max_deliver: 3,
            ack_wait: Duration::from_secs(30),
            backoff: vec![Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(30)],
        };
        let c = o.consumer_config("blog", true);
        assert_eq!(c.durable_name.as_deref(), Some("query"));
        assert_eq!(c.filter_subjects, ["busbar.blog.A", "busbar.blog.B"]);
        let old_server = o.consumer_config("blog", false);
        assert_eq!((old_server.filter_subject.as_str(), old_server.filter_subjects.len()), ("busbar.blog.>", 0));
        let one = SubscribeOptions { types: vec!["A".into()], ..o.clone() }.consumer_config("blog", false);
        assert_eq!(one.filter_subject, "busbar.blog.A");
        assert_eq!(c.deliver_policy, DeliverPolicy::New);
        assert_eq!(c.max_deliver, -1, "the subscriber enforces max_deliver, so the server never drops silently");
        assert!(c.backoff.is_empty());
        assert_eq!(c.ack_wait, Duration::from_secs(30));
        assert_eq!(o.backoff().delay(1), Duration::from_secs(1));
        assert_eq!(o.backoff().delay(9), Duration::from_secs(30));
    }
}
