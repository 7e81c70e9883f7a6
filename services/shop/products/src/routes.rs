//! `POST /products`, `PATCH /products/:id`, `GET /products`, `GET /products/:id`.

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use busbar::{
    Db,
    web::{ApiError, JsonBody, PathParam, required_text},
};
use serde::Deserialize;

use crate::store::{self, Change, Product};

const MAX_NAME: usize = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProduct {
    name: String,
    price_cents: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    name: Option<String>,
    price_cents: Option<i64>,
}

pub fn router(db: Db) -> Router {
    Router::new().route("/products", get(list).post(add)).route("/products/{id}", get(show).patch(patch)).with_state(db)
}

fn price(cents: i64) -> Result<i64, ApiError> {
    if cents < 0 {
        return Err(ApiError::bad_request("`price_cents` must not be negative"));
    }
    Ok(cents)
}

fn unknown(id: &str) -> ApiError {
    ApiError::not_found(format!("product {id} not found"))
}

async fn add(
    State(db): State<Db>,
    JsonBody(body): JsonBody<NewProduct>,
) -> Result<(StatusCode, Json<Product>), ApiError> {
    let name = required_text("name", &body.name, MAX_NAME)?;
    let product = store::add(&db, name, price(body.price_cents)?).await?;
    Ok((StatusCode::CREATED, Json(product)))
}

async fn patch(
    State(db): State<Db>,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<Patch>,
) -> Result<Json<Product>, ApiError> {
    if body.name.is_none() && body.price_cents.is_none() {
        return Err(ApiError::bad_request("nothing to change: give `name`, `price_cents` or both"));
    }
    let change = Change {
        name: body.name.as_deref().map(|n| required_text("name", n, MAX_NAME)).transpose()?,
        price_cents: body.price_cents.map(price).transpose()?,
    };
    store::change(&db, &id, change).await?.map(Json).ok_or_else(|| unknown(&id))
}

async fn list(State(db): State<Db>) -> Result<Json<Vec<Product>>, ApiError> {
    Ok(Json(store::all(&db).await?))
}

async fn show(State(db): State<Db>, PathParam(id): PathParam<String>) -> Result<Json<Product>, ApiError> {
    store::get(&mut *db.pool().acquire().await?, &id).await?.map(Json).ok_or_else(|| unknown(&id))
}
