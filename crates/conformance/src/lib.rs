//! Issue 13's conformance suite. The library holds the probe service (`busbar-probe`), the
//! JSON shapes its HTTP API speaks (so the tests in `tests/delivery_shapes.rs` drive it with
//! the same types it answers with), and the judge that counts what a subscriber applied
//! against the truth.

pub mod events;
pub mod judge;
pub mod probe;
pub mod wire;
