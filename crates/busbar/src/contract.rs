//! A service's contract, from its code: the writer schema of each type it declares it
//! publishes ([`Handlers::publishes`]) and the reader schema of each type it handles
//! ([`Handlers::on`]). `<program> --contract` prints it and exits before anything starts,
//! which is how `busbar contract lock` collects the contracts of a ServiceBus.
//!
//! The declaration is also enforced: a service run by [`crate::service::Service`] cannot
//! emit a type it did not declare (its contract would not know it), and every event it
//! emits carries its writer schema's digest as its CloudEvents `dataschema`, computed here
//! once per type.

use std::{any::type_name, collections::BTreeMap};

use busbar_domain::contracts::{self, CONTRACT_FLAG, PrintedContract};
use schemars::{JsonSchema, generate::SchemaSettings};
use serde_json::Value;

use crate::{
    envelope::{self, Event, SchemaUri},
    handlers::Handlers,
};

/// What `E` looks like as serde writes it: an `Option` field without
/// `skip_serializing_if` is always there (as null), a `#[serde(default)]` one too.
pub fn writer_schema<E: JsonSchema>() -> Value {
    SchemaSettings::draft2020_12().for_serialize().into_generator().into_root_schema_for::<E>().to_value()
}

/// What `E` requires as serde reads it: an `Option` or `#[serde(default)]` field may be
/// missing.
pub fn reader_schema<E: JsonSchema>() -> schemars::Schema {
    SchemaSettings::draft2020_12().for_deserialize().into_generator().into_root_schema_for::<E>()
}

/// The types a service declared it publishes, as the database needs them when it emits:
/// which Rust type stands for each, and the `dataschema` its events carry.
#[derive(Debug, Default)]
pub struct Declared {
    writers: BTreeMap<&'static str, Writer>,
}

#[derive(Debug)]
struct Writer {
    rust_type: &'static str,
    dataschema: SchemaUri,
}

impl Declared {
    /// From `(type, Rust type name, writer schema)` triples.
    pub(crate) fn new(writers: impl IntoIterator<Item = (&'static str, &'static str, Value)>) -> Declared {
        let writers = writers
            .into_iter()
            .map(|(ty, rust_type, schema)| {
                let uri = contracts::dataschema_uri(ty, &contracts::digest(&schema));
                let dataschema = envelope::schema_uri(&uri).expect("event types make valid URNs");
                (ty, Writer { rust_type, dataschema })
            })
            .collect();
        Declared { writers }
    }

    /// The `dataschema` of `E`, or why `service` may not emit it.
    pub fn dataschema<E: Event>(&self, service: &str) -> Result<&SchemaUri, String> {
        let ty = E::TYPE;
        match self.writers.get(ty) {
            None => Err(format!(
                "{service} emits {ty} but does not declare it: add `.publishes::<{ty}>()` to the handlers it \
                 starts with, so that its contract (`--contract`) lists what it writes"
            )),
            Some(w) if w.rust_type != type_name::<E>() => Err(format!(
                "{service} emits {ty} as `{}`, but declared `{}` for it: emit the declared type, whose schema is \
                 the contract",
                type_name::<E>(),
                w.rust_type
            )),
            Some(w) => Ok(&w.dataschema),
        }
    }
}

/// When the process was started with `--contract`: prints `handlers`' contract for
/// `service` as JSON on stdout and exits, before any setting is read or anything is opened
/// (like `--help`).
pub(crate) fn print_if_asked<S: Send + Sync + 'static>(service: &str, handlers: &Handlers<S>) {
    // args_os: a service's other arguments need not be UTF-8.
    if std::env::args_os().skip(1).any(|a| a == CONTRACT_FLAG) {
        let printed = PrintedContract::new(service, handlers.contract());
        println!(
            "{}",
            serde_json::to_string_pretty(&contracts::canonical(&serde_json::to_value(printed).unwrap())).unwrap()
        );
        std::process::exit(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    struct Shipped {
        id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        carrier: Option<String>,
        note: Option<String>,
    }
    impl Event for Shipped {
        const TYPE: &'static str = "Shipped";
        fn aggregate_id(&self) -> String {
            self.id.clone()
        }
    }

    /// Another Rust type for the same event type, as a reader that needs less would have.
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    struct ShippedId {
        id: String,
    }
    impl Event for ShippedId {
        const TYPE: &'static str = "Shipped";
        fn aggregate_id(&self) -> String {
            self.id.clone()
        }
    }

    #[tokio::test]
    async fn a_service_database_refuses_what_was_not_declared_and_stamps_the_rest() {
        use crate::db::{Db, DbError, DbOptions};
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("orders.db").display());
        let declared = Handlers::none().publishes::<Shipped>().declared();
        let db = Db::connect("orders", &url, DbOptions::default()).await.unwrap().with_declared(declared);
        let mut tx = db.begin().await.unwrap();
        let shipped = Shipped { id: "o1".into(), carrier: None, note: None };
        let ev = tx.emit(&shipped, 1).await.unwrap();
        let digest = contracts::digest(&writer_schema::<Shipped>());
        assert_eq!(envelope::dataschema(&ev), Some(contracts::dataschema_uri("Shipped", &digest)));
        let err = tx.emit(&ShippedId { id: "o1".into() }, 2).await.unwrap_err();
        assert!(matches!(err, DbError::Undeclared(_)), "{err}");
        tx.rollback().await.unwrap();

        // A database opened without declarations (tools, tests) stamps nothing and checks nothing.
        let plain = Db::connect("orders", &url, DbOptions::default()).await.unwrap();
        let mut tx = plain.begin().await.unwrap();
        assert_eq!(envelope::dataschema(&tx.emit(&ShippedId { id: "o2".into() }, 1).await.unwrap()), None);
    }

    #[test]
    fn writer_and_reader_schemas_follow_serde() {
        let w = writer_schema::<Shipped>();
        let r = reader_schema::<Shipped>().to_value();
        let required = |s: &Value| {
            s["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect::<Vec<_>>()
        };
        assert_eq!(required(&w), ["id", "note"], "an Option without skip_serializing_if is always written");
        assert_eq!(required(&r), ["id"], "an Option may be missing when read");
    }

    #[test]
    fn only_the_declared_type_may_be_emitted_and_it_carries_its_digest() {
        let d = Declared::new([("Shipped", type_name::<Shipped>(), writer_schema::<Shipped>())]);
        let uri = d.dataschema::<Shipped>("orders").unwrap().to_string();
        assert_eq!(uri, contracts::dataschema_uri("Shipped", &contracts::digest(&writer_schema::<Shipped>())));
        let err = d.dataschema::<ShippedId>("orders").unwrap_err();
        assert!(err.contains("orders emits Shipped as `") && err.contains("ShippedId`, but declared"), "{err}");
        let none = Declared::default().dataschema::<Shipped>("orders").unwrap_err();
        assert!(
            none.starts_with("orders emits Shipped but does not declare it: add `.publishes::<Shipped>()`"),
            "{none}"
        );
    }
}
