//! In-process fake of the DingTalk legacy server API (`oapi.dingtalk.com`).
//!
//! This module owns [`FakeDingTalk`], the stand-in used by `dingtalk-relay serve --sandbox`
//! (so a newcomer needs no DingTalk account) and by integration tests (with fault
//! injection). It is not a stub: like the real host it answers HTTP 200 with an `errcode`
//! in the body, validates the `access_token` (unknown / expired / blank), the request
//! parameters against its templates and known users, and enforces a per-second QPS limit
//! on `report/create`. Auth, permission and rate errors are wrapped as `errcode: 88` with
//! the real code in `sub_code`; `gettoken` and parameter errors are bare.
//!
//! Endpoints: `GET /gettoken`, `POST /v1.0/oauth2/accessToken` (api.dingtalk.com's token
//! endpoint, errors as HTTP 400 `{"code","message"}`), `POST /topapi/report/create`,
//! `POST /topapi/report/template/getbyname`, `POST /topapi/report/list`; any other path
//! under `/topapi` answers `errcode: 22` (不合法ApiName).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

mod handlers;
#[cfg(test)]
mod tests;

/// How many created reports (and raw create requests) the fake keeps; older ones are dropped.
pub const MAX_STORED_REPORTS: usize = 10_000;

/// Longest report content, in characters, that DingTalk stores; longer ones are truncated.
pub const MAX_CONTENT_CHARS: usize = 1000;

/// Id of the template built by [`FakeTemplate::daily_report`].
pub const DAILY_REPORT_TEMPLATE_ID: &str = "sandbox-daily-report-template";

/// Longest `end_time - start_time` that `report/list` accepts: 180 days, in ms.
pub const MAX_LIST_WINDOW_MS: i64 = 180 * 86_400 * 1000;

/// Cursors of `report/list` are drawn below this (the doc's example cursor is 2862455276).
const FIRST_CURSOR_CEILING: i64 = 4_000_000_000;

/// Most list cursors remembered (older ones answer "invalid cursor").
const MAX_REMEMBERED_CURSORS: usize = 10_000;

/// Most issued access tokens remembered (so old ones still answer "expired", not "unknown").
const MAX_REMEMBERED_TOKENS: usize = 1024;

/// One text field of a fake template.
#[derive(Clone, Debug)]
pub struct FakeField {
    /// The field's name, which is the `key` of a report content.
    pub name: String,
    /// The field's position; a content's `sort` must equal it.
    pub sort: i64,
    /// The field's type (1 = text).
    pub kind: i64,
}

/// A report template the fake knows.
#[derive(Clone, Debug)]
pub struct FakeTemplate {
    /// The `template_id` that `report/create` must be given.
    pub id: String,
    /// The name `getbyname` and `list` match on, e.g. "日报".
    pub name: String,
    /// The template's fields.
    pub fields: Vec<FakeField>,
    /// Group chats the template sends to by default, as `(cid, title)`.
    pub default_received_convs: Vec<(String, String)>,
}

impl FakeTemplate {
    /// The standard 日报 template: 今日完成工作 (sort 0), 未完成工作 (1), 需协调工作 (2),
    /// all type 1, fixed id [`DAILY_REPORT_TEMPLATE_ID`], no default group chats.
    pub fn daily_report() -> Self {
        let field = |name: &str, sort: i64| FakeField {
            name: name.to_owned(),
            sort,
            kind: 1,
        };
        Self {
            id: DAILY_REPORT_TEMPLATE_ID.to_owned(),
            name: "日报".to_owned(),
            fields: vec![
                field("今日完成工作", 0),
                field("未完成工作", 1),
                field("需协调工作", 2),
            ],
            default_received_convs: Vec::new(),
        }
    }
}

/// Configuration of a [`FakeDingTalk`].
///
/// `Debug` is implemented by hand so that `app_secret` is never printed.
#[derive(Clone)]
pub struct FakeOptions {
    /// The app key `gettoken` accepts (default "sandbox-app-key").
    pub app_key: String,
    /// The app secret `gettoken` accepts (default "sandbox-app-secret"). Never logged.
    pub app_secret: String,
    /// Lifetime of an access token (default 7200 s).
    pub token_ttl: Duration,
    /// Most `report/create` calls per calendar second (default 20).
    pub qps_limit: u32,
    /// Templates the fake knows (default: just [`FakeTemplate::daily_report`]).
    pub templates: Vec<FakeTemplate>,
    /// Userids the fake knows; empty (the default) accepts any userid.
    pub known_users: Vec<String>,
    /// Delay added to every answer (default 0).
    pub latency: Duration,
    /// When true, `report/list` returns each content the way a server may rewrite stored
    /// text (see [`normalised_listing`]): CRLF line ends, trailing spaces dropped, runs of
    /// blank lines collapsed, `&` `<` `>` as HTML entities (default false: as stored).
    pub normalise_listed_text: bool,
}

