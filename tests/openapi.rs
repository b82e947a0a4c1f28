//! The OpenAPI document served at `GET /openapi.json` on the admin listener, checked against
//! the code: every route the two routers serve (read from `src/inbound/webhook.rs` and
//! `src/inbound/admin.rs`) is documented under the right listener and nothing else is, every
//! error code of `src/inbound/error.rs` is documented, and real answers of every endpoint —
//! each documented status that can be produced in-process — have a documented status, content
//! type, required headers and a body that validates against the documented schema.
//!
//! The schema validator below covers the subset of JSON Schema the document uses and fails on
//! any other keyword, so the document cannot drift into something this test does not check.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;

use dingtalk_relay::config::{Mode, Settings};
use dingtalk_relay::sandbox::{FakeDingTalk, FakeOptions, Fault};
use dingtalk_relay::startup::Application;
use dingtalk_relay::state::AppState;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

const ROUTE_SECRET: &str = "openapi-route-secret";
const ADMIN_TOKEN: &str = "openapi-admin-token";
const MAX_BODY: usize = 8192;

/// Every route the relay serves, as (listener, method, path template). Cross-checked against
/// the routers' source and against the document.
const ROUTES: &[(&str, &str, &str)] = &[
    ("webhook", "post", "/v1/hooks/{route}"),
    ("admin", "get", "/metrics"),
    ("admin", "get", "/healthz"),
    ("admin", "get", "/readyz"),
    ("admin", "get", "/sandbox/reports"),
    ("admin", "get", "/openapi.json"),
    ("admin", "get", "/v1/deliveries"),
    ("admin", "get", "/v1/deliveries/{id}"),
    ("admin", "post", "/v1/deliveries/{id}/retry"),
    ("admin", "get", "/v1/digests/{route}"),
    ("admin", "get", "/v1/quota"),
    ("admin", "delete", "/v1/quota/exhausted"),
    ("admin", "post", "/-/reload"),
];

/// Documented answers that cannot be produced in-process: the in-memory store never fails, so
/// the admin API's 503s are only checked structurally.
const NOT_EXERCISED: &[(&str, &str, u16)] = &[
    ("get", "/v1/deliveries", 503),
    ("get", "/v1/deliveries/{id}", 503),
    ("post", "/v1/deliveries/{id}/retry", 503),
    ("get", "/v1/digests/{route}", 503),
    ("get", "/v1/quota", 503),
    ("delete", "/v1/quota/exhausted", 503),
    // Digest templates are checked against samples at startup; one that fails only on some
    // real events is the same code path as the webhook's 500, which is exercised.
    ("get", "/v1/digests/{route}", 500),
    // Needs a body that stalls mid-upload, which reqwest (without its stream feature) cannot
    // send; `tests/api/limits.rs` produces it over raw TCP.
    ("post", "/v1/hooks/{route}", 408),
];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

// === the relay under test ===

struct Relay {
    webhook: String,
    admin: String,
    http: reqwest::Client,
    state: AppState,
    cancel: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    yaml: String,
}

fn yaml(base_url: &str, admin_token: &str, max_queued: u64, backoff: &str) -> String {
    let options = FakeOptions::default();
    format!(
        r#"
server:
  listen: "127.0.0.1:0"
  admin_listen: "127.0.0.1:0"
  max_body_bytes: {MAX_BODY}
  admin_token: {admin_token}
dingtalk:
  base_url: "{base_url}"
  timeout: 2s
  max_qps: 20
  apps:
    default:
      app_key: "{app_key}"
      app_secret: "{app_secret}"
store:
  url: "memory:"
  max_queued: {max_queued}
delivery:
  max_attempts: 2
  initial_backoff: {backoff}
  max_backoff: {backoff}
  dedup_window: 1h
  concurrency: 4
  lease: 10s
routes:
  ci:
    source: generic
    secret: "{ROUTE_SECRET}"
    template: {{name: "日报"}}
    author: "manager01"
  open:
    source: generic
    insecure: true
    template: {{name: "日报"}}
    author: "manager01"
  broken:
    source: generic
    insecure: true
    template: {{id: "no-such-template", fields: [{{name: "今日完成工作", sort: 0}}, {{name: "未完成工作", sort: 1}}, {{name: "需协调工作", sort: 2}}]}}
    author: "manager01"
  daily:
    source: generic
    insecure: true
    template: {{name: "日报"}}
    author: "manager01"
    digest: {{schedule: "18:00", group_by: route}}
  limited:
    source: generic
    insecure: true
    template: {{name: "日报"}}
    author: "manager01"
    rate_limit: {{per_second: 0.01, burst: 1}}
  hungry:
    source: generic
    insecure: true
    template: {{name: "日报"}}
    author: "manager01"
    fields:
      今日完成工作: "{{% for a in done %}}{{% for b in done %}}{{% for c in done %}}.{{% endfor %}}{{% endfor %}}{{% endfor %}}"
  explode:
    source: generic
    insecure: true
    template: {{name: "日报"}}
    author: "manager01"
    fields:
      今日完成工作: "{{% if summary == 'boom' %}}{{{{ 'a' + 1 }}}}{{% endif %}}ok"
"#,
        app_key = options.app_key,
        app_secret = options.app_secret,
    )
}

