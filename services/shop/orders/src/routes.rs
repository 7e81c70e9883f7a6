//! `POST /orders`, `POST /orders/:id/cancel`, `GET /orders/:id`.

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    routing::{get, post},
};
use busbar::{
    Db,
    web::{ApiError, JsonBody, PathParam},
};
use serde::Deserialize;

use crate::store::{self, Cancel, Order, Place};

const QUANTITY: std::ops::RangeInclusive<i64> = 1..=1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrder {
    user_id: String,
    product_id: String,
    quantity: i64,
}

pub fn router(db: Db) -> Router {
    Router::new()
        .route("/orders", post(place))
        .route("/orders/{id}", get(show))
        .route("/orders/{id}/cancel", post(cancel))
        .with_state(db)
}

fn unknown(id: &str) -> ApiError {
    ApiError::not_found(format!("order {id} not found"))
}

async fn place(
    State(db): State<Db>,
    JsonBody(body): JsonBody<NewOrder>,
) -> Result<(StatusCode, Json<Order>), ApiError> {
    if !QUANTITY.contains(&body.quantity) {
        return Err(ApiError::bad_request(format!(
            "`quantity` must be between {} and {}",
            QUANTITY.start(),
            QUANTITY.end()
        )));
    }
    // Orders learns of users and products from events, within moments of their creation:
    // until then it cannot price the order, which the caller may retry.
    match store::place(&db, &body.user_id, &body.product_id, body.quantity).await? {
        Place::Placed(order) => Ok((StatusCode::CREATED, Json(order))),
        Place::UnknownUser => Err(ApiError::unprocessable(format!(
            "user {} is not known to orders (yet: it learns of new users from UserSignedUp events)",
            body.user_id
        ))),
        Place::UnknownProduct => Err(ApiError::unprocessable(format!(
            "product {} is not known to orders (yet: it learns of new products from ProductAdded events)",
            body.product_id
        ))),
    }
}

async fn cancel(State(db): State<Db>, PathParam(id): PathParam<String>) -> Result<Json<Order>, ApiError> {
    match store::cancel(&db, &id).await? {
        Cancel::Cancelled(order) => Ok(Json(order)),
        Cancel::AlreadyCancelled => Err(ApiError::conflict(format!("order {id} is already cancelled"))),
        Cancel::Unknown => Err(unknown(&id)),
    }
}

async fn show(State(db): State<Db>, PathParam(id): PathParam<String>) -> Result<Json<Order>, ApiError> {
    store::get(&mut *db.pool().acquire().await?, &id).await?.map(Json).ok_or_else(|| unknown(&id))
}
