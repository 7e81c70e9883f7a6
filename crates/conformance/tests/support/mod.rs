//! The harness behind `delivery_shapes`: real processes (the probe service, the built-in
//! bus, nats-server) with real databases, driven over loopback HTTP, and a judge that
//! counts every event against the truth.
//!
//! - [`world`]: one test's transport, databases and ServiceBus manifest;
//! - [`manifest`]: the ServiceBus the test declares, and the wiring each process gets;
//! - [`probe`] and [`bus`]: the child processes, started, killed and restarted;
//! - [`forwarder`]: a loopback TCP forwarder to whichever bus process is ready;
//! - [`load`]: steady emit load across publisher replicas; [`plan`]: what cases emit;
//! - [`relay`]: which replica's outbox relay leads; [`cluster`]: the stream's replicas;
//! - [`truth`]: what was expected against what was applied.

#![allow(dead_code)] // each test uses a different part of the harness

pub mod bus;
pub mod cluster;
pub mod forwarder;
pub mod load;
pub mod manifest;
pub mod plan;
pub mod probe;
pub mod relay;
pub mod truth;
pub mod world;

use std::{fmt, time::Duration};

/// Longest a case waits for its subscriber to apply everything it expects.
pub const CONVERGE: Duration = Duration::from_secs(60);
/// A subscriber that applies nothing new for this long while it still owes events is
/// stuck: the case fails then rather than waiting out [`CONVERGE`].
pub const STALL: Duration = Duration::from_secs(15);
/// Longest wait for a process to start, a route to appear, a dead letter to show up.
pub const STARTUP: Duration = Duration::from_secs(30);
/// Longest a takeover (a relay, a bus, a stream leader) may take before the case fails;
/// no timing is asserted below it, the figures are printed.
pub const TAKEOVER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Builtin,
    JetStream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Sqlite,
    Postgres,
}

/// One of {built-in bus, JetStream} × {SQLite, PostgreSQL}.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Combo {
    pub transport: Transport,
    pub store: Store,
}

pub const BUILTIN_SQLITE: Combo = Combo { transport: Transport::Builtin, store: Store::Sqlite };
pub const BUILTIN_POSTGRES: Combo = Combo { transport: Transport::Builtin, store: Store::Postgres };
pub const JETSTREAM_SQLITE: Combo = Combo { transport: Transport::JetStream, store: Store::Sqlite };
pub const JETSTREAM_POSTGRES: Combo = Combo { transport: Transport::JetStream, store: Store::Postgres };

impl fmt::Display for Combo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = match self.transport {
            Transport::Builtin => "builtin",
            Transport::JetStream => "jetstream",
        };
        let s = match self.store {
            Store::Sqlite => "sqlite",
            Store::Postgres => "postgres",
        };
        write!(f, "{t}_{s}")
    }
}

/// Milliseconds since the Unix epoch, on the clock the probes stamp `applied_at` with.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis() as i64
}
