//! [`DingTalkClient`]: gettoken (cached, single-flight), report/create (rate-limited per app),
//! template/getbyname (cached) and report/list, each measured and classified.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::error::{Disposition, Error, check_body};
use super::ledger::Ledger;
use super::model::{
    CreateReportParam, CreateReportRequest, GetByNameResult, ListResult, ListedReport,
    ResolvedTemplate, TokenAnswer, V1TokenAnswer,
};
use super::ratelimit::{RateLimiter, SharedLimit};
use super::token::{Token, TokenCache};
use super::{Result, api, template_from_config};
use crate::config::{DingTalkSettings, Secret, TemplateSettings, TokenApi};
use crate::metrics::Metrics;

/// The shape of a host's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Envelope {
    /// oapi: HTTP 200 with `errcode`.
    Oapi,
    /// api.dingtalk.com: the HTTP status, and `{"code","message"}` on errors.
    V1,
}

struct App {
    app_key: String,
    app_secret: Option<Secret>,
    limiter: Arc<RateLimiter>,
}

/// A pause of calls to DingTalk.
#[derive(Debug, Clone)]
struct Pause {
    until: Instant,
    reason: &'static str,
    detail: String,
}

/// The key of a pause that stops every app (an IP ban applies to the whole relay).
const EVERY_APP: &str = "*";
/// How long an app pauses after 90020 when a [`Ledger`] holds deliveries for the month.
const LEDGER_QUOTA_PAUSE: Duration = Duration::from_secs(60);
/// How long DingTalk bans an IP that called too often.
const IP_BAN_WAIT: Duration = Duration::from_secs(300);

struct Inner {
    pauses: Arc<std::sync::Mutex<HashMap<String, Pause>>>,
    http: reqwest::Client,
    base_url: String,
    token_api: TokenApi,
    token_base_url: String,
    apps: HashMap<String, App>,
    tokens: TokenCache,
    templates: Cache<(String, String, String), (ResolvedTemplate, Duration)>,
    template_ttl: Duration,
    /// Reports this process created (id -> fingerprint of the param sent), so that
    /// reconciliation can tell another delivery's report from a lost one of its own.
    created: Cache<String, u64>,
    margin: Duration,
    timeout: Duration,
    metrics: Metrics,
    ledger: Option<Arc<dyn Ledger>>,
}

/// Each cached template lives for the time it had left when it was cached (a template read
/// back from the store is as old as its first lookup).
struct TemplateExpiry;

impl moka::Expiry<(String, String, String), (ResolvedTemplate, Duration)> for TemplateExpiry {
    fn expire_after_create(
        &self,
        _key: &(String, String, String),
        value: &(ResolvedTemplate, Duration),
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.1)
    }
}

/// The DingTalk API client. Cheap to clone.
#[derive(Clone)]
pub struct DingTalkClient {
    inner: Arc<Inner>,
}

/// What report/list says about a create whose answer was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciliation {
    /// The report exists: its id.
    Found(String),
    /// Certainly not created: DingTalk listed every report of the window and none is ours.
    Absent,
    /// The listing cannot tell (a repeated cursor, too many pages, or a report of this
    /// author and template made during the attempt whose text differs from ours): why.
    Undecided(String),
}

/// What report/create answered with `errcode 0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// The report id, when `result` carried a usable one (a plain id, or an object with
    /// `report_id`).
    pub report_id: Option<String>,
}

/// Most bytes of a DingTalk answer the relay reads; a longer answer is not a DingTalk
/// envelope (its answers are a few KB) and is not buffered whole.
pub(crate) const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Most report ids remembered as created by this process (a day of them at most).
const MAX_REMEMBERED_REPORTS: u64 = 100_000;

/// Most report/list pages read for one reconciliation (20 reports each).
pub(crate) const MAX_LIST_PAGES: usize = 50;

/// DingTalk refuses report/list windows longer than 180 days.
pub(crate) const MAX_LIST_WINDOW_MS: i64 = 180 * 86_400 * 1000;

/// How far DingTalk's clock and ours may differ, for the windows of report/list.
const CLOCK_SKEW_MS: i64 = 60_000;

/// How long after an attempt's end a report it made is still looked for: DingTalk commits a
/// create within seconds, but a gateway may hold an answer (and the commit) well beyond our
/// timeout. Generous, and still far narrower than "until now" after a restart hours later.
const LATE_COMMIT_MS: i64 = 10 * 60_000;

