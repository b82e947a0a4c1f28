//! [`ApiError`]: the one JSON error shape of both listeners,
//! `{"error":{"code":"…","message":"…","field":"…"}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An HTTP error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code, e.g. `invalid_payload`.
    pub code: &'static str,
    /// Human-readable message (never contains a secret).
    pub message: String,
    /// The payload field at fault, for 400s.
    pub field: Option<String>,
    /// Seconds for `Retry-After` (503, 429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// 400 for a payload problem, naming the field when there is one.
    pub fn invalid_payload(message: impl Into<String>, field: Option<String>) -> Self {
        Self {
            field,
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_payload", message)
        }
    }

    /// 400 for a bad query parameter.
    pub fn bad_request(message: impl Into<String>, field: &str) -> Self {
        Self {
            field: Some(field.to_owned()),
            ..Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
        }
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: the endpoint is closed by configuration; the message says how to open it.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 for an unknown route.
    pub fn route_not_found(route: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "route_not_found",
            format!("no route named {route:?} is configured"),
        )
    }

    /// 404 for anything else.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409: the request does not fit the resource's state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 422: a new configuration was refused (the old one keeps running).
    pub fn invalid_config(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_config", message)
    }

    /// 413.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("body is larger than server.max_body_bytes ({limit} bytes)"),
        )
    }

    /// 415.
    pub fn unsupported_media_type(got: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type must be application/json, got {got:?}"),
        )
    }

    /// 408: a body that needs its signature checked took longer than
    /// `server.body_read_timeout` to arrive.
    pub fn body_timeout(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the body took longer than server.body_read_timeout ({}) to arrive",
                humantime::format_duration(limit)
            ),
        )
    }

    /// 422: rendering this payload into `field` used up the template's fuel (too much input
    /// for the template); nothing is stored.
    pub fn render_limit(route: &str, field: String) -> Self {
        Self {
            message: format!(
                "routes.{route}.fields.{field}: this payload is too large for the field's template (rendering ran out of fuel); send fewer or shorter items"
            ),
            field: Some(field),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "render_limit", "")
        }
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }

    /// 429 with `Retry-After`: the route's `rate_limit` is used up for now.
    pub fn rate_limited(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "this route's rate_limit is used up; try again after Retry-After seconds",
            )
        }
    }

    /// 500 with a message safe to show (the detail is logged).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(field) = &self.field {
            error["field"] = json!(field);
        }
        json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
