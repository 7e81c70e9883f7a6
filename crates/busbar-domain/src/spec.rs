//! The ServiceBus resource: who publishes and who subscribes to which event types.
//!
//! One definition serves `busbar up` (a YAML file), the built-in bus (its routes file or
//! mounted ConfigMap) and the operator (the CRD). Parsing and validation are pure.

use std::{collections::BTreeSet, time::Duration};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "busbar.dev/v1alpha1";
pub const KIND: &str = "ServiceBus";

/// The CRD's schema patterns. They match what `validate` accepts (tests hold the two
/// together), so the API server refuses at `kubectl apply` what the operator would refuse.
pub const EVENT_TYPE_PATTERN: &str = r"^[A-Za-z][A-Za-z0-9._-]{0,127}$";
pub const SERVICE_NAME_PATTERN: &str = r"^[a-z]([-a-z0-9]*[a-z0-9])?$";
/// Go-style durations without fractions (`500ms`, `5s`, `1m30s`), the form Kubernetes users know.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ns|us|ms|s|m|h))+$";
/// Deployment names: DNS subdomains, as Kubernetes object names are (at most 253 characters).
pub const DEPLOYMENT_NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceBusSpec {
    /// Which engine carries the events. Exactly one of `builtin` or `jetstream`.
    #[serde(default)]
    pub transport: TransportSpec,
    /// Delivery policy for every subscriber.
    #[serde(default)]
    pub delivery: DeliverySpec,
    /// The services on this bus. Names are unique (the API server enforces it: a list map
    /// keyed by `name`).
    #[schemars(length(min = 1), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub services: Vec<ServiceSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// Two optional members plus a CEL rule, not an enum: an externally tagged enum becomes a
// `oneOf` that a structural CRD schema cannot express.
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!(has(self.builtin) && has(self.jetstream))",
    "message": "choose one transport: builtin or jetstream, not both"
}]))]
pub struct TransportSpec {
    /// The built-in bus (the default when neither is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<BuiltinSpec>,
    /// NATS JetStream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jetstream: Option<JetStreamSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BuiltinSpec {}

// By hand: the derive says `additionalProperties: false`, which a structural CRD schema
// must not carry; an object with no properties prunes unknown fields anyway.
impl JsonSchema for BuiltinSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "BuiltinSpec".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "object", "description": "The built-in event bus; it has no settings." })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JetStreamSpec {
    /// NATS server URL, e.g. `nats://nats:4222`.
    #[schemars(regex(pattern = r"^(nats|tls)://.+$"))]
    pub url: String,
    /// Copies a NATS cluster keeps of each message of the bus's streams (1, 3 or 5 in
    /// practice; at most the cluster's size). Applies when the streams are created.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 5))]
    pub replicas: u8,
}

fn default_replicas() -> u8 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Builtin,
    JetStream,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::Builtin => "builtin",
            TransportKind::JetStream => "jetstream",
        })
    }
}

impl std::str::FromStr for TransportKind {
    type Err = String;
    /// `builtin` (also `http`, its wire name) or `jetstream` (also `nats`), any case.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "builtin" | "http" => Ok(TransportKind::Builtin),
            "jetstream" | "nats" => Ok(TransportKind::JetStream),
            other => Err(format!("`{other}` is not a transport: use `builtin` or `jetstream`")),
        }
    }
}

