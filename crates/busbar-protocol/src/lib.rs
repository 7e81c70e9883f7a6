//! busbar's wire types: what travels between processes, defined once so that the bus, the
//! SDK, the operator and the CLI write and read exactly the same JSON. No I/O.
//!
//! - [`envelope`]: the CloudEvents 1.0 envelope every event travels in, and the typed
//!   [`Event`] trait;
//! - [`bus_api`]: the built-in bus's HTTP API (publish, push and its answers, replay,
//!   subscribers, dead letters, redrive), with JSON Schemas;
//! - [`text`]: long or untrusted text made fit for messages, logs and headers;
//! - [`trace`]: W3C Trace Context, as `traceparent` headers and event extensions carry it.

pub mod bus_api;
pub mod envelope;
pub mod text;
pub mod trace;

pub use cloudevents::{AttributesReader, AttributesWriter};
pub use envelope::{CloudEvent, Event};
