//! The OpenAPI 3.0.3 description of both listeners, served unauthenticated at
//! `GET /openapi.json` on the admin listener.
//!
//! The document is built here, next to the handlers it describes, from the same constants they
//! use (`?wait=` and list limits, error codes), and `tests/openapi.rs` checks it against the
//! routers and against real answers of every endpoint; `.ci/api-fuzz` runs schemathesis
//! against it. Operations are tagged `webhook` (served on `server.listen`) or `admin` (served on
//! `server.admin_listen`), and each path names its listener in `servers`.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::admin::MAX_LIST_LIMIT;
use super::webhook::MAX_WAIT_SECS;

/// Every `error.code` either listener answers with (see [`super::ApiError`]).
pub const ERROR_CODES: &[&str] = &[
    "invalid_payload",
    "bad_request",
    "unauthorized",
    "route_not_found",
    "not_found",
    "conflict",
    "invalid_config",
    "payload_too_large",
    "unsupported_media_type",
    "unavailable",
    "rate_limited",
    "internal",
    "forbidden",
    "body_timeout",
    "render_limit",
];

/// Delivery states as the admin API names them.
const DELIVERY_STATES: &[&str] = &["queued", "delivering", "delivered", "failed", "ignored"];

static DOCUMENT: LazyLock<Value> = LazyLock::new(build);
static DOCUMENT_TEXT: LazyLock<String> = LazyLock::new(|| DOCUMENT.to_string());

/// `GET /openapi.json`: the document, as `application/json`.
pub async fn document() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT_TEXT.as_str(),
    )
        .into_response()
}

/// The OpenAPI document (built once).
pub fn spec() -> &'static Value {
    &DOCUMENT
}

fn build() -> Value {
    let mut paths = Map::new();
    paths.insert("/v1/hooks/{route}".to_owned(), webhook_path());
    for (path, item) in admin_paths() {
        paths.insert(path.to_owned(), item);
    }
    json!({
        "openapi": "3.0.3",
        "info": info(),
        "servers": [webhook_server(), admin_server()],
        "tags": [
            {"name": "webhook", "description": "The webhook listener (`server.listen`, default port 8080). It serves only `POST /v1/hooks/{route}`; anything else answers 404 `not_found` (405 with an empty body for another method on the hook path)."},
            {"name": "admin", "description": "The admin listener (`server.admin_listen`, default port 8081): metrics, probes, the delivery API, reloads, this document and, in the sandbox, the reports created. Unknown paths answer 404 `not_found`; another method on a known path answers 405 with an empty body."},
        ],
        "paths": paths,
        "components": {
            "securitySchemes": security_schemes(),
            "schemas": schemas(),
            "responses": shared_responses(),
            "headers": {
                "RetryAfter": {
                    "description": "Seconds to wait before trying again (5 when the store is unreachable or the request took longer than `server.request_timeout`, 30 when the queue is full, 1 when the webhook listener has `server.max_concurrent_requests` requests in progress; for 429, until the route's rate limit allows the next webhook).",
                    "required": true,
                    "schema": {"type": "integer", "minimum": 1},
                },
            },
        },
    })
}

fn info() -> Value {
    json!({
        "title": "dingtalk-relay",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "Turns CI job results and standup updates into DingTalk 日志 (work reports).\n\nTwo listeners: the **webhook listener** (`server.listen`, tag `webhook`) takes `POST /v1/hooks/{route}`; the **admin listener** (`server.admin_listen`, tag `admin`) serves metrics, probes, the delivery API and this document. Every error either listener produces itself has the shape `{\"error\":{\"code\",\"message\",\"field\"?}}`.",
        "license": {"name": "Apache-2.0"},
    })
}

fn webhook_server() -> Value {
    json!({
        "url": "http://{host}:{port}",
        "description": "webhook listener (server.listen)",
        "variables": {
            "host": {"default": "localhost"},
            "port": {"default": "8080"},
        },
    })
}

fn admin_server() -> Value {
    json!({
        "url": "http://{host}:{port}",
        "description": "admin listener (server.admin_listen)",
        "variables": {
            "host": {"default": "localhost"},
            "port": {"default": "8081"},
        },
    })
}

fn security_schemes() -> Value {
    json!({
        "routeBearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "`Authorization: Bearer <routes.<name>.secret>`. What a route accepts depends on its `source`: `generic` takes this or `X-Signature-256`; `jenkins` and `azure-devops` also take Basic auth with the secret as password and `X-Relay-Token`; `gitea`/`forgejo` a fixed `Authorization`. A route with `insecure: true` (and no secret) needs nothing.",
        },
        "routeSignature": {
            "type": "apiKey",
            "in": "header",
            "name": "X-Signature-256",
            "description": "`sha256=<hex HMAC-SHA256 of the raw body, keyed with the route's secret>` (source `generic`). Other sources sign in their own header: `X-Hub-Signature-256` (github, gitea, forgejo), `X-Gitea-Signature`/`X-Forgejo-Signature`, `X-Gitlab-Token` or Standard-Webhooks `webhook-signature` (gitlab), `circleci-signature: v1=` (circleci), `X-Buildkite-Token`/`X-Buildkite-Signature` (buildkite), HTTP Signatures over `Date` and `Digest` (drone), `X-Hub-Signature: sha256=` (bitbucket). All are checked in constant time over the raw body.",
        },
        "adminToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "`Authorization: Bearer <server.admin_token>`; required by `/v1/*` and `/-/reload` on the admin listener when `server.admin_token` is set (scheme in any case). Without a token they answer 403 in `serve` unless the admin listener is bound to a loopback address; `serve --sandbox` keeps them open.",
        },
    })
}

