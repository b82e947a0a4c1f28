//! `spawn_app()` and `TestApp`: a relay on port 0 wired to a fresh fake DingTalk.

use std::time::Duration;

use dingtalk_relay::config::{Mode, Settings};
use dingtalk_relay::sandbox::{FakeDingTalk, FakeOptions};
use dingtalk_relay::startup::Application;
use dingtalk_relay::state::AppState;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const ROUTE_SECRET: &str = "route-s3cret";

/// Options for one test app.
pub struct TestConfig {
    /// Extra YAML appended under `routes.ci` (indented 4 spaces).
    pub route_extra: String,
    /// Template block for routes.ci.
    pub template: String,
    /// Store URL.
    pub store_url: String,
    /// Fake DingTalk options.
    pub fake: FakeOptions,
    /// Extra top-level YAML sections (server/dingtalk/delivery keys are fixed below).
    pub max_qps: u32,
    pub max_attempts: u32,
    pub timeout: &'static str,
    pub admin_token: Option<&'static str>,
    pub max_body_bytes: usize,
    pub lease: &'static str,
    pub max_queued: u64,
    /// More routes (YAML under `routes:`, indented 2 spaces).
    pub extra_routes: String,
    pub max_concurrent_requests: usize,
    /// `server.request_timeout` and `server.header_read_timeout`.
    pub request_timeout: &'static str,
    pub header_read_timeout: &'static str,
    /// `server.admin_listen` (tests reach it on 127.0.0.1 whatever it is).
    pub admin_listen: &'static str,
    /// Extra YAML under `server:` (indented 2 spaces).
    pub server_extra: String,
    /// `dingtalk.quota` (a YAML flow map).
    pub quota: String,
    /// The clock the quota month is read from (default: the real one).
    pub clock: Option<dingtalk_relay::quota::Clock>,
}

impl Default for TestConfig {
    fn default() -> Self {
        Self {
            route_extra: String::new(),
            template: "{name: \"日报\"}".to_owned(),
            store_url: "memory:".to_owned(),
            fake: FakeOptions::default(),
            max_qps: 20,
            max_attempts: 4,
            timeout: "2s",
            admin_token: None,
            max_body_bytes: 65536,
            lease: "10s",
            max_queued: 1000,
            extra_routes: String::new(),
            max_concurrent_requests: 1024,
            request_timeout: "40s",
            header_read_timeout: "10s",
            admin_listen: "127.0.0.1:0",
            server_extra: String::new(),
            quota: "{}".to_owned(),
            clock: None,
        }
    }
}

/// An id-template block matching the fake's 日报 (no lookup needed).
pub const ID_TEMPLATE: &str = "{id: \"sandbox-daily-report-template\", fields: [{name: \"今日完成工作\", sort: 0}, {name: \"未完成工作\", sort: 1}, {name: \"需协调工作\", sort: 2}]}";

pub struct TestApp {
    pub address: String,
    pub admin_address: String,
    pub fake: FakeDingTalk,
    pub http: reqwest::Client,
    pub cancel: CancellationToken,
    pub state: AppState,
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub fn settings_yaml(config: &TestConfig, base_url: &str) -> String {
    let admin_token = config
        .admin_token
        .map_or("null".to_owned(), |t| format!("\"{t}\""));
    format!(
        r#"
server:
  listen: "127.0.0.1:0"
  admin_listen: "{admin_listen}"
  max_body_bytes: {max_body}
  admin_token: {admin_token}
  max_concurrent_requests: {max_concurrent}
  request_timeout: {request_timeout}
  header_read_timeout: {header_read_timeout}
{server_extra}
dingtalk:
  base_url: "{base_url}"
  timeout: {timeout}
  token_refresh_margin: 5m
  max_qps: {max_qps}
  quota: {quota}
  apps:
    default:
      app_key: "{app_key}"
      app_secret: "{app_secret}"
store:
  url: "{store}"
  max_queued: {max_queued}
delivery:
  max_attempts: {max_attempts}
  initial_backoff: 20ms
  max_backoff: 100ms
  dedup_window: 1h
  concurrency: 8
  lease: {lease}
timezone: "Asia/Shanghai"
users:
  octocat: "dd_octo"
  "dev@example.com": "dd_dev"
routes:
  ci:
    source: generic
    secret: "{secret}"
    template: {template}
    author: "manager01"
    to_userids: ["lead01"]
{extra}
{extra_routes}
"#,
        max_body = config.max_body_bytes,
        timeout = config.timeout,
        max_qps = config.max_qps,
        app_key = config.fake.app_key,
        app_secret = config.fake.app_secret,
        store = config.store_url,
        max_attempts = config.max_attempts,
        secret = ROUTE_SECRET,
        template = config.template,
        extra = config.route_extra,
        lease = config.lease,
        max_queued = config.max_queued,
        extra_routes = config.extra_routes,
        max_concurrent = config.max_concurrent_requests,
        request_timeout = config.request_timeout,
        header_read_timeout = config.header_read_timeout,
        admin_listen = config.admin_listen,
        server_extra = config.server_extra,
        quota = config.quota,
    )
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(TestConfig::default()).await
}

pub async fn spawn_app_with(config: TestConfig) -> TestApp {
    init_tracing();
    let (fake, base_url) = FakeDingTalk::spawn(config.fake.clone())
        .await
        .expect("fake DingTalk starts");
    spawn_app_on(config, fake, base_url).await
}

/// Starts a relay against an existing fake (restarts reuse one).
pub async fn spawn_app_on(config: TestConfig, fake: FakeDingTalk, base_url: String) -> TestApp {
    let clock = config
        .clock
        .clone()
        .unwrap_or_else(dingtalk_relay::quota::system_clock);
    spawn_app_from_yaml_with_clock(&settings_yaml(&config, &base_url), fake, clock).await
}

/// Starts a relay from settings YAML (e.g. [`settings_yaml`] edited) against `fake`.
pub async fn spawn_app_from_yaml(yaml: &str, fake: FakeDingTalk) -> TestApp {
    spawn_app_from_yaml_with_clock(yaml, fake, dingtalk_relay::quota::system_clock()).await
}

/// Starts a relay from settings YAML whose quota month is read from `clock`.
async fn spawn_app_from_yaml_with_clock(
    yaml: &str,
    fake: FakeDingTalk,
    clock: dingtalk_relay::quota::Clock,
) -> TestApp {
    let settings = Settings::from_yaml(yaml).expect("test settings parse");
    let app = Application::build_with_clock(settings, Mode::Production, clock)
        .await
        .expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let admin_address = format!("http://127.0.0.1:{}", app.admin_port());
    let state = app.state().clone();
    let cancel = CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(cancel.clone()));
    TestApp {
        address,
        admin_address,
        fake,
        http: reqwest::Client::new(),
        cancel,
        state,
        server,
    }
}

