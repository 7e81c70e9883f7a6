//! `POST /users`, `PATCH /users/:id`, `GET /users/:id`.

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use busbar::{
    Db,
    web::{ApiError, JsonBody, PathParam, required_text},
};
use serde::Deserialize;

use crate::store::{self, User};

const MAX_NAME: usize = 200;
const MAX_EMAIL: usize = 320;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    email: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rename {
    name: String,
}

pub fn router(db: Db) -> Router {
    Router::new()
        .route("/users", axum::routing::post(sign_up))
        .route("/users/{id}", get(show).patch(rename))
        .with_state(db)
}

fn unknown(id: &str) -> ApiError {
    ApiError::not_found(format!("user {id} not found"))
}

async fn sign_up(
    State(db): State<Db>,
    JsonBody(body): JsonBody<NewUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let email = required_text("email", &body.email, MAX_EMAIL)?;
    if !email.contains('@') {
        return Err(ApiError::bad_request("`email` must contain an @"));
    }
    let name = required_text("name", &body.name, MAX_NAME)?;
    match store::sign_up(&db, email, name).await {
        Ok(user) => Ok((StatusCode::CREATED, Json(user))),
        Err(e) if e.is_unique_violation() => Err(ApiError::conflict(format!("email {email} is already taken"))),
        Err(e) => Err(e.into()),
    }
}

async fn rename(
    State(db): State<Db>,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<Rename>,
) -> Result<Json<User>, ApiError> {
    let name = required_text("name", &body.name, MAX_NAME)?;
    store::rename(&db, &id, name).await?.map(Json).ok_or_else(|| unknown(&id))
}

async fn show(State(db): State<Db>, PathParam(id): PathParam<String>) -> Result<Json<User>, ApiError> {
    store::get(&mut *db.pool().acquire().await?, &id).await?.map(Json).ok_or_else(|| unknown(&id))
}
