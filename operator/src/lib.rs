//! The busbar operator: reconciles `ServiceBus` resources. It checks the event graph,
//! provisions the transport (the built-in bus as a StatefulSet, or JetStream streams and
//! consumers), wires each Deployment with server-side apply, and reports in status.
//!
//! - [`crd`]: the resource types;
//! - [`plan`]: pure functions from spec plus observed objects to desired objects and status;
//! - [`apply`]: the thin shell that talks to the API server;
//! - [`jetstream`]: stream and consumer provisioning;
//! - [`controller`]: reconcile, error policy and run;
//! - [`leader`]: leader election on a coordination.k8s.io Lease;
//! - [`rbac`]: the permissions the operator needs, as one manifest;
//! - [`fixtures`]: builders for tests and benchmarks.

pub mod apply;
pub mod controller;
pub mod crd;
pub mod fixtures;
pub mod jetstream;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod rbac;