impl Default for FakeOptions {
    fn default() -> Self {
        Self {
            app_key: "sandbox-app-key".to_owned(),
            app_secret: "sandbox-app-secret".to_owned(),
            token_ttl: Duration::from_secs(7200),
            qps_limit: 20,
            templates: vec![FakeTemplate::daily_report()],
            known_users: Vec::new(),
            latency: Duration::ZERO,
            normalise_listed_text: false,
        }
    }
}

impl fmt::Debug for FakeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeOptions")
            .field("app_key", &self.app_key)
            .field("app_secret", &"<redacted>")
            .field("token_ttl", &self.token_ttl)
            .field("qps_limit", &self.qps_limit)
            .field("templates", &self.templates)
            .field("known_users", &self.known_users)
            .field("latency", &self.latency)
            .field("normalise_listed_text", &self.normalise_listed_text)
            .finish()
    }
}

/// A scripted misbehaviour for the next `report/create` (or `gettoken`) call(s), consumed FIFO.
#[derive(Clone, Debug)]
pub enum Fault {
    /// A bare errcode with a plausible errmsg, e.g. -1 "系统繁忙", 60121, 400002.
    Errcode(i64),
    /// `errcode: 88` with this `sub_code`, e.g. "60011" (permission), "90018", "40014".
    Wrapped(String),
    /// That HTTP status with a small text body (e.g. 502 from a gateway).
    Http(u16),
    /// HTTP 200 with an HTML page (as an IP ban page), content-type text/html.
    NonJson,
    /// HTTP 200 `{"status":1111,"wait":5,"source":"x5","punish":"deny"}`.
    IpBan,
    /// Answer normally after this delay.
    Delay(Duration),
    /// Process the call normally (a valid create stores the report, so it appears in
    /// [`FakeDingTalk::reports`]), then sleep this long before answering, so a client
    /// timeout makes the outcome ambiguous.
    CommitThenHang(Duration),
    /// Sleep this long, then answer HTTP 504 without creating anything: to a client that
    /// timed out, the outcome is unknown although nothing was created.
    HangWithoutCommit(Duration),
    /// Process the call normally (a valid create stores the report), then answer this HTTP
    /// status with a gateway's text body, as a gateway does when the backend committed but
    /// its answer timed out (502/504).
    CommitThenHttp(u16),
    /// Process the call normally, then answer `errcode 0` with `result` as an object
    /// `{"report_id": …}` instead of the documented plain id.
    CommitThenResultObject,
    /// Process the call normally, then answer `errcode 0` without any `result`.
    CommitWithoutResult,
    /// HTTP 200 with a body of this many bytes, streamed without a declared length and
    /// never buffered by the fake (an answer of hundreds of MB), nothing processed.
    Oversized(u64),
}

/// A report the fake has created.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CreatedReport {
    /// The id returned in `result` (32 hex chars).
    pub report_id: String,
    /// The `template_id` given.
    pub template_id: String,
    /// The name of that template.
    pub template_name: String,
    /// The creator's userid.
    pub userid: String,
    /// The `dd_from` given.
    pub dd_from: String,
    /// Whether the report was also sent to the template's group chats.
    pub to_chat: bool,
    /// Receivers given in `to_userids`.
    pub to_userids: Vec<String>,
    /// Group chats given in `to_cids`.
    pub to_cids: Vec<String>,
    /// The contents as stored (each truncated to [`MAX_CONTENT_CHARS`] chars).
    pub contents: Vec<CreatedContent>,
    /// Creation time, unix milliseconds.
    pub created_at_ms: i64,
}

/// One content of a [`CreatedReport`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct CreatedContent {
    /// The template field name.
    pub key: String,
    /// The template field sort.
    pub sort: i64,
    /// The text as stored (at most [`MAX_CONTENT_CHARS`] chars).
    pub content: String,
}

