//! The admin listener's handlers: metrics, health, readiness, the delivery API, the digest
//! preview, the quota budget, the sandbox's report list, and `POST /-/reload`. `/v1/*` and `/-/reload` need
//! `server.admin_token` when it is set, and are closed in `serve` without one unless the admin
//! listener is bound to a loopback address.

use axum::Json;
use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use chrono::SecondsFormat;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::config::{Mode, Settings};
use crate::state::AppState;
use crate::store::{Delivery, State as DeliveryState};

/// Most deliveries one list answer holds.
pub const MAX_LIST_LIMIT: usize = 1000;

pub(super) fn routes(state: AppState) -> Router<AppState> {
    let api = Router::new()
        .route("/v1/deliveries", get(list_deliveries))
        .route("/v1/deliveries/{id}", get(get_delivery))
        .route("/v1/deliveries/{id}/retry", post(retry_delivery))
        .route("/v1/digests/{route}", get(preview_digest))
        .route("/v1/quota", get(quota))
        .route("/v1/quota/exhausted", delete(clear_quota_exhausted))
        .route("/-/reload", post(reload))
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            require_admin_token,
        ));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(health_check))
        .route("/readyz", get(readiness))
        .route("/sandbox/reports", get(sandbox_reports))
        .route("/openapi.json", get(super::openapi::document))
        .merge(api)
}

/// Guards `/v1/*` and `/-/reload`: with `server.admin_token` set, the request must carry it
/// (`Authorization: Bearer`, scheme in any case); without one, `serve` keeps them closed (403)
/// unless the admin listener is bound to a loopback address. `--sandbox` keeps them open.
async fn require_admin_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let settings = state.settings();
    match &settings.server.admin_token {
        Some(token) => {
            let given = crate::sources::auth::bearer(request.headers()).unwrap_or_default();
            if !same_token(given, token.expose()) {
                return ApiError::unauthorized(
                    "this endpoint needs Authorization: Bearer <server.admin_token>",
                )
                .into_response();
            }
        }
        None if admin_api_closed(&settings, state.reloader.mode()) => {
            return ApiError::forbidden(format!(
                "the admin API is closed: server.admin_token is not set and server.admin_listen ({}) is not a loopback address; set a token of at least {} characters (e.g. {}__SERVER__ADMIN_TOKEN) or bind server.admin_listen to 127.0.0.1",
                settings.server.admin_listen,
                crate::config::MIN_ADMIN_TOKEN_CHARS,
                crate::config::ENV_PREFIX,
            ))
            .into_response();
        }
        None => {}
    }
    next.run(request).await
}

/// Whether `/v1/*` and `/-/reload` answer 403: a real deployment (`serve`) with no
/// `server.admin_token` whose admin listener is reachable from other hosts.
pub fn admin_api_closed(settings: &Settings, mode: Mode) -> bool {
    mode == Mode::Production
        && settings.server.admin_token.is_none()
        && !settings
            .admin_addr()
            .is_ok_and(|addr| addr.ip().is_loopback())
}

/// Compares the offered token with the configured one without revealing, through timing,
/// either its content or its length: both sides are hashed to 32 bytes first.
fn same_token(given: &str, expected: &str) -> bool {
    let given = Sha256::digest(given.as_bytes());
    let expected = Sha256::digest(expected.as_bytes());
    bool::from(given.as_slice().ct_eq(expected.as_slice()))
}

/// Re-reads the configuration; 200 with a summary, or 422 saying why the old one stays.
async fn reload(State(state): State<AppState>) -> Response {
    match state.reloader.reload().await {
        Ok(summary) => Json(json!({"status": "reloaded", "summary": summary})).into_response(),
        Err(reason) => ApiError::invalid_config(reason).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    state.quota.refresh().await;
    match state.store.stats().await {
        Ok(stats) => {
            state
                .metrics
                .queue_depth
                .set(i64::try_from(stats.depth).unwrap_or(i64::MAX));
            let age = stats
                .oldest
                .map_or(0, |t| (chrono::Utc::now() - t).num_seconds().max(0));
            state.metrics.queue_oldest_age.set(age);
        }
        Err(e) => tracing::warn!(error = %e, "queue stats unavailable for /metrics"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn health_check() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readiness(State(state): State<AppState>) -> Response {
    let max_queued = state.settings().store.max_queued;
    let reason = match state.store.stats().await {
        _ if state.store.problem().is_some() => {
            state.store.problem().map(|p| format!("store: {p}"))
        }
        Err(e) => Some(format!("store unreachable: {e}")),
        Ok(stats) if stats.depth >= max_queued => Some(format!(
            "delivery queue is full ({} of store.max_queued {max_queued})",
            stats.depth
        )),
        Ok(_) => None,
    };
    // DingTalk refusing an app (credentials, quota, IP ban) does not make the relay unready:
    // webhooks are still stored and delivered once DingTalk accepts calls again. It is said
    // here, and in dingtalk_relay_dingtalk_paused.
    let mut warnings = state.runtime.load().client.problems();
    match state.quota.status().await {
        Ok(status) => warnings.extend(status.warnings),
        Err(e) => tracing::warn!(error = %e, "quota unavailable for /readyz"),
    }
    match reason {
        None if warnings.is_empty() => Json(json!({"status": "ready"})).into_response(),
        None => Json(json!({"status": "ready", "warnings": warnings})).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason})),
        )
            .into_response(),
    }
}

