//! `GET /posts`: `{<postId>: {id, title, comments: [{id, content, status}]}}`.
//!
//! Plain `GET /posts` returns the whole view, as the course's client expects. The view
//! only grows, so `?after=<postId>&limit=<n>` returns one page of it instead: the posts
//! whose ids sort after `after` (ids are UUIDv7, so that is "created later"), at most
//! `limit` of them, with their comments.

use axum::{
    Json, Router,
    extract::{Query, State, rejection::QueryRejection},
    routing::get,
};
use busbar::{Db, web::ApiError};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::store::{self, Page};

/// Largest page `limit` accepts.
pub const MAX_PAGE: i64 = 10_000;

pub fn router(db: Db) -> Router {
    Router::new().route("/posts", get(list)).with_state(db)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    after: Option<String>,
    limit: Option<i64>,
}

/// The page a query string asks for; `None` for the whole view.
fn page(q: PageQuery) -> Result<Option<Page>, ApiError> {
    if q.after.is_none() && q.limit.is_none() {
        return Ok(None);
    }
    let limit = q.limit.unwrap_or(1000);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!("`limit` must be between 1 and {MAX_PAGE}")));
    }
    Ok(Some(Page { after: q.after.unwrap_or_default(), limit }))
}

async fn list(State(db): State<Db>, q: Result<Query<PageQuery>, QueryRejection>) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(format!("{}; use ?after=<postId>&limit=<n>", e.body_text())))?;
    let posts = store::view(&db, page(q)?.as_ref()).await?;
    let map: Map<String, Value> =
        posts.into_iter().map(|p| (p.id.clone(), serde_json::to_value(p).expect("serializes"))).collect();
    Ok(Json(Value::Object(map)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(after: Option<&str>, limit: Option<i64>) -> PageQuery {
        PageQuery { after: after.map(str::to_owned), limit }
    }

    #[test]
    fn no_parameters_means_the_whole_view() {
        assert!(page(q(None, None)).unwrap().is_none());
    }

    #[test]
    fn a_page_starts_after_an_id_and_is_bounded() {
        let p = page(q(Some("0190"), None)).unwrap().unwrap();
        assert_eq!((p.after.as_str(), p.limit), ("0190", 1000));
        let p = page(q(None, Some(5))).unwrap().unwrap();
        assert_eq!((p.after.as_str(), p.limit), ("", 5));
        for bad in [0, -1, MAX_PAGE + 1] {
            assert!(page(q(None, Some(bad))).is_err(), "limit {bad}");
        }
    }
}