// === paths ===

fn webhook_path() -> Value {
    json!({
        "servers": [webhook_server()],
        "post": {
            "tags": ["webhook"],
            "operationId": "receiveWebhook",
            "summary": "Take a CI webhook or standup and queue a DingTalk report",
            "description": webhook_description(),
            "security": [{"routeBearer": []}, {"routeSignature": []}, {}],
            "parameters": [
                {
                    "name": "route",
                    "in": "path",
                    "required": true,
                    "description": "A configured route name (`routes.<name>`); it decides the source, authentication, template and receivers.",
                    "schema": {"type": "string"},
                    "example": "ci",
                },
                {
                    "name": "wait",
                    "in": "query",
                    "required": false,
                    "description": format!("Hold the answer up to this many seconds (0–{MAX_WAIT_SECS}) for the report to be created: `201 delivered` or `502 failed`, else `202 queued` when the time is up. 0 does not wait."),
                    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_WAIT_SECS},
                },
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": false,
                    "description": "Dedup key for `generic` (and `gitlab`) routes: a repeat within `delivery.dedup_window` answers `200 duplicate`. Without it a generic webhook is deduplicated by a hash of route + body; other sources use their own delivery ids (`X-GitHub-Delivery`, `X-Gitea-Delivery`, `X-Request-UUID`, …).",
                    "schema": {"type": "string"},
                },
            ],
            "requestBody": {
                "required": true,
                "description": "The CI system's own webhook body for the route's `source`, or for `source: generic` a `job_status` or `standup` object. `Content-Type` must be `application/json` or `application/*+json`, or absent (the body must still be JSON).",
                "content": {
                    "application/json": {
                        "schema": {
                            "anyOf": [
                                {"$ref": "#/components/schemas/JobStatus"},
                                {"$ref": "#/components/schemas/Standup"},
                                {"$ref": "#/components/schemas/SourcePayload"},
                            ],
                        },
                        "examples": {
                            "job_status": {"summary": "generic job status", "value": job_status_example()},
                            "standup": {"summary": "generic standup", "value": standup_example()},
                        },
                    },
                },
            },
            "responses": {
                "200": {
                    "description": "Nothing new to send: a repeat within `delivery.dedup_window` (`duplicate`, with the first delivery's id), or a webhook the route deliberately does not report (`ignored`: ping, test delivery, unrelated event, filtered phase/status/branch, `author: actor` with an unmapped actor, every field empty). Never 4xx for these, as some senders disable hooks that get 4xx.",
                    "content": {"application/json": {"schema": {"oneOf": [
                        {"$ref": "#/components/schemas/Duplicate"},
                        {"$ref": "#/components/schemas/DigestDuplicate"},
                        {"$ref": "#/components/schemas/Ignored"},
                    ]}}},
                },
                "201": {
                    "description": "With `?wait=`: the report was created in time.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Delivered"}}},
                },
                "202": {
                    "description": "Committed to the store (with SQLite: on disk); it will be delivered. Also the answer when `?wait=` ran out first. On a digest route (`routes.*.digest`) the event is kept for the route's next digest (`status: digest`, with the time it is due); `?wait=` does not apply there.",
                    "content": {"application/json": {"schema": {"oneOf": [
                        {"$ref": "#/components/schemas/Queued"},
                        {"$ref": "#/components/schemas/KeptForDigest"},
                    ]}}},
                },
                "400": error_response(
                    "The payload is not what the route's source expects (`invalid_payload`, naming the field when there is one; a standup list over 100 items is one), the body is broken on the wire (a malformed chunked encoding), or `?wait=` is not a whole number 0–30 (`bad_request`, field `wait`). Nothing is stored.",
                    &["invalid_payload", "bad_request"],
                    false,
                ),
                "401": {"$ref": "#/components/responses/RouteUnauthorized"},
                "404": error_response(
                    "No route of that name is configured (`route_not_found`; checked first).",
                    &["route_not_found"],
                    false,
                ),
                "408": error_response(
                    "The body of a webhook that can only be authenticated by a signature over it took longer than `server.body_read_timeout` to arrive. Nothing is stored.",
                    &["body_timeout"],
                    false,
                ),
                "413": error_response(
                    "The body is larger than `server.max_body_bytes` (checked against `Content-Length` before authentication, then while reading).",
                    &["payload_too_large"],
                    false,
                ),
                "415": error_response(
                    "`Content-Type` is present and neither `application/json` nor `application/*+json`.",
                    &["unsupported_media_type"],
                    false,
                ),
                "422": error_response(
                    "Rendering this payload used up the field template's fuel (a route template looping over a long list); `field` names the template field. Nothing is stored.",
                    &["render_limit"],
                    false,
                ),
                "429": error_response(
                    "The route's `rate_limit` is used up (checked after authentication, so only webhooks that authenticated count). Nothing is stored. Try again after `Retry-After` seconds.",
                    &["rate_limited"],
                    true,
                ),
                "500": error_response(
                    "The route's field template failed to render for this event (a configuration mistake; the detail is logged), or a bug (a handler panicked; either listener answers such a bug with this shape). Nothing is stored.",
                    &["internal"],
                    false,
                ),
                "502": {
                    "description": "With `?wait=`: DingTalk refused the report for good (the delivery is `failed` and can be retried through the admin API).",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Failed"}}},
                },
                "503": {"$ref": "#/components/responses/Unavailable"},
            },
        },
    })
}