impl TransportSpec {
    pub fn kind(&self) -> TransportKind {
        if self.jetstream.is_some() { TransportKind::JetStream } else { TransportKind::Builtin }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliverySpec {
    /// Attempts before an event goes to the dead-letter store.
    #[serde(default = "default_max_deliver")]
    #[schemars(range(min = 1))]
    pub max_deliver: u32,
    /// Waits between attempts, e.g. `[1s, 5s, 30s]`; the last repeats. Jitter is added.
    #[serde(default = "default_backoff")]
    #[schemars(inner(regex(pattern = DURATION_PATTERN)))]
    pub backoff: Vec<String>,
    /// How long a subscriber has to acknowledge one delivery.
    #[serde(default = "default_ack_wait")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub ack_wait: String,
    /// Longest an event may wait for an earlier version of its aggregate that has not
    /// arrived (a real gap: an event of a subscribed type that is late or lost). After
    /// that it is dead-lettered, with a reason naming the missing version.
    #[serde(default = "default_max_parked_for")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_parked_for: String,
}

fn default_max_deliver() -> u32 {
    10
}
fn default_backoff() -> Vec<String> {
    vec!["1s".into(), "5s".into(), "30s".into()]
}
fn default_ack_wait() -> String {
    "30s".into()
}
fn default_max_parked_for() -> String {
    "10m".into()
}

impl Default for DeliverySpec {
    fn default() -> Self {
        Self {
            max_deliver: default_max_deliver(),
            backoff: default_backoff(),
            ack_wait: default_ack_wait(),
            max_parked_for: default_max_parked_for(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.subscribes) || size(self.subscribes) == 0 || has(self.port)",
    "message": "a service that subscribes to events needs a `port` to receive them on"
}]))]
pub struct ServiceSpec {
    /// Service name (a DNS label); also its CloudEvents `source`, and the Kubernetes
    /// Service the built-in bus pushes to.
    #[schemars(length(min = 1, max = 63), regex(pattern = SERVICE_NAME_PATTERN))]
    pub name: String,
    /// Deployment to wire; defaults to the service name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DEPLOYMENT_NAME_PATTERN))]
    pub deployment: Option<String>,
    /// Port the service listens on; events are pushed to `POST /events` there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// Event types this service emits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"), inner(regex(pattern = EVENT_TYPE_PATTERN)))]
    pub publishes: Vec<String>,
    /// Event types this service receives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub subscribes: Vec<SubscriptionSpec>,
    /// Where a new subscriber starts: `beginning` (backfill history, the default) or `now`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "StartFrom")]
    pub start_from: Option<StartFrom>,
}

impl ServiceSpec {
    pub fn subscribed_types(&self) -> BTreeSet<&str> {
        self.subscribes.iter().map(|s| s.ty.as_str()).collect()
    }
    pub fn start_from(&self) -> StartFrom {
        self.start_from.unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// The event type, e.g. `PostCreated`.
    #[serde(rename = "type")]
    #[schemars(regex(pattern = EVENT_TYPE_PATTERN))]
    pub ty: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StartFrom {
    #[default]
    Beginning,
    Now,
}

/// A parsed ServiceBus manifest: its name and spec.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceBus {
    pub name: String,
    pub spec: ServiceBusSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", expecting = "a ServiceBus manifest: a mapping with apiVersion, kind and spec")]
struct Manifest {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<Metadata>,
    spec: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
struct Metadata {
    name: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    #[error("the manifest is empty; expected apiVersion `{API_VERSION}`, kind `{KIND}` and a spec")]
    Empty,
    #[error(
        "the manifest is {0} bytes; a ServiceBus manifest may be at most {MAX_MANIFEST_BYTES} (1 MiB, as a ConfigMap)"
    )]
    TooLarge(usize),
    #[error("not valid YAML: {0}")]
    Yaml(String),
    #[error("expected apiVersion `{API_VERSION}`, found `{0}`")]
    ApiVersion(String),
    #[error("expected kind `{KIND}`, found `{0}`")]
    Kind(String),
    #[error("the manifest has no `spec`")]
    NoSpec,
    #[error("spec: {0}")]
    Shape(String),
    #[error("invalid ServiceBus spec:\n  - {}", first_problems(.0))]
    Invalid(Vec<String>),
}

/// The largest manifest accepted: a ConfigMap's limit, far above any real spec. It also
/// bounds the YAML parser's work, which grows faster than linearly on deeply nested junk.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// At most this many problems are listed; the rest are counted.
const MAX_LISTED: usize = 20;

fn first_problems(problems: &[String]) -> String {
    let mut out = problems.iter().take(MAX_LISTED).cloned().collect::<Vec<_>>().join("\n  - ");
    if problems.len() > MAX_LISTED {
        out.push_str(&format!("\n  - ... and {} more", problems.len() - MAX_LISTED));
    }
    out
}

/// `text` as quoted in an error message: cut short if it is long.
fn shown(text: &str) -> String {
    busbar_protocol::text::shorten(text, 64)
}

/// A parser's message, which may quote a huge value, kept to its start and end.
fn clipped(msg: String) -> String {
    busbar_protocol::text::head_and_tail(&msg, 200)
}

/// Parses and validates a ServiceBus manifest (YAML or JSON).
pub fn parse_manifest(text: &str) -> Result<ServiceBus, SpecError> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(SpecError::TooLarge(text.len()));
    }
    if text.trim().is_empty() {
        return Err(SpecError::Empty);
    }
    let m: Manifest = serde_yaml_ng::from_str(text).map_err(|e| SpecError::Yaml(clipped(e.to_string())))?;
    // An empty file, or one with only comments, reads as a mapping without any field.
    if m.api_version.is_none() && m.kind.is_none() && m.metadata.is_none() && m.spec.is_none() {
        return Err(SpecError::Empty);
    }
    match m.api_version.as_deref() {
        Some(API_VERSION) => {}
        other => return Err(SpecError::ApiVersion(other.map_or("<missing>".into(), shown))),
    }
    match m.kind.as_deref() {
        Some(KIND) => {}
        other => return Err(SpecError::Kind(other.map_or("<missing>".into(), shown))),
    }
    let spec = m.spec.ok_or(SpecError::NoSpec)?;
    // serde_path_to_error names the offending field, e.g. `services[1].port`.
    let spec: ServiceBusSpec = serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        SpecError::Shape(clipped(if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }))
    })?;
    let problems = validate(&spec);
    if !problems.is_empty() {
        return Err(SpecError::Invalid(problems));
    }
    let name = m.metadata.and_then(|m| m.name).unwrap_or_else(|| "default".into());
    Ok(ServiceBus { name, spec })
}