/// [`yaml`] for a production relay with no admin token and the admin listener on every
/// address.
fn relay_yaml_without_token_off_loopback() -> String {
    yaml("http://127.0.0.1:9", "null", 1000, "1h").replace(
        "admin_listen: \"127.0.0.1:0\"",
        "admin_listen: \"0.0.0.0:0\"",
    )
}

impl Relay {
    /// A production relay against its own fake DingTalk, with the admin token set.
    async fn production() -> Self {
        let (_fake, base_url) = FakeDingTalk::spawn(FakeOptions::default())
            .await
            .expect("fake DingTalk starts");
        let text = yaml(&base_url, &format!("\"{ADMIN_TOKEN}\""), 1000, "20ms");
        Self::start(text, Mode::Production).await
    }

    /// A sandbox relay (its own stand-in) whose queue holds one delivery and never retries soon.
    async fn sandbox() -> Self {
        let text = yaml("http://127.0.0.1:9", "null", 1, "1h");
        Self::start(text, Mode::Sandbox).await
    }

    async fn start(yaml: String, mode: Mode) -> Self {
        let settings = Settings::from_yaml(&yaml).expect("settings parse");
        let app = Application::build(settings, mode)
            .await
            .expect("app builds");
        let webhook = format!("http://127.0.0.1:{}", app.port());
        let admin = format!("http://127.0.0.1:{}", app.admin_port());
        let state = app.state().clone();
        let cancel = CancellationToken::new();
        let server = tokio::spawn(app.run_until_stopped(cancel.clone()));
        Self {
            webhook,
            admin,
            http: reqwest::Client::new(),
            state,
            cancel,
            server,
            yaml,
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.server.await.unwrap().unwrap();
    }

    fn hook(&self, route_and_query: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}/v1/hooks/{route_and_query}", self.webhook))
            .header("content-type", "application/json")
    }

    fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.admin))
            .bearer_auth(ADMIN_TOKEN)
    }

    fn admin_get(&self, path: &str) -> reqwest::RequestBuilder {
        self.admin(reqwest::Method::GET, path)
    }

    fn admin_post(&self, path: &str) -> reqwest::RequestBuilder {
        self.admin(reqwest::Method::POST, path)
    }

    async fn fetch_document(&self) -> Value {
        let response = self
            .http
            .get(format!("{}/openapi.json", self.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        serde_json::from_str(&text).expect("/openapi.json is JSON")
    }
}

fn job(n: usize) -> Value {
    json!({"type": "job_status", "job": "build", "status": "success", "project": "acme/api",
        "run_id": n.to_string(), "branch": "main", "commit": "9f2c1e7", "actor": "octocat",
        "url": "https://ci.example.com/runs/812", "summary": format!("run {n}")})
}

fn bytes(body: &Value) -> Vec<u8> {
    serde_json::to_vec(body).unwrap()
}

fn signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(ROUTE_SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

// === the document and its validator ===

/// The fetched document, plus every (method, path, status) answer checked against it.
struct Doc {
    doc: Value,
    seen: Mutex<BTreeSet<(String, String, u16)>>,
}

/// One HTTP answer, read whole.
struct Answer {
    status: u16,
    content_type: String,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    async fn of(request: reqwest::RequestBuilder) -> Self {
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = response.text().await.unwrap();
        Self {
            status,
            content_type,
            headers,
            text,
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

impl Doc {
    fn new(doc: Value) -> Self {
        Self {
            doc,
            seen: Mutex::new(BTreeSet::new()),
        }
    }

    /// Follows `$ref`s to the schema, response or header they name.
    fn resolve<'a>(&'a self, mut value: &'a Value) -> &'a Value {
        while let Some(target) = value.get("$ref").and_then(Value::as_str) {
            let pointer = target.strip_prefix('#').expect("only local references");
            value = self
                .doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("{target} does not resolve"));
        }
        value
    }

    fn operation(&self, method: &str, path: &str) -> &Value {
        self.doc["paths"][path]
            .get(method)
            .unwrap_or_else(|| panic!("{method} {path} is not documented"))
    }

    /// Sends `request`, asserts it answers `expected`, and checks the answer against the
    /// documented response for that status. Returns the JSON body (or `Null`).
    async fn expect(
        &self,
        method: &str,
        path: &str,
        request: reqwest::RequestBuilder,
        expected: u16,
    ) -> Value {
        let answer = Answer::of(request).await;
        let what = format!("{} {path} → {}", method.to_uppercase(), answer.status);
        assert_eq!(answer.status, expected, "{what}: {}", answer.text);
        self.seen
            .lock()
            .unwrap()
            .insert((method.to_owned(), path.to_owned(), answer.status));
        let operation = self.operation(method, path);
        let response = operation["responses"]
            .get(answer.status.to_string())
            .map(|r| self.resolve(r))
            .unwrap_or_else(|| panic!("{what}: status not documented"));
        for (name, header) in response
            .get("headers")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let header = self.resolve(header);
            if header["required"] == true {
                let value = answer
                    .headers
                    .get(name.as_str())
                    .unwrap_or_else(|| panic!("{what}: required header {name} missing"));
                let mut errors = Vec::new();
                let text = value.to_str().unwrap();
                let parsed = text
                    .parse::<i64>()
                    .map_or_else(|_| json!(text), |n| json!(n));
                self.validate(&header["schema"], &parsed, name, &mut errors);
                assert!(errors.is_empty(), "{what}: header {name}: {errors:?}");
            }
        }
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            assert!(answer.text.is_empty(), "{what}: undocumented body");
            return Value::Null;
        };
        let media = answer
            .content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim();
        let media_type = content
            .get(media)
            .unwrap_or_else(|| panic!("{what}: content type {media:?} not documented"));
        if media != "application/json" {
            return Value::Null;
        }
        let body = answer.json();
        let mut errors = Vec::new();
        self.validate(&media_type["schema"], &body, "$", &mut errors);
        assert!(
            errors.is_empty(),
            "{what}: body does not match the documented schema:\n  {}\nbody: {body}",
            errors.join("\n  ")
        );
        body
    }

    /// Validates `value` against `schema`, pushing one line per problem.
    fn validate(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let schema = self.resolve(schema);
        let Some(keywords) = schema.as_object() else {
            panic!("{at}: schema is not an object: {schema}");
        };
        for keyword in keywords.keys() {
            assert!(
                [
                    "type",
                    "nullable",
                    "enum",
                    "required",
                    "properties",
                    "additionalProperties",
                    "items",
                    "allOf",
                    "anyOf",
                    "oneOf",
                    "minimum",
                    "maximum",
                    "format",
                    "pattern",
                    "description",
                    "example",
                    "default",
                ]
                .contains(&keyword.as_str()),
                "{at}: the validator does not know the keyword {keyword:?}"
            );
        }
        if value.is_null() && schema["nullable"] == true {
            return;
        }
        if let Some(kind) = schema.get("type").and_then(Value::as_str) {
            let ok = match kind {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                "boolean" => value.is_boolean(),
                other => panic!("{at}: unknown type {other}"),
            };
            if !ok {
                errors.push(format!("{at}: expected {kind}, got {value}"));
                return;
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            errors.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
        if let Some(n) = value.as_f64() {
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && n < min
            {
                errors.push(format!("{at}: {n} < minimum {min}"));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && n > max
            {
                errors.push(format!("{at}: {n} > maximum {max}"));
            }
        }
        if let Some(s) = value.as_str() {
            if let Some(format) = schema.get("format").and_then(Value::as_str) {
                let ok = match format {
                    "date-time" => chrono::DateTime::parse_from_rfc3339(s).is_ok(),
                    "date" => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok(),
                    "uuid" => uuid::Uuid::parse_str(s).is_ok(),
                    other => panic!("{at}: the validator does not know format {other}"),
                };
                if !ok {
                    errors.push(format!("{at}: {s:?} is not a {format}"));
                }
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                assert_eq!(
                    pattern, "\\S",
                    "{at}: the validator knows only the pattern \\S"
                );
                if s.trim().is_empty() {
                    errors.push(format!("{at}: {s:?} is blank"));
                }
            }
        }
        if let Some(object) = value.as_object() {
            for name in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = name.as_str().unwrap();
                if !object.contains_key(name) {
                    errors.push(format!("{at}: required property {name} missing"));
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            for (name, item) in object {
                let path = format!("{at}.{name}");
                match properties.and_then(|p| p.get(name)) {
                    Some(property) => self.validate(property, item, &path, errors),
                    None => match schema.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            errors.push(format!("{at}: undocumented property {name}"));
                        }
                        Some(extra @ Value::Object(_)) => self.validate(extra, item, &path, errors),
                        _ => {}
                    },
                }
            }
        }
        if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
            for (i, item) in values.iter().enumerate() {
                self.validate(items, item, &format!("{at}[{i}]"), errors);
            }
        }
        for sub in schema
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.validate(sub, value, at, errors);
        }
        for (keyword, want_exactly_one) in [("anyOf", false), ("oneOf", true)] {
            let Some(options) = schema.get(keyword).and_then(Value::as_array) else {
                continue;
            };
            let mut failures = Vec::new();
            let matching = options
                .iter()
                .filter(|option| {
                    let mut sub = Vec::new();
                    self.validate(option, value, at, &mut sub);
                    failures.extend(sub.iter().cloned());
                    sub.is_empty()
                })
                .count();
            if matching == 0 || (want_exactly_one && matching > 1) {
                errors.push(format!(
                    "{at}: {matching} of the {keyword} options match ({})",
                    failures.join("; ")
                ));
            }
        }
    }

    /// Every (method, path, status) the document promises.
    fn documented_answers(&self) -> BTreeSet<(String, String, u16)> {
        let mut all = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            for method in METHODS {
                let Some(operation) = item.get(*method) else {
                    continue;
                };
                for status in operation["responses"].as_object().unwrap().keys() {
                    all.insert((
                        (*method).to_owned(),
                        path.clone(),
                        status.parse().expect("numeric statuses only"),
                    ));
                }
            }
        }
        all
    }
}

// === routes in the source ===

/// The (method, path) pairs of every `.route("…", method(…))` in a router's source file.
fn routes_in_source(file: &str) -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let mut found = BTreeSet::new();
    for piece in compact.split(".route(\"").skip(1) {
        let (path, rest) = piece.split_once('"').expect("a closing quote");
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find_map(|(i, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                (depth == 0).then_some(i)
            })
            .expect("a closing parenthesis");
        let args = &rest[..end];
        let before = found.len();
        for method in METHODS {
            if [",", ".", "::"]
                .iter()
                .any(|lead| args.contains(&format!("{lead}{method}(")))
            {
                found.insert(((*method).to_owned(), path.to_owned()));
            }
        }
        assert!(found.len() > before, "{file}: no method found for {path}");
    }
    found
}