fn webhook_description() -> String {
    format!(
        "Checks, in order: the route exists (404), the size (413), authentication (401), the route's `rate_limit` (429 + `Retry-After`), `?wait=` (400), the content type (415), the payload (400), the route's filters (`200 ignored`), then stores the delivery durably (`202 queued`, or `200 duplicate`, or `503` + `Retry-After` when the store is unreachable or holds `store.max_queued` waiting deliveries). Beyond `server.max_concurrent_requests` requests in progress, `503` + `Retry-After` is answered at once. With `?wait=SECONDS` (at most {MAX_WAIT_SECS}) the answer is held until the report exists (`201`), failed for good (`502`) or the time is up (`202`).\n\nSources and their headers: `github` (`X-GitHub-Event`, `X-Hub-Signature-256`), `gitlab` (`X-Gitlab-Event`, `X-Gitlab-Token`), `gitea`/`forgejo`, `jenkins`, `circleci`, `buildkite`, `drone`, `azure-devops`, `bitbucket` — see the README's CI systems table. A request that takes longer than `server.request_timeout` is answered `503` + `Retry-After` (a delivery already stored stays; the retry is a `200 duplicate`). A connection that does not send a whole request head within `server.header_read_timeout` is closed without an answer."
    )
}

fn admin_paths() -> Vec<(&'static str, Value)> {
    vec![
        ("/metrics", admin_item(json!({"get": metrics_op()}))),
        ("/healthz", admin_item(json!({"get": healthz_op()}))),
        ("/readyz", admin_item(json!({"get": readyz_op()}))),
        (
            "/sandbox/reports",
            admin_item(json!({"get": sandbox_reports_op()})),
        ),
        ("/openapi.json", admin_item(json!({"get": openapi_op()}))),
        (
            "/v1/deliveries",
            admin_item(json!({"get": list_deliveries_op()})),
        ),
        (
            "/v1/deliveries/{id}",
            admin_item(json!({"get": get_delivery_op()})),
        ),
        (
            "/v1/deliveries/{id}/retry",
            admin_item(json!({"post": retry_delivery_op()})),
        ),
        (
            "/v1/digests/{route}",
            admin_item(json!({"get": preview_digest_op()})),
        ),
        ("/v1/quota", admin_item(json!({"get": quota_op()}))),
        (
            "/v1/quota/exhausted",
            admin_item(json!({"delete": clear_quota_exhausted_op()})),
        ),
        ("/-/reload", admin_item(json!({"post": reload_op()}))),
    ]
}

fn quota_op() -> Value {
    json!({
        "tags": ["admin"],
        "operationId": "quota",
        "summary": "The month's metered DingTalk calls against the budget",
        "description": "Metered DingTalk calls (report/create, uncached template/getbyname, report/list; gettoken is exempt) of the current quota month (`dingtalk.quota.timezone`), counted in the store, so every replica on one PostgreSQL store answers the same: used, `dingtalk.quota.monthly`, by API and by route, days left, and the month-end projection at the rate so far. The organisation's other apps spend from the same DingTalk pool and are not counted here.",
        "security": admin_security(),
        "responses": {
            "200": {"description": "The month so far.", "content": json_content("Quota")},
            "401": {"$ref": "#/components/responses/AdminUnauthorized"},
            "503": {"$ref": "#/components/responses/Unavailable"},
        },
    })
}

fn clear_quota_exhausted_op() -> Value {
    json!({
        "tags": ["admin"],
        "operationId": "clearQuotaExhausted",
        "summary": "Forget DingTalk's 90020 for this month",
        "description": "After DingTalk answered 90020 (the organisation's monthly quota is used up), every replica holds deliveries until the month turns. When the organisation's quota was raised (an upgrade), this lifts the mark for every replica; held deliveries go out at their next look (`dingtalk.quota.hold_recheck`).",
        "security": admin_security(),
        "responses": {
            "200": {"description": "Whether the month was marked exhausted.", "content": json_content("QuotaCleared")},
            "401": {"$ref": "#/components/responses/AdminUnauthorized"},
            "503": {"$ref": "#/components/responses/Unavailable"},
        },
    })
}

