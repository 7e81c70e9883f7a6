//! `GET /posts/:id/comments` and `POST /posts/:id/comments`.

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use busbar::{
    Db,
    web::{ApiError, JsonBody, PathParam},
};
use serde::Deserialize;

use crate::store;

const MAX_CONTENT: usize = 5000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewComment {
    content: String,
}

pub fn router(db: Db) -> Router {
    Router::new().route("/posts/{id}/comments", get(list).post(create)).with_state(db)
}

fn unknown_post(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "post {id} not found (comments learns of new posts from PostCreated events within moments)"
    ))
}

/// A comment array as stored: JSON text, sent as is.
fn json(status: StatusCode, array: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], array).into_response()
}

async fn list(State(db): State<Db>, PathParam(post_id): PathParam<String>) -> Result<Response, ApiError> {
    let mut conn = db.pool().acquire().await?;
    match store::array(&mut conn, &post_id).await? {
        Some(array) => Ok(json(StatusCode::OK, array)),
        None => Err(unknown_post(&post_id)),
    }
}

/// Answers 201 with the post's whole comment array, as the course does.
async fn create(
    State(db): State<Db>,
    PathParam(post_id): PathParam<String>,
    JsonBody(body): JsonBody<NewComment>,
) -> Result<Response, ApiError> {
    let content = body.content.trim();
    if content.is_empty() {
        return Err(ApiError::bad_request("`content` must not be empty"));
    }
    if content.chars().count() > MAX_CONTENT {
        return Err(ApiError::bad_request(format!("`content` is longer than {MAX_CONTENT} characters")));
    }
    match store::create(&db, &post_id, content).await? {
        Some(array) => Ok(json(StatusCode::CREATED, array)),
        None => Err(unknown_post(&post_id)),
    }
}