/// The month's metered DingTalk calls: used, limit, by API and route, days left, projection.
async fn quota(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let status = state.quota.status().await.map_err(store_error)?;
    Ok(Json(json!(status)))
}

/// Forgets DingTalk's 90020 for this month (the organisation's quota was raised): held
/// deliveries go out at their next look.
async fn clear_quota_exhausted(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let cleared = state.quota.clear_exhausted().await.map_err(store_error)?;
    state.runtime.load().client.resume_quota();
    tracing::warn!(cleared, "quota exhaustion cleared by an operator");
    Ok(Json(json!({"cleared": cleared})))
}

async fn sandbox_reports(State(state): State<AppState>) -> Response {
    match &state.sandbox {
        Some(fake) => Json(json!({"reports": fake.reports()})).into_response(),
        None => ApiError::not_found("the sandbox is not running (start with serve --sandbox)")
            .into_response(),
    }
}

/// The delivery as the API shows it (spec §6).
pub fn delivery_json(d: &Delivery) -> Value {
    let time = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    json!({
        "delivery_id": d.id,
        "route": d.route,
        "state": d.state.as_str(),
        "attempts": d.attempts,
        "next_attempt_at": d.next_attempt_at.map(time),
        "last_error": d.last_error.as_ref().map(|e| json!({"errcode": e.errcode, "errmsg": e.errmsg})),
        // Delivered with an empty id: DingTalk said errcode 0 without a usable id.
        "report_id": d.report_id.as_deref().filter(|id| !id.is_empty()),
        "created_at": time(d.created_at),
        "updated_at": time(d.updated_at),
    })
}

/// The `{id}` path segment; one that is not UTF-8 names no delivery (404, not axum's text 400).
fn delivery_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    id.map(|Path(id)| id)
        .map_err(|_| ApiError::not_found("no delivery with that id (it is not valid UTF-8)"))
}

fn store_error(e: crate::store::Error) -> ApiError {
    tracing::error!(error = %e, "store error on the admin API");
    ApiError::unavailable("the store is unavailable", 5)
}

async fn get_delivery(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = delivery_id(id)?;
    match state.store.get(&id).await.map_err(store_error)? {
        Some(d) => Ok(Json(delivery_json(&d))),
        None => Err(ApiError::not_found(format!("no delivery {id:?}"))),
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    state: Option<String>,
    limit: Option<String>,
}

async fn list_deliveries(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    // Both fields are optional strings, so only a repeated parameter fails to deserialize.
    let Query(query) = query.map_err(|e| {
        let field = if e.body_text().contains("`limit`") {
            "limit"
        } else {
            "state"
        };
        ApiError::bad_request(format!("{field}: give it at most once"), field)
    })?;
    let filter = match query.state.as_deref() {
        None | Some("") => None,
        Some(name) => Some(DeliveryState::parse(name).ok_or_else(|| {
            ApiError::bad_request(
                format!(
                    "state: {name:?} is not one of queued, delivering, delivered, failed, ignored"
                ),
                "state",
            )
        })?),
    };
    let limit = match query.limit.as_deref() {
        None | Some("") => 50,
        Some(n) => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!("limit: must be 1–{MAX_LIST_LIMIT}"), "limit")
            })?,
    };
    let list = state.store.list(filter, limit).await.map_err(store_error)?;
    Ok(Json(
        json!({"deliveries": list.iter().map(delivery_json).collect::<Vec<_>>()}),
    ))
}

