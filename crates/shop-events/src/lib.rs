//! The shop's events. Each aggregate (a user, a product, an order) numbers its own events
//! 1, 2, 3, ... and a subscriber that takes only some of an aggregate's types sees gaps in
//! those numbers (orders never sees `ProductRenamed`, user-products never sees
//! `ProductPriceChanged`): the SDK tells such gaps from lost events (see the README's
//! "Ordering per subscription").
//!
//! Readers ignore fields they do not know (no `deny_unknown_fields`), so a writer may add
//! a field without breaking them (see the README's "Event contracts").

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A user signed up (users; version 1 of the user).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserSignedUp {
    pub id: String,
    pub email: String,
    pub name: String,
}

/// A user changed their name (users; the next version of the user).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserRenamed {
    pub id: String,
    pub name: String,
}

/// A product was added to the catalogue (products; version 1 of the product).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProductAdded {
    pub id: String,
    pub name: String,
    /// Never negative.
    pub price_cents: i64,
}

/// A product was renamed (products; the next version of the product).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProductRenamed {
    pub id: String,
    pub name: String,
}

/// A product's price changed (products; the next version of the product).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProductPriceChanged {
    pub id: String,
    pub price_cents: i64,
}

/// An order was placed at the price orders knew then (orders; version 1 of the order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderPlaced {
    pub id: String,
    pub user_id: String,
    pub product_id: String,
    pub quantity: i64,
    pub unit_price_cents: i64,
}

/// An order was cancelled (orders; version 2 of the order). It repeats whose order it was,
/// so a reader need not have kept the `OrderPlaced` to undo it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCancelled {
    pub id: String,
    pub user_id: String,
    pub product_id: String,
    pub quantity: i64,
}

busbar::id_events!(
    UserSignedUp,
    UserRenamed,
    ProductAdded,
    ProductRenamed,
    ProductPriceChanged,
    OrderPlaced,
    OrderCancelled
);

#[cfg(test)]
mod tests {
    use super::*;
    use busbar::Event;
    use serde_json::json;

    #[test]
    fn data_fields_are_snake_case_like_the_routes() {
        let o = OrderPlaced {
            id: "o".into(),
            user_id: "u".into(),
            product_id: "p".into(),
            quantity: 2,
            unit_price_cents: 150,
        };
        assert_eq!(
            serde_json::to_value(&o).unwrap(),
            json!({"id": "o", "user_id": "u", "product_id": "p", "quantity": 2, "unit_price_cents": 150})
        );
        let p = ProductPriceChanged { id: "p".into(), price_cents: 99 };
        assert_eq!(serde_json::to_value(&p).unwrap(), json!({"id": "p", "price_cents": 99}));
    }

    #[test]
    fn readers_ignore_fields_they_do_not_know() {
        let later = json!({"id": "u", "name": "Ada", "nickname": "added later"});
        assert_eq!(
            serde_json::from_value::<UserRenamed>(later).unwrap(),
            UserRenamed { id: "u".into(), name: "Ada".into() }
        );
    }

    #[test]
    fn every_event_belongs_to_the_aggregate_named_by_its_id() {
        let r = ProductRenamed { id: "p1".into(), name: "x".into() };
        assert_eq!((ProductRenamed::TYPE, r.aggregate_id().as_str()), ("ProductRenamed", "p1"));
    }
}
