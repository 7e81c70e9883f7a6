//! The reusable part of the `busbar` command: [`plan`], what `busbar up` starts for a
//! ServiceBus, and [`credentials`], its local bus key. A library so that the benchmark
//! starts the blog exactly as `busbar up` does instead of keeping its own copy of the
//! wiring.

pub mod credentials;
pub mod local;
pub mod plan;
