//! `GET /posts`: `{<postId>: {id, title, comments: [{id, content, status}]}}`.

use axum::{Json, Router, extract::State, routing::get};
use busbar::{Db, web::ApiError};
use serde_json::{Map, Value};

use crate::store;

pub fn router(db: Db) -> Router {
    Router::new().route("/posts", get(list)).with_state(db)
}

async fn list(State(db): State<Db>) -> Result<Json<Value>, ApiError> {
    let posts = store::view(&db).await?;
    let map: Map<String, Value> =
        posts.into_iter().map(|p| (p.id.clone(), serde_json::to_value(p).expect("serializes"))).collect();
    Ok(Json(Value::Object(map)))
}
