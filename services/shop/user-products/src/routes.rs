//! `GET /users/:id/products`:
//! `{"user": {id, name}, "products": [{product_id, name, quantity, orders}]}`.

use axum::{Json, Router, extract::State, routing::get};
use busbar::{
    Db,
    web::{ApiError, PathParam},
};

use crate::store::{self, UserProducts};

pub fn router(db: Db) -> Router {
    Router::new().route("/users/{id}/products", get(show)).with_state(db)
}

async fn show(State(db): State<Db>, PathParam(id): PathParam<String>) -> Result<Json<UserProducts>, ApiError> {
    store::for_user(&db, &id).await?.map(Json).ok_or_else(|| {
        ApiError::not_found(format!(
            "user {id} not found (user-products learns of new users from UserSignedUp events within moments)"
        ))
    })
}
