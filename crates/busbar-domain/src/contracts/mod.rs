//! Event contracts: what each service writes and reads, and whether they fit. Pure.
//!
//! Events are the only coupling between services, so their schemas are the contract. A
//! service's [`ServiceContract`] is generated from its code (never written by hand): for
//! each type it publishes, the **writer schema** (what its serializer emits), and for each
//! type it subscribes to, the **reader schema** (what its handler's type requires, which may
//! be a subset). A [`Lock`] holds the contracts of every service of a ServiceBus; it is
//! committed beside the manifest and is what CI and the operator check.
//!
//! - [`fit`]: does a reader accept everything a writer may send, field by field;
//! - [`check`]: every publisher → subscriber edge of a ServiceBus, plus the manifest and the
//!   code agreeing on who publishes what;
//! - [`evolution`]: a lock against the one before it: each change, safe or breaking;
//! - [`schema`]: how the JSON Schemas schemars writes are read.

pub mod check;
pub mod evolution;
pub mod fit;
pub mod schema;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use check::{Break, EdgeReport, EdgeVerdict, Report};
pub use evolution::{Change, ChangeKind, Role};
pub use fit::{Mismatch, Reason, fit};

/// The `format` of a lock file.
pub const LOCK_FORMAT: &str = "busbar.dev/contracts/v1";
/// The `format` of the contract one service prints (`<program> --contract`).
pub const CONTRACT_FORMAT: &str = "busbar.dev/contract/v1";
/// The command-line flag a service answers by printing its contract and exiting.
pub const CONTRACT_FLAG: &str = "--contract";

/// One event type's JSON Schema in a contract, with its digest (which events carry as
/// their CloudEvents `dataschema`, see [`dataschema_uri`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeSchema {
    /// `sha256:` and the hex SHA-256 of the schema's canonical JSON (keys sorted, no spaces).
    pub digest: String,
    pub schema: Value,
}

impl TypeSchema {
    pub fn new(schema: Value) -> TypeSchema {
        TypeSchema { digest: digest(&schema), schema }
    }

    /// Same schema, whatever the digest says and however the JSON is laid out.
    pub fn same_schema(&self, other: &TypeSchema) -> bool {
        canonical(&self.schema) == canonical(&other.schema)
    }
}

/// What one service writes and reads, by event type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceContract {
    /// Writer schemas: what the service emits.
    #[serde(default)]
    pub publishes: BTreeMap<String, TypeSchema>,
    /// Reader schemas: what its handlers require.
    #[serde(default)]
    pub subscribes: BTreeMap<String, TypeSchema>,
}

impl ServiceContract {
    /// The schema of `ty` in `role`.
    pub fn schema(&self, role: Role, ty: &str) -> Option<&TypeSchema> {
        match role {
            Role::Publishes => self.publishes.get(ty),
            Role::Subscribes => self.subscribes.get(ty),
        }
    }
}

/// What `<program> --contract` prints: one service's contract, as its code declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrintedContract {
    /// [`CONTRACT_FORMAT`].
    pub format: String,
    /// The service's own name for itself (the ServiceBus may call it otherwise).
    pub service: String,
    #[serde(default)]
    pub publishes: BTreeMap<String, TypeSchema>,
    #[serde(default)]
    pub subscribes: BTreeMap<String, TypeSchema>,
}

impl PrintedContract {
    pub fn new(service: &str, contract: ServiceContract) -> Self {
        PrintedContract {
            format: CONTRACT_FORMAT.into(),
            service: service.into(),
            publishes: contract.publishes,
            subscribes: contract.subscribes,
        }
    }

    pub fn parse(text: &str) -> Result<PrintedContract, ContractError> {
        let printed: PrintedContract =
            serde_json::from_str(text).map_err(|e| ContractError::Invalid(format!("not a busbar contract: {e}")))?;
        if printed.format != CONTRACT_FORMAT {
            return Err(ContractError::Invalid(format!(
                "contract format `{}`, expected `{CONTRACT_FORMAT}`: is the service built with another busbar version?",
                printed.format
            )));
        }
        Ok(printed)
    }

