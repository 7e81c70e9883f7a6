//! `GET /posts`: `{<postId>: {id, title, comments: [{id, content, status}]}}`.
//!
//! Plain `GET /posts` returns the whole view, as the course's client expects, from a copy
//! in memory that each request first brings up to date with the posts changed since the
//! last one ([`busbar::view_cache`]): one indexed read when nothing changed, and never a
//! stale answer, whichever replica applied the change. The view only grows, so
//! `?after=<postId>&limit=<n>` returns one page of it instead, streamed from the database:
//! the posts whose ids sort after `after` (ids are UUIDv7, so that is "created later"), at
//! most `limit` of them, with their comments.

use std::sync::Arc;

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Query, State, rejection::QueryRejection},
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};
use busbar::{Db, db::DbError, view_cache::ViewCache, web::ApiError};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::store::{self, Chunk, Page};

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

/// Posts per database round trip while the view streams out.
const CHUNK: i64 = 1000;

/// The view, streamed: stored post documents, a chunk at a time, so neither a large view
/// nor many readers hold it all in memory. The first chunk is read before answering, so
/// a database that cannot be read gives a plain 500 rather than a cut-off 200.
async fn list(State(view): State<View>, q: Result<Query<PageQuery>, QueryRejection>) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(format!("{}; use ?after=<postId>&limit=<n>", e.body_text())))?;
    let Some(Page { after, limit: left }) = page(q)? else {
        return whole(&view).await;
    };
    let db = view.db;
    let asked = left.min(CHUNK);
    let first = store::chunk(&db, &after, asked).await?;
    let reader = Reader { db, pending: first, asked, left, next_after: None, opened: false, closed: false };
    let body = Body::from_stream(futures::stream::try_unfold(reader, Reader::step));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The whole view from the copy in memory, brought up to date first. The parts are
/// shared with the copy (nothing is copied per request), and a database that cannot be
/// read gives a 500, never an answer older than what was applied.
async fn whole(view: &View) -> Result<Response, ApiError> {
    let parts = {
        let mut copy = view.copy.lock().await;
        let read = copy.refresh(|after, limit| store::changes(&view.db, after, limit)).await?;
        if read > 0 {
            tracing::debug!(changed = read, posts = copy.len(), "GET /posts: brought the view's copy up to date");
        }
        copy.body()
    };
    let body = Body::from_stream(futures::stream::iter(parts.into_iter().map(Ok::<_, std::convert::Infallible>)));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Where a streaming `GET /posts` is.
struct Reader {
    db: Db,
    /// A chunk read and not yet sent.
    pending: Option<Chunk>,
    /// The limit the last chunk was read with (a full chunk may have more after it).
    asked: i64,
    /// Posts the request may still get.
    left: i64,
    /// Read the next chunk after this id.
    next_after: Option<String>,
    opened: bool,
    closed: bool,
}

impl Reader {
    async fn step(mut self) -> Result<Option<(Bytes, Reader)>, DbError> {
        if self.pending.is_none()
            && let Some(after) = self.next_after.take()
        {
            self.asked = self.left.min(CHUNK);
            self.pending = store::chunk(&self.db, &after, self.asked).await.inspect_err(|e| {
                tracing::error!(error = %e, "GET /posts: cannot read the next chunk; the response is cut off");
            })?;
        }
        if let Some(c) = self.pending.take() {
            let mut out = String::with_capacity(c.members.len() + 1);
            out.push(if self.opened { ',' } else { '{' });
            out.push_str(&c.members);
            self.opened = true;
            self.left -= c.posts;
            self.next_after = (c.posts == self.asked && self.left > 0).then_some(c.last);
            return Ok(Some((Bytes::from(out), self)));
        }
        if self.closed {
            return Ok(None);
        }
        self.closed = true;
        let end = if self.opened { "}" } else { "{}" };
        Ok(Some((Bytes::from_static(end.as_bytes()), self)))
    }
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
