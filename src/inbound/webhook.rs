//! `POST /v1/hooks/{route}`: route lookup → size limit → header credentials → body (under
//! its own cap and time limit when only a body signature can authenticate it) →
//! authentication → rate limit → content type → parse → map → durable enqueue (→ optional
//! `?wait=`), with the answers of spec §5.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, OriginalUri, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::Utc;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::ApiError;
use crate::config::{RouteSettings, Settings};
use crate::delivery::{Outcome, final_outcome};
use crate::mapping::{Admitted, IgnoreKind, Mapped, Mapper, MappingError, ReportDraft};
use crate::sources;
use crate::state::{AppState, Runtime};
use crate::store::{self, Enqueued, NewDelivery, NewDigestEvent};

/// Longest `?wait=` in seconds.
pub const MAX_WAIT_SECS: u64 = 30;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/v1/hooks/{route}", post(receive_webhook))
}

/// A webhook that passed every check, ready to store or show.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// A report to create.
    Report {
        /// Its contents.
        draft: ReportDraft,
        /// Fields cut at the 1000-character limit.
        truncated: Vec<String>,
        /// Dedup key.
        dedup_key: String,
        /// Second dedup key (route + body hash) when `dedup_key` is the source's id.
        body_key: Option<String>,
    },
    /// An event of a digest route, to keep for the digest of `group`.
    Digest {
        /// The event.
        event: sources::Event,
        /// Its group.
        group: String,
        /// Dedup key.
        dedup_key: String,
        /// Second dedup key (route + body hash) when `dedup_key` is the source's id.
        body_key: Option<String>,
    },
    /// The route deliberately does not report it: why, and why as a bounded label.
    Ignored(String, IgnoreKind),
}

/// Checks the content type, parses the body with the route's source and maps it: everything
/// after authentication that needs no I/O. Shared by the webhook handler and `render`.
pub fn prepare(
    settings: &Settings,
    mapper: &Mapper,
    route_name: &str,
    request: &sources::Request<'_>,
) -> Result<Prepared, ApiError> {
    prepare_folding(settings, mapper, route_name, request, false)
}

/// [`prepare`]; with `fold`, a route with `on_quota_low: digest` keeps the event for its
/// quota digest instead of making a report (the quota's reserve is reached).
pub fn prepare_folding(
    settings: &Settings,
    mapper: &Mapper,
    route_name: &str,
    request: &sources::Request<'_>,
    fold: bool,
) -> Result<Prepared, ApiError> {
    let route = settings
        .routes
        .get(route_name)
        .ok_or_else(|| ApiError::route_not_found(route_name))?;
    check_content_type(request.headers)?;
    let event = match sources::parse(route.source, request)
        .map_err(|e| ApiError::invalid_payload(e.message, e.field))?
    {
        sources::Parsed::Event(event) => event,
        sources::Parsed::Ignored(reason) => {
            return Ok(Prepared::Ignored(reason, IgnoreKind::SourceEvent));
        }
    };
    if route.digest.is_some() || (fold && route.quota_digest.is_some()) {
        return match mapper.admit(route_name, &event) {
            Ok(Admitted::Ignored { reason, kind }) => Ok(Prepared::Ignored(reason, kind)),
            Ok(Admitted::Digest { group }) => {
                let (dedup_key, body_key) = dedup_keys(route_name, route, request);
                Ok(Prepared::Digest {
                    event,
                    group,
                    dedup_key,
                    body_key,
                })
            }
            Err(e) => Err(ApiError::internal(format!("the route failed: {e}"))),
        };
    }
    match mapper.map(route_name, &event, request.now) {
        Ok(Mapped::Ignored { reason, kind }) => Ok(Prepared::Ignored(reason, kind)),
        Ok(Mapped::Report { draft, truncated }) => {
            let (dedup_key, body_key) = dedup_keys(route_name, route, request);
            Ok(Prepared::Report {
                draft,
                truncated,
                dedup_key,
                body_key,
            })
        }
        Err(MappingError::OutOfFuel { route, field }) => Err(ApiError::render_limit(&route, field)),
        Err(e) => {
            tracing::error!(error = %e, "mapping failed");
            Err(ApiError::internal(format!(
                "the route's field template failed: {e}"
            )))
        }
    }
}

/// The dedup keys (spec §5): the source's delivery id when it sends one, with the hash of
/// route + raw body as the second key; else the hash alone. Both are claimed because the id
/// header is not covered by the signature: a captured webhook replayed with a new id still
/// has the same body.
fn dedup_keys(
    route_name: &str,
    route: &RouteSettings,
    request: &sources::Request<'_>,
) -> (String, Option<String>) {
    let mut hash = Sha256::new();
    hash.update(route_name.as_bytes());
    hash.update([0]);
    hash.update(request.body);
    let body_key = format!("{route_name}:sha256:{}", hex::encode(hash.finalize()));
    match sources::delivery_id(route.source, request) {
        Some(id) => (format!("{route_name}:id:{id}"), Some(body_key)),
        None => (body_key, None),
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        // Some senders omit it; the body must still parse as JSON.
        return Ok(());
    };
    let text = value.to_str().unwrap_or("<not text>");
    let mime = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Ok(())
    } else {
        Err(ApiError::unsupported_media_type(text))
    }
}

