//! What orders consumes, all replayed on an empty database: `UserSignedUp` (that the user
//! exists), `ProductAdded` and `ProductPriceChanged` (the product's current price). It
//! takes no renames, so the product versions it sees have gaps; the SDK still applies
//! a price change only after the product's earlier events it takes.

use busbar::{Handlers, Received, Tx, db::DbError};
use serde::{Deserialize, Serialize};
use shop_events::{OrderCancelled, OrderPlaced, ProductAdded, ProductPriceChanged, UserSignedUp};

use crate::store;

pub fn handlers() -> Handlers {
    Handlers::new(())
        .on::<UserExists>(user_signed_up)
        .on::<ProductPrice>(product_added)
        .on::<ProductPriceChanged>(price_changed)
        .publishes::<OrderPlaced>()
        .publishes::<OrderCancelled>()
        // Every handler only writes through its transaction.
        .transactional()
}

/// All orders reads of a `UserSignedUp`: that the user exists (not their email or name).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
struct UserExists {
    id: String,
}

/// All orders reads of a `ProductAdded`: the product and its price (not its name).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
struct ProductPrice {
    id: String,
    price_cents: i64,
}

busbar::id_events!(UserExists = UserSignedUp::TYPE, ProductPrice = ProductAdded::TYPE);

async fn user_signed_up(_: &(), tx: &mut Tx, u: Received<UserExists>) -> Result<(), DbError> {
    store::remember_user(tx, &u.id).await
}

async fn product_added(_: &(), tx: &mut Tx, p: Received<ProductPrice>) -> Result<(), DbError> {
    store::set_price(tx, &p.id, p.price_cents).await
}

async fn price_changed(_: &(), tx: &mut Tx, p: Received<ProductPriceChanged>) -> Result<(), DbError> {
    store::set_price(tx, &p.id, p.price_cents).await
}