fn quota_schema() -> Value {
    let calls = json!({"type": "integer", "minimum": 0});
    let by_api = json!({"type": "object", "additionalProperties": calls, "description": "Calls by API (`report_create`, `template_getbyname`, `report_list`)."});
    json!({
        "type": "object",
        "required": ["month", "timezone", "used", "limit", "reserve", "remaining", "by_api", "by_route", "days_left", "resets_at", "projected", "reserve_reached", "exhausted", "warnings"],
        "additionalProperties": false,
        "properties": {
            "month": {"type": "string", "example": "2026-12", "description": "The quota month, `YYYY-MM` in `timezone`."},
            "timezone": {"type": "string", "description": "`dingtalk.quota.timezone`: where the month turns."},
            "used": calls,
            "limit": {"type": "integer", "minimum": 1, "nullable": true, "description": "`dingtalk.quota.monthly`; null counts without a limit."},
            "reserve": calls,
            "remaining": {"type": "integer", "minimum": 0, "nullable": true, "description": "`limit - used`, when a limit is set."},
            "by_api": by_api,
            "by_route": {"type": "object", "additionalProperties": by_api, "description": "Calls by route (`-`: outside a route's work), then API."},
            "days_left": {"type": "number", "minimum": 0, "description": "Days until the month turns."},
            "resets_at": time_schema("When the month turns.", false),
            "projected": {"type": "integer", "minimum": 0, "description": "Month-end use if the rest of the month goes like the part so far (`used` in its first hour)."},
            "reserve_reached": {"type": "boolean", "description": "`remaining <= reserve`: routes follow `on_quota_low`."},
            "exhausted": {
                "type": "object",
                "nullable": true,
                "description": "Set when DingTalk answered 90020 this month.",
                "required": ["at", "detail"],
                "additionalProperties": false,
                "properties": {"at": time_schema("First seen, by any replica.", false), "detail": {"type": "string"}},
            },
            "warnings": {"type": "array", "items": {"type": "string"}, "description": "What `/readyz` warns about the quota."},
        },
    })
}

fn admin_item(mut operations: Value) -> Value {
    operations["servers"] = json!([admin_server()]);
    operations
}

fn json_content(schema: &str) -> Value {
    json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}})
}

fn metrics_op() -> Value {
    json!({
        "tags": ["admin"],
        "operationId": "metrics",
        "summary": "Prometheus metrics",
        "description": "The `dingtalk_relay_*` series (and process metrics) in the Prometheus text format. Never needs the admin token.",
        "security": [],
        "responses": {
            "200": {
                "description": "Prometheus text exposition format 0.0.4.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
        },
    })
}

fn healthz_op() -> Value {
    json!({
        "tags": ["admin"],
        "operationId": "healthz",
        "summary": "Liveness probe",
        "security": [],
        "responses": {"200": {"description": "The process serves requests.", "content": json_content("Health")}},
    })
}

fn readyz_op() -> Value {
    json!({
        "tags": ["admin"],
        "operationId": "readyz",
        "summary": "Readiness probe",
        "description": "Ready when the store answers, takes writes (not failing, not below `store.min_free_bytes`, its SQLite file not deleted or replaced) and holds fewer than `store.max_queued` waiting deliveries (webhooks would get 503 otherwise). The reason names the cause, e.g. `store: database or disk is full`.",
        "security": [],
        "responses": {
            "200": {"description": "Ready to take webhooks.", "content": json_content("Ready")},
            "503": {"description": "Not ready, with the reason (store unreachable, or the queue is full).", "content": json_content("NotReady")},
        },
    })
}

fn sandbox_reports_op() -> Value {
    json!({
        "tags": ["admin"],
        "operationId": "sandboxReports",
        "summary": "Reports created in the sandbox's DingTalk stand-in",
        "description": "Only with `serve --sandbox`: the reports the built-in DingTalk stand-in has created, oldest first.",
        "security": [],
        "responses": {
            "200": {"description": "The reports.", "content": json_content("SandboxReports")},
            "404": error_response("The relay is not running in sandbox mode.", &["not_found"], false),
        },
    })
}

fn openapi_op() -> Value {
    json!({
        "tags": ["admin"],
        "operationId": "openapi",
        "summary": "This OpenAPI document",
        "security": [],
        "responses": {
            "200": {
                "description": "The OpenAPI 3.0.3 description of both listeners.",
                "content": {"application/json": {"schema": {
                    "type": "object",
                    "required": ["openapi", "info", "paths"],
                    "properties": {
                        "openapi": {"type": "string"},
                        "info": {"type": "object"},
                        "paths": {"type": "object"},
                    },
                }}},
            },
        },
    })
}

fn admin_security() -> Value {
    json!([{"adminToken": []}, {}])
}

fn delivery_id_param() -> Value {
    json!({
        "name": "id",
        "in": "path",
        "required": true,
        "description": "A delivery id, as answered by the webhook (`delivery_id`).",
        "schema": {"type": "string"},
        "example": "019abcde-f012-7345-8678-9abcdef01234",
    })
}

fn list_deliveries_op() -> Value {
    json!({
        "tags": ["admin"],
        "operationId": "listDeliveries",
        "summary": "List deliveries, newest first",
        "security": admin_security(),
        "parameters": [
            {
                "name": "state",
                "in": "query",
                "required": false,
                "description": "Only deliveries in this state (empty: all).",
                "schema": {"type": "string", "enum": DELIVERY_STATES},
            },
            {
                "name": "limit",
                "in": "query",
                "required": false,
                "description": format!("At most this many (1–{MAX_LIST_LIMIT}, default 50)."),
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT, "default": 50},
            },
        ],
        "responses": {
            "200": {"description": "The deliveries.", "content": json_content("DeliveryList")},
            "400": error_response(
                "`state` is not a delivery state, or `limit` is not a whole number 1–1000 (`bad_request`, naming the parameter).",
                &["bad_request"],
                false,
            ),
            "401": {"$ref": "#/components/responses/AdminUnauthorized"},
            "403": {"$ref": "#/components/responses/AdminClosed"},
            "503": {"$ref": "#/components/responses/Unavailable"},
        },
    })
}

