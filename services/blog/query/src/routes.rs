//! `GET /posts`: `{<postId>: {id, title, comments: [{id, content, status}]}}`.
//!
//! Plain `GET /posts` returns the whole view, as the course's client expects. The view
//! only grows, so `?after=<postId>&limit=<n>` returns one page of it instead: the posts
//! whose ids sort after `after` (ids are UUIDv7, so that is "created later"), at most
//! `limit` of them, with their comments.
//!
//! Both are answered from a copy of the view in memory that each request first brings up
//! to date with the posts changed since the last one ([`busbar::view_cache`]): one indexed
//! read when nothing changed, and never a stale answer, whichever replica applied the
//! change. The answer shares the copy's text, so it costs neither a copy nor a scan of the
//! database.

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    extract::{Query, State, rejection::QueryRejection},
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};
use busbar::{Db, view_cache::ViewCache, web::ApiError};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::store;

/// Largest page `limit` accepts.
pub const MAX_PAGE: i64 = 10_000;

pub fn router(db: Db) -> Router {
    Router::new().route("/posts", get(list)).with_state(View { db, copy: Arc::default() })
}

#[derive(Clone)]
struct View {
    db: Db,
    /// The whole view in memory; one request at a time brings it up to date.
    copy: Arc<Mutex<ViewCache>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    after: Option<String>,
    limit: Option<i64>,
}

/// A slice of the view: posts whose ids sort after `after`, at most `limit` of them.
#[derive(Debug, Clone, PartialEq)]
struct Page {
    after: String,
    limit: i64,
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

async fn list(State(view): State<View>, q: Result<Query<PageQuery>, QueryRejection>) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(format!("{}; use ?after=<postId>&limit=<n>", e.body_text())))?;
    let page = page(q)?;
    let parts = {
        let mut copy = view.copy.lock().await;
        let read = copy.refresh(|after, limit| store::changes(&view.db, after, limit)).await?;
        if read > 0 {
            tracing::debug!(changed = read, posts = copy.len(), "GET /posts: brought the view's copy up to date");
        }
        match page {
            None => copy.body(),
            Some(Page { after, limit }) => copy.page(&after, limit as usize),
        }
    };
    let body = Body::from_stream(futures::stream::iter(parts.into_iter().map(Ok::<_, std::convert::Infallible>)));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
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