/// The codes `src/inbound/error.rs` builds errors with (`Self::new(StatusCode::…, "code", …)`).
fn error_codes_in_source() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/inbound/error.rs");
    let text = std::fs::read_to_string(path).unwrap();
    text.split("Self::new(")
        .skip(1)
        .map(|piece| piece.split('"').nth(1).expect("a quoted code").to_owned())
        .collect()
}

// === tests ===

#[tokio::test]
async fn every_served_route_is_documented_under_its_listener() {
    let relay = Relay::production().await;
    let doc = relay.fetch_document().await;
    relay.stop().await;

    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());

    let listed: BTreeSet<(String, String, String)> = ROUTES
        .iter()
        .map(|(l, m, p)| ((*l).to_owned(), (*m).to_owned(), (*p).to_owned()))
        .collect();
    let mut in_source = BTreeSet::new();
    for (listener, file) in [
        ("webhook", "src/inbound/webhook.rs"),
        ("admin", "src/inbound/admin.rs"),
    ] {
        for (method, path) in routes_in_source(file) {
            in_source.insert((listener.to_owned(), method, path));
        }
    }
    assert_eq!(
        in_source, listed,
        "the routers serve other routes than ROUTES lists"
    );

    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    let mut operation_ids = BTreeSet::new();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let servers = item["servers"]
            .as_array()
            .expect("each path names its server");
        assert_eq!(servers.len(), 1, "{path}");
        for method in METHODS {
            let Some(operation) = item.get(*method) else {
                continue;
            };
            let tags = operation["tags"].as_array().unwrap();
            assert_eq!(tags.len(), 1, "{method} {path}");
            let listener = tags[0].as_str().unwrap().to_owned();
            assert!(
                servers[0]["description"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{listener} listener")),
                "{path}: server does not match tag {listener}"
            );
            let id = operation["operationId"].as_str().unwrap();
            assert!(operation_ids.insert(id.to_owned()), "duplicate {id}");
            let responses = operation["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{method} {path}");
            for requirement in operation["security"].as_array().unwrap() {
                for name in requirement.as_object().unwrap().keys() {
                    assert!(schemes.contains_key(name), "unknown scheme {name}");
                }
            }
            documented.insert((listener, (*method).to_owned(), path.clone()));
        }
    }
    assert_eq!(
        documented, listed,
        "the document describes other routes than the routers serve"
    );

    let codes: BTreeSet<String> =
        doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
    assert_eq!(codes, error_codes_in_source(), "error codes drifted");

    // Every reference resolves (Doc::resolve panics otherwise).
    let checker = Doc::new(doc.clone());
    fn walk(checker: &Doc, value: &Value) {
        match value {
            Value::Object(map) => {
                checker.resolve(value);
                map.values().for_each(|v| walk(checker, v));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(checker, v)),
            _ => {}
        }
    }
    walk(&checker, &doc);
    // The examples in the document are valid against their own schemas.
    for name in ["JobStatus", "Standup", "Error"] {
        let schema = &doc["components"]["schemas"][name];
        let mut errors = Vec::new();
        checker.validate(schema, &schema["example"], name, &mut errors);
        assert!(errors.is_empty(), "{name} example: {errors:?}");
    }
}