fn get_delivery_op() -> Value {
    json!({
        "tags": ["admin"],
        "operationId": "getDelivery",
        "summary": "One delivery",
        "security": admin_security(),
        "parameters": [delivery_id_param()],
        "responses": {
            "200": {"description": "The delivery.", "content": json_content("Delivery")},
            "401": {"$ref": "#/components/responses/AdminUnauthorized"},
            "403": {"$ref": "#/components/responses/AdminClosed"},
            "404": {"$ref": "#/components/responses/DeliveryNotFound"},
            "503": {"$ref": "#/components/responses/Unavailable"},
        },
    })
}

fn retry_delivery_op() -> Value {
    json!({
        "tags": ["admin"],
        "operationId": "retryDelivery",
        "summary": "Queue a failed delivery again",
        "description": "Moves a `failed` delivery back to `queued`, due now (attempts start over). No request body.",
        "security": admin_security(),
        "parameters": [delivery_id_param()],
        "responses": {
            "202": {"description": "Queued again.", "content": json_content("Queued")},
            "401": {"$ref": "#/components/responses/AdminUnauthorized"},
            "403": {"$ref": "#/components/responses/AdminClosed"},
            "404": {"$ref": "#/components/responses/DeliveryNotFound"},
            "409": error_response(
                "The delivery is not `failed` (only failed deliveries can be retried).",
                &["conflict"],
                false,
            ),
            "503": {"$ref": "#/components/responses/Unavailable"},
        },
    })
}

fn preview_digest_op() -> Value {
    json!({
        "tags": ["admin"],
        "operationId": "previewDigest",
        "summary": "Preview a digest route's pending digest",
        "description": "The reports a digest route (`routes.*.digest`) would send if its digest were due now, made from the events it keeps. Nothing is changed or sent.",
        "security": admin_security(),
        "parameters": [{
            "name": "route",
            "in": "path",
            "required": true,
            "description": "A route name with `digest` settings.",
            "schema": {"type": "string"},
            "example": "daily",
        }],
        "responses": {
            "200": {"description": "The pending digest.", "content": json_content("DigestPreview")},
            "401": {"$ref": "#/components/responses/AdminUnauthorized"},
            "403": {"$ref": "#/components/responses/AdminClosed"},
            "404": error_response("No route of that name, or the route has no digest.", &["not_found"], false),
            "500": error_response("The route's digest field template fails on the kept events (the events stay kept).", &["internal"], false),
            "503": {"$ref": "#/components/responses/Unavailable"},
        },
    })
}

fn kept_for_digest_schema() -> Value {
    json!({
        "type": "object",
        "required": ["event_id", "status", "digest_at"],
        "additionalProperties": false,
        "properties": {
            "event_id": {"type": "string", "format": "uuid", "description": "The kept event's id (UUID v7)."},
            "status": {"type": "string", "enum": ["digest"]},
            "digest_at": time_schema("When the route's next digest is due.", true),
        },
    })
}

fn digest_duplicate_schema() -> Value {
    json!({
        "type": "object",
        "required": ["event_id", "status"],
        "additionalProperties": false,
        "properties": {
            "event_id": {"type": "string", "description": "The first event's id."},
            "status": {"type": "string", "enum": ["duplicate"]},
        },
    })
}

fn digest_preview_schema() -> Value {
    let text_list = json!({"type": "array", "items": {"type": "string"}});
    json!({
        "type": "object",
        "required": ["route", "pending_events", "undecodable_events", "last_digest_at", "next_digest_at", "reports"],
        "additionalProperties": false,
        "properties": {
            "route": {"type": "string"},
            "pending_events": {"type": "integer", "minimum": 0},
            "undecodable_events": {
                "type": "array",
                "description": "Kept events this relay cannot read: left out of the reports, and made `failed` deliveries with the same id and reason when the digest is made.",
                "items": {
                    "type": "object",
                    "required": ["id", "reason"],
                    "additionalProperties": false,
                    "properties": {
                        "id": {"type": "string"},
                        "reason": {"type": "string", "description": "`undecodable: event: …`"},
                    },
                },
            },
            "last_digest_at": time_schema("The scheduled time of the previous digest.", true),
            "next_digest_at": time_schema("When the next digest is due.", true),
            "reports": {"type": "array", "items": {
                "type": "object",
                "required": ["group", "author", "to_userids", "events", "summarised_pipelines", "contents"],
                "additionalProperties": false,
                "properties": {
                    "group": {"type": "string", "description": "Author userid, project or route name (`digest.group_by`)."},
                    "author": {"type": "string"},
                    "to_userids": text_list,
                    "events": {"type": "integer", "minimum": 0},
                    "summarised_pipelines": {"type": "integer", "minimum": 0, "description": "Pipelines summarised in one line because they did not fit."},
                    "contents": {"type": "array", "items": {
                        "type": "object",
                        "required": ["key", "content"],
                        "additionalProperties": false,
                        "properties": {"key": {"type": "string"}, "content": {"type": "string"}},
                    }},
                },
            }},
        },
    })
}

