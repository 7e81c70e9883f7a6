//! busbar SDK: what every service links to emit and receive events.
//!
//! - [`envelope`]: the CloudEvents 1.0 envelope and the typed [`Event`] trait;
//! - [`db`]: the service's own database, with transactions that emit through the outbox;
//! - [`outbox`]: the relay that publishes committed events in order;
//! - [`consumer`]: the idempotent inbox and per-aggregate ordering around a handler;
//! - [`transport`]: the [`Transport`] trait and its implementations;
//! - [`receive`]: `POST /events` for services pushed to by the built-in bus;
//! - [`spec`]: the ServiceBus resource, shared with the bus, the CLI and the operator;
//! - [`credentials`]: per-service tokens for the built-in bus, derived from one bus key;
//! - [`nats_auth`]: the NATS users and subject permissions a ServiceBus expects on JetStream;
//! - [`wiring`]: the `BUSBAR_*` environment a ServiceBus gives each service.

pub mod config;
pub mod consumer;
pub mod credentials;
pub mod db;
pub mod envelope;
pub mod graph;
pub mod nats_auth;
pub mod ordering;
pub mod outbox;
pub mod receive;
pub mod service;
pub mod spec;
pub mod transport;
pub mod web;
pub mod wiring;

pub use cloudevents::{AttributesReader, AttributesWriter};
pub use consumer::{Consumer, Handler, HandlerError, Outcome};
pub use db::{Backend, Db, DbOptions, Tx};
pub use envelope::{CloudEvent, Event};
pub use transport::{Transport, TransportError, http::HttpTransport};