fn parse_wait(query: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let Some(query) = query else { return Ok(None) };
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "wait" {
            let seconds: u64 = value.parse().map_err(|_| {
                ApiError::bad_request(
                    format!("wait: must be a whole number of seconds (0–{MAX_WAIT_SECS})"),
                    "wait",
                )
            })?;
            if seconds > MAX_WAIT_SECS {
                return Err(ApiError::bad_request(
                    format!("wait: at most {MAX_WAIT_SECS} seconds"),
                    "wait",
                ));
            }
            return Ok((seconds > 0).then(|| Duration::from_secs(seconds)));
        }
    }
    Ok(None)
}

/// The `{route}` segment; one that is not UTF-8 names no route, so it answers 404 like any
/// unknown route instead of axum's plain-text 400.
fn route_param(route: &Result<Path<String>, PathRejection>) -> &str {
    route
        .as_ref()
        .map_or("<not UTF-8>", |Path(name)| name.as_str())
}

#[tracing::instrument(skip_all, fields(route = %route_param(&route)))]
async fn receive_webhook(
    State(state): State<AppState>,
    route: Result<Path<String>, PathRejection>,
    OriginalUri(uri): OriginalUri,
    Extension(unverified): Extension<UnverifiedReads>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let route_name = route_param(&route).to_owned();
    // One configuration for the whole request, so a reload meanwhile cannot split it.
    let runtime = state.runtime.load_full();
    let label = if runtime.settings.routes.contains_key(&route_name) {
        route_name.as_str()
    } else {
        "_unknown"
    };
    let target = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), ToString::to_string);
    let answer = handle(
        &state,
        &runtime,
        &route_name,
        &target,
        &headers,
        body,
        &unverified,
    )
    .await;
    let (outcome, response) = match answer {
        Ok(answer) => answer,
        Err(error) => {
            let outcome = match error.status {
                StatusCode::BAD_REQUEST => "invalid",
                StatusCode::UNAUTHORIZED => "unauthorized",
                StatusCode::NOT_FOUND => "not_found",
                StatusCode::PAYLOAD_TOO_LARGE => "too_large",
                StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                StatusCode::SERVICE_UNAVAILABLE => "unavailable",
                StatusCode::TOO_MANY_REQUESTS => "rate_limited",
                StatusCode::REQUEST_TIMEOUT => "body_timeout",
                StatusCode::UNPROCESSABLE_ENTITY => "render_limit",
                _ => "error",
            };
            if error.status.is_server_error() {
                tracing::warn!(status = %error.status, error = %error.message, "webhook not accepted");
            } else {
                tracing::info!(status = %error.status, error = %error.message, "webhook rejected");
            }
            (outcome, error.into_response())
        }
    };
    state
        .metrics
        .webhooks_received
        .with_label_values(&[label, outcome])
        .inc();
    response
}