fn reload_op() -> Value {
    json!({
        "tags": ["admin"],
        "operationId": "reload",
        "summary": "Re-read the configuration",
        "description": "Like SIGHUP: re-reads the configuration file and the environment and swaps in a valid configuration at once. A bad one is refused and the old one keeps running. Changing `server.listen`, `server.admin_listen` or `store.url` needs a restart and is refused. No request body.",
        "security": admin_security(),
        "responses": {
            "200": {"description": "Reloaded.", "content": json_content("Reloaded")},
            "401": {"$ref": "#/components/responses/AdminUnauthorized"},
            "403": {"$ref": "#/components/responses/AdminClosed"},
            "422": error_response(
                "The new configuration was refused (the message says why); the old one keeps running. Also the answer when the relay was not started from a configuration file.",
                &["invalid_config"],
                false,
            ),
        },
    })
}

// === responses ===

/// An error response whose `error.code` is one of `codes`.
fn error_response(description: &str, codes: &[&str], retry_after: bool) -> Value {
    let mut response = json!({
        "description": description,
        "content": {"application/json": {"schema": {"allOf": [
            {"$ref": "#/components/schemas/Error"},
            {
                "type": "object",
                "properties": {"error": {
                    "type": "object",
                    "properties": {"code": {"type": "string", "enum": codes}},
                }},
            },
        ]}}},
    });
    if retry_after {
        response["headers"] = json!({"Retry-After": {"$ref": "#/components/headers/RetryAfter"}});
    }
    response
}

fn shared_responses() -> Value {
    json!({
        "RouteUnauthorized": error_response(
            "Missing or wrong credentials for the route (its secret as a bearer token, an HMAC signature of the body, or the source's own scheme). Nothing is stored.",
            &["unauthorized"],
            false,
        ),
        "AdminUnauthorized": error_response(
            "`server.admin_token` is set and the request lacks `Authorization: Bearer <token>` (or has another token).",
            &["unauthorized"],
            false,
        ),
        "AdminClosed": error_response(
            "`serve` runs without `server.admin_token` and the admin listener is not bound to a loopback address: `/v1/*` and `/-/reload` stay closed until a token is set (the message says how). `serve --sandbox` keeps them open.",
            &["forbidden"],
            false,
        ),
        "DeliveryNotFound": error_response("No delivery with that id.", &["not_found"], false),
        "Unavailable": error_response(
            "The store is unreachable, or (webhooks) it holds `store.max_queued` waiting deliveries, or (webhooks) `server.max_concurrent_requests` requests are already in progress or `server.max_unverified_requests` bodies awaiting their signature check are being read, or (webhooks) the request took longer than `server.request_timeout`; nothing was accepted unless the time ran out after storing (a retry then answers `200 duplicate`). Try again after `Retry-After` seconds.",
            &["unavailable"],
            true,
        ),
    })
}

// === schemas ===

fn schemas() -> Value {
    let mut schemas = Map::new();
    for (name, schema) in [
        ("Error", error_schema()),
        ("Queued", queued_schema()),
        ("Duplicate", duplicate_schema()),
        ("KeptForDigest", kept_for_digest_schema()),
        ("DigestDuplicate", digest_duplicate_schema()),
        ("DigestPreview", digest_preview_schema()),
        ("Ignored", ignored_schema()),
        ("Delivered", delivered_schema()),
        ("Failed", failed_schema()),
        ("Delivery", delivery_schema()),
        ("LastError", last_error_schema()),
        ("DeliveryList", delivery_list_schema()),
        ("Health", status_schema("ok", None)),
        ("Ready", ready_schema()),
        ("Quota", quota_schema()),
        (
            "QuotaCleared",
            json!({
                "type": "object",
                "required": ["cleared"],
                "additionalProperties": false,
                "properties": {"cleared": {"type": "boolean"}},
            }),
        ),
        ("NotReady", status_schema("not_ready", Some("reason"))),
        ("Reloaded", status_schema("reloaded", Some("summary"))),
        ("SandboxReports", sandbox_reports_schema()),
        ("CreatedReport", created_report_schema()),
        ("JobStatus", job_status_schema()),
        ("Standup", standup_schema()),
        ("SourcePayload", source_payload_schema()),
    ] {
        schemas.insert(name.to_owned(), schema);
    }
    Value::Object(schemas)
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "description": "The one error shape of both listeners.",
        "required": ["error"],
        "additionalProperties": false,
        "properties": {"error": {
            "type": "object",
            "required": ["code", "message"],
            "additionalProperties": false,
            "properties": {
                "code": {"type": "string", "enum": ERROR_CODES, "description": "Machine-readable code."},
                "message": {"type": "string", "description": "Human-readable; never contains a secret."},
                "field": {"type": "string", "description": "The payload field or query parameter at fault (400s)."},
            },
        }},
        "example": {"error": {"code": "invalid_payload", "message": "status: missing field", "field": "status"}},
    })
}

fn delivery_id_schema() -> Value {
    json!({"type": "string", "format": "uuid", "description": "The delivery's id (UUID v7)."})
}

fn queued_schema() -> Value {
    json!({
        "type": "object",
        "required": ["delivery_id", "status"],
        "additionalProperties": false,
        "properties": {
            "delivery_id": delivery_id_schema(),
            "status": {"type": "string", "enum": ["queued"]},
        },
    })
}