#[tokio::test]
async fn every_endpoint_answers_as_documented() {
    let relay = Relay::production().await;
    let doc = Doc::new(relay.fetch_document().await);
    let hook = "/v1/hooks/{route}";
    let post = "post";

    // --- webhook listener ---
    let body = bytes(&job(1));
    let queued = doc
        .expect(
            post,
            hook,
            relay
                .hook("ci")
                .bearer_auth(ROUTE_SECRET)
                .body(body.clone()),
            202,
        )
        .await;
    let first = queued["delivery_id"].as_str().unwrap().to_owned();
    let duplicate = doc
        .expect(
            post,
            hook,
            relay.hook("ci").bearer_auth(ROUTE_SECRET).body(body),
            200,
        )
        .await;
    assert_eq!(duplicate["status"], "duplicate");
    assert_eq!(duplicate["delivery_id"], first.as_str());
    // The HMAC alternative and Idempotency-Key.
    let signed = bytes(&job(2));
    doc.expect(
        post,
        hook,
        relay
            .hook("ci")
            .header("x-signature-256", signature(&signed))
            .header("idempotency-key", "key-1")
            .body(signed),
        202,
    )
    .await;
    let same_key = bytes(&job(3));
    let again = doc
        .expect(
            post,
            hook,
            relay
                .hook("ci")
                .header("x-signature-256", signature(&same_key))
                .header("idempotency-key", "key-1")
                .body(same_key),
            200,
        )
        .await;
    assert_eq!(again["status"], "duplicate");
    let mut running = job(4);
    running["status"] = json!("running");
    let ignored = doc
        .expect(post, hook, relay.hook("open").body(bytes(&running)), 200)
        .await;
    assert_eq!(ignored["status"], "ignored");
    let delivered = doc
        .expect(
            post,
            hook,
            relay.hook("open?wait=10").body(bytes(&job(5))),
            201,
        )
        .await;
    let delivered_id = delivered["delivery_id"].as_str().unwrap().to_owned();
    let failed = doc
        .expect(
            post,
            hook,
            relay.hook("broken?wait=10").body(bytes(&job(6))),
            502,
        )
        .await;
    let failed_id = failed["delivery_id"].as_str().unwrap().to_owned();
    let bad_wait = doc
        .expect(
            post,
            hook,
            relay.hook("open?wait=31").body(bytes(&job(7))),
            400,
        )
        .await;
    assert_eq!(bad_wait["error"]["field"], "wait");
    let invalid = doc
        .expect(
            post,
            hook,
            relay
                .hook("open")
                .body(r#"{"type":"job_status","job":"x"}"#),
            400,
        )
        .await;
    assert_eq!(invalid["error"]["field"], "status");
    doc.expect(post, hook, relay.hook("open").body("not json"), 400)
        .await;
    doc.expect(
        post,
        hook,
        relay.hook("ci").bearer_auth("wrong").body(bytes(&job(8))),
        401,
    )
    .await;
    doc.expect(post, hook, relay.hook("ci").body(bytes(&job(8))), 401)
        .await;
    let unknown = doc
        .expect(post, hook, relay.hook("nope").body(bytes(&job(9))), 404)
        .await;
    assert_eq!(unknown["error"]["code"], "route_not_found");
    doc.expect(post, hook, relay.hook("%FF").body(bytes(&job(9))), 404)
        .await;
    doc.expect(
        post,
        hook,
        relay.hook("open").body(vec![b' '; MAX_BODY + 1]),
        413,
    )
    .await;
    doc.expect(
        post,
        hook,
        relay
            .http
            .post(format!("{}/v1/hooks/open", relay.webhook))
            .header("content-type", "text/plain")
            .body(bytes(&job(10))),
        415,
    )
    .await;
    doc.expect(post, hook, relay.hook("limited").body(bytes(&job(12))), 202)
        .await;
    let limited = doc
        .expect(post, hook, relay.hook("limited").body(bytes(&job(13))), 429)
        .await;
    assert_eq!(limited["error"]["code"], "rate_limited");
    let mut boom = job(11);
    boom["summary"] = json!("boom");
    doc.expect(post, hook, relay.hook("explode").body(bytes(&boom)), 500)
        .await;
    let many: Vec<String> = (0..100).map(|i| format!("item {i}")).collect();
    let standup = json!({"type": "standup", "user": "octocat", "done": many});
    let hungry = doc
        .expect(post, hook, relay.hook("hungry").body(bytes(&standup)), 422)
        .await;
    assert_eq!(hungry["error"]["field"], "今日完成工作");
    // A digest route keeps the event for its digest.
    let kept = doc
        .expect(post, hook, relay.hook("daily").body(bytes(&job(12))), 202)
        .await;
    assert_eq!(kept["status"], "digest");
    let again = doc
        .expect(post, hook, relay.hook("daily").body(bytes(&job(12))), 200)
        .await;
    assert_eq!(again["event_id"], kept["event_id"]);

    // --- admin listener ---
    let open = |path: &str| relay.http.get(format!("{}{path}", relay.admin));
    doc.expect("get", "/metrics", open("/metrics"), 200).await;
    doc.expect("get", "/healthz", open("/healthz"), 200).await;
    doc.expect("get", "/readyz", open("/readyz"), 200).await;
    doc.expect("get", "/openapi.json", open("/openapi.json"), 200)
        .await;
    doc.expect("get", "/sandbox/reports", open("/sandbox/reports"), 404)
        .await;

    let list = "/v1/deliveries";
    doc.expect("get", list, open(list), 401).await;
    let all = doc.expect("get", list, relay.admin_get(list), 200).await;
    assert!(all["deliveries"].as_array().unwrap().len() >= 4, "{all}");
    let failed_list = doc
        .expect(
            "get",
            list,
            relay.admin_get("/v1/deliveries?state=failed&limit=10"),
            200,
        )
        .await;
    assert_eq!(
        failed_list["deliveries"][0]["delivery_id"],
        failed_id.as_str()
    );
    for bad in [
        "state=lost",
        "limit=0",
        "limit=1001",
        "limit=x",
        "state=queued&state=failed",
    ] {
        doc.expect("get", list, relay.admin_get(&format!("{list}?{bad}")), 400)
            .await;
    }

    let one = "/v1/deliveries/{id}";
    let delivery = doc
        .expect(
            "get",
            one,
            relay.admin_get(&format!("/v1/deliveries/{failed_id}")),
            200,
        )
        .await;
    assert_eq!(delivery["state"], "failed");
    assert!(delivery["last_error"]["errcode"].is_i64(), "{delivery}");
    doc.expect("get", one, open(&format!("/v1/deliveries/{first}")), 401)
        .await;
    doc.expect("get", one, relay.admin_get("/v1/deliveries/nope"), 404)
        .await;
    doc.expect("get", one, relay.admin_get("/v1/deliveries/%FF"), 404)
        .await;

    let retry = "/v1/deliveries/{id}/retry";
    let path = |id: &str| format!("/v1/deliveries/{id}/retry");
    doc.expect(
        post,
        retry,
        relay
            .http
            .post(format!("{}{}", relay.admin, path(&failed_id))),
        401,
    )
    .await;
    doc.expect(post, retry, relay.admin_post(&path(&failed_id)), 202)
        .await;
    doc.expect(post, retry, relay.admin_post(&path(&delivered_id)), 409)
        .await;
    doc.expect(post, retry, relay.admin_post(&path("nope")), 404)
        .await;

    let digest = "/v1/digests/{route}";
    doc.expect("get", digest, open("/v1/digests/daily"), 401)
        .await;
    let preview = doc
        .expect("get", digest, relay.admin_get("/v1/digests/daily"), 200)
        .await;
    assert_eq!(preview["pending_events"], 1, "{preview}");
    assert_eq!(preview["reports"][0]["events"], 1, "{preview}");
    doc.expect("get", digest, relay.admin_get("/v1/digests/ci"), 404)
        .await;
    doc.expect("get", digest, relay.admin_get("/v1/digests/nope"), 404)
        .await;

    let quota = "/v1/quota";
    doc.expect("get", quota, open(quota), 401).await;
    let status = doc.expect("get", quota, relay.admin_get(quota), 200).await;
    assert!(status["used"].as_u64().unwrap() >= 1, "{status}");
    let exhausted = "/v1/quota/exhausted";
    doc.expect(
        "delete",
        exhausted,
        relay.http.delete(format!("{}{exhausted}", relay.admin)),
        401,
    )
    .await;
    let cleared = doc
        .expect(
            "delete",
            exhausted,
            relay.admin(reqwest::Method::DELETE, exhausted),
            200,
        )
        .await;
    assert_eq!(cleared["cleared"], false);

    let reload = "/-/reload";
    doc.expect(
        post,
        reload,
        relay.http.post(format!("{}{reload}", relay.admin)),
        401,
    )
    .await;
    // Built from settings in code: there is no file to re-read.
    doc.expect(post, reload, relay.admin_post(reload), 422)
        .await;
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), &relay.yaml).unwrap();
    relay
        .state
        .reloader
        .set_config_file(Some(file.path().to_owned()));
    doc.expect(post, reload, relay.admin_post(reload), 200)
        .await;
    relay.stop().await;

    // --- a sandbox relay whose queue is full ---
    let sandbox = Relay::sandbox().await;
    let reports = "/sandbox/reports";
    doc.expect(
        post,
        hook,
        sandbox.hook("open?wait=10").body(bytes(&job(1))),
        201,
    )
    .await;
    let created = doc
        .expect(
            "get",
            reports,
            sandbox.http.get(format!("{}{reports}", sandbox.admin)),
            200,
        )
        .await;
    assert_eq!(created["reports"].as_array().unwrap().len(), 1);
    // A transient error with a one-hour backoff keeps the next delivery waiting: the queue
    // (store.max_queued: 1) is full.
    let fake = sandbox.state.sandbox.as_ref().unwrap();
    fake.push_create_fault(Fault::Errcode(-1));
    doc.expect(post, hook, sandbox.hook("open").body(bytes(&job(2))), 202)
        .await;
    let full = doc
        .expect(post, hook, sandbox.hook("open").body(bytes(&job(3))), 503)
        .await;
    assert_eq!(full["error"]["code"], "unavailable");
    let not_ready = doc
        .expect(
            "get",
            "/readyz",
            sandbox.http.get(format!("{}/readyz", sandbox.admin)),
            503,
        )
        .await;
    assert_eq!(not_ready["status"], "not_ready");
    sandbox.stop().await;

    // A production relay without an admin token whose admin listener is not on loopback
    // keeps the admin API closed.
    let closed = Relay::start(relay_yaml_without_token_off_loopback(), Mode::Production).await;
    for (method, path, target) in [
        ("get", "/v1/deliveries", "/v1/deliveries"),
        ("get", "/v1/deliveries/{id}", "/v1/deliveries/x"),
        (
            "post",
            "/v1/deliveries/{id}/retry",
            "/v1/deliveries/x/retry",
        ),
        ("get", "/v1/digests/{route}", "/v1/digests/daily"),
        ("post", "/-/reload", "/-/reload"),
    ] {
        let request = closed
            .http
            .request(method.parse().unwrap(), format!("{}{target}", closed.admin));
        let answer = doc.expect(method, path, request, 403).await;
        assert_eq!(answer["error"]["code"], "forbidden");
    }
    closed.stop().await;

    // Every documented answer was produced, except those listed as not reproducible here.
    let seen = doc.seen.lock().unwrap().clone();
    let skipped: BTreeSet<(String, String, u16)> = NOT_EXERCISED
        .iter()
        .map(|(m, p, s)| ((*m).to_owned(), (*p).to_owned(), *s))
        .collect();
    let missing: Vec<_> = doc
        .documented_answers()
        .into_iter()
        .filter(|a| !seen.contains(a) && !skipped.contains(a))
        .collect();
    assert!(
        missing.is_empty(),
        "documented but never exercised: {missing:?}"
    );
    assert!(
        skipped.iter().all(|a| doc.documented_answers().contains(a)),
        "NOT_EXERCISED lists an answer the document does not promise"
    );
}