async fn handle(
    state: &AppState,
    runtime: &Runtime,
    route_name: &str,
    target: &str,
    headers: &HeaderMap,
    body: Body,
    unverified: &UnverifiedReads,
) -> Result<(&'static str, Response), ApiError> {
    let settings = &runtime.settings;
    let route = settings
        .routes
        .get(route_name)
        .ok_or_else(|| ApiError::route_not_found(route_name))?;
    let limit = settings.server.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let now = Utc::now();
    // A credential in a header is checked before the body is read, so that only senders
    // holding it can make the relay wait for a body. A signature over the body cannot be
    // checked before; such bodies are read under their own, smaller cap and a time limit.
    let body = match &route.secret {
        Some(secret) => {
            let head_only = sources::Request {
                headers,
                body: &[],
                target,
                method: "post",
                now,
            };
            match sources::verify(route.source, secret, &head_only) {
                Ok(()) => read_body(body, limit).await?,
                Err(message) if !sources::auth::offers_body_signature(headers) => {
                    return Err(ApiError::unauthorized(message));
                }
                Err(_) => read_unverified(body, limit, settings, unverified).await?,
            }
        }
        // An `insecure` route authenticates no one: its bodies are all unverified.
        None => read_unverified(body, limit, settings, unverified).await?,
    };
    let request = sources::Request {
        headers,
        body: &body,
        target,
        method: "post",
        now,
    };
    if let Some(secret) = &route.secret {
        sources::verify(route.source, secret, &request).map_err(ApiError::unauthorized)?;
    }
    // After authentication, so that anonymous traffic cannot use up the sender's budget.
    if let Some(limit) = route.rate_limit {
        state
            .rate_limits
            .check(route_name, limit)
            .map_err(ApiError::rate_limited)?;
    }
    let wait = parse_wait(target.split_once('?').map(|(_, query)| query))?;
    let fold = route.on_quota_low == crate::config::OnQuotaLow::Digest && state.quota.low().await;
    let (draft, truncated, dedup_key, body_key) =
        match prepare_folding(settings, &runtime.mapper, route_name, &request, fold)? {
            Prepared::Ignored(reason, kind) => {
                tracing::info!(reason, "webhook ignored");
                state
                    .metrics
                    .webhooks_ignored
                    .with_label_values(&[route_name, kind.as_str()])
                    .inc();
                let answer = Json(json!({"status": "ignored", "reason": reason}));
                return Ok(("ignored", (StatusCode::OK, answer).into_response()));
            }
            Prepared::Report {
                draft,
                truncated,
                dedup_key,
                body_key,
            } => (draft, truncated, dedup_key, body_key),
            Prepared::Digest {
                event,
                group,
                dedup_key,
                body_key,
            } => {
                let new = NewDigestEvent {
                    id: uuid::Uuid::now_v7().to_string(),
                    route: route_name.to_owned(),
                    group,
                    dedup_key,
                    body_key,
                    event: crate::digest::keepable(event),
                    received_at: now,
                };
                return keep_for_digest(state, settings, route_name, new).await;
            }
        };
    let new = NewDelivery {
        id: uuid::Uuid::now_v7().to_string(),
        route: route_name.to_owned(),
        dedup_key,
        body_key,
        draft,
        received_at: now,
    };
    let enqueued = state
        .store
        .enqueue(
            new,
            settings.delivery.dedup_window,
            settings.store.max_queued,
        )
        .await
        .map_err(store_error)?;
    let id = match enqueued {
        Enqueued::Duplicate(first) => {
            tracing::info!(delivery_id = %first, "duplicate webhook");
            return Ok(duplicate(state, route_name, "delivery_id", &first));
        }
        Enqueued::Queued(id) => id,
    };
    if !truncated.is_empty() {
        state
            .metrics
            .content_truncated
            .with_label_values(&[route_name])
            .inc_by(truncated.len() as u64);
    }
    // Debug, not info: one line per webhook on the request path costs more than the rest of
    // the logging together; `dingtalk_relay_webhooks_received_total` counts them.
    tracing::debug!(delivery_id = %id, "webhook accepted");
    let waiter = wait.map(|w| (w, state.delivery.subscribe(&id)));
    state.delivery.wake();
    let response = match waiter {
        Some((wait, rx)) => wait_for(state, &id, wait, rx).await,
        None => queued(&id),
    };
    Ok(("accepted", response))
}

/// Reads the whole body: 413 beyond `limit`, 400 when the body is broken on the wire (a
/// malformed chunked encoding, a connection that ends early).
async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(error) = source {
            if error.is::<http_body_util::LengthLimitError>() {
                return ApiError::too_large(limit);
            }
            source = error.source();
        }
        ApiError::invalid_payload(
            format!("the request body could not be read ({e}): send it whole, with a valid Content-Length or chunked encoding"),
            None,
        )
    })
}

/// Reads the body of a sender not yet authenticated: under the `server.max_unverified_requests`
/// cap (503 beyond it) and within `server.body_read_timeout` (408).
async fn read_unverified(
    body: Body,
    limit: usize,
    settings: &Settings,
    unverified: &UnverifiedReads,
) -> Result<axum::body::Bytes, ApiError> {
    let _permit = unverified.try_acquire()?;
    let timeout = settings.server.body_read_timeout;
    tokio::time::timeout(timeout, read_body(body, limit))
        .await
        .map_err(|_| ApiError::body_timeout(timeout))?
}

/// The cap on webhook bodies read before their sender is authenticated
/// (`server.max_unverified_requests`): beyond it, 503 with `Retry-After` at once.
#[derive(Clone)]
pub struct UnverifiedReads(std::sync::Arc<tokio::sync::Semaphore>);

impl UnverifiedReads {
    /// A cap of `max` reads at once (at least 1).
    pub fn new(max: usize) -> Self {
        Self(std::sync::Arc::new(tokio::sync::Semaphore::new(max.max(1))))
    }

    fn try_acquire(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        self.0.try_acquire().map_err(|_| {
            ApiError::unavailable(
                "too many unauthenticated webhook bodies are being read (server.max_unverified_requests); try again shortly",
                1,
            )
        })
    }
}

