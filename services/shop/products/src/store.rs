use busbar::{Db, db::DbError};
use serde::Serialize;
use shop_events::{ProductAdded, ProductPriceChanged, ProductRenamed};
use sqlx::{AnyConnection, Row, any::AnyRow};

#[derive(Debug, Serialize)]
pub struct Product {
    pub id: String,
    pub name: String,
    pub price_cents: i64,
}

/// What a PATCH asks for; `None` leaves a field as it is.
pub struct Change<'a> {
    pub name: Option<&'a str>,
    pub price_cents: Option<i64>,
}

fn product(r: &AnyRow) -> Product {
    Product { id: r.get(0), name: r.get(1), price_cents: r.get(2) }
}

pub async fn get(conn: &mut AnyConnection, id: &str) -> Result<Option<Product>, DbError> {
    let row =
        sqlx::query("SELECT id, name, price_cents FROM products WHERE id = $1").bind(id).fetch_optional(conn).await?;
    Ok(row.as_ref().map(product))
}

pub async fn all(db: &Db) -> Result<Vec<Product>, DbError> {
    let rows = sqlx::query("SELECT id, name, price_cents FROM products ORDER BY id").fetch_all(db.pool()).await?;
    Ok(rows.iter().map(product).collect())
}

pub async fn add(db: &Db, name: &str, price_cents: i64) -> Result<Product, DbError> {
    let e = ProductAdded { id: uuid::Uuid::now_v7().to_string(), name: name.to_owned(), price_cents };
    let mut tx = db.begin().await?;
    sqlx::query("INSERT INTO products (id, name, price_cents, version) VALUES ($1, $2, $3, 1)")
        .bind(&e.id)
        .bind(&e.name)
        .bind(e.price_cents)
        .execute(&mut *tx)
        .await?;
    tx.emit(&e, 1).await?;
    tx.commit().await?;
    Ok(Product { id: e.id, name: e.name, price_cents: e.price_cents })
}

/// Applies a change, emitting one event per field that really changes (a rename, then a
/// price change, each with its own version), all in one transaction. `None` for an
/// unknown product.
pub async fn change(db: &Db, id: &str, change: Change<'_>) -> Result<Option<Product>, DbError> {
    let mut tx = db.begin().await?;
    let Some(row) = sqlx::query("SELECT id, name, price_cents, version FROM products WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
    else {
        return Ok(None);
    };
    let (mut p, mut version): (Product, i64) = (product(&row), row.get(3));
    if let Some(name) = change.name.filter(|n| *n != p.name) {
        version += 1;
        p.name = name.to_owned();
        tx.emit(&ProductRenamed { id: id.to_owned(), name: p.name.clone() }, version).await?;
    }
    if let Some(cents) = change.price_cents.filter(|c| *c != p.price_cents) {
        version += 1;
        p.price_cents = cents;
        tx.emit(&ProductPriceChanged { id: id.to_owned(), price_cents: cents }, version).await?;
    }
    sqlx::query("UPDATE products SET name = $1, price_cents = $2, version = $3 WHERE id = $4")
        .bind(&p.name)
        .bind(p.price_cents)
        .bind(version)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(p))
}
