//! A service's busbar settings, from `BUSBAR_*` environment variables. The operator and
//! `busbar up` set them; the errors say what to set when one is missing or wrong.

use std::time::Duration;

use crate::spec::{StartFrom, TransportKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusbarConfig {
    /// `BUSBAR_SERVICE`: this service's name in the ServiceBus; the `source` of its events.
    pub service: String,
    /// `BUSBAR_TRANSPORT`: `http` (the built-in bus, default) or `jetstream`.
    pub transport: TransportKind,
    /// `BUSBAR_URL`: the bus base URL (http) or NATS URL (jetstream).
    pub url: String,
    /// `BUSBAR_TOKEN`: credential presented to the bus, if it requires one.
    pub token: Option<String>,
    /// `BUSBAR_BUS`: the ServiceBus's name; on JetStream it names the stream.
    pub bus: String,
    /// `BUSBAR_SUBSCRIBES`: comma-separated event types to receive; unset means the
    /// types the service's handler declares, set but empty means none (the wiring of a
    /// service that subscribes to nothing).
    pub subscribes: Option<Vec<String>>,
    /// `BUSBAR_START_FROM`: `beginning` (default) or `now`, for a new subscription.
    pub start_from: StartFrom,
    /// `BUSBAR_MAX_DELIVER` (default 10), `BUSBAR_ACK_WAIT` (default 30s) and
    /// `BUSBAR_BACKOFF` (comma-separated, default `1s,5s,30s`): the spec's delivery policy,
    /// applied by the subscriber on JetStream.
    pub max_deliver: u32,
    pub ack_wait: Duration,
    pub backoff: Vec<Duration>,
    /// `BUSBAR_MAX_PARKED_FOR` (default 10m): longest an event waits for a missing earlier
    /// version before it is dead-lettered.
    pub max_parked_for: Duration,
    /// `BUSBAR_JETSTREAM_REPLICAS` (default 1): copies of each message a NATS cluster keeps,
    /// for streams this service creates.
    pub jetstream_replicas: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{var}=`{value}` is invalid: {hint}")]
    Invalid { var: &'static str, value: String, hint: String },
}

pub const DEFAULT_BUS_URL: &str = "http://127.0.0.1:4005";

impl BusbarConfig {
    /// Reads the process environment; `default_service` is used when `BUSBAR_SERVICE` is unset.
    pub fn from_env(default_service: &str) -> Result<Self, ConfigError> {
        Self::from_lookup(default_service, |k| std::env::var(k).ok())
    }

    pub fn from_lookup(default_service: &str, get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let raw = |k: &str| get(k);
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let service = get("BUSBAR_SERVICE").unwrap_or_else(|| default_service.to_owned());
        if !crate::spec::valid_service_name(&service) {
            return Err(ConfigError::Invalid {
                var: "BUSBAR_SERVICE",
                value: service,
                hint: "use the service's name from the ServiceBus spec (a lower-case DNS label)".into(),
            });
        }
        let transport = match get("BUSBAR_TRANSPORT") {
            None => TransportKind::Builtin,
            Some(v) => v.parse().map_err(|_| ConfigError::Invalid {
                var: "BUSBAR_TRANSPORT",
                value: v.trim().to_ascii_lowercase(),
                hint: "use `http` (the built-in bus) or `jetstream`".into(),
            })?,
        };
        let url = match (get("BUSBAR_URL"), transport) {
            (Some(u), _) => u,
            (None, TransportKind::Builtin) => DEFAULT_BUS_URL.to_owned(),
            (None, TransportKind::JetStream) => "nats://127.0.0.1:4222".to_owned(),
        };
        let scheme_ok = match transport {
            TransportKind::Builtin => url.starts_with("http://") || url.starts_with("https://"),
            TransportKind::JetStream => url.starts_with("nats://") || url.starts_with("tls://"),
        };
        if !scheme_ok {
            return Err(ConfigError::Invalid {
                var: "BUSBAR_URL",
                value: url,
                hint: match transport {
                    TransportKind::Builtin => "the http transport needs the bus URL, e.g. http://event-bus:4005".into(),
                    TransportKind::JetStream => {
                        "the jetstream transport needs a NATS URL, e.g. nats://nats:4222".into()
                    }
                },
            });
        }
        let invalid =
            |var: &'static str, value: String, hint: &str| ConfigError::Invalid { var, value, hint: hint.into() };
        let bus = get("BUSBAR_BUS").unwrap_or_else(|| "default".into());
        if !crate::spec::valid_service_name(&bus) {
            return Err(invalid("BUSBAR_BUS", bus, "use the ServiceBus's name (a lower-case DNS label)"));
        }
        // Not `get`: an empty value is meaningful here (the spec lists no subscriptions).
        let subscribes = match raw("BUSBAR_SUBSCRIBES") {
            None => None,
            Some(v) => {
                let types: Vec<String> = v.split(',').map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect();
                if types.iter().any(|t| !crate::spec::valid_event_type(t)) {
                    return Err(invalid(
                        "BUSBAR_SUBSCRIBES",
                        v,
                        "use comma-separated event types, e.g. PostCreated,CommentModerated",
                    ));
                }
                Some(types)
            }
        };
        let start_from = match get("BUSBAR_START_FROM").as_deref() {
            None | Some("beginning") => StartFrom::Beginning,
            Some("now") => StartFrom::Now,
            Some(other) => return Err(invalid("BUSBAR_START_FROM", other.into(), "use `beginning` or `now`")),
        };
        let max_deliver = match get("BUSBAR_MAX_DELIVER") {
            None => 10,
            Some(v) => v
                .trim()
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid("BUSBAR_MAX_DELIVER", v, "use a number of attempts, 1 or more"))?,
        };
        let duration =
            |var: &'static str, v: &str| crate::spec::parse_duration(v.trim()).map_err(|e| invalid(var, v.into(), &e));
        let ack_wait = match get("BUSBAR_ACK_WAIT") {
            None => Duration::from_secs(30),
            Some(v) => duration("BUSBAR_ACK_WAIT", &v)?,
        };
        let max_parked_for = match get("BUSBAR_MAX_PARKED_FOR") {
            None => Duration::from_secs(600),
            Some(v) => duration("BUSBAR_MAX_PARKED_FOR", &v)?,
        };
        let jetstream_replicas = match get("BUSBAR_JETSTREAM_REPLICAS") {
            None => 1,
            Some(v) => v
                .trim()
                .parse()
                .ok()
                .filter(|n| (1..=5).contains(n))
                .ok_or_else(|| invalid("BUSBAR_JETSTREAM_REPLICAS", v, "use 1 to 5 stream replicas"))?,
        };
        let backoff = match get("BUSBAR_BACKOFF") {
            None => vec![Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(30)],
            Some(v) => v
                .split(',')
                .map(|d| crate::spec::parse_duration(d.trim()))
                .collect::<Result<_, _>>()
                .map_err(|e| invalid("BUSBAR_BACKOFF", v.clone(), &format!("use comma-separated durations: {e}")))?,
        };
        Ok(Self {
            service,
            transport,
            url,
            token: get("BUSBAR_TOKEN"),
            bus,
            subscribes,
            start_from,
            max_deliver,
            ack_wait,
            backoff,
            max_parked_for,
            jetstream_replicas,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<BusbarConfig, ConfigError> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        BusbarConfig::from_lookup("posts", |k| m.get(k).cloned())
    }

    #[test]
    fn an_empty_subscription_list_means_none_and_an_absent_one_means_the_handlers() {
        let lookup = |v: Option<&'static str>| {
            BusbarConfig::from_lookup("svc", move |k| {
                (k == "BUSBAR_SUBSCRIBES").then_some(v).flatten().map(str::to_owned)
            })
            .unwrap()
            .subscribes
        };
        assert_eq!(lookup(None), None);
        assert_eq!(lookup(Some("")), Some(vec![]));
        assert_eq!(lookup(Some(" A , B ")), Some(vec!["A".to_owned(), "B".to_owned()]));
    }

    #[test]
    fn defaults_point_at_the_local_bus() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.service, "posts");
        assert_eq!(c.transport, TransportKind::Builtin);
        assert_eq!(c.url, DEFAULT_BUS_URL);
        assert_eq!(c.token, None);
    }

    #[test]
    fn explicit_values_win() {
        let c = cfg(&[
            ("BUSBAR_SERVICE", "query"),
            ("BUSBAR_TRANSPORT", "jetstream"),
            ("BUSBAR_URL", "nats://n:4222"),
            ("BUSBAR_TOKEN", "t"),
        ])
        .unwrap();
        assert_eq!(
            (c.service.as_str(), c.transport, c.url.as_str(), c.token.as_deref()),
            ("query", TransportKind::JetStream, "nats://n:4222", Some("t"))
        );
    }

    #[test]
    fn wrong_values_say_what_to_do() {
        let e = cfg(&[("BUSBAR_TRANSPORT", "kafka")]).unwrap_err().to_string();
        assert!(e.contains("BUSBAR_TRANSPORT=`kafka`") && e.contains("`http`"), "{e}");
        let e = cfg(&[("BUSBAR_URL", "event-bus:4005")]).unwrap_err().to_string();
        assert!(e.contains("BUSBAR_URL") && e.contains("http://event-bus:4005"), "{e}");
        let e = cfg(&[("BUSBAR_TRANSPORT", "jetstream"), ("BUSBAR_URL", "http://x")]).unwrap_err().to_string();
        assert!(e.contains("NATS URL"), "{e}");
        let e = cfg(&[("BUSBAR_SERVICE", "Posts!")]).unwrap_err().to_string();
        assert!(e.contains("BUSBAR_SERVICE"), "{e}");
        for (var, value) in [
            ("BUSBAR_SUBSCRIBES", "A,b c"),
            ("BUSBAR_START_FROM", "later"),
            ("BUSBAR_MAX_DELIVER", "0"),
            ("BUSBAR_ACK_WAIT", "soon"),
            ("BUSBAR_BACKOFF", "1s,x"),
            ("BUSBAR_BUS", "My Bus"),
        ] {
            let e = cfg(&[(var, value)]).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{var}=`{value}` is invalid")), "{e}");
        }
    }

    #[test]
    fn delivery_settings_parse() {
        let c = cfg(&[
            ("BUSBAR_BUS", "blog"),
            ("BUSBAR_SUBSCRIBES", "PostCreated, CommentModerated"),
            ("BUSBAR_START_FROM", "now"),
            ("BUSBAR_MAX_DELIVER", "4"),
            ("BUSBAR_ACK_WAIT", "2s"),
            ("BUSBAR_BACKOFF", "100ms,1s"),
        ])
        .unwrap();
        assert_eq!(c.bus, "blog");
        assert_eq!(c.subscribes, Some(vec!["PostCreated".to_owned(), "CommentModerated".to_owned()]));
        assert_eq!((c.start_from, c.max_deliver, c.ack_wait), (StartFrom::Now, 4, Duration::from_secs(2)));
        assert_eq!(c.backoff, vec![Duration::from_millis(100), Duration::from_secs(1)]);
        let d = cfg(&[]).unwrap();
        assert_eq!((d.bus.as_str(), d.subscribes.clone(), d.max_deliver), ("default", None, 10));
    }
}
