//! What every HTTP module shares: the API error, token checks and the authentication layers (a layer in front
//! of each route group, so no handler can forget it and nothing of a request is read before it).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::state::Shared;
use crate::telemetry::Rejection;

/// The cookie the UI's sign-in sets, holding the read token.
pub const SESSION_COOKIE: &str = "weir_read";

/// An API error: a status and a message, as JSON.
#[derive(Debug)]
pub struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.1 });
        (self.0, axum::Json(body)).into_response()
    }
}

pub(crate) fn bad(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

pub(crate) fn internal(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, message.into())
}

/// Compares without an early exit, so the time taken does not tell how much of a token was right.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn check_token(headers: &HeaderMap, token: &Option<String>) -> Result<(), ApiError> {
    let Some(token) = token else { return Ok(()) };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if same(given.trim().as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required".into(),
        ))
    }
}

/// Readers present the read token as a bearer token, or, in a browser, in the cookie the UI's sign-in set.
fn read_auth(s: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    if let (Some(token), Some(given)) = (&s.read_token, session_token(headers))
        && same(given.as_bytes(), token.as_bytes())
    {
        return Ok(());
    }
    check_token(headers, &s.read_token)
}

/// The layer in front of every read route: the read token (or the UI's session cookie) before anything of the
/// request is looked at.
pub(crate) async fn require_read(
    State(s): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    match read_auth(&s, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// The layer in front of ingest: the agents' token before the body is read (and counted when it is wrong).
pub(crate) async fn require_ingest(
    State(s): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    match check_token(request.headers(), &s.ingest_token) {
        Ok(()) => next.run(request).await,
        Err(e) => {
            s.telemetry.rejected(Rejection::Unauthorized);
            e.into_response()
        }
    }
}

/// The read token from the session cookie, if the request carries one.
pub(crate) fn session_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE).then_some(value)
        })
}