/// Reads and parses a manifest file, naming the file in any error.
pub fn load_manifest(path: &std::path::Path) -> Result<ServiceBus, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_manifest(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Event type names: a letter, then letters, digits, `.`, `_` or `-` (at most 128).
/// They become NATS subject tokens, so no spaces, `*` or `>`.
pub fn valid_event_type(t: &str) -> bool {
    let mut chars = t.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && t.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Service names are DNS-1035 labels, as Kubernetes Service names must be.
pub fn valid_service_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.starts_with(|c: char| c.is_ascii_lowercase())
        && !n.ends_with('-')
        && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Deployment names ([`DEPLOYMENT_NAME_PATTERN`]), as the CRD's schema checks them.
pub fn valid_deployment_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && n.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

/// Parses a Go-style duration (`DURATION_PATTERN`): digits and a unit, repeated.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{}` is not a duration like 500ms, 5s or 1m30s", shown(s));
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ns" => Duration::from_nanos(n),
            "us" => Duration::from_micros(n),
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(bad()),
        };
        total = total.saturating_add(part);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Every problem that makes the spec unusable, as readable sentences. Empty means valid.
pub fn validate(spec: &ServiceBusSpec) -> Vec<String> {
    let mut problems = vec![];
    if spec.transport.builtin.is_some() && spec.transport.jetstream.is_some() {
        problems.push("transport: choose one of `builtin` or `jetstream`, not both".into());
    }
    if let Some(js) = &spec.transport.jetstream {
        if !(js.url.starts_with("nats://") || js.url.starts_with("tls://")) {
            problems.push(format!("transport.jetstream.url `{}` must start with nats:// or tls://", shown(&js.url)));
        }
        if !(1..=5).contains(&js.replicas) {
            problems.push(format!("transport.jetstream.replicas is {}; use 1 to 5", js.replicas));
        }
    }
    if spec.delivery.max_deliver == 0 {
        problems.push("delivery.maxDeliver must be at least 1".into());
    }
    for (i, b) in spec.delivery.backoff.iter().enumerate() {
        if let Err(e) = parse_duration(b) {
            problems.push(format!("delivery.backoff[{i}]: {e}"));
        }
    }
    match parse_duration(&spec.delivery.ack_wait) {
        Ok(d) if d.is_zero() => problems.push("delivery.ackWait must be more than zero".into()),
        Ok(_) => {}
        Err(e) => problems.push(format!("delivery.ackWait: {e}")),
    }
    match parse_duration(&spec.delivery.max_parked_for) {
        Ok(d) if d.is_zero() => problems.push("delivery.maxParkedFor must be more than zero".into()),
        Ok(_) => {}
        Err(e) => problems.push(format!("delivery.maxParkedFor: {e}")),
    }
    if spec.services.is_empty() {
        problems.push("services: list at least one service".into());
    }
    let mut seen = BTreeSet::new();
    for (i, s) in spec.services.iter().enumerate() {
        let at = format!("services[{i}] ({})", shown(&s.name));
        if !valid_service_name(&s.name) {
            problems.push(format!("{at}: name must be a lower-case DNS label (a-z, 0-9, '-'; at most 63 characters)"));
        }
        if let Some(d) = &s.deployment
            && !valid_deployment_name(d)
        {
            problems.push(format!(
                "{at}: deployment `{}` must be a Kubernetes object name (a-z, 0-9, '-', '.'; at most 253 characters)",
                shown(d)
            ));
        }
        if !seen.insert(s.name.as_str()) {
            problems.push(format!("{at}: duplicate service name `{}`", shown(&s.name)));
        }
        if s.port == Some(0) {
            problems.push(format!("{at}: port must be between 1 and 65535"));
        }
        if !s.subscribes.is_empty() && s.port.is_none() {
            problems.push(format!("{at}: subscribes to events, so it needs a `port` to receive them on"));
        }
        for t in s.publishes.iter().chain(s.subscribes.iter().map(|x| &x.ty)) {
            if !valid_event_type(t) {
                problems.push(format!(
                    "{at}: `{}` is not a valid event type (a letter, then letters, digits, '.', '_' or '-')",
                    shown(t)
                ));
            }
        }
        let mut types = BTreeSet::new();
        for sub in &s.subscribes {
            if !types.insert(sub.ty.as_str()) {
                problems.push(format!("{at}: subscribes to `{}` twice", shown(&sub.ty)));
            }
        }
    }
    problems
}

impl ServiceBusSpec {
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name == name)
    }
    pub fn max_deliver(&self) -> u32 {
        self.delivery.max_deliver.max(1)
    }
    /// Backoff schedule; assumes a validated spec (unparsable entries are skipped).
    pub fn backoff(&self) -> Vec<Duration> {
        self.delivery.backoff.iter().filter_map(|b| parse_duration(b).ok()).collect()
    }
    pub fn ack_wait(&self) -> Duration {
        parse_duration(&self.delivery.ack_wait).unwrap_or(Duration::from_secs(30))
    }
    pub fn max_parked_for(&self) -> Duration {
        parse_duration(&self.delivery.max_parked_for).unwrap_or(Duration::from_secs(600))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const BLOG: &str = r#"
apiVersion: busbar.dev/v1alpha1
kind: ServiceBus
metadata: {name: blog}
spec:
  transport:
    builtin: {}
  delivery: {maxDeliver: 10, backoff: [1s, 5s, 30s], ackWait: 30s}
  services:
  - name: posts
    port: 4000
    publishes: [PostCreated]
  - name: comments
    port: 4001
    publishes: [CommentCreated, CommentUpdated]
    subscribes: [{type: PostCreated}, {type: CommentModerated}]
  - name: moderation
    port: 4003
    publishes: [CommentModerated]
    subscribes: [{type: CommentCreated}]
  - name: query
    port: 4002
    subscribes: [{type: PostCreated}, {type: CommentCreated}, {type: CommentUpdated}]
    startFrom: beginning
"#;

    #[test]
    fn the_design_example_parses() {
        let bus = parse_manifest(BLOG).unwrap();
        assert_eq!(bus.name, "blog");
        assert_eq!(bus.spec.transport.kind(), TransportKind::Builtin);
        assert_eq!(bus.spec.services.len(), 4);
        let q = bus.spec.service("query").unwrap();
        assert_eq!(
            q.subscribed_types().into_iter().collect::<Vec<_>>(),
            ["CommentCreated", "CommentUpdated", "PostCreated"]
        );
        assert_eq!(q.start_from(), StartFrom::Beginning);
        assert_eq!(bus.spec.backoff(), vec![Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(30)]);
    }

    #[test]
    fn defaults_apply_when_omitted() {
        let bus = parse_manifest("apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nspec:\n  services: [{name: a}]\n")
            .unwrap();
        assert_eq!(bus.spec.delivery, DeliverySpec::default());
        assert_eq!(bus.spec.transport.kind(), TransportKind::Builtin);
        assert_eq!(bus.name, "default");
    }

    #[test]
    fn nonsense_gets_readable_errors() {
        let cases: &[(&str, &str)] = &[
            ("{{{", "not valid YAML"),
            ("apiVersion: v1\nkind: ServiceBus\nspec: {services: []}", "expected apiVersion"),
            ("apiVersion: busbar.dev/v1alpha1\nkind: Pod\nspec: {}", "expected kind"),
            ("apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\n", "no `spec`"),
            (
                "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nspec: {services: [{name: a, subscribe: []}]}",
                "unknown field `subscribe`",
            ),
            (
                "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nspec: {services: [{name: a, port: 99999}]}",
                "services[0].port: invalid value",
            ),
            ("apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nspec: {services: []}", "at least one service"),
            (
                "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nspec: {services: [{name: a}, {name: a}]}",
                "duplicate service name `a`",
            ),
            (
                "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nspec: {services: [{name: Bad_Name}]}",
                "lower-case DNS label",
            ),
            (
                "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nspec: {services: [{name: a, publishes: ['has space']}]}",
                "not a valid event type",
            ),
            (
                "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nspec: {services: [{name: a, subscribes: [{type: X}]}]}",
                "needs a `port`",
            ),
            (
                "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nspec: {delivery: {backoff: [soon]}, services: [{name: a}]}",
                "backoff[0]",
            ),
            (
                "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nspec: {delivery: {maxDeliver: 0}, services: [{name: a}]}",
                "maxDeliver",
            ),
            (
                "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nspec: {transport: {builtin: {}, jetstream: {url: 'nats://x'}}, services: [{name: a}]}",
                "not both",
            ),
            (
                "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nspec: {services: [{name: a, startFrom: later}]}",
                "unknown variant `later`",
            ),
        ];
        for (text, want) in cases {
            let err = parse_manifest(text).unwrap_err().to_string();
            assert!(err.contains(want), "for {text:?}: expected {want:?} in {err:?}");
        }
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let err = parse_manifest("apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nspec: {delivery: {maxDeliver: 0}, services: [{name: a}, {name: a}]}").unwrap_err();
        let SpecError::Invalid(problems) = err else { panic!("expected Invalid, got {err:?}") };
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn durations_are_go_style() {
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "5", "s", "1.5s", "5 s", "1min", "-1s", "1m30"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        // The CRD's patterns and `validate` must agree, or the API server would accept a
        // spec the operator then refuses (or the other way round).
        #[test]
        fn schema_patterns_agree_with_validation(s in "[A-Za-z0-9._ *>-]{0,12}|[0-9]{1,4}(ns|us|ms|s|m|h|x){1,3}") {
            let re = |p: &str| regex::Regex::new(p).unwrap();
            proptest::prop_assert_eq!(re(EVENT_TYPE_PATTERN).is_match(&s), valid_event_type(&s));
            proptest::prop_assert_eq!(re(SERVICE_NAME_PATTERN).is_match(&s) && s.len() <= 63, valid_service_name(&s));
            proptest::prop_assert_eq!(re(DURATION_PATTERN).is_match(&s), parse_duration(&s).is_ok());
            proptest::prop_assert_eq!(re(DEPLOYMENT_NAME_PATTERN).is_match(&s) && s.len() <= 253, valid_deployment_name(&s));
        }
    }

    #[test]
    fn event_type_syntax() {
        for ok in ["PostCreated", "blog.post.created", "a-b_c9"] {
            assert!(valid_event_type(ok), "{ok}");
        }
        for bad in ["", "9x", "a b", "a*", "a>", "ä"] {
            assert!(!valid_event_type(bad), "{bad}");
        }
    }

    #[test]
    fn more_nonsense_gets_short_readable_errors() {
        let h = "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\n";
        let huge = "A".repeat(100_000);
        let many: String = (0..500).map(|i| format!("{{name: Bad{i}}},")).collect();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "the manifest is empty"),
            (" \n\t\n".into(), "the manifest is empty"),
            ("# nothing yet\n".into(), "the manifest is empty"),
            ("null".into(), "expected a ServiceBus manifest"),
            ("- a\n- b".into(), "expected a ServiceBus manifest"),
            ("42".into(), "expected a ServiceBus manifest"),
            (format!("{h}spec: [1, 2]"), "spec: invalid type: sequence"),
            (format!("{h}spec: {{services: a}}"), "services: invalid type: string"),
            (
                format!("{h}spec: {{services: [{{name: a, port: -1}}]}}"),
                "services[0].port: invalid value: integer `-1`",
            ),
            (format!("{h}spec: {{services: [{{name: a, port: 70000}}]}}"), "services[0].port"),
            (format!("{h}spec: {{services: [{{name: a, port: '80'}}]}}"), "services[0].port: invalid type: string"),
            (format!("{h}spec: {{delivery: {{maxDeliver: -3}}, services: [{{name: a}}]}}"), "delivery.maxDeliver"),
            (format!("{h}spec: {{delivery: {{ackWait: 0s}}, services: [{{name: a}}]}}"), "more than zero"),
            (format!("{h}spec: {{delivery: {{ackWait: '-5s'}}, services: [{{name: a}}]}}"), "delivery.ackWait"),
            (
                format!("{h}spec: {{delivery: {{backoff: 5s}}, services: [{{name: a}}]}}"),
                "delivery.backoff: invalid type",
            ),
            (format!("{h}spec: {{transport: {{jetstream: {{url: 'http://x'}}}}, services: [{{name: a}}]}}"), "nats://"),
            (format!("{h}spec: {{transport: {{kafka: {{}}}}, services: [{{name: a}}]}}"), "unknown field `kafka`"),
            (
                format!("{h}spec: {{services: [{{name: a, port: 80, subscribes: [{{type: X}}, {{type: X}}]}}]}}"),
                "`X` twice",
            ),
            (format!("{h}spec: {{services: [{{name: a, subscribes: [X]}}]}}"), "services[0].subscribes[0]"),
            (format!("{h}spec: &a {{services: *a}}"), "not valid YAML"),
            (format!("{h}spec:\n\tservices: []"), "not valid YAML"),
            (format!("apiVersion: {huge}\nkind: ServiceBus\nspec: {{}}"), "expected apiVersion"),
            (format!("{h}spec: {{services: [{{name: a, publishes: [{huge}]}}]}}"), "is not a valid event type"),
            (format!("{h}spec: {{services: [{{name: {huge}}}]}}"), "lower-case DNS label"),
            (format!("{h}spec: {{services: {huge}}}"), "services: invalid type: string"),
            (format!("{h}spec: {{delivery: {{backoff: [{huge}]}}, services: [{{name: a}}]}}"), "not a duration"),
            (format!("{h}spec: {{services: [{many}]}}"), "... and 480 more"),
            (
                format!("{h}spec: {{services: [{{name: a, publishes: [{}]}}]}}", "B".repeat(MAX_MANIFEST_BYTES)),
                "at most 1048576",
            ),
        ];
        for (text, want) in cases {
            let err = parse_manifest(&text).unwrap_err().to_string();
            assert!(err.contains(want), "for {:.120?}: expected {want:?} in {err:.300?}", text);
            assert!(err.len() < 3000 && err.lines().count() <= 22, "for {text:.120?}: a long message: {err:.300?}");
        }
    }

    /// The operator validates the typed spec it reads from the API server (no YAML): each
    /// kind of nonsense gets its own sentence naming the field.
    #[test]
    fn validate_names_each_problem_in_a_typed_spec() {
        let base = || {
            parse_manifest(
            "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nspec: {services: [{name: a, port: 80, publishes: [A], subscribes: [{type: A}]}]}",
        )
        .unwrap()
        .spec
        };
        type Spoil = Box<dyn Fn(&mut ServiceBusSpec)>;
        let cases: Vec<(Spoil, &str)> = vec![
            (Box::new(|s| s.services.clear()), "list at least one service"),
            (Box::new(|s| s.services[0].name = String::new()), "lower-case DNS label"),
            (Box::new(|s| s.services[0].name = "x".repeat(64)), "lower-case DNS label"),
            (Box::new(|s| s.services[0].name = "a-".into()), "lower-case DNS label"),
            (
                Box::new(|s| {
                    let again = s.services[0].clone();
                    s.services.push(again)
                }),
                "duplicate service name `a`",
            ),
            (Box::new(|s| s.services[0].port = Some(0)), "port must be between 1 and 65535"),
            (Box::new(|s| s.services[0].port = None), "needs a `port`"),
            (Box::new(|s| s.services[0].publishes = vec!["".into()]), "`` is not a valid event type"),
            (Box::new(|s| s.services[0].publishes = vec!["a.>".into()]), "`a.>` is not a valid event type"),
            (Box::new(|s| s.services[0].publishes = vec!["T".repeat(129)]), "is not a valid event type"),
            (
                Box::new(|s| {
                    let again = s.services[0].subscribes[0].clone();
                    s.services[0].subscribes.push(again)
                }),
                "subscribes to `A` twice",
            ),
            (Box::new(|s| s.services[0].deployment = Some("Web App".into())), "deployment `Web App`"),
            (Box::new(|s| s.services[0].deployment = Some(String::new())), "deployment ``"),
            (Box::new(|s| s.delivery.max_deliver = 0), "maxDeliver must be at least 1"),
            (Box::new(|s| s.delivery.backoff = vec!["".into()]), "delivery.backoff[0]"),
            (Box::new(|s| s.delivery.backoff = vec!["1.5s".into()]), "`1.5s` is not a duration"),
            (Box::new(|s| s.delivery.backoff = vec!["-1s".into()]), "`-1s` is not a duration"),
            (Box::new(|s| s.delivery.ack_wait = "0ms".into()), "ackWait must be more than zero"),
            (Box::new(|s| s.delivery.ack_wait = "s".into()), "delivery.ackWait"),
            (Box::new(|s| s.delivery.ack_wait = "99999999999999999999999s".into()), "delivery.ackWait"),
            (
                Box::new(|s| s.transport.jetstream = Some(JetStreamSpec { url: String::new(), replicas: 1 })),
                "must start with nats:// or tls://",
            ),
            (
                Box::new(|s| {
                    s.transport.builtin = Some(BuiltinSpec {});
                    s.transport.jetstream = Some(JetStreamSpec { url: "nats://x:4222".into(), replicas: 1 });
                }),
                "not both",
            ),
            (Box::new(|s| s.services[0].name = "Ä".repeat(100_000)), "lower-case DNS label"),
        ];
        assert!(validate(&base()).is_empty());
        for (i, (spoil, want)) in cases.iter().enumerate() {
            let mut spec = base();
            spoil(&mut spec);
            let problems = validate(&spec);
            assert!(problems.iter().any(|p| p.contains(want)), "case {i}: expected {want:?} in {problems:?}");
            assert!(problems.iter().all(|p| p.len() < 400), "case {i}: a long message in {problems:.300?}");
        }
    }

    fn manifest_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let pieces = prop::sample::select(vec![
            "apiVersion: busbar.dev/v1alpha1\n",
            "kind: ServiceBus\n",
            "spec:\n",
            "  services:\n",
            "  - name: a\n",
            "    port: 99999\n",
            "    publishes: [A, 'b c']\n",
            "    subscribes: [{type: A}]\n",
            "  delivery: {backoff: [1x]}\n",
            "&a ",
            "*a\n",
            "{",
            "]\n",
            "\t",
            "- ",
            ": ",
        ]);
        prop_oneof!["\\PC{0,200}", prop::collection::vec(pieces, 0..24).prop_map(|p| p.concat())]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// Whatever the text, parsing answers (no panic), and an error is short.
        #[test]
        fn arbitrary_manifests_never_panic(body in manifest_text()) {
            if let Err(e) = parse_manifest(&body) {
                let msg = e.to_string();
                proptest::prop_assert!(!msg.trim().is_empty());
                proptest::prop_assert!(msg.len() < 3000, "{msg:.300}");
            }
        }
    }
}
