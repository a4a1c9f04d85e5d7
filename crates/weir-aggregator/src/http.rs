//! What every HTTP module shares: the API error, token checks and the authentication layers (a layer in front
//! of each route group, so no handler can forget it and nothing of a request is read before it).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use weir_model::ingest::HEADER_NODE;

use crate::auth::{AgentAuth, Refusal};
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

/// The bearer token a request presents ("" when none).
fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map_or("", str::trim)
}

fn unauthorized() -> ApiError {
    ApiError(
        StatusCode::UNAUTHORIZED,
        "a valid bearer token is required".into(),
    )
}

/// Readers present the read token as a bearer token, or, in a browser, in the cookie the UI's sign-in set.
fn read_auth(s: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &s.read_token else {
        return Ok(());
    };
    let cookie = session_token(headers).is_some_and(|given| token.matches(given.as_bytes()));
    if cookie || token.matches(bearer(headers).as_bytes()) {
        Ok(())
    } else {
        Err(unauthorized())
    }
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

/// The layer in front of ingest: the agent proves who it is before any byte of the body is read (each refusal
/// counted by its reason), then waits for none: beyond the concurrency limit a batch is answered 503 at once
/// and the agent retries it later.
pub(crate) async fn require_ingest(
    State(s): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let given = bearer(headers);
    let checked = match &s.agent_auth {
        AgentAuth::Open => Ok(()),
        AgentAuth::Token(token) if token.matches(given.as_bytes()) => Ok(()),
        AgentAuth::Token(_) => Err(Refusal::Unauthenticated("not the agents' token".into())),
        AgentAuth::Kubernetes(reviewer) => {
            let claimed = headers
                .get(HEADER_NODE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            reviewer
                .check(given, claimed, |namespace, pod| {
                    s.node_of_pod(namespace, pod)
                })
                .await
        }
    };
    if let Err(refusal) = checked {
        let (status, reason) = match &refusal {
            Refusal::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, Rejection::Unauthorized),
            Refusal::WrongAccount(_) | Refusal::Unbound | Refusal::WrongNode { .. } => {
                (StatusCode::FORBIDDEN, Rejection::Forbidden)
            }
            Refusal::Busy | Refusal::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, Rejection::AuthUnavailable)
            }
        };
        s.telemetry.rejected(reason);
        if refusal.retryable() {
            tracing::warn!(error = %refusal, "an agent could not be authenticated");
        } else {
            tracing::debug!(error = %refusal, "an agent was refused");
        }
        return busy_or(ApiError(status, refusal.to_string()), refusal.retryable());
    }
    let Ok(_permit) = Arc::clone(&s.ingest_permits).try_acquire_owned() else {
        s.telemetry.rejected(Rejection::Busy);
        return busy_or(
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "the aggregator is applying as many batches as it takes at once; retry".into(),
            ),
            true,
        );
    };
    next.run(request).await
}

/// The error as a response, with `Retry-After: 1` when the request may be sent again.
pub(crate) fn busy_or(error: ApiError, retry: bool) -> Response {
    let mut response = error.into_response();
    if retry {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
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