fn duplicate_schema() -> Value {
    json!({
        "type": "object",
        "required": ["delivery_id", "status"],
        "additionalProperties": false,
        "properties": {
            "delivery_id": {"type": "string", "format": "uuid", "description": "The first delivery's id."},
            "status": {"type": "string", "enum": ["duplicate"]},
        },
    })
}

fn ignored_schema() -> Value {
    json!({
        "type": "object",
        "required": ["status", "reason"],
        "additionalProperties": false,
        "properties": {
            "status": {"type": "string", "enum": ["ignored"]},
            "reason": {"type": "string"},
        },
    })
}

fn delivered_schema() -> Value {
    json!({
        "type": "object",
        "required": ["status", "report_id", "delivery_id"],
        "additionalProperties": false,
        "properties": {
            "status": {"type": "string", "enum": ["delivered"]},
            "report_id": {"type": "string", "nullable": true, "description": "DingTalk's report id; null for a report DingTalk created (errcode 0) without giving a usable id."},
            "delivery_id": delivery_id_schema(),
        },
    })
}

fn failed_schema() -> Value {
    json!({
        "type": "object",
        "required": ["status", "delivery_id", "errcode", "errmsg"],
        "additionalProperties": false,
        "properties": {
            "status": {"type": "string", "enum": ["failed"]},
            "delivery_id": delivery_id_schema(),
            "errcode": {"type": "integer", "format": "int64", "nullable": true, "description": "DingTalk's effective errcode, when it gave one."},
            "errmsg": {"type": "string"},
        },
    })
}

fn last_error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["errcode", "errmsg"],
        "additionalProperties": false,
        "nullable": true,
        "properties": {
            "errcode": {"type": "integer", "format": "int64", "nullable": true},
            "errmsg": {"type": "string", "description": "What went wrong (`ambiguous: …` for a create whose outcome is unknown)."},
        },
    })
}

fn time_schema(description: &str, nullable: bool) -> Value {
    let mut schema = json!({"type": "string", "format": "date-time", "description": description});
    if nullable {
        schema["nullable"] = json!(true);
    }
    schema
}

fn delivery_schema() -> Value {
    json!({
        "type": "object",
        "required": ["delivery_id", "route", "state", "attempts", "next_attempt_at", "last_error", "report_id", "created_at", "updated_at"],
        "additionalProperties": false,
        "properties": {
            "delivery_id": delivery_id_schema(),
            "route": {"type": "string"},
            "state": {"type": "string", "enum": DELIVERY_STATES},
            "attempts": {"type": "integer", "minimum": 0},
            "next_attempt_at": time_schema("When the next attempt is due (queued only).", true),
            "last_error": {"$ref": "#/components/schemas/LastError"},
            "report_id": {"type": "string", "nullable": true, "description": "DingTalk's report id once delivered; null while not delivered, and for a report DingTalk created (errcode 0) without giving a usable id."},
            "created_at": time_schema("When the webhook was accepted (RFC 3339, UTC, milliseconds).", false),
            "updated_at": time_schema("Last change.", false),
        },
    })
}

fn delivery_list_schema() -> Value {
    json!({
        "type": "object",
        "required": ["deliveries"],
        "additionalProperties": false,
        "properties": {"deliveries": {"type": "array", "items": {"$ref": "#/components/schemas/Delivery"}}},
    })
}

fn ready_schema() -> Value {
    let mut schema = status_schema("ready", None);
    schema["properties"]["warnings"] = json!({
        "type": "array",
        "items": {"type": "string"},
        "description": "What does not stop webhooks but delays deliveries: DingTalk refusing an app (credentials, quota, IP ban), the quota past `warn_at` or projected over the budget.",
    });
    schema
}

fn status_schema(status: &str, text: Option<&str>) -> Value {
    let mut schema = json!({
        "type": "object",
        "required": ["status"],
        "additionalProperties": false,
        "properties": {"status": {"type": "string", "enum": [status]}},
    });
    if let Some(text) = text {
        schema["required"] = json!(["status", text]);
        schema["properties"][text] = json!({"type": "string"});
    }
    schema
}

fn sandbox_reports_schema() -> Value {
    json!({
        "type": "object",
        "required": ["reports"],
        "additionalProperties": false,
        "properties": {"reports": {"type": "array", "items": {"$ref": "#/components/schemas/CreatedReport"}}},
    })
}

fn created_report_schema() -> Value {
    let strings = json!({"type": "array", "items": {"type": "string"}});
    json!({
        "type": "object",
        "required": ["report_id", "template_id", "template_name", "userid", "dd_from", "to_chat", "to_userids", "to_cids", "contents", "created_at_ms"],
        "additionalProperties": false,
        "properties": {
            "report_id": {"type": "string"},
            "template_id": {"type": "string"},
            "template_name": {"type": "string"},
            "userid": {"type": "string", "description": "The author."},
            "dd_from": {"type": "string"},
            "to_chat": {"type": "boolean"},
            "to_userids": strings,
            "to_cids": strings,
            "contents": {"type": "array", "items": {
                "type": "object",
                "required": ["key", "sort", "content"],
                "additionalProperties": false,
                "properties": {
                    "key": {"type": "string", "description": "The template field name."},
                    "sort": {"type": "integer"},
                    "content": {"type": "string", "description": "At most 1000 characters."},
                },
            }},
            "created_at_ms": {"type": "integer", "format": "int64", "description": "Unix milliseconds."},
        },
    })
}

