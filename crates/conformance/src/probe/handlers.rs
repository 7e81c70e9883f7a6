//! The probe as a subscriber: one typed handler per item event, each recording the
//! application (id, type, aggregate, version) in the handler's transaction, after doing
//! whatever the event's [`Poison`] says.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use busbar::{HandlerError, Handlers, Received, Tx};

use super::store;
use crate::events::{ItemAdded, ItemEvent, ItemPriced, ItemRemoved, ItemRenamed, Poison};

pub struct Probe {
    replica: String,
    /// Aggregates whose `fail` poison no longer fails: `POST /cure` stands in for
    /// deploying a fixed handler before redriving its dead letters.
    pub cured: Mutex<HashSet<String>>,
    /// Attempts per event id in this process, for `Poison::Fail { times }`. In memory on
    /// purpose: the handler's transaction rolls back on failure, so the database cannot
    /// count failures.
    attempts: Mutex<HashMap<String, u32>>,
    /// `PROBE_APPLY_DELAY_MS`: time each application takes, so that a harness can catch
    /// the subscriber part-way through however fast, or loaded, the machine is.
    delay: Option<std::time::Duration>,
}

impl Probe {
    pub fn new(replica: String) -> Self {
        let delay = std::env::var("PROBE_APPLY_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis);
        Self { replica, cured: Mutex::default(), attempts: Mutex::default(), delay }
    }
}

/// Every type is a copy rebuilt from history (`on`), so backfill replays all of them.
/// The probe publishes every item type; it handles them only when `subscribes`.
pub fn handlers(probe: Arc<Probe>, subscribes: bool) -> Handlers<Arc<Probe>> {
    let published = Handlers::new(probe)
        .publishes::<ItemAdded>()
        .publishes::<ItemRenamed>()
        .publishes::<ItemPriced>()
        .publishes::<ItemRemoved>();
    if !subscribes {
        return published;
    }
    published
        .on::<ItemAdded>(apply::<ItemAdded>)
        .on::<ItemRenamed>(apply::<ItemRenamed>)
        .on::<ItemPriced>(apply::<ItemPriced>)
        .on::<ItemRemoved>(apply::<ItemRemoved>)
}

async fn apply<E: ItemEvent>(p: &Arc<Probe>, tx: &mut Tx, ev: Received<E>) -> Result<(), HandlerError> {
    let id = &ev.meta.id;
    let item = ev.data.aggregate_id();
    if let Some(poison) = ev.poison() {
        let attempt = {
            let mut attempts = p.attempts.lock().expect("attempts lock");
            let n = attempts.entry(id.clone()).or_default();
            *n += 1;
            *n
        };
        let version = ev.meta.version.unwrap_or_default();
        match poison {
            Poison::Fail { times }
                if times.is_none_or(|t| attempt <= t) && !p.cured.lock().expect("cured lock").contains(&item) =>
            {
                return Err(format!(
                    "poison: {} {} v{version} told to fail (attempt {attempt} in replica {})",
                    E::TYPE,
                    item,
                    p.replica
                )
                .into());
            }
            Poison::Fail { .. } => {}
            Poison::Panic => panic!("poison: {} {} v{version} told to panic (attempt {attempt})", E::TYPE, item),
            Poison::Crash => {
                // On stderr before dying, so the test's log shows why the process went.
                eprintln!("poison: {} {} v{version} told to crash the process (event {id})", E::TYPE, item);
                std::process::abort();
            }
        }
    }
    if let Some(d) = p.delay {
        tokio::time::sleep(d).await;
    }
    store::record_applied(tx, id, E::TYPE, &item, ev.meta.version).await?;
    Ok(())
}
