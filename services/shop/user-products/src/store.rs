use busbar::{Db, Tx, db::DbError};
use serde::Serialize;
use sqlx::Row;

#[derive(Debug, Clone, Copy)]
pub enum Named {
    User,
    Product,
}

/// Records a user's or product's current name. Events of one aggregate arrive in order,
/// so the last one applied is the latest name.
pub async fn name(tx: &mut Tx, what: Named, id: &str, name: &str) -> Result<(), DbError> {
    let sql = match what {
        Named::User => {
            "INSERT INTO users (id, name) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET name = excluded.name"
        }
        Named::Product => {
            "INSERT INTO products (id, name) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET name = excluded.name"
        }
    };
    sqlx::query(sql).bind(id).bind(name).execute(&mut **tx).await?;
    Ok(())
}

/// Records an order, placed or cancelled. A cancellation carries the whole line, so it is
/// recorded even without the placement (the order's own events arrive in order anyway).
pub async fn order(
    tx: &mut Tx,
    id: &str,
    user_id: &str,
    product_id: &str,
    quantity: i64,
    cancelled: bool,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO orders (id, user_id, product_id, quantity, cancelled) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (id) DO UPDATE SET cancelled = excluded.cancelled",
    )
    .bind(id)
    .bind(user_id)
    .bind(product_id)
    .bind(quantity)
    .bind(i64::from(cancelled))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(Debug, Serialize, PartialEq)]
pub struct UserRef {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ProductLine {
    pub product_id: String,
    pub name: String,
    /// Units in the user's orders that are not cancelled.
    pub quantity: i64,
    /// How many such orders.
    pub orders: i64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct UserProducts {
    pub user: UserRef,
    pub products: Vec<ProductLine>,
}

/// The user's products by `product_id`, counting only orders not cancelled (so a product
/// whose orders are all cancelled is left out). `None` for a user not known here.
pub async fn for_user(db: &Db, user_id: &str) -> Result<Option<UserProducts>, DbError> {
    let mut conn = db.pool().acquire().await?;
    let Some(user) =
        sqlx::query("SELECT id, name FROM users WHERE id = $1").bind(user_id).fetch_optional(&mut *conn).await?
    else {
        return Ok(None);
    };
    // SUM is cast back to BIGINT: PostgreSQL sums BIGINT into NUMERIC.
    let rows = sqlx::query(
        "SELECT o.product_id, p.name, CAST(SUM(o.quantity) AS BIGINT), CAST(COUNT(*) AS BIGINT) \
         FROM orders o JOIN products p ON p.id = o.product_id \
         WHERE o.user_id = $1 AND o.cancelled = 0 \
         GROUP BY o.product_id, p.name ORDER BY o.product_id",
    )
    .bind(user_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(UserProducts {
        user: UserRef { id: user.get(0), name: user.get(1) },
        products: rows
            .iter()
            .map(|r| ProductLine { product_id: r.get(0), name: r.get(1), quantity: r.get(2), orders: r.get(3) })
            .collect(),
    }))
}
