//! The routes of each listener: ingest ([`crate::ingest`]), the JSON API and its streams (`crate::api`),
//! the live map ([`crate::ui`]), Prometheus metrics and health probes, each group behind its authentication
//! layer (`crate::http`). The only module that knows them all; none of them knows it.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware::{self};
use axum::routing::{get, post};

use crate::api::{
    alert, alert_stream, alerts, diff, edges, flow_stream, flows, healthz, readyz, status,
    suggest_policies,
};
use crate::http::{require_ingest, require_read};
use crate::ingest::ingest;
use crate::state::Shared;

/// Which routes a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routes {
    /// Everything: ingest, the API, the UI and metrics (one listener).
    All,
    /// The API, the UI and metrics; agents' flows are sent to the ingest listener instead.
    Api,
    /// Agents' flows only (and the health checks).
    Ingest,
}

/// The HTTP routes of one listener.
pub fn router(shared: Arc<Shared>, routes: Routes) -> Router {
    let health = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    // Authentication is a layer on each group of routes, so no handler can forget it and no body or query is
    // read before it.
    let ingest_route = Router::new()
        // The body is read by the handler, with its own limit and time allowed (`crate::ingest`).
        .route(
            "/api/v1/ingest",
            post(ingest).layer(DefaultBodyLimit::disable()),
        )
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            require_ingest,
        ));
    let router = match routes {
        Routes::Ingest => return health.merge(ingest_route).with_state(shared),
        Routes::All => health.merge(ingest_route),
        Routes::Api => health.route(
            "/api/v1/ingest",
            post(|| async {
                (
                    StatusCode::MISDIRECTED_REQUEST,
                    "this aggregator takes agents' flows on its ingest listener (--ingest-listen), not here\n",
                )
            }),
        ),
    };
    let reads = crate::ui::reads(Router::new())
        .route("/api/v1/status", get(status))
        .route("/api/v1/flows", get(flows))
        .route("/api/v1/flows/stream", get(flow_stream))
        .route("/api/v1/edges", get(edges))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/alerts/stream", get(alert_stream))
        .route("/api/v1/alerts/{id}", get(alert))
        .route("/api/v1/suggest", get(suggest_policies))
        .route(
            "/api/v1/diff",
            post(diff).layer(DefaultBodyLimit::max(4 << 20)),
        )
        .route("/metrics", get(crate::metrics::metrics))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            require_read,
        ));
    crate::ui::pages(router).merge(reads).with_state(shared)
}
