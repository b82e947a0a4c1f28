//! The HTTP edge: the webhook listener (`POST /v1/hooks/{route}`) and the admin listener
//! (`/metrics`, `/healthz`, `/readyz`, `/v1/deliveries…`, `/sandbox/reports`). Authentication,
//! body limits, content types and the answers of spec §5–§6 live here; what an event means is
//! `sources`' and `mapping`'s business.

pub mod admin;
pub mod error;
pub mod openapi;
pub mod webhook;

use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tokio::time::Instant;

pub use error::ApiError;

use crate::state::AppState;

/// The webhook listener's router.
pub fn router(state: AppState) -> Router {
    let timeout = state.settings().server.request_timeout;
    webhook::routes()
        .fallback(|| async { ApiError::not_found("only POST /v1/hooks/{route} is served here") })
        .layer(axum::middleware::from_fn_with_state(
            (state.clone(), "webhook"),
            track,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            timeout + Duration::from_secs(5),
        ))
        .with_state(state)
}

/// The admin listener's router.
pub fn admin_router(state: AppState) -> Router {
    admin::routes(state.clone())
        .fallback(|| async { ApiError::not_found("no such admin endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            (state.clone(), "admin"),
            track,
        ))
        .with_state(state)
}

/// Counts and times each request by listener and matched path (never the raw URL).
async fn track(
    State((state, listener)): State<(AppState, &'static str)>,
    request: Request,
    next: Next,
) -> Response {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let m = &state.metrics;
    m.http_requests
        .with_label_values(&[listener, &path, &status])
        .inc();
    m.http_duration
        .with_label_values(&[listener, &path])
        .observe(started.elapsed().as_secs_f64());
    response
}
