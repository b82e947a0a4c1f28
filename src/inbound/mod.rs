//! The HTTP edge: the webhook listener (`POST /v1/hooks/{route}`) and the admin listener
//! (`/metrics`, `/healthz`, `/readyz`, `/v1/deliveries…`, `/sandbox/reports`). Authentication,
//! body limits, content types and the answers of spec §5–§6 live here; what an event means is
//! `sources`' and `mapping`'s business.

pub mod admin;
pub mod error;
pub mod openapi;
pub mod rate_limit;
pub mod serve;
pub mod webhook;

use axum::error_handling::HandleErrorLayer;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Router};
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;

pub use error::ApiError;

use crate::state::AppState;

/// The webhook listener's router.
pub fn router(state: AppState) -> Router {
    let max_concurrent = state.settings().server.max_concurrent_requests.max(1);
    let unverified = webhook::UnverifiedReads::new(state.settings().server.max_unverified_requests);
    webhook::routes()
        .fallback(|| async { ApiError::not_found("only POST /v1/hooks/{route} is served here") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            time_limit,
        ))
        .layer(axum::Extension(unverified))
        .layer(axum::middleware::from_fn_with_state(
            (state.clone(), "webhook"),
            track,
        ))
        // Beyond the cap, answer 503 at once rather than queueing without bound.
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: BoxError| async {
                    ApiError::unavailable("too many requests in progress; try again shortly", 1)
                }))
                .load_shed()
                .concurrency_limit(max_concurrent),
        )
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

/// How long a client is asked to wait after its request ran out of time.
const TIMED_OUT_RETRY_AFTER_SECS: u64 = 5;

/// Cuts a webhook request off after `server.request_timeout` (read per request, so a reload
/// applies) with the JSON 503 and `Retry-After`. A delivery stored before the cut is kept; the
/// sender's retry is answered `200 duplicate`.
async fn time_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = state.settings().server.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(
                timeout = %humantime::format_duration(limit),
                "webhook request took longer than server.request_timeout"
            );
            ApiError::unavailable(
                "the request took longer than server.request_timeout; try again",
                TIMED_OUT_RETRY_AFTER_SECS,
            )
            .into_response()
        }
    }
}

/// A handler panicked: answer the one JSON 500 and keep serving (the panic is logged).
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = detail, "a request handler panicked");
    ApiError::internal("internal error; the request was not processed").into_response()
}

/// The admin listener's router.
pub fn admin_router(state: AppState) -> Router {
    admin::routes(state.clone())
        .fallback(|| async { ApiError::not_found("no such admin endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            (state.clone(), "admin"),
            track,
        ))
        .layer(CatchPanicLayer::custom(panic_response))
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_gets_the_json_500_and_the_router_keeps_serving() {
        let app = Router::new()
            .route(
                "/boom",
                get(|| async {
                    let empty: Vec<u8> = Vec::new();
                    // An index out of bounds, as a bug in a handler would be.
                    empty[usize::from(empty.is_empty())].to_string()
                }),
            )
            .route("/ok", get(|| async { "ok" }))
            .layer(CatchPanicLayer::custom(panic_response));
        let boom = app
            .clone()
            .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(boom.status(), 500);
        let body = boom.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "internal");
        let ok = app
            .oneshot(Request::get("/ok").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
    }
}