fn init_tracing() {
    if std::env::var("TEST_LOG").is_ok() {
        dingtalk_relay::telemetry::init(&Default::default());
    }
}

pub fn job_status() -> Value {
    json!({"type":"job_status","job":"build","status":"success","project":"acme/api","pipeline":"CI",
        "run_id":"812","branch":"main","commit":"9f2c1e7","commit_message":"Fix flaky test",
        "url":"https://ci.example.com/runs/812","actor":"octocat","started_at":"2026-11-24T08:00:00Z",
        "finished_at":"2026-11-24T08:03:12Z","duration_secs":192,"summary":"418 tests passed"})
}

/// A job_status that differs by `n` (so dedup does not merge them).
pub fn job_status_n(n: usize) -> Value {
    let mut body = job_status();
    body["run_id"] = json!(n.to_string());
    body["summary"] = json!(format!("run {n}"));
    body
}

impl TestApp {
    pub async fn post_hook(&self, route: &str, body: &Value) -> reqwest::Response {
        self.post_raw(route, body.to_string().into_bytes(), &[])
            .await
    }

    pub async fn post_raw(
        &self,
        route: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut map = reqwest::header::HeaderMap::new();
        map.insert("content-type", "application/json".parse().unwrap());
        map.insert(
            "authorization",
            format!("Bearer {ROUTE_SECRET}").parse().unwrap(),
        );
        for (k, v) in headers {
            let name: reqwest::header::HeaderName = k.parse().unwrap();
            if v.is_empty() {
                map.remove(&name);
            } else {
                map.insert(name, v.parse().unwrap());
            }
        }
        self.http
            .post(format!("{}/v1/hooks/{route}", self.address))
            .headers(map)
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get_admin(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.admin_address))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn metrics(&self) -> String {
        self.get_admin("/metrics").await.text().await.unwrap()
    }

    pub async fn delivery(&self, id: &str) -> Value {
        self.get_admin(&format!("/v1/deliveries/{id}"))
            .await
            .json()
            .await
            .unwrap()
    }

    /// Posts and returns the delivery id of a 202.
    pub async fn accept(&self, body: &Value) -> String {
        let response = self.post_hook("ci", body).await;
        assert_eq!(response.status(), 202);
        let answer: Value = response.json().await.unwrap();
        answer["delivery_id"].as_str().unwrap().to_owned()
    }

    /// Waits until the delivery reaches `state`.
    pub async fn wait_for_state(&self, id: &str, state: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let last = self.delivery(id).await;
            if last["state"] == state {
                return last;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "delivery {id} never reached {state}: {last}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        self.server.await.unwrap().unwrap();
    }
}

/// Polls `check` until it is true or `timeout` passes.
pub async fn poll_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A metric sample's value (sum over series whose labels contain every `labels` pair).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The environment variable naming the PostgreSQL server for tests.
pub const POSTGRES_URL_VAR: &str = "DINGTALK_RELAY_TEST_POSTGRES_URL";

/// A fresh database on the test PostgreSQL server, as `(server url, database name, database
/// url)`, or `None` (with a `SKIPPED` line on the terminal) when
/// `DINGTALK_RELAY_TEST_POSTGRES_URL` is unset or empty.
pub async fn fresh_postgres_database(what: &str) -> Option<(String, String, String)> {
    use sqlx::Connection;
    let Some(url) = std::env::var(POSTGRES_URL_VAR)
        .ok()
        .filter(|u| !u.trim().is_empty())
    else {
        report_skip(&format!(
            "{what} needs PostgreSQL ({POSTGRES_URL_VAR} is not set or empty)"
        ));
        return None;
    };
    let database = format!("relay_test_{:016x}", rand::random::<u64>());
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    conn.close().await.expect("close admin connection");
    let database_url = with_database(&url, &database);
    Some((url, database, database_url))
}

/// Says on the terminal that the running test was skipped. libtest captures `eprintln!` and shows
/// it only for failures (so a skipped test would read as a plain `ok`); a write to the stderr
/// handle itself is not captured, so the line is seen in every run.
pub fn report_skip(why: &str) {
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {why}");
}

/// `url` with its database name replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let (scheme, rest) = base.split_once("://").expect("a URL with ://");
    let authority = rest.split('/').next().unwrap_or_default();
    format!("{scheme}://{authority}/{database}{query}")
}
