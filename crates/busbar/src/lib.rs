//! busbar SDK: the runtime every service links to emit and receive events.
//!
//! - [`db`]: the service's own database, with transactions that emit through the outbox;
//! - [`group_commit`]: concurrent writes sharing one transaction ([`Db::write`]);
//! - [`outbox`]: the relay that publishes committed events in order;
//! - [`consumer`]: the idempotent inbox and per-aggregate ordering around a handler;
//! - [`transport`]: the [`Transport`] trait and its implementations;
//! - [`receive`]: `POST /events` for services pushed to by the built-in bus;
//! - [`handlers`]: typed event handlers, one function per event type, and what it publishes;
//! - [`contract`]: the service's contract from its handlers, printed by `--contract`;
//! - [`subscription`]: what a service receives and replays, from its wiring and handlers;
//! - [`service`]: the runtime a service's `main` hands its routes and handlers to;
//! - [`view_cache`]: a read model served whole from memory, kept current by change stamps;
//! - [`web`]: HTTP plumbing every busbar process shares.
//!
//! The wire types come from `busbar-protocol` and the ServiceBus domain from
//! `busbar-domain`; both are re-exported here (`busbar::envelope`, `busbar::spec`, ...) so a
//! service needs only this crate.

pub mod attempts;
pub mod backfill;
pub mod consumer;
pub mod contract;
pub mod db;
pub mod group_commit;
pub mod handlers;
pub mod leader;
pub mod metrics;
pub mod ordering;
pub mod outbox;
pub mod parking;
pub mod receive;
pub mod service;
pub mod subscription;
pub mod trace;
pub mod transport;
pub mod view_cache;
pub mod web;

/// mimalloc for every allocation of a process that links busbar (the `mimalloc` feature,
/// on by default); with its `override`, SQLite's C allocations go to it as well.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub use busbar_client::runtime;
pub use busbar_client::telemetry;
pub use busbar_domain::{Backoff, backoff, config, contracts, credentials, graph, names, nats_auth, spec, wiring};
pub use busbar_protocol::{bus_api, envelope};

pub use busbar_protocol::{AttributesReader, AttributesWriter};
pub use consumer::{Consumer, Handler, HandlerError, Outcome};
pub use db::{Backend, Db, DbOptions, Tx};
pub use envelope::{CloudEvent, Event};
pub use handlers::{Handlers, Meta, Received};
pub use transport::{Transport, TransportError, http::HttpTransport};

/// Implements [`Event`] for types whose aggregate is their `id` field, so an app's event
/// types (and a service's narrower reader types) do not each repeat the same impl.
/// `Name` is a type named after itself; `Name = "Type"` (or `= Other::TYPE`) is a reader
/// of another type's events that reads only the fields it needs:
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct UserSignedUp { id: String, email: String, name: String }
/// /// All a reader needs of a `UserSignedUp`: that the user exists.
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct UserExists { id: String }
///
/// busbar::id_events!(UserSignedUp, UserExists = "UserSignedUp");
/// use busbar::Event;
/// assert_eq!((UserExists::TYPE, UserExists { id: "u1".into() }.aggregate_id()), ("UserSignedUp", "u1".into()));
/// ```
#[macro_export]
macro_rules! id_events {
    (@one $t:ident = $ty:expr) => {
        impl $crate::Event for $t {
            const TYPE: &'static str = $ty;
            fn aggregate_id(&self) -> String {
                self.id.clone()
            }
        }
    };
    (@one $t:ident) => {
        $crate::id_events!(@one $t = stringify!($t));
    };
    ($($t:ident $(= $ty:expr)?),+ $(,)?) => {
        $( $crate::id_events!(@one $t $(= $ty)?); )+
    };
}