/// The report/list query window for a create sent at `sent_ms`, asked at `now_ms`, whose
/// attempt took at most `attempt_ms`: from a clock skew before the send to a skew after now,
/// but no later than [`LATE_COMMIT_MS`] after the attempt (every listed page is a metered
/// call), and never longer than DingTalk's 180 days.
pub(crate) fn list_window(sent_ms: i64, now_ms: i64, attempt_ms: i64) -> (i64, i64) {
    let start = sent_ms.saturating_sub(CLOCK_SKEW_MS);
    let latest = sent_ms
        .saturating_add(attempt_ms)
        .saturating_add(LATE_COMMIT_MS);
    let end = now_ms
        .saturating_add(CLOCK_SKEW_MS)
        .min(latest)
        .min(start.saturating_add(MAX_LIST_WINDOW_MS))
        .max(start);
    (start, end)
}

impl DingTalkClient {
    /// A client for `settings.base_url` and its apps, limiting report/create in this process.
    pub fn new(settings: &DingTalkSettings, metrics: Metrics) -> Result<Self> {
        Self::with_shared_limit(settings, metrics, None)
    }

    /// A client whose report/create rate limit is shared with other replicas through
    /// `shared` (when given).
    pub fn with_shared_limit(
        settings: &DingTalkSettings,
        metrics: Metrics,
        shared: Option<Arc<dyn SharedLimit>>,
    ) -> Result<Self> {
        Self::with_ledger(settings, metrics, shared, None)
    }