/// A content as a server that rewrites stored text would list it: line ends as CRLF,
/// trailing spaces and tabs dropped from each line, runs of blank lines collapsed into one,
/// and `&`, `<`, `>` written as HTML entities.
pub fn normalised_listing(content: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    for line in content.replace("\r\n", "\n").split('\n') {
        let line = line.trim_end_matches([' ', '\t']);
        if line.is_empty() && lines.last().is_some_and(String::is_empty) {
            continue;
        }
        lines.push(
            line.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;"),
        );
    }
    lines.join("\r\n")
}

/// An issued access token.
struct TokenEntry {
    expires_at: tokio::time::Instant,
}

/// Everything mutable behind the fake's mutex.
struct Ledger {
    latency: Duration,
    tokens: HashMap<String, TokenEntry>,
    current_token: Option<String>,
    qps_second: i64,
    qps_count: u32,
    reports: VecDeque<CreatedReport>,
    create_requests: VecDeque<serde_json::Value>,
    create_faults: VecDeque<Fault>,
    gettoken_faults: VecDeque<Fault>,
    list_faults: VecDeque<Fault>,
    /// The organisation's monthly quota of metered calls, when one is set, and the metered
    /// calls it has taken (refused ones are not taken).
    monthly_quota: Option<u64>,
    quota_used: u64,
    /// Cursors handed out by `report/list`: opaque number -> offset of the next page.
    list_cursors: HashMap<i64, usize>,
    /// The last cursor handed out; the next one is drawn below it (cursors do not grow).
    last_cursor: i64,
}

struct Inner {
    options: FakeOptions,
    ledger: Mutex<Ledger>,
    gettoken_calls: AtomicUsize,
    access_token_calls: AtomicUsize,
    create_calls: AtomicUsize,
    getbyname_calls: AtomicUsize,
    list_calls: AtomicUsize,
    qps_rejections: AtomicUsize,
}

/// An in-process fake of the DingTalk legacy server API. Cheap to clone (shared state).
#[derive(Clone)]
pub struct FakeDingTalk {
    inner: Arc<Inner>,
}

impl fmt::Debug for FakeDingTalk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeDingTalk")
            .field("options", &self.inner.options)
            .field("gettoken_calls", &self.gettoken_calls())
            .field("create_calls", &self.create_calls())
            .finish_non_exhaustive()
    }
}

impl FakeDingTalk {
    /// Creates a fake with these options and no token issued yet.
    pub fn new(options: FakeOptions) -> Self {
        let ledger = Ledger {
            latency: options.latency,
            tokens: HashMap::new(),
            current_token: None,
            qps_second: 0,
            qps_count: 0,
            reports: VecDeque::new(),
            create_requests: VecDeque::new(),
            create_faults: VecDeque::new(),
            gettoken_faults: VecDeque::new(),
            list_faults: VecDeque::new(),
            monthly_quota: None,
            quota_used: 0,
            list_cursors: HashMap::new(),
            last_cursor: FIRST_CURSOR_CEILING,
        };
        Self {
            inner: Arc::new(Inner {
                options,
                ledger: Mutex::new(ledger),
                gettoken_calls: AtomicUsize::new(0),
                access_token_calls: AtomicUsize::new(0),
                create_calls: AtomicUsize::new(0),
                getbyname_calls: AtomicUsize::new(0),
                list_calls: AtomicUsize::new(0),
                qps_rejections: AtomicUsize::new(0),
            }),
        }
    }

    /// The options this fake was created with.
    pub fn options(&self) -> &FakeOptions {
        &self.inner.options
    }

    /// An axum router serving all the fake's endpoints, with this fake's state captured.
    pub fn router(&self) -> axum::Router {
        handlers::router(self.clone())
    }

