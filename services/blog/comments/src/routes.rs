//! `GET /posts/:id/comments` and `POST /posts/:id/comments`.

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use busbar::{
    Db,
    web::{ApiError, JsonBody, PathParam},
};
use serde::Deserialize;

use crate::store::{self, Comment};

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

async fn list(State(db): State<Db>, PathParam(post_id): PathParam<String>) -> Result<Json<Vec<Comment>>, ApiError> {
    let mut conn = db.pool().acquire().await?;
    if !store::post_exists(&mut conn, &post_id).await? {
        return Err(unknown_post(&post_id));
    }
    Ok(Json(store::for_post(&mut conn, &post_id).await?))
}

/// Answers 201 with the post's whole comment array, as the course does.
async fn create(
    State(db): State<Db>,
    PathParam(post_id): PathParam<String>,
    JsonBody(body): JsonBody<NewComment>,
) -> Result<(StatusCode, Json<Vec<Comment>>), ApiError> {
    let content = body.content.trim();
    if content.is_empty() {
        return Err(ApiError::bad_request("`content` must not be empty"));
    }
    if content.chars().count() > MAX_CONTENT {
        return Err(ApiError::bad_request(format!("`content` is longer than {MAX_CONTENT} characters")));
    }
    match store::create(&db, &post_id, content).await? {
        Some(all) => Ok((StatusCode::CREATED, Json(all))),
        None => Err(unknown_post(&post_id)),
    }
}