    /// A client that also tells `ledger` about its metered calls and keeps resolved templates
    /// in it (when given).
    pub fn with_ledger(
        settings: &DingTalkSettings,
        metrics: Metrics,
        shared: Option<Arc<dyn SharedLimit>>,
        ledger: Option<Arc<dyn Ledger>>,
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("dingtalk-relay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        let apps = settings
            .apps
            .iter()
            .map(|(name, app)| {
                (
                    name.clone(),
                    App {
                        app_key: app.app_key.clone(),
                        app_secret: app.app_secret.clone(),
                        limiter: Arc::new(match &shared {
                            Some(shared) => {
                                RateLimiter::shared(settings.max_qps, shared.clone(), &app.app_key)
                            }
                            None => RateLimiter::new(settings.max_qps),
                        }),
                    },
                )
            })
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                pauses: Arc::default(),
                http,
                base_url: settings.base_url.trim_end_matches('/').to_owned(),
                token_api: settings.token_api,
                token_base_url: settings.token_base_url.trim_end_matches('/').to_owned(),
                apps,
                tokens: TokenCache::new(),
                templates: Cache::builder()
                    .max_capacity(1024)
                    .expire_after(TemplateExpiry)
                    .build(),
                template_ttl: settings.template_cache_ttl,
                created: Cache::builder()
                    .max_capacity(MAX_REMEMBERED_REPORTS)
                    .time_to_live(Duration::from_secs(86_400))
                    .build(),
                margin: settings.token_refresh_margin,
                timeout: settings.timeout,
                metrics,
                ledger,
            }),
        })
    }

    /// Creates a report. `errcode 0` is a success whatever `result` looks like: the id is
    /// taken from a plain `result` or from `result.report_id`, and is `None` when neither
    /// holds one. Token errors refresh the token and retry once.
    pub async fn create_report(&self, app: &str, param: &CreateReportParam) -> Result<Created> {
        let body = serde_json::to_value(CreateReportRequest {
            create_report_param: param.clone(),
        })
        .map_err(|e| Error::Config(format!("report body: {e}")))?;
        let limiter = &self.app(app)?.limiter;
        let answer = self
            .call_with_token(
                app,
                api::REPORT_CREATE,
                "/topapi/report/create",
                &body,
                || limiter.acquire(),
            )
            .await?;
        let report_id = report_id_of(answer.get("result"));
        if let Some(id) = &report_id {
            self.inner
                .created
                .insert(id.clone(), fingerprint(param))
                .await;
        }
        if report_id.is_none() {
            let shape = match answer.get("result") {
                None => "missing",
                Some(Value::Object(_)) => "an object without report_id",
                Some(_) => "not an id",
            };
            tracing::warn!(
                app,
                result = shape,
                "report/create succeeded (errcode 0) without a usable report id"
            );
        }
        Ok(Created { report_id })
    }

    /// The template for a route: from the configuration when given by id, else looked up by
    /// name with getbyname as `owner` (cached for `template_cache_ttl`).
    pub async fn resolve_template(
        &self,
        app: &str,
        template: &TemplateSettings,
        owner: &str,
    ) -> Result<ResolvedTemplate> {
        if let Some(resolved) = template_from_config(template) {
            return Ok(resolved);
        }
        let Some(name) = template.name.clone() else {
            return Err(Error::Config(
                "template has neither name nor id+fields".to_owned(),
            ));
        };
        let owner = template.owner.clone().unwrap_or_else(|| owner.to_owned());
        let key = (app.to_owned(), name.clone(), owner.clone());
        self.inner
            .templates
            .try_get_with(key, self.fetch_template_kept(app, name, owner))
            .await
            .map(|(template, _)| template)
            .map_err(|e| (*e).clone())
    }

    /// The template from the ledger when another process resolved it recently, else from
    /// getbyname (then kept in the ledger).
    async fn fetch_template_kept(
        &self,
        app: &str,
        name: String,
        owner: String,
    ) -> Result<(ResolvedTemplate, Duration)> {
        let ttl = self.inner.template_ttl;
        let Some(ledger) = &self.inner.ledger else {
            return Ok((self.fetch_template(app, name, owner).await?, ttl));
        };
        let app_key = self.app(app)?.app_key.clone();
        if let Some(kept) = ledger.template(&app_key, &name, &owner).await {
            return Ok(kept);
        }
        let template = self
            .fetch_template(app, name.clone(), owner.clone())
            .await?;
        ledger
            .keep_template(&app_key, &name, &owner, &template, ttl)
            .await;
        Ok((template, ttl))
    }

    async fn fetch_template(
        &self,
        app: &str,
        name: String,
        owner: String,
    ) -> Result<ResolvedTemplate> {
        let body = json!({"template_name": name, "userid": owner});
        let answer = self
            .call_with_token(
                app,
                api::TEMPLATE_GETBYNAME,
                "/topapi/report/template/getbyname",
                &body,
                || async {},
            )
            .await?;
        let result: GetByNameResult = answer
            .get("result")
            .cloned()
            .ok_or_else(|| "no result".to_owned())
            .and_then(|r| serde_json::from_value(r).map_err(|e| e.to_string()))
            .map_err(|detail| Error::InvalidBody {
                api: api::TEMPLATE_GETBYNAME,
                detail,
                ip_banned: false,
            })?;
        Ok(ResolvedTemplate {
            id: result.id,
            name: if result.name.is_empty() {
                name
            } else {
                result.name
            },
            fields: result.fields,
        })
    }

    /// Looks for the report that `param` would have made, sent at `sent_ms` (report/list,
    /// paged). Used when a create's answer was lost. Paging ends only where DingTalk says
    /// it ends (`has_more: false` or no `next_cursor`); a repeated cursor or
    /// [`MAX_LIST_PAGES`] pages make the answer [`Reconciliation::Undecided`], and so does
    /// a report of this author and template made during the attempt whose text is not
    /// ours. A page that cannot be read is an error.
    pub async fn find_report(
        &self,
        app: &str,
        template_name: &str,
        param: &CreateReportParam,
        sent_ms: i64,
    ) -> Result<Reconciliation> {
        // The create was made between the send and the end of the attempt (two calls at
        // most, one after a token refresh), give or take the clocks' skew.
        let timeout_ms = i64::try_from(self.inner.timeout.as_millis()).unwrap_or(i64::MAX);
        let (start_ms, end_ms) = list_window(
            sent_ms,
            chrono::Utc::now().timestamp_millis(),
            timeout_ms.saturating_mul(2),
        );
        let attempt_end_ms = sent_ms
            .saturating_add(timeout_ms.saturating_mul(2))
            .saturating_add(CLOCK_SKEW_MS);
        let ours = fingerprint(param);
        let mut cursor = 0i64;
        let mut seen = std::collections::HashSet::new();
        let mut differing: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let body = json!({
                "start_time": start_ms, "end_time": end_ms, "template_name": template_name,
                "userid": param.userid, "cursor": cursor, "size": 20
            });
            let answer = self
                .call_with_token(
                    app,
                    api::REPORT_LIST,
                    "/topapi/report/list",
                    &body,
                    || async {},
                )
                .await?;
            let page: ListResult = answer
                .get("result")
                .cloned()
                .ok_or_else(|| "errcode 0 but no result".to_owned())
                .and_then(|r| serde_json::from_value(r).map_err(|e| e.to_string()))
                .map_err(|detail| Error::InvalidBody {
                    api: api::REPORT_LIST,
                    detail,
                    ip_banned: false,
                })?;
            for listed in &page.data_list {
                // A route given by template id has no name to compare.
                let other_template = !template_name.is_empty()
                    && !listed.template_name.is_empty()
                    && listed.template_name != template_name;
                if listed.creator_id != param.userid || other_template {
                    continue;
                }
                match self.inner.created.get(&listed.report_id).await {
                    // Created by this process for this very param (its answer was read,
                    // then recording it failed).
                    Some(known) if known == ours => {
                        return Ok(Reconciliation::Found(listed.report_id.clone()));
                    }
                    // Another delivery's report, whose answer this process read.
                    Some(_) => continue,
                    None => {}
                }
                if same_contents(listed, param) {
                    return Ok(Reconciliation::Found(listed.report_id.clone()));
                }
                // Our letters and digits, written differently: DingTalk may have rewritten
                // our report in a way not normalised here, so it cannot be called absent.
                // A report whose words or numbers differ is another one (another run).
                if differing.is_none()
                    && (start_ms..=attempt_end_ms).contains(&listed.create_time)
                    && same_skeleton(listed, param)
                {
                    differing = Some(listed.report_id.clone());
                }
            }
            let next = match page.next_cursor {
                Some(next) if page.has_more => next,
                // DingTalk says the listing is complete.
                _ => {
                    return Ok(match differing {
                        Some(id) => Reconciliation::Undecided(format!(
                            "report {id} of the same author and template was made during the attempt with our words and numbers, but its text differs from ours"
                        )),
                        None => Reconciliation::Absent,
                    });
                }
            };
            if !seen.insert(next) || next == cursor {
                return Ok(Reconciliation::Undecided(format!(
                    "report/list repeated cursor {next}"
                )));
            }
            cursor = next;
        }
        Ok(Reconciliation::Undecided(format!(
            "report/list did not end within {MAX_LIST_PAGES} pages"
        )))
    }

    /// Fetches (or reuses) the app's token; used by `check-config --online` and readiness.
    pub async fn warm_token(&self, app: &str) -> Result<()> {
        self.token(app).await.map(|_| ())
    }

    /// What currently stops deliveries (for `/readyz`): one line per paused app.
    pub fn problems(&self) -> Vec<String> {
        let now = Instant::now();
        let mut problems: Vec<String> = self
            .pauses()
            .iter()
            .filter(|(_, p)| p.until > now)
            .map(|(app, p)| {
                format!(
                    "dingtalk app {app}: {} ({}); deliveries wait {}s",
                    p.reason,
                    p.detail,
                    (p.until - now).as_secs()
                )
            })
            .collect();
        problems.sort();
        problems
    }

    fn pauses(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pause>> {
        self.inner.pauses.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pause that stops calls for `app` now, if any.
    fn paused(&self, app: &str) -> Result<()> {
        let now = Instant::now();
        let pauses = self.pauses();
        for key in [app, EVERY_APP] {
            if let Some(p) = pauses.get(key)
                && p.until > now
            {
                return Err(Error::Paused {
                    reason: format!("{}: {}", p.reason, p.detail),
                    wait: p.until - now,
                });
            }
        }
        Ok(())
    }

    fn pause(&self, app: &str, reason: &'static str, wait: Duration, detail: String) {
        tracing::warn!(app, reason, wait = ?wait, detail, "pausing calls to DingTalk");
        self.inner
            .metrics
            .dingtalk_paused
            .with_label_values(&[app, reason])
            .set(1);
        self.pauses().insert(
            app.to_owned(),
            Pause {
                until: Instant::now() + wait,
                reason,
                detail,
            },
        );
    }

    /// DingTalk answered `app` normally: whatever paused it is over.
    fn resume(&self, app: &str) {
        let mut pauses = self.pauses();
        for key in [app, EVERY_APP] {
            if let Some(p) = pauses.remove(key) {
                tracing::info!(app = key, reason = p.reason, "calls to DingTalk resumed");
                self.inner
                    .metrics
                    .dingtalk_paused
                    .with_label_values(&[key, p.reason])
                    .set(0);
            }
        }
    }

    /// Records what an answer means for later calls: quota used up, credentials refused, IP
    /// banned, or all well.
    fn learn<T>(&self, app: &str, result: &Result<T>) {
        match result {
            Ok(_) => self.resume(app),
            Err(e @ Error::Api { code: 90020, .. }) => {
                // With a ledger, the month is marked exhausted for every replica and deliveries
                // are held there; the local pause only stops calls already under way.
                let wait = if self.inner.ledger.is_some() {
                    LEDGER_QUOTA_PAUSE
                } else {
                    super::error::QUOTA_WAIT
                };
                self.pause(app, "quota_exhausted", wait, e.to_string());
            }
            Err(
                e @ (Error::InvalidBody {
                    ip_banned: true, ..
                }
                | Error::IpBanned { .. }),
            ) => self.pause(EVERY_APP, "ip_banned", IP_BAN_WAIT, e.to_string()),
            Err(e @ (Error::Api { .. } | Error::Refused { .. }))
                if e.api() == Some(api::GETTOKEN)
                    && matches!(e.disposition(true), Disposition::Defer(_)) =>
            {
                self.pause(
                    app,
                    "credentials_refused",
                    super::error::CREDENTIALS_WAIT,
                    e.to_string(),
                );
            }
            Err(_) => {}
        }
    }

    /// This client (just built for `settings`, after a configuration reload) takes over what
    /// `previous` (built for `previous_settings`) learned, so that a reload neither spends
    /// metered calls nor lifts a pause: the token and template caches and the pauses are
    /// shared, and so is the report/create spacing, except for apps whose key or secret
    /// changed (their tokens, templates and credential pauses are dropped). A new `base_url` is another DingTalk: nothing is kept.
    /// A new `template_cache_ttl` starts an empty template cache.
    pub async fn inherit(
        mut self,
        settings: &DingTalkSettings,
        previous: &DingTalkClient,
        previous_settings: &DingTalkSettings,
    ) -> Self {
        if settings.base_url.trim_end_matches('/')
            != previous_settings.base_url.trim_end_matches('/')
        {
            return self;
        }
        let Some(inner) = Arc::get_mut(&mut self.inner) else {
            // Only a client nobody else holds yet can take over; one that is shared keeps its own.
            return self;
        };
        let old = &previous.inner;
        inner.tokens = old.tokens.clone();
        inner.pauses = old.pauses.clone();
        if settings.template_cache_ttl == previous_settings.template_cache_ttl {
            inner.templates = old.templates.clone();
        }
        // The spacing of report/create calls goes on too: a reload must not allow a burst.
        if settings.max_qps == previous_settings.max_qps {
            for (name, app) in &mut inner.apps {
                if let Some(before) = old.apps.get(name)
                    && before.app_key == app.app_key
                {
                    app.limiter = before.limiter.clone();
                }
            }
        }
        let changed: Vec<&String> = old
            .apps
            .iter()
            .filter(|(name, app)| {
                inner.apps.get(*name).is_none_or(|now| {
                    now.app_key != app.app_key
                        || now.app_secret.as_ref().map(Secret::expose)
                            != app.app_secret.as_ref().map(Secret::expose)
                })
            })
            .map(|(name, _)| name)
            .collect();
        for app in changed {
            inner.tokens.forget(app).await;
            let stale: Vec<_> = inner
                .templates
                .iter()
                .filter(|(key, _)| &key.0 == app)
                .map(|(key, _)| key)
                .collect();
            for key in stale {
                inner.templates.invalidate(&*key).await;
            }
            let mut pauses = inner.pauses.lock().unwrap_or_else(|p| p.into_inner());
            // New credentials may be accepted; a spent quota or an IP ban stays.
            if pauses
                .get(app)
                .is_some_and(|p| p.reason == "credentials_refused")
                && let Some(p) = pauses.remove(app)
            {
                inner
                    .metrics
                    .dingtalk_paused
                    .with_label_values(&[app, p.reason])
                    .set(0);
            }
        }
        self
    }

    /// Lifts every app's pause for the exhausted monthly quota (an operator says the
    /// organisation's quota was raised).
    pub fn resume_quota(&self) {
        let apps: Vec<String> = self
            .pauses()
            .iter()
            .filter(|(_, p)| p.reason == "quota_exhausted")
            .map(|(app, _)| app.clone())
            .collect();
        for app in apps {
            self.resume(&app);
        }
    }

    /// Forgets cached tokens and templates (after a configuration reload).
    pub fn clear_caches(&self) {
        self.inner.tokens.clear();
        self.inner.templates.invalidate_all();
    }

    fn app(&self, app: &str) -> Result<&App> {
        self.inner
            .apps
            .get(app)
            .ok_or_else(|| Error::Config(format!("no app {app:?} under dingtalk.apps")))
    }

    async fn token(&self, app: &str) -> Result<Token> {
        self.inner
            .tokens
            .get(app, self.fetch_token(app))
            .await
            .map_err(|e| (*e).clone())
    }

    async fn fetch_token(&self, app_name: &str) -> Result<Token> {
        let result = self.fetch_token_once(app_name).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.inner
            .metrics
            .token_refreshes
            .with_label_values(&[app_name, outcome])
            .inc();
        match &result {
            Ok(_) => tracing::info!(app = app_name, "fetched access_token"),
            Err(e) => tracing::warn!(app = app_name, error = %e, "fetching access_token failed"),
        }
        result
    }

    async fn fetch_token_once(&self, app_name: &str) -> Result<Token> {
        let app = self.app(app_name)?;
        let secret = app.app_secret.as_ref().ok_or_else(|| {
            Error::Config(format!("dingtalk.apps.{app_name}.app_secret is not set"))
        })?;
        let (access_token, expires_in) = match self.inner.token_api {
            TokenApi::Oapi => {
                let request = self
                    .inner
                    .http
                    .get(format!("{}/gettoken", self.inner.base_url))
                    .query(&[
                        ("appkey", app.app_key.as_str()),
                        ("appsecret", secret.expose()),
                    ]);
                let answer = self.send(api::GETTOKEN, request).await?;
                let token: TokenAnswer =
                    serde_json::from_value(answer).map_err(|e| Error::InvalidBody {
                        api: api::GETTOKEN,
                        detail: format!("gettoken answer: {e}"),
                        ip_banned: false,
                    })?;
                (token.access_token, token.expires_in)
            }
            TokenApi::V1 => {
                let request = self
                    .inner
                    .http
                    .post(format!(
                        "{}/v1.0/oauth2/accessToken",
                        self.inner.token_base_url
                    ))
                    .json(&json!({"appKey": app.app_key, "appSecret": secret.expose()}));
                let answer = self.send_as(api::GETTOKEN, request, Envelope::V1).await?;
                let token: V1TokenAnswer =
                    serde_json::from_value(answer).map_err(|e| Error::InvalidBody {
                        api: api::GETTOKEN,
                        detail: format!("accessToken answer: {e}"),
                        ip_banned: false,
                    })?;
                (token.access_token, token.expire_in)
            }
        };
        if access_token.is_empty() {
            return Err(Error::InvalidBody {
                api: api::GETTOKEN,
                detail: "empty access_token".to_owned(),
                ip_banned: false,
            });
        }
        Ok(Token::new(access_token, expires_in, self.inner.margin))
    }

    /// POSTs `body` with the app's token; on a token error drops the token, fetches once more
    /// and retries once. `before_send` runs before each attempt (the rate limiter).
    async fn call_with_token<F, Fut>(
        &self,
        app: &str,
        api: &'static str,
        path: &str,
        body: &Value,
        before_send: F,
    ) -> Result<Value>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        self.paused(app)?;
        let result = self
            .call_with_token_unpaused(app, api, path, body, before_send)
            .await;
        self.learn(app, &result);
        result
    }

    async fn call_with_token_unpaused<F, Fut>(
        &self,
        app: &str,
        api: &'static str,
        path: &str,
        body: &Value,
        before_send: F,
    ) -> Result<Value>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let url = format!("{}{path}", self.inner.base_url);
        let mut token = self.token(app).await?;
        for attempt in 0..2 {
            before_send().await;
            let request = self
                .inner
                .http
                .post(&url)
                .query(&[("access_token", &*token.value)])
                .json(body);
            let result = self.send(api, request).await;
            self.account(api, &result).await;
            match result {
                Err(e) if attempt == 0 && e.disposition(false) == Disposition::RefreshToken => {
                    tracing::info!(app, api, error = %e, "token refused; refreshing once");
                    self.inner.tokens.invalidate(app, &token).await;
                    token = self.token(app).await?;
                }
                other => return other,
            }
        }
        unreachable!("the loop returns on its second pass")
    }

    /// Tells the ledger about a metered request: every one that left the relay counts (even
    /// unanswered: DingTalk may have counted it), but not one refused for the quota itself.
    async fn account(&self, api: &'static str, result: &Result<Value>) {
        let Some(ledger) = &self.inner.ledger else {
            return;
        };
        match result {
            Err(Error::Connect { .. }) => {}
            Err(e @ Error::Api { code: 90020, .. }) => ledger.exhausted(&e.to_string()).await,
            _ => ledger.spent(api).await,
        }
    }

    /// Sends one request to the legacy host; HTTP, body and errcode failures become
    /// [`Error`]s. Measured.
    async fn send(&self, api: &'static str, request: reqwest::RequestBuilder) -> Result<Value> {
        self.send_as(api, request, Envelope::Oapi).await
    }

    /// Sends one request whose answer has the shape `envelope`. Measured.
    async fn send_as(
        &self,
        api: &'static str,
        request: reqwest::RequestBuilder,
        envelope: Envelope,
    ) -> Result<Value> {
        let started = Instant::now();
        let result = self.send_unmeasured(api, request, envelope).await;
        let m = &self.inner.metrics;
        m.dingtalk_duration
            .with_label_values(&[api])
            .observe(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e @ Error::Api { code, .. }) => {
                m.dingtalk_errors
                    .with_label_values(&[api, &super::error::errcode_label(*code)])
                    .inc();
                tracing::warn!(api, errcode = code, request_id = e.request_id(), error = %e, "DingTalk answered with an error");
                "errcode"
            }
            Err(Error::Http { .. } | Error::Refused { .. }) => "http_error",
            Err(Error::InvalidBody { .. } | Error::IpBanned { .. }) => "invalid_body",
            Err(Error::Connect { .. } | Error::NoAnswer { .. }) => "transport",
            Err(Error::Config(_) | Error::Paused { .. }) => "config",
        };
        m.dingtalk_requests.with_label_values(&[api, outcome]).inc();
        result
    }

    async fn send_unmeasured(
        &self,
        api: &'static str,
        request: reqwest::RequestBuilder,
        envelope: Envelope,
    ) -> Result<Value> {
        // `without_url` everywhere: the URL carries the token or the app secret.
        let response = request.send().await.map_err(|e| transport(api, e))?;
        let status = response.status().as_u16();
        let bytes = read_capped(api, response).await?;
        if envelope == Envelope::V1 {
            // The current host answers errors with an HTTP status and its own body.
            if status != 200 {
                return Err(super::error::refused(api, status, &bytes)
                    .unwrap_or(Error::Http { api, status }));
            }
            return serde_json::from_slice(&bytes).map_err(|_| Error::InvalidBody {
                api,
                detail: snippet(&bytes),
                ip_banned: false,
            });
        }
        if status != 200 {
            return Err(Error::Http { api, status });
        }
        // DingTalk answers an IP it bans with an HTML page instead of JSON (about 5 minutes).
        let body: Value = serde_json::from_slice(&bytes).map_err(|_| Error::InvalidBody {
            api,
            detail: snippet(&bytes),
            ip_banned: true,
        })?;
        check_body(api, &body)?;
        Ok(body)
    }
}