async fn retry_delivery(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = delivery_id(id)?;
    match state
        .store
        .retry(&id, chrono::Utc::now())
        .await
        .map_err(store_error)?
    {
        None => Err(ApiError::not_found(format!("no delivery {id:?}"))),
        Some(DeliveryState::Failed) => {
            tracing::info!(delivery_id = %id, "failed delivery queued again by an operator");
            state.delivery.wake();
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({"delivery_id": id, "status": "queued"})),
            )
                .into_response())
        }
        Some(other) => Err(ApiError::conflict(format!(
            "delivery {id:?} is {}; only failed deliveries can be retried",
            other.as_str()
        ))),
    }
}

/// `GET /v1/digests/{route}`: the digest a digest route would send if it were due now, made
/// from the events it keeps (nothing is changed or sent).
async fn preview_digest(
    State(state): State<AppState>,
    route: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let route_name = route
        .map(|Path(r)| r)
        .map_err(|_| ApiError::not_found("no route with that name (it is not valid UTF-8)"))?;
    let runtime = state.runtime.load_full();
    let settings = &runtime.settings;
    let route = settings
        .routes
        .get(&route_name)
        .ok_or_else(|| ApiError::not_found(format!("no route {route_name:?}")))?;
    let schedule = crate::digest::schedule_of(settings, route).ok_or_else(|| {
        ApiError::not_found(format!(
            "routes.{route_name} makes one report per event; it has no digest"
        ))
    })?;
    let now = chrono::Utc::now();
    let events = state
        .store
        .digest_events(&route_name)
        .await
        .map_err(store_error)?;
    let undecodable = state
        .store
        .undecodable_digest_events(&route_name)
        .await
        .map_err(store_error)?;
    let last = state
        .store
        .last_digest(&route_name)
        .await
        .map_err(store_error)?;
    let reports =
        crate::digest::build_reports(settings, &runtime.mapper, &route_name, &events, last, now)
            .map_err(|e| ApiError::internal(format!("the digest cannot be built: {e}")))?;
    let time = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    Ok(Json(json!({
        "route": route_name,
        "pending_events": events.len(),
        "undecodable_events": undecodable.iter().map(|bad| json!({"id": bad.id, "reason": bad.reason})).collect::<Vec<_>>(),
        "last_digest_at": last.map(time),
        "next_digest_at": schedule.next_after(now).map(time),
        "reports": reports.iter().map(|r| json!({
            "group": r.group,
            "author": r.draft.author,
            "to_userids": r.draft.to_userids,
            "events": r.events,
            "summarised_pipelines": r.summarised,
            "contents": r.draft.contents.iter().map(|c| json!({"key": c.field, "content": c.content})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(admin_listen: &str, admin_token: &str) -> Settings {
        Settings::from_yaml(&format!(
            r#"
server: {{listen: "127.0.0.1:8080", admin_listen: "{admin_listen}", admin_token: {admin_token}}}
dingtalk: {{apps: {{default: {{app_key: "k"}}}}}}
store: {{url: "memory:"}}
delivery: {{}}
routes:
  ci: {{source: generic, insecure: true, template: {{name: "日报"}}, author: "m"}}
"#
        ))
        .expect("test yaml parses")
    }

    #[test]
    fn the_admin_api_is_closed_only_in_serve_without_a_token_off_loopback() {
        // (admin_listen, admin_token, mode, closed)
        let cases = [
            ("0.0.0.0:8081", "~", Mode::Production, true),
            ("[::]:8081", "~", Mode::Production, true),
            ("10.0.0.5:8081", "~", Mode::Production, true),
            ("127.0.0.1:8081", "~", Mode::Production, false),
            ("[::1]:8081", "~", Mode::Production, false),
            (
                "0.0.0.0:8081",
                "\"a-long-enough-admin-token\"",
                Mode::Production,
                false,
            ),
            ("0.0.0.0:8081", "~", Mode::Sandbox, false),
        ];
        for (listen, token, mode, closed) in cases {
            assert_eq!(
                admin_api_closed(&settings(listen, token), mode),
                closed,
                "{listen} {token} {mode:?}"
            );
        }
    }

    #[test]
    fn token_comparison_needs_the_exact_token() {
        assert!(same_token(
            "a-long-enough-admin-token",
            "a-long-enough-admin-token"
        ));
        for wrong in [
            "",
            "a-long-enough-admin-toke",
            "a-long-enough-admin-token ",
            "A-long-enough-admin-token",
        ] {
            assert!(!same_token(wrong, "a-long-enough-admin-token"), "{wrong:?}");
        }
    }
}
