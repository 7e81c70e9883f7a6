//! Stories against the fake API server, told with the real kube client.

mod apply;
mod discovery;
mod events;
mod lifecycle;
mod objects;
mod rbac;
mod support;
mod validation;
mod watch;
