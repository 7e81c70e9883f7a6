use busbar::{Db, Tx, db::DbError};
use serde::Serialize;
use shop_events::{OrderCancelled, OrderPlaced};
use sqlx::{AnyConnection, Row, any::AnyRow};

const PLACED: &str = "placed";
const CANCELLED: &str = "cancelled";

#[derive(Debug, Serialize)]
pub struct Order {
    pub id: String,
    pub user_id: String,
    pub product_id: String,
    pub quantity: i64,
    pub unit_price_cents: i64,
    pub status: String,
}

pub enum Place {
    Placed(Order),
    UnknownUser,
    UnknownProduct,
}

pub enum Cancel {
    Cancelled(Order),
    AlreadyCancelled,
    Unknown,
}

fn order(r: &AnyRow) -> Order {
    Order {
        id: r.get(0),
        user_id: r.get(1),
        product_id: r.get(2),
        quantity: r.get(3),
        unit_price_cents: r.get(4),
        status: r.get(5),
    }
}

pub async fn remember_user(tx: &mut Tx, id: &str) -> Result<(), DbError> {
    sqlx::query("INSERT INTO known_users (id) VALUES ($1) ON CONFLICT (id) DO NOTHING")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The product's price as orders knows it: set by `ProductAdded`, replaced by each
/// `ProductPriceChanged` (which the SDK hands over in the product's order).
pub async fn set_price(tx: &mut Tx, id: &str, price_cents: i64) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO known_products (id, price_cents) VALUES ($1, $2) \
         ON CONFLICT (id) DO UPDATE SET price_cents = excluded.price_cents",
    )
    .bind(id)
    .bind(price_cents)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn get(conn: &mut AnyConnection, id: &str) -> Result<Option<Order>, DbError> {
    let row =
        sqlx::query("SELECT id, user_id, product_id, quantity, unit_price_cents, status FROM orders WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await?;
    Ok(row.as_ref().map(order))
}

/// Places an order at the product's price in orders' copy, with its `OrderPlaced`,
/// atomically, in a transaction shared with the orders placed at the same moment
/// ([`Db::write`]).
pub async fn place(db: &Db, user_id: &str, product_id: &str, quantity: i64) -> Result<Place, DbError> {
    let (id, user_id, product_id) = (uuid::Uuid::now_v7().to_string(), user_id.to_owned(), product_id.to_owned());
    db.write(move |tx| {
        let (id, user_id, product_id) = (id.clone(), user_id.clone(), product_id.clone());
        Box::pin(async move { place_in(tx, id, user_id, product_id, quantity).await })
    })
    .await
}

async fn place_in(
    tx: &mut Tx,
    id: String,
    user_id: String,
    product_id: String,
    quantity: i64,
) -> Result<Place, DbError> {
    let user = sqlx::query("SELECT 1 FROM known_users WHERE id = $1").bind(&user_id).fetch_optional(&mut **tx).await?;
    if user.is_none() {
        return Ok(Place::UnknownUser);
    }
    let Some(price) = sqlx::query("SELECT price_cents FROM known_products WHERE id = $1")
        .bind(&product_id)
        .fetch_optional(&mut **tx)
        .await?
    else {
        return Ok(Place::UnknownProduct);
    };
    let e = OrderPlaced { id, user_id, product_id, quantity, unit_price_cents: price.get(0) };
    sqlx::query(
        "INSERT INTO orders (id, user_id, product_id, quantity, unit_price_cents, status, version) \
         VALUES ($1, $2, $3, $4, $5, $6, 1)",
    )
    .bind(&e.id)
    .bind(&e.user_id)
    .bind(&e.product_id)
    .bind(e.quantity)
    .bind(e.unit_price_cents)
    .bind(PLACED)
    .execute(&mut **tx)
    .await?;
    tx.emit(&e, 1).await?;
    Ok(Place::Placed(Order {
        id: e.id,
        user_id: e.user_id,
        product_id: e.product_id,
        quantity: e.quantity,
        unit_price_cents: e.unit_price_cents,
        status: PLACED.into(),
    }))
}

/// Cancels a placed order (version 2) with its `OrderCancelled`, atomically.
pub async fn cancel(db: &Db, id: &str) -> Result<Cancel, DbError> {
    let mut tx = db.begin().await?;
    let Some(mut o) = get(&mut tx, id).await? else {
        tx.rollback().await?;
        return Ok(Cancel::Unknown);
    };
    if o.status == CANCELLED {
        tx.rollback().await?;
        return Ok(Cancel::AlreadyCancelled);
    }
    // Only a placed order is updated, so two concurrent cancels cannot both emit.
    let updated = sqlx::query("UPDATE orders SET status = $1, version = 2 WHERE id = $2 AND status = $3")
        .bind(CANCELLED)
        .bind(id)
        .bind(PLACED)
        .execute(&mut *tx)
        .await?;
    if updated.rows_affected() == 0 {
        tx.rollback().await?;
        return Ok(Cancel::AlreadyCancelled);
    }
    let e = OrderCancelled {
        id: o.id.clone(),
        user_id: o.user_id.clone(),
        product_id: o.product_id.clone(),
        quantity: o.quantity,
    };
    tx.emit(&e, 2).await?;
    tx.commit().await?;
    o.status = CANCELLED.into();
    Ok(Cancel::Cancelled(o))
}
