//! Routing table: which subscriber gets which event types, where, and under what
//! delivery policy. Derived purely from a ServiceBus spec.

use std::{collections::BTreeMap, time::Duration};

use busbar::{
    Backoff,
    spec::{ServiceBusSpec, StartFrom},
};

use crate::access::Access;

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub max_deliver: u32,
    pub backoff: Backoff,
    pub ack_wait: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub subscriber: String,
    pub endpoint: String,
    /// Sorted and unique.
    pub types: Vec<String>,
    pub start_from: StartFrom,
    pub policy: Policy,
    /// Presented to the subscriber when pushing (its own token), if the bus has a key.
    pub token: Option<PushToken>,
}

/// A subscriber's token; `Debug` keeps it out of logs.
#[derive(Clone, PartialEq, Eq)]
pub struct PushToken(pub String);

impl std::fmt::Debug for PushToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PushToken(..)")
    }
}

/// One route per subscribing service, keyed by name. `endpoint_template` may use
/// `{name}` and `{port}`, e.g. `http://{name}:{port}/events`.
pub fn routes_from_spec(spec: &ServiceBusSpec, endpoint_template: &str, access: &Access) -> BTreeMap<String, Route> {
    let policy = Policy {
        max_deliver: spec.max_deliver(),
        backoff: Backoff::schedule(spec.backoff()),
        ack_wait: spec.ack_wait(),
    };
    spec.services
        .iter()
        .filter(|s| !s.subscribes.is_empty())
        .map(|s| {
            let endpoint = endpoint_template
                .replace("{name}", &s.name)
                .replace("{port}", &s.port.map(|p| p.to_string()).unwrap_or_default());
            let route = Route {
                subscriber: s.name.clone(),
                endpoint,
                types: s.subscribed_types().into_iter().map(str::to_owned).collect(),
                start_from: s.start_from(),
                policy: policy.clone(),
                token: access.push_token(&s.name).map(PushToken),
            };
            (s.name.clone(), route)
        })
        .collect()
}

#[derive(Debug, Default, PartialEq)]
pub struct RouteDiff {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

pub fn diff(old: &BTreeMap<String, Route>, new: &BTreeMap<String, Route>) -> RouteDiff {
    let mut d = RouteDiff::default();
    for (name, r) in new {
        match old.get(name) {
            None => d.added.push(name.clone()),
            Some(o) if o != r => d.changed.push(name.clone()),
            Some(_) => {}
        }
    }
    d.removed = old.keys().filter(|k| !new.contains_key(*k)).cloned().collect();
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use busbar::spec::parse_manifest;

    fn spec(services: &str) -> ServiceBusSpec {
        parse_manifest(&format!(
            "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nspec:\n  delivery: {{maxDeliver: 3, backoff: [10ms, 20ms], ackWait: 2s}}\n  services: {services}\n"
        ))
        .unwrap()
        .spec
    }

    #[test]
    fn only_subscribers_get_routes_with_their_types_and_endpoint() {
        let s = spec(
            "[{name: a, port: 1, publishes: [X]}, {name: b, port: 7001, subscribes: [{type: Y}, {type: X}], startFrom: now}]",
        );
        let r = routes_from_spec(&s, "http://127.0.0.1:{port}/events", &Access::default());
        assert_eq!(r.len(), 1);
        let b = &r["b"];
        assert_eq!(b.endpoint, "http://127.0.0.1:7001/events");
        assert_eq!(b.types, vec!["X", "Y"]);
        assert_eq!(b.start_from, StartFrom::Now);
        assert_eq!(
            b.policy,
            Policy {
                max_deliver: 3,
                backoff: Backoff::schedule(vec![Duration::from_millis(10), Duration::from_millis(20)]),
                ack_wait: Duration::from_secs(2)
            }
        );
        let r = routes_from_spec(&s, "http://{name}:{port}/events", &Access::default());
        assert_eq!(r["b"].endpoint, "http://b:7001/events");
    }

    #[test]
    fn diff_names_added_changed_and_removed_subscribers() {
        let old = routes_from_spec(
            &spec("[{name: a, port: 1, subscribes: [{type: X}]}, {name: b, port: 2, subscribes: [{type: X}]}]"),
            "{name}",
            &Access::default(),
        );
        let new = routes_from_spec(
            &spec(
                "[{name: a, port: 1, subscribes: [{type: X}, {type: Z}]}, {name: c, port: 3, subscribes: [{type: X}]}]",
            ),
            "{name}",
            &Access::default(),
        );
        assert_eq!(
            diff(&old, &new),
            RouteDiff { added: vec!["c".into()], changed: vec!["a".into()], removed: vec!["b".into()] }
        );
        assert_eq!(diff(&new, &new), RouteDiff::default());
    }
}
