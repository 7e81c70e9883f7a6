//! The probe's events: four types about one aggregate kind, an item. Every type carries
//! the item's id (the aggregate) and, optionally, a [`Poison`] telling the subscriber's
//! handler how to misbehave, so a test chooses which event is poison.

use busbar::Event;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a subscriber's handler treats an event, chosen by the test that emits it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "do", rename_all = "lowercase", deny_unknown_fields)]
pub enum Poison {
    /// The handler returns an error: always, or only on its first `times` attempts (counted
    /// by the subscriber process, so a restart starts counting again), and never once the
    /// subscriber was told its aggregate is cured (`POST /cure`).
    Fail {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        times: Option<u32>,
    },
    /// The handler panics, every time.
    Panic,
    /// The subscriber process aborts, every time: a crash no handler can report.
    Crash,
}

/// What every item event holds.
pub trait ItemEvent: Event + JsonSchema + Send + Sync + 'static {
    fn new(id: String, poison: Option<Poison>) -> Self;
    fn poison(&self) -> Option<&Poison>;
}

macro_rules! item_event {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
        pub struct $name {
            /// The item: the aggregate this event is about.
            pub id: String,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub poison: Option<Poison>,
        }

        impl Event for $name {
            const TYPE: &'static str = stringify!($name);
            fn aggregate_id(&self) -> String {
                self.id.clone()
            }
        }

        impl ItemEvent for $name {
            fn new(id: String, poison: Option<Poison>) -> Self {
                Self { id, poison }
            }
            fn poison(&self) -> Option<&Poison> {
                self.poison.as_ref()
            }
        }
    };
}

item_event!(
    /// An item was created (usually version 1).
    ItemAdded
);
item_event!(
    /// An item got a new name.
    ItemRenamed
);
item_event!(
    /// An item got a new price.
    ItemPriced
);
item_event!(
    /// An item was removed.
    ItemRemoved
);

/// Every type the probe publishes and can handle.
pub const TYPES: [&str; 4] = [ItemAdded::TYPE, ItemRenamed::TYPE, ItemPriced::TYPE, ItemRemoved::TYPE];
