//! A service's effective subscription: what it receives and what a backfill replays,
//! decided once from its wiring (`BUSBAR_SUBSCRIBES`, `BUSBAR_START_FROM`) and its
//! registered handlers. Every part of the runtime (the JetStream consumer, backfill,
//! ordering) reads this one value, so they never disagree about which types are meant for
//! this service.

use std::sync::Arc;

use crate::{
    config::BusbarConfig,
    consumer::{Handler, Scope},
    handlers::Handlers,
    ordering::Start,
    spec::StartFrom,
};

#[derive(Clone)]
pub struct Subscription {
    pub handler: Arc<dyn Handler>,
    /// The types this service receives, sorted: the wiring's when it names them (the
    /// ServiceBus spec is the truth in a cluster), else every type a handler is
    /// registered for.
    pub types: Vec<String>,
    /// The types a backfill replays: those of `types` whose handler rebuilds a copy
    /// ([`Handlers::on`]), none when the subscription starts from now.
    pub backfill: Vec<String>,
    pub start_from: StartFrom,
}

impl Subscription {
    /// `None` when the service receives nothing.
    pub fn of<S: Send + Sync + 'static>(config: &BusbarConfig, handlers: Handlers<S>) -> Option<Subscription> {
        let mut types: Vec<String> = match &config.subscribes {
            Some(wired) => wired.clone(),
            None => handlers.types().iter().map(|t| t.to_string()).collect(),
        };
        types.sort();
        types.dedup();
        if types.is_empty() {
            return None;
        }
        let unhandled: Vec<&String> = types.iter().filter(|t| !handlers.types().contains(&t.as_str())).collect();
        if !unhandled.is_empty() {
            tracing::warn!(
                ?unhandled,
                "the wiring subscribes this service to types it has no handler for; they will be ignored"
            );
        }
        let backfill = match config.start_from {
            StartFrom::Now => vec![],
            StartFrom::Beginning => {
                let replayed = handlers.replayed();
                types.iter().filter(|t| replayed.contains(&t.as_str())).cloned().collect()
            }
        };
        Some(Subscription { handler: Arc::new(handlers), types, backfill, start_from: config.start_from })
    }

    /// What ordering needs of this subscription: which types an event waits for, and where
    /// its history begins.
    ///
    /// Reactions ([`Handlers::on_new`]) are never replayed: a copy rebuilt on an empty
    /// database gets the history of the other types from its backfill, and the reactions
    /// only from where live delivery resumes. So events wait only for the types a backfill
    /// replays, and the reactions are ordered after those. With nothing replayed at all,
    /// what live delivery brings, in log order, is all there is: the subscription is
    /// ordered as one that starts from now. See docs/design-notes.md.
    pub fn scope(&self) -> Scope {
        let all = || self.types.iter().cloned();
        match self.start_from {
            StartFrom::Now => Scope::new(all(), Start::Now),
            StartFrom::Beginning if self.backfill.len() == self.types.len() => Scope::new(all(), Start::Beginning),
            StartFrom::Beginning if self.backfill.is_empty() => Scope::new(all(), Start::Now),
            StartFrom::Beginning => Scope::new(self.backfill.iter().cloned(), Start::Beginning)
                .with_reactions(all().filter(|t| !self.backfill.contains(t))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        db::{DbError, Tx},
        envelope::Event,
        handlers::Received,
    };
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    macro_rules! event {
        ($t:ident) => {
            #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
            struct $t {
                id: String,
            }
            impl Event for $t {
                const TYPE: &'static str = stringify!($t);
                fn aggregate_id(&self) -> String {
                    self.id.clone()
                }
            }
        };
    }
    event!(A);
    event!(B);
    event!(C);

    async fn nop<E>(_: &(), _: &mut Tx, _: Received<E>) -> Result<(), DbError> {
        Ok(())
    }

    fn config(vars: &[(&str, &str)]) -> BusbarConfig {
        BusbarConfig::from_lookup("svc", |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())).unwrap()
    }

    fn handlers() -> Handlers<()> {
        Handlers::new(()).on::<A>(nop).on::<B>(nop).on_new::<C>(nop)
    }

    #[test]
    fn without_wiring_the_handlers_decide_and_reactions_are_not_replayed() {
        let s = Subscription::of(&config(&[]), handlers()).unwrap();
        assert_eq!(s.types, ["A", "B", "C"]);
        assert_eq!(s.backfill, ["A", "B"]);
    }

    #[test]
    fn the_wiring_narrows_what_is_received_and_replayed() {
        let s = Subscription::of(&config(&[("BUSBAR_SUBSCRIBES", "B,C")]), handlers()).unwrap();
        assert_eq!(s.types, ["B", "C"]);
        assert_eq!(s.backfill, ["B"]);
    }

    #[test]
    fn starting_from_now_replays_nothing() {
        let s = Subscription::of(&config(&[("BUSBAR_START_FROM", "now")]), handlers()).unwrap();
        assert!(s.backfill.is_empty());
        assert_eq!(s.start_from, StartFrom::Now);
    }

    #[test]
    fn a_service_without_handlers_receives_nothing() {
        assert!(Subscription::of(&config(&[]), Handlers::none()).is_none());
    }
}