    /// Binds 127.0.0.1:0, serves in a background tokio task, returns the base URL
    /// "http://127.0.0.1:PORT".
    pub async fn spawn(options: FakeOptions) -> std::io::Result<(Self, String)> {
        let fake = Self::new(options);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let router = fake.router();
        tracing::info!(%base_url, app_key = %fake.inner.options.app_key, "sandbox DingTalk listening");
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::warn!(%error, "sandbox DingTalk server stopped");
            }
        });
        Ok((fake, base_url))
    }

    /// Serves the fake on `listener` until `shutdown` is cancelled (for `serve --sandbox`
    /// on a fixed address).
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }

    /// The reports created so far (at most [`MAX_STORED_REPORTS`], oldest first).
    pub fn reports(&self) -> Vec<CreatedReport> {
        self.ledger().reports.iter().cloned().collect()
    }

    /// Number of token requests received (`/gettoken` and `/v1.0/oauth2/accessToken`).
    pub fn gettoken_calls(&self) -> usize {
        self.inner.gettoken_calls.load(Ordering::SeqCst)
    }

    /// Number of `/v1.0/oauth2/accessToken` requests received (also in
    /// [`FakeDingTalk::gettoken_calls`]).
    pub fn access_token_calls(&self) -> usize {
        self.inner.access_token_calls.load(Ordering::SeqCst)
    }

    /// Number of `report/create` requests received, whatever their answer.
    pub fn create_calls(&self) -> usize {
        self.inner.create_calls.load(Ordering::SeqCst)
    }

    /// Number of `report/template/getbyname` requests received.
    pub fn getbyname_calls(&self) -> usize {
        self.inner.getbyname_calls.load(Ordering::SeqCst)
    }

    /// Number of `report/list` requests received.
    pub fn list_calls(&self) -> usize {
        self.inner.list_calls.load(Ordering::SeqCst)
    }

    /// Number of `sub_code` "90018" answers given (rate limit, including injected ones).
    pub fn qps_rejections(&self) -> usize {
        self.inner.qps_rejections.load(Ordering::SeqCst)
    }

    /// Every access token issued so far (tests check that none leaks into output).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.ledger().tokens.keys().cloned().collect()
    }

    /// Every issued token becomes unknown (next use → 88/40014); the next `gettoken`
    /// issues a new one.
    pub fn invalidate_tokens(&self) {
        let mut ledger = self.ledger();
        ledger.tokens.clear();
        ledger.current_token = None;
    }

    /// Every issued token becomes expired (next use → 88/42001); the next `gettoken`
    /// issues a new one.
    pub fn expire_tokens(&self) {
        let now = tokio::time::Instant::now();
        let mut ledger = self.ledger();
        for entry in ledger.tokens.values_mut() {
            entry.expires_at = now;
        }
        ledger.current_token = None;
    }

    /// Queues a fault for the next `report/create` call.
    pub fn push_create_fault(&self, fault: Fault) {
        self.ledger().create_faults.push_back(fault);
    }

    /// Queues a fault for the next `gettoken` call (`Wrapped` is still wrapped there,
    /// `Errcode` is bare).
    pub fn push_gettoken_fault(&self, fault: Fault) {
        self.ledger().gettoken_faults.push_back(fault);
    }

    /// Queues a fault for the next `report/list` call.
    pub fn push_list_fault(&self, fault: Fault) {
        self.ledger().list_faults.push_back(fault);
    }

    /// Gives the organisation a quota of `calls` metered calls (report/create, getbyname,
    /// report/list; gettoken is exempt) from now on, or none; beyond it every metered call is
    /// answered `errcode 88` / `sub_code 90020` as DingTalk does when the month's quota is used
    /// up. Setting it starts the count again (a new month, or an upgrade).
    pub fn set_monthly_quota(&self, calls: Option<u64>) {
        let mut ledger = self.ledger();
        ledger.monthly_quota = calls;
        ledger.quota_used = 0;
    }

    /// Takes one metered call from the quota; `false` when it is used up.
    fn take_quota(&self) -> bool {
        let mut ledger = self.ledger();
        match ledger.monthly_quota {
            Some(quota) if ledger.quota_used >= quota => false,
            _ => {
                ledger.quota_used += 1;
                true
            }
        }
    }

    /// Changes the delay added to every answer.
    pub fn set_latency(&self, latency: Duration) {
        self.ledger().latency = latency;
    }

    /// The `create_report_param` sent on each create call, raw JSON, in arrival order
    /// (including rejected ones). A body without that key is recorded whole; a body that
    /// is not JSON is recorded as a JSON string of its (lossy UTF-8) text.
    pub fn create_requests(&self) -> Vec<serde_json::Value> {
        self.ledger().create_requests.iter().cloned().collect()
    }

    /// Locks the ledger, ignoring poisoning (no code path leaves it inconsistent).
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.inner
            .ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
