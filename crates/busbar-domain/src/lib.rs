//! The ServiceBus domain: everything busbar decides from a ServiceBus spec, as plain
//! functions with no I/O. The SDK runtime, the built-in bus, the operator and the CLI all
//! decide the same way because they call these.
//!
//! - [`spec`]: the ServiceBus resource, its parsing and validation;
//! - [`contracts`]: the event schemas each service writes and reads, and whether they fit;
//! - [`graph`]: who feeds whom, and what looks wrong; [`graph::render`] draws it as Mermaid,
//!   Graphviz DOT or SVG (laid out by [`graph::layout`]);
//! - [`wiring`] and [`config`]: the `BUSBAR_*` environment a service gets, and reading it back;
//! - [`credentials`]: per-service tokens derived from one bus key;
//! - [`names`]: the JetStream streams, subjects and durables of a bus;
//! - [`nats_auth`]: the NATS users and subject permissions a ServiceBus expects;
//! - [`backoff`]: the one retry schedule every retry loop uses.

pub mod backoff;
pub mod config;
pub mod contracts;
pub mod credentials;
pub mod graph;
pub mod names;
pub mod nats_auth;
pub mod spec;
pub mod wiring;

pub use backoff::Backoff;
