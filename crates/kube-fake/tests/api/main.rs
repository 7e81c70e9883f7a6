//! Stories against the fake API server, told with the real kube client.

mod apply;
mod events;
mod lifecycle;
mod objects;
mod support;
mod watch;