    pub fn into_contract(self) -> ServiceContract {
        ServiceContract { publishes: self.publishes, subscribes: self.subscribes }
    }
}

/// The contracts of every service of a ServiceBus, by the service's name in the manifest.
/// Committed beside the manifest (`contracts.lock.json`), checked by CI, and given to the
/// operator in the ConfigMap `<bus>-contracts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// [`LOCK_FORMAT`].
    pub format: String,
    pub services: BTreeMap<String, ServiceContract>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    #[error("{0}")]
    Invalid(String),
}

impl Lock {
    pub fn new(services: BTreeMap<String, ServiceContract>) -> Lock {
        Lock { format: LOCK_FORMAT.into(), services }
    }

    pub fn parse(text: &str) -> Result<Lock, ContractError> {
        let lock: Lock = serde_json::from_str(text)
            .map_err(|e| ContractError::Invalid(format!("not a busbar contracts lock: {e}")))?;
        if lock.format != LOCK_FORMAT {
            return Err(ContractError::Invalid(format!(
                "lock format `{}`, expected `{LOCK_FORMAT}`: was it written by another busbar version?",
                lock.format
            )));
        }
        Ok(lock)
    }

    /// The lock as committed: pretty JSON with sorted keys and a final newline, so that a
    /// regenerated lock is byte-for-byte the same when nothing changed, and a diff shows
    /// exactly what did.
    pub fn to_pretty_json(&self) -> String {
        let value = serde_json::to_value(self).expect("a lock serializes");
        let mut text = serde_json::to_string_pretty(&canonical(&value)).expect("JSON serializes");
        text.push('\n');
        text
    }
}

/// `sha256:<hex>` of the schema's canonical JSON.
pub fn digest(schema: &Value) -> String {
    let text = serde_json::to_string(&canonical(schema)).expect("JSON serializes");
    let hash = Sha256::digest(text.as_bytes());
    format!("sha256:{}", hash.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The CloudEvents `dataschema` of events of type `ty` whose writer schema has `digest`:
/// a URN, so it names the schema without pretending to be a URL anyone can fetch. The lock
/// holds the schema under the same digest.
pub fn dataschema_uri(ty: &str, digest: &str) -> String {
    format!("urn:busbar:schema:{ty}:{digest}")
}

/// `value` with every object's keys sorted, whatever map type serde_json was built with.
pub fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), canonical(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_digest_ignores_key_order_and_layout_but_not_content() {
        let a = json!({"type": "object", "properties": {"id": {"type": "string"}, "n": {"type": "integer"}}});
        let b: Value = serde_json::from_str(
            r#"{ "properties": { "n": {"type":"integer"}, "id": {"type":"string"} }, "type": "object" }"#,
        )
        .unwrap();
        assert_eq!(digest(&a), digest(&b));
        assert!(digest(&a).starts_with("sha256:") && digest(&a).len() == 7 + 64);
        let c = json!({"type": "object", "properties": {"id": {"type": "string"}, "n": {"type": "number"}}});
        assert_ne!(digest(&a), digest(&c));
    }

    #[test]
    fn a_lock_round_trips_and_refuses_another_format() {
        let mut services = BTreeMap::new();
        services.insert(
            "posts".to_owned(),
            ServiceContract {
                publishes: [("PostCreated".to_owned(), TypeSchema::new(json!({"type": "object"})))].into(),
                subscribes: BTreeMap::new(),
            },
        );
        let lock = Lock::new(services);
        let text = lock.to_pretty_json();
        assert_eq!(Lock::parse(&text).unwrap(), lock);
        assert!(text.ends_with("}\n"));
        let other = text.replace(LOCK_FORMAT, "busbar.dev/contracts/v9");
        assert!(Lock::parse(&other).unwrap_err().to_string().contains("another busbar version"));
        assert!(Lock::parse("{}").unwrap_err().to_string().starts_with("not a busbar contracts lock"));
    }

    #[test]
    fn the_dataschema_names_the_type_and_the_digest() {
        assert_eq!(dataschema_uri("PostCreated", "sha256:ab"), "urn:busbar:schema:PostCreated:sha256:ab");
    }
}
