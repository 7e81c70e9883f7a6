//! What user-products applies, all replayed on an empty database: users' and products'
//! names (created and renamed) and orders (placed and cancelled). It takes no price
//! changes, so the product versions it sees have gaps; renames still apply in order.

use busbar::{Handlers, Received, Tx, db::DbError};
use serde::{Deserialize, Serialize};
use shop_events::{OrderCancelled, OrderPlaced, ProductAdded, ProductRenamed, UserRenamed, UserSignedUp};

use crate::store::{self, Named};

pub fn handlers() -> Handlers {
    Handlers::new(())
        .on::<UserName>(user_signed_up)
        .on::<UserRenamed>(user_renamed)
        .on::<ProductName>(product_added)
        .on::<ProductRenamed>(product_renamed)
        .on::<OrderLine>(order_placed)
        .on::<OrderCancelled>(order_cancelled)
        // Every handler only writes through its transaction.
        .transactional()
}

/// All user-products reads of a `UserSignedUp`: the user's name (not their email).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
struct UserName {
    id: String,
    name: String,
}

/// All user-products reads of a `ProductAdded`: the product's name (not its price).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
struct ProductName {
    id: String,
    name: String,
}

/// All user-products reads of an `OrderPlaced`: who ordered how many of what (not the price).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
struct OrderLine {
    id: String,
    user_id: String,
    product_id: String,
    quantity: i64,
}

busbar::id_events!(UserName = UserSignedUp::TYPE, ProductName = ProductAdded::TYPE, OrderLine = OrderPlaced::TYPE);

async fn user_signed_up(_: &(), tx: &mut Tx, u: Received<UserName>) -> Result<(), DbError> {
    store::name(tx, Named::User, &u.id, &u.name).await
}

async fn user_renamed(_: &(), tx: &mut Tx, u: Received<UserRenamed>) -> Result<(), DbError> {
    store::name(tx, Named::User, &u.id, &u.name).await
}

async fn product_added(_: &(), tx: &mut Tx, p: Received<ProductName>) -> Result<(), DbError> {
    store::name(tx, Named::Product, &p.id, &p.name).await
}

async fn product_renamed(_: &(), tx: &mut Tx, p: Received<ProductRenamed>) -> Result<(), DbError> {
    store::name(tx, Named::Product, &p.id, &p.name).await
}

async fn order_placed(_: &(), tx: &mut Tx, o: Received<OrderLine>) -> Result<(), DbError> {
    store::order(tx, &o.id, &o.user_id, &o.product_id, o.quantity, false).await
}

async fn order_cancelled(_: &(), tx: &mut Tx, o: Received<OrderCancelled>) -> Result<(), DbError> {
    store::order(tx, &o.id, &o.user_id, &o.product_id, o.quantity, true).await
}
