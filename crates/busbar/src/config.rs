//! A service's busbar settings, from `BUSBAR_*` environment variables. The operator and
//! `busbar up` set them; the errors say what to set when one is missing or wrong.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportChoice {
    Http,
    JetStream,
}

impl fmt::Display for TransportChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportChoice::Http => "http",
            TransportChoice::JetStream => "jetstream",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusbarConfig {
    /// `BUSBAR_SERVICE`: this service's name in the ServiceBus; the `source` of its events.
    pub service: String,
    /// `BUSBAR_TRANSPORT`: `http` (the built-in bus, default) or `jetstream`.
    pub transport: TransportChoice,
    /// `BUSBAR_URL`: the bus base URL (http) or NATS URL (jetstream).
    pub url: String,
    /// `BUSBAR_TOKEN`: credential presented to the bus, if it requires one.
    pub token: Option<String>,
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
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let service = get("BUSBAR_SERVICE").unwrap_or_else(|| default_service.to_owned());
        if !crate::spec::valid_service_name(&service) {
            return Err(ConfigError::Invalid {
                var: "BUSBAR_SERVICE",
                value: service,
                hint: "use the service's name from the ServiceBus spec (a lower-case DNS label)".into(),
            });
        }
        let transport = match get("BUSBAR_TRANSPORT").as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("http") | Some("builtin") => TransportChoice::Http,
            Some("jetstream") | Some("nats") => TransportChoice::JetStream,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    var: "BUSBAR_TRANSPORT",
                    value: other.to_owned(),
                    hint: "use `http` (the built-in bus) or `jetstream`".into(),
                });
            }
        };
        let url = match (get("BUSBAR_URL"), transport) {
            (Some(u), _) => u,
            (None, TransportChoice::Http) => DEFAULT_BUS_URL.to_owned(),
            (None, TransportChoice::JetStream) => "nats://127.0.0.1:4222".to_owned(),
        };
        let scheme_ok = match transport {
            TransportChoice::Http => url.starts_with("http://") || url.starts_with("https://"),
            TransportChoice::JetStream => url.starts_with("nats://") || url.starts_with("tls://"),
        };
        if !scheme_ok {
            return Err(ConfigError::Invalid {
                var: "BUSBAR_URL",
                value: url,
                hint: match transport {
                    TransportChoice::Http => "the http transport needs the bus URL, e.g. http://event-bus:4005".into(),
                    TransportChoice::JetStream => {
                        "the jetstream transport needs a NATS URL, e.g. nats://nats:4222".into()
                    }
                },
            });
        }
        Ok(Self { service, transport, url, token: get("BUSBAR_TOKEN") })
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
    fn defaults_point_at_the_local_bus() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.service, "posts");
        assert_eq!(c.transport, TransportChoice::Http);
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
            ("query", TransportChoice::JetStream, "nats://n:4222", Some("t"))
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
    }
}
