//! The busbar operator: reconciles `ServiceBus` resources. It checks the event graph,
//! provisions the transport (the built-in bus as a StatefulSet, or JetStream streams and
//! consumers), wires each Deployment with server-side apply, and reports in status and
//! Kubernetes Events.
//!
//! A reconcile is observe → plan → execute:
//!
//! - [`observe`] reads the cluster and the transport, and writes nothing;
//! - [`plan`] decides every write and the status, with no I/O (the operator's judgement, tested
//!   as a table of cases without a server);
//! - [`execute`] carries the writes out in order and says which failed;
//! - [`controller`] runs that loop under kube-runtime's Controller, with the error policy.
//!
//! Around them: [`crd`] (the resource types), [`names`] (what the operator calls things in
//! the cluster), [`settings`] (its flags), [`jetstream`] (its NATS connections), [`leader`]
//! (leader election on a Lease), [`metrics`], and [`rbac`] (the permissions it needs).
//!
//! Uses point one way, with no cycles: `names`, `settings` and `crd` use nothing of the
//! operator's; `plan` uses only those; `jetstream` uses `plan`'s data; `observe` and `execute`
//! use all of the above; `controller` uses everything.

pub mod controller;
pub mod crd;
pub mod execute;
pub mod jetstream;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod observe;
pub mod plan;
pub mod rbac;
pub mod settings;
