//! Issue 13's conformance suite. The library holds the probe service (`busbar-probe`) and
//! the JSON shapes its HTTP API speaks, so the tests in `tests/delivery_shapes.rs` drive it
//! with the same types it answers with.

pub mod events;
pub mod probe;
pub mod wire;
