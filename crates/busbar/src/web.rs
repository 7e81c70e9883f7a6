//! HTTP plumbing every busbar process shares: JSON errors, body extraction with clear
//! messages, the JSON 404 fallback, tracing setup and the shutdown signal.

use axum::{
    Json,
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Request, rejection::BytesRejection},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;

/// An error answered as `{"error": "..."}` with a status code.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    /// 409: the request clashes with the current state (a taken email, a cancelled order).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    /// 422: well-formed, but refers to something this service does not know (yet).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
}

/// A required text field of a request, trimmed: refused with 400 naming the field when it
/// is empty or longer than `max` characters.
pub fn required_text<'a>(field: &str, value: &'a str, max: usize) -> Result<&'a str, ApiError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ApiError::bad_request(format!("`{field}` must not be empty")));
    }
    if v.chars().count() > max {
        return Err(ApiError::bad_request(format!("`{field}` is longer than {max} characters")));
    }
    Ok(v)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(serde_json::json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the oversize body is left unread, so the server closes the
            // connection after this answer; saying so keeps a client from reusing it and
            // failing its next request on a dead connection.
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        let status = r.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "request body is larger than this service accepts".to_owned()
        } else {
            format!("cannot read request body: {}", r.body_text())
        };
        ApiError::new(status, message)
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        tracing::error!(error = %e, "database error while serving a request");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("database error: {e}"))
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        crate::db::DbError::from(e).into()
    }
}

/// The raw request body, with a JSON error (413 for oversize) instead of axum's plain text.
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Ok(Body(Bytes::from_request(req, state).await?))
    }
}

/// A JSON request body, refused with 400 and a message naming the problem when it is
/// empty, malformed, wrongly typed or has unknown fields (for `deny_unknown_fields` types).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let Body(bytes) = Body::from_request(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// A path parameter, like axum's `Path`, but refused with a JSON error instead of plain
/// text when it cannot be read (e.g. `%ff` percent-decodes to invalid UTF-8).
pub struct PathParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParam<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(PathParam(v)),
            Err(r) => Err(ApiError::new(r.status(), r.body_text())),
        }
    }
}

pub use busbar_client::{error_chain, one_line, shutdown_signal};

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("request body is empty; expected a JSON object"));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Fallback for unknown routes: 404 with a JSON message.
pub async fn not_found(uri: axum::http::Uri, method: axum::http::Method) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

/// Logs to stderr; `RUST_LOG` filters (default `info`), `BUSBAR_LOG_FORMAT=json` switches
/// to one JSON object per line for log shippers.
pub fn init_tracing() {
    busbar_client::init_logging("info");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_text_is_trimmed_and_bounded() {
        assert_eq!(required_text("name", "  Ada ", 10).unwrap(), "Ada");
        let empty = required_text("name", "   ", 10).unwrap_err();
        assert_eq!((empty.status, empty.message.as_str()), (StatusCode::BAD_REQUEST, "`name` must not be empty"));
        assert!(required_text("name", "ééééé", 5).is_ok(), "counts characters, not bytes");
        assert!(required_text("name", "abcdef", 5).unwrap_err().message.contains("longer than 5"));
    }
}