/// A string that is not blank (blank strings count as absent).
fn text(description: &str) -> Value {
    json!({"type": "string", "pattern": "\\S", "description": description})
}

/// An optional string (`null` and blank count as absent).
fn optional_text(description: &str) -> Value {
    json!({"type": "string", "nullable": true, "description": description})
}

fn optional_time(description: &str) -> Value {
    json!({"type": "string", "format": "date-time", "nullable": true, "description": description})
}

fn job_status_schema() -> Value {
    json!({
        "type": "object",
        "description": "`source: generic`: a CI job's result. Unknown fields are ignored; `null` and blank strings count as absent.",
        "required": ["type", "status"],
        "anyOf": [{"required": ["job"]}, {"required": ["pipeline"]}],
        "properties": {
            "type": {"type": "string", "enum": ["job_status"]},
            "job": text("Job name (give job or pipeline)."),
            "pipeline": text("Pipeline name (give job or pipeline)."),
            "status": {"type": "string", "pattern": "\\S", "description": "`success`, `failure`, `cancelled`, `running`, `pending`, `skipped`, `unknown`; any other value is kept and shown.", "example": "success"},
            "phase": {"type": "string", "nullable": true, "enum": ["queued", "in_progress", "completed", null], "description": "Job phase (default: from the status). Only `routes.<name>.events` phases make reports."},
            "project": optional_text("Project or repository."),
            "run_id": {"anyOf": [{"type": "string"}, {"type": "number"}], "nullable": true, "description": "Run id (string or number)."},
            "branch": optional_text("Branch (`refs/heads/` is dropped)."),
            "commit": optional_text("Commit SHA."),
            "commit_message": optional_text("Commit message."),
            "url": optional_text("Link to the run."),
            "actor": optional_text("CI login of who triggered it (looked up in `users`)."),
            "actor_email": optional_text("Their e-mail (looked up in `users`)."),
            "started_at": optional_time("RFC 3339."),
            "finished_at": optional_time("RFC 3339."),
            "duration_secs": {"type": "number", "minimum": 0, "nullable": true, "description": "Seconds (fractions are rounded); computed from the times when absent."},
            "summary": optional_text("Free text, e.g. `418 tests passed`."),
        },
        "example": job_status_example(),
    })
}

fn standup_schema() -> Value {
    let list = |description: &str| {
        json!({
            "anyOf": [
                {"type": "array", "items": {"type": "string", "nullable": true}},
                {"type": "string"},
            ],
            "nullable": true,
            "description": description,
        })
    };
    json!({
        "type": "object",
        "description": "`source: generic`: a standup update. Give `user` or `userid`, and at least one of `done`, `todo`, `blockers`, `notes`. Unknown fields are ignored; `null` and blank strings count as absent.",
        "required": ["type"],
        "allOf": [
            {"anyOf": [{"required": ["user"]}, {"required": ["userid"]}]},
            {"anyOf": [{"required": ["done"]}, {"required": ["todo"]}, {"required": ["blockers"]}, {"required": ["notes"]}]},
        ],
        "properties": {
            "type": {"type": "string", "enum": ["standup"]},
            "user": text("Login or e-mail, mapped through `users`."),
            "userid": text("DingTalk userid."),
            "date": {"type": "string", "format": "date", "nullable": true, "description": "YYYY-MM-DD (default: today in `timezone`)."},
            "done": list("Done items (a list of strings, or one string)."),
            "todo": list("To-do items."),
            "blockers": list("Blockers."),
            "notes": optional_text("Free text."),
        },
        "example": standup_example(),
    })
}

fn source_payload_schema() -> Value {
    json!({
        "type": "object",
        "description": "A CI system's own webhook event (routes whose `source` is `github`, `gitlab`, `gitea`, `forgejo`, `jenkins`, `circleci`, `buildkite`, `drone`, `azure-devops` or `bitbucket`), read leniently; the event kind usually comes from a header such as `X-GitHub-Event`.",
        "additionalProperties": true,
    })
}

fn job_status_example() -> Value {
    json!({
        "type": "job_status", "job": "build", "status": "success", "project": "acme/api",
        "pipeline": "CI", "run_id": "812", "branch": "main", "commit": "9f2c1e7",
        "commit_message": "Fix flaky test", "url": "https://ci.example.com/runs/812",
        "actor": "octocat", "started_at": "2026-11-24T08:00:00Z",
        "finished_at": "2026-11-24T08:03:12Z", "duration_secs": 192, "summary": "418 tests passed",
    })
}

fn standup_example() -> Value {
    json!({
        "type": "standup", "user": "octocat", "date": "2026-11-24", "done": ["Shipped retries"],
        "todo": ["Write docs"], "blockers": [], "notes": "Out Friday",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_resolves() {
        fn walk(doc: &Value, value: &Value) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(target)) = map.get("$ref") {
                        let pointer = target.strip_prefix('#').expect("local reference");
                        assert!(doc.pointer(pointer).is_some(), "{target} does not resolve");
                    }
                    map.values().for_each(|v| walk(doc, v));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(doc, v)),
                _ => {}
            }
        }
        walk(spec(), spec());
        assert_eq!(spec()["openapi"], "3.0.3");
    }
}