/// The webhook answer when the store could not take it: 503 with `Retry-After`.
fn store_error(e: store::Error) -> ApiError {
    match e {
        store::Error::Full(_) => ApiError::unavailable(
            "the delivery queue is full (store.max_queued); try again later",
            30,
        ),
        other => {
            tracing::error!(error = %other, "storing the webhook failed");
            ApiError::unavailable("the store is unavailable; try again later", 5)
        }
    }
}

/// `200 duplicate` naming the first delivery (or digest event) under `id_key`, counted as a
/// duplicate delivery of the route.
fn duplicate(
    state: &AppState,
    route_name: &str,
    id_key: &str,
    first: &str,
) -> (&'static str, Response) {
    state
        .metrics
        .deliveries
        .with_label_values(&[route_name, "duplicate"])
        .inc();
    let answer = Json(json!({id_key: first, "status": "duplicate"}));
    ("duplicate", (StatusCode::OK, answer).into_response())
}

/// Stores a digest route's event; the answer says when its digest is due. `?wait` does not
/// apply: the report is made at the scheduled time.
async fn keep_for_digest(
    state: &AppState,
    settings: &Settings,
    route_name: &str,
    new: NewDigestEvent,
) -> Result<(&'static str, Response), ApiError> {
    let received_at = new.received_at;
    let enqueued = state
        .store
        .add_digest_event(
            new,
            settings.delivery.dedup_window,
            settings.store.max_queued,
        )
        .await
        .map_err(store_error)?;
    match enqueued {
        Enqueued::Duplicate(first) => {
            tracing::info!(event_id = %first, "duplicate webhook");
            Ok(duplicate(state, route_name, "event_id", &first))
        }
        Enqueued::Queued(id) => {
            let digest_at = settings
                .routes
                .get(route_name)
                .and_then(|route| crate::digest::schedule_of(settings, route))
                // An event received exactly at a scheduled time belongs to that digest.
                .and_then(|s| s.next_after(received_at - chrono::Duration::milliseconds(1)))
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            tracing::info!(event_id = %id, "webhook kept for the digest");
            let answer = Json(json!({"event_id": id, "status": "digest", "digest_at": digest_at}));
            Ok(("accepted", (StatusCode::ACCEPTED, answer).into_response()))
        }
    }
}

fn queued(id: &str) -> Response {
    let answer = Json(json!({"delivery_id": id, "status": "queued"}));
    (StatusCode::ACCEPTED, answer).into_response()
}

/// Holds the answer until the delivery is final or `wait` is up. Polls the store as well,
/// because another replica may deliver it.
async fn wait_for(
    state: &AppState,
    id: &str,
    wait: Duration,
    mut rx: tokio::sync::oneshot::Receiver<Outcome>,
) -> Response {
    let deadline = tokio::time::Instant::now() + wait;
    let outcome = loop {
        if let Ok(Some(delivery)) = state.store.get(id).await
            && let Some(outcome) = final_outcome(&delivery)
        {
            break Some(outcome);
        }
        tokio::select! {
            received = &mut rx => match received {
                Ok(outcome) => break Some(outcome),
                Err(_) => tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + Duration::from_millis(250))).await,
            },
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            break None;
        }
    };
    state.delivery.unsubscribe(id);
    match outcome {
        Some(Outcome::Delivered(report_id)) => {
            // DingTalk may say errcode 0 without a usable id: unknown, as the admin API says.
            let report_id = (!report_id.is_empty()).then_some(report_id);
            let answer =
                Json(json!({"status": "delivered", "report_id": report_id, "delivery_id": id}));
            (StatusCode::CREATED, answer).into_response()
        }
        Some(Outcome::Failed(error)) => {
            let answer = Json(json!({
                "status": "failed", "delivery_id": id,
                "errcode": error.errcode, "errmsg": error.errmsg
            }));
            (StatusCode::BAD_GATEWAY, answer).into_response()
        }
        None => queued(id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_parameter() {
        assert_eq!(parse_wait(None).unwrap(), None);
        assert_eq!(parse_wait(Some("wait=0")).unwrap(), None);
        assert_eq!(
            parse_wait(Some("x=1&wait=5")).unwrap(),
            Some(Duration::from_secs(5))
        );
        for bad in ["wait=31", "wait=-1", "wait=abc", "wait="] {
            let e = parse_wait(Some(bad)).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("wait"), "{bad}");
        }
    }

    #[test]
    fn content_types() {
        let ok = [
            "application/json",
            "application/json; charset=utf-8",
            "application/vnd.x+json",
        ];
        for ct in ok {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            assert!(check_content_type(&h).is_ok(), "{ct}");
        }
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            assert_eq!(
                check_content_type(&h).unwrap_err().status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            );
        }
        assert!(check_content_type(&HeaderMap::new()).is_ok());
    }
}
