//! `GET /posts`, and `POST /posts` (also at `/posts/create`, as the course's client uses).

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use busbar::{
    Db,
    web::{ApiError, JsonBody},
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::store;

/// Longest title accepted, in characters.
const MAX_TITLE: usize = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPost {
    title: String,
}

#[derive(Clone)]
struct Posts {
    db: Db,
    creator: store::Creator,
}

pub fn router(db: Db) -> Router {
    let creator = store::creator(db.clone());
    Router::new()
        .route("/posts", get(list).post(create))
        .route("/posts/create", axum::routing::post(create))
        .with_state(Posts { db, creator })
}

/// All posts as `{<id>: {id, title}}`, the course's shape.
async fn list(State(Posts { db, .. }): State<Posts>) -> Result<Json<Value>, ApiError> {
    let posts = store::all(&db).await?;
    let map: Map<String, Value> =
        posts.into_iter().map(|p| (p.id.clone(), json!({"id": p.id, "title": p.title}))).collect();
    Ok(Json(Value::Object(map)))
}

async fn create(
    State(Posts { creator, .. }): State<Posts>,
    JsonBody(body): JsonBody<NewPost>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let title = body.title.trim();
    if title.is_empty() {
        return Err(ApiError::bad_request("`title` must not be empty"));
    }
    if title.chars().count() > MAX_TITLE {
        return Err(ApiError::bad_request(format!("`title` is longer than {MAX_TITLE} characters")));
    }
    let post = store::create(&creator, title).await?;
    Ok((StatusCode::CREATED, Json(json!({"id": post.id, "title": post.title}))))
}