/// Reads an answer's body, at most [`MAX_ANSWER_BYTES`]: a longer one is refused without
/// being buffered whole (a declared length is checked first, then the bytes as they come).
async fn read_capped(api: &'static str, mut response: reqwest::Response) -> Result<Vec<u8>> {
    let too_large = || Error::InvalidBody {
        api,
        detail: format!("answer larger than {MAX_ANSWER_BYTES} bytes"),
        ip_banned: false,
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| Error::NoAnswer {
        api,
        message: e.without_url().to_string(),
    })? {
        if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// A fingerprint of what a create sends, to recognise the same param later in this process.
fn fingerprint(param: &CreateReportParam) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(param)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

/// The report id in report/create's `result`: a plain id (string or number), or an object
/// carrying `report_id`.
fn report_id_of(result: Option<&Value>) -> Option<String> {
    match result? {
        Value::String(id) if !id.trim().is_empty() => Some(id.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        Value::Object(object) => report_id_of(object.get("report_id")),
        _ => None,
    }
}

fn transport(api: &'static str, e: reqwest::Error) -> Error {
    let connect = e.is_connect() || e.is_builder();
    let message = e.without_url().to_string();
    if connect {
        Error::Connect { api, message }
    } else {
        Error::NoAnswer { api, message }
    }
}

fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let short: String = text.chars().take(80).collect();
    format!("body starts {short:?}")
}

/// Whether a listed report holds `param`'s text in every field, compared the way DingTalk
/// may have stored it (see [`normalise_text`]), and allowing DingTalk's own 1000-character
/// cut of a text it made longer (entities).
fn same_contents(listed: &ListedReport, param: &CreateReportParam) -> bool {
    param.contents.iter().all(|c| {
        listed.contents.iter().any(|l| {
            l.key == c.key && {
                let sent = normalise_text(&c.content);
                let seen = normalise_text(&l.value);
                sent == seen
                    || (!seen.is_empty()
                        && l.value.encode_utf16().count() >= CUT_NEAR
                        && sent.starts_with(&seen))
            }
        })
    })
}

/// Whether a listed report has `param`'s letters and digits in every field (see
/// [`skeleton`]), allowing DingTalk's cut as [`same_contents`] does.
fn same_skeleton(listed: &ListedReport, param: &CreateReportParam) -> bool {
    param.contents.iter().all(|c| {
        listed.contents.iter().any(|l| {
            l.key == c.key && {
                let sent = skeleton(&c.content);
                let seen = skeleton(&l.value);
                sent == seen
                    || (!seen.is_empty()
                        && l.value.encode_utf16().count() >= CUT_NEAR
                        && sent.starts_with(&seen))
            }
        })
    })
}

/// Only the letters and digits (any script) of a text, after [`normalise_text`]: what no
/// rewriting of markdown, whitespace or entities changes.
fn skeleton(text: &str) -> String {
    normalise_text(text)
        .chars()
        .filter(|c| c.is_alphanumeric())
        .collect()
}

/// A listed text at least this long (UTF-16 units) may have been cut by DingTalk at 1000.
const CUT_NEAR: usize = 990;

/// A text as compared during reconciliation: line ends as `\n`, HTML entities `&amp;`
/// `&lt;` `&gt;` `&quot;` `&#39;` decoded, trailing spaces and tabs of each line dropped (our
/// markdown hard breaks end with two spaces), runs of blank lines collapsed into one, and
/// blank lines at both ends dropped.
pub(crate) fn normalise_text(text: &str) -> String {
    let decoded = text
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    let mut lines: Vec<&str> = Vec::new();
    for line in decoded.split('\n') {
        let line = line.trim_end_matches([' ', '\t']);
        if line.is_empty() && lines.last().is_none_or(|l| l.is_empty()) {
            continue;
        }
        lines.push(line);
    }
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_list_window_stays_inside_180_days() {
        let day = 86_400_000;
        let attempt = 20_000;
        assert_eq!(
            list_window(1_000 * day, 1_000 * day, attempt),
            (1_000 * day - 60_000, 1_000 * day + 60_000)
        );
        // Asked long after the send (a restart hours later): the window still ends shortly
        // after the attempt, so the author's later reports are not paged through.
        let (start, end) = list_window(0, 400 * day, attempt);
        assert_eq!(start, -60_000);
        assert_eq!(end, attempt + LATE_COMMIT_MS);
        // Never longer than DingTalk's 180 days, whatever the attempt took.
        let (start, end) = list_window(0, 400 * day, i64::MAX);
        assert_eq!(end - start, MAX_LIST_WINDOW_MS);
        // A clock that went backwards never makes an inverted window.
        let (start, end) = list_window(10 * day, 0, attempt);
        assert!(end >= start);
    }

    #[test]
    fn report_ids_are_taken_from_every_success_shape() {
        assert_eq!(report_id_of(Some(&json!("abc"))), Some("abc".to_owned()));
        assert_eq!(report_id_of(Some(&json!(123))), Some("123".to_owned()));
        assert_eq!(
            report_id_of(Some(&json!({"report_id": "r1"}))),
            Some("r1".to_owned())
        );
        assert_eq!(report_id_of(Some(&json!({"other": 1}))), None);
        assert_eq!(report_id_of(Some(&json!(""))), None);
        assert_eq!(report_id_of(Some(&json!(null))), None);
        assert_eq!(report_id_of(None), None);
    }

    #[test]
    fn normalising_forgives_what_a_server_does_to_stored_text() {
        let sent = "**CI** a & b  \n<x>\n\n\n\nend  \n";
        let listed = "**CI** a &amp; b\r\n&lt;x&gt;\r\n\r\nend";
        assert_eq!(normalise_text(sent), normalise_text(listed));
        assert_ne!(normalise_text("a\nb"), normalise_text("a b"));
        assert_ne!(normalise_text("run 1"), normalise_text("run 2"));
    }

    fn param(content: &str) -> CreateReportParam {
        CreateReportParam {
            template_id: "t".to_owned(),
            userid: "u".to_owned(),
            dd_from: "d".to_owned(),
            to_chat: false,
            to_userids: Vec::new(),
            to_cids: Vec::new(),
            contents: vec![super::super::ReportContent {
                key: "k".to_owned(),
                sort: 0,
                kind: 1,
                content_type: "markdown".to_owned(),
                content: content.to_owned(),
            }],
        }
    }

    fn listed(value: &str) -> ListedReport {
        serde_json::from_value(json!({"report_id": "r", "creator_id": "u",
            "contents": [{"key": "k", "value": value}]}))
        .unwrap()
    }

    #[test]
    fn a_rewritten_text_keeps_its_skeleton_and_another_run_does_not() {
        let ours = param("**CI** build #812 passed  \n• 418 tests");
        assert!(same_skeleton(
            &listed("CI build 812 passed\n- 418 tests"),
            &ours
        ));
        assert!(!same_contents(
            &listed("CI build 812 passed\n- 418 tests"),
            &ours
        ));
        assert!(!same_skeleton(
            &listed("**CI** build #813 passed  \n• 418 tests"),
            &ours
        ));
        assert!(!same_skeleton(&listed("other"), &ours));
    }

    #[test]
    fn a_cut_text_matches_only_when_dingtalk_could_have_cut_it() {
        let long = "&".repeat(900);
        // DingTalk stores `&amp;` × 900 = 4500 units and cuts at 1000: 200 entities.
        let stored: String = "&amp;".repeat(900).chars().take(1000).collect();
        assert!(same_contents(&listed(&stored), &param(&long)));
        // A short prefix is another text, not a cut.
        assert!(!same_contents(&listed("&amp;&amp;"), &param(&long)));
        assert!(!same_contents(&listed(""), &param("x")));
        assert!(same_contents(&listed("x"), &param("x  ")));
    }
}