#[test]
fn the_validator_rejects_what_the_document_forbids() {
    let doc = Doc::new(dingtalk_relay::inbound::openapi::spec().clone());
    let check = |schema: &str, value: Value| {
        let mut errors = Vec::new();
        doc.validate(
            &json!({"$ref": format!("#/components/schemas/{schema}")}),
            &value,
            "$",
            &mut errors,
        );
        errors
    };
    let id = "019abcde-f012-7345-8678-9abcdef01234";
    assert!(check("Queued", json!({"delivery_id": id, "status": "queued"})).is_empty());
    for bad in [
        json!({"delivery_id": id}),
        json!({"delivery_id": id, "status": "done"}),
        json!({"delivery_id": "not-a-uuid", "status": "queued"}),
        json!({"delivery_id": id, "status": "queued", "extra": 1}),
        json!({"delivery_id": 7, "status": "queued"}),
    ] {
        assert!(!check("Queued", bad.clone()).is_empty(), "{bad} passed");
    }
    let error = json!({"error": {"code": "teapot", "message": "x"}});
    assert!(!check("Error", error).is_empty());
    let delivery = json!({"delivery_id": id, "route": "ci", "state": "queued", "attempts": 0,
        "next_attempt_at": null, "last_error": null, "report_id": null,
        "created_at": "2026-11-24T08:00:00.000Z", "updated_at": "yesterday"});
    assert_eq!(check("Delivery", delivery).len(), 1);
}
