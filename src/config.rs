//! Configuration: the typed settings of spec §4, how they are loaded (YAML files layered with
//! `DINGTALK_RELAY__…` environment overrides through the `config` crate) and the cross-field
//! validation that runs before anything starts. Nothing here does I/O beyond reading files and
//! the environment.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The file read when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "config/default.yaml";
/// Read after [`DEFAULT_CONFIG_FILE`] when present, for local overrides.
pub const LOCAL_CONFIG_FILE: &str = "config/local.yaml";
/// The prefix of environment overrides; levels are separated by `__`.
pub const ENV_PREFIX: &str = "DINGTALK_RELAY";

/// The names of the fields of the standard 日报 template, filled by the built-in templates.
pub const STANDARD_FIELDS: [&str; 3] = ["今日完成工作", "未完成工作", "需协调工作"];

/// A secret string (app secret, route secret, admin token). It never prints: `Debug`,
/// `Display` and `Serialize` (`check-config --print`) all show `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself, for the one place that must send or compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// Everything the relay is configured with (spec §4).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Listeners and request limits.
    #[serde(default)]
    pub server: ServerSettings,
    /// The DingTalk API and the apps whose tokens the relay holds.
    #[serde(default)]
    pub dingtalk: DingTalkSettings,
    /// Where accepted deliveries are kept.
    #[serde(default)]
    pub store: StoreSettings,
    /// Retry and dedup policy.
    #[serde(default)]
    pub delivery: DeliverySettings,
    /// IANA time zone in which times are rendered into reports.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// CI identities (login or e-mail, matched case-insensitively) → DingTalk userid.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// Webhook routes keyed by name: `POST /v1/hooks/{name}`.
    #[serde(default)]
    pub routes: BTreeMap<String, RouteSettings>,
    /// Log output.
    #[serde(default)]
    pub log: LogSettings,
}

/// `server.*`
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address of the webhook listener (`POST /v1/hooks/{route}` only).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Address of the admin listener (`/metrics`, `/healthz`, `/readyz`, `/v1/deliveries…`).
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// Largest webhook body accepted, in bytes; larger ones get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// When set, `/v1/*` on the admin listener needs `Authorization: Bearer <token>`.
    #[serde(default)]
    pub admin_token: Option<Secret>,
    /// A file holding `admin_token` (a mounted Kubernetes Secret), read at start and on every
    /// reload; one trailing newline is dropped.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// Longest time one webhook request may take (reading the body included); then it is
    /// answered 503 with `Retry-After`.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A client must send a whole request head within this time, on a new connection or
    /// between requests on a kept-alive one, or the connection is closed (both listeners;
    /// slow-loris). Changing it needs a restart.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Most webhook requests in progress at once; more get 503 with `Retry-After` at once.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Longest time the body of a webhook whose credential is a signature over the body may
    /// take to arrive (it is read before the sender is known); then 408. Header credentials
    /// are checked before the body is read and are bounded by `request_timeout` only.
    #[serde(default = "default_body_read_timeout", with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Most webhook bodies read at once before their signature can be checked; more get 503
    /// with `Retry-After` at once, so that unauthenticated uploads cannot take the capacity
    /// (`max_concurrent_requests`) that authenticated senders need. Changing it needs a restart.
    #[serde(default = "default_max_unverified_requests")]
    pub max_unverified_requests: usize,
}

/// `routes.<name>.rate_limit`: a token bucket for the route's authenticated webhooks; beyond
/// it they get 429 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Webhooks per second on average; fractions allowed (`0.5` is one every two seconds).
    pub per_second: f64,
    /// Webhooks taken at once after a quiet spell; default: `per_second` rounded up.
    #[serde(default)]
    pub burst: Option<u32>,
}

impl RateLimitSettings {
    /// The bucket size: `burst`, or `per_second` rounded up (at least 1).
    pub fn burst(&self) -> u32 {
        self.burst
            .unwrap_or_else(|| self.per_second.ceil().clamp(1.0, f64::from(u32::MAX)) as u32)
    }
}

/// `dingtalk.*`
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DingTalkSettings {
    /// Base URL of the legacy API host.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Timeout of one DingTalk request (connect timeout is the smaller of this and 5 s).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// A token is refreshed this long before its `expires_in` runs out.
    #[serde(default = "default_refresh_margin", with = "humantime_serde")]
    pub token_refresh_margin: Duration,
    /// Most report/create calls per second per app: DingTalk allows 20 on the standard
    /// edition and up to 60 on enterprise editions, so at most 60 is accepted.
    #[serde(default = "default_max_qps")]
    pub max_qps: u32,
    /// Which token endpoint to use: `oapi` (legacy `GET {base_url}/gettoken`, the default)
    /// or `v1` (`POST {token_base_url}/v1.0/oauth2/accessToken`, the current one).
    #[serde(default)]
    pub token_api: TokenApi,
    /// Base URL of the host serving the `v1` token endpoint (used with `token_api: v1`).
    #[serde(default = "default_token_base_url")]
    pub token_base_url: String,
    /// How long a resolved template (`template: {name}`) is cached.
    #[serde(default = "default_template_ttl", with = "humantime_serde")]
    pub template_cache_ttl: Duration,
    /// DingTalk apps keyed by name; routes name the app they post with.
    #[serde(default)]
    pub apps: BTreeMap<String, AppSettings>,
    /// The relay's share of the organisation's monthly call quota, and how it is protected.
    #[serde(default)]
    pub quota: QuotaSettings,
}

/// `dingtalk.quota.*`: the monthly budget of metered DingTalk calls (report/create, uncached
/// template/getbyname, report/list). Every internal app of the organisation spends from the
/// same pool, so `monthly` is the part of it given to the relay.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSettings {
    /// Metered calls a month the relay may spend; `null` counts without a limit.
    #[serde(default)]
    pub monthly: Option<u64>,
    /// Fraction of `monthly` past which `/readyz` warns (0 < warn_at ≤ 1).
    #[serde(default = "default_quota_warn_at")]
    pub warn_at: f64,
    /// When the month's remaining budget is at or below this many calls, routes follow their
    /// `on_quota_low` policy.
    #[serde(default)]
    pub reserve: u64,
    /// IANA time zone in which the quota month turns (DingTalk's: Asia/Shanghai).
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// How often a held delivery looks again whether it may be sent (a raised budget, a
    /// cleared exhaustion); it also looks when the month turns.
    #[serde(default = "default_hold_recheck", with = "humantime_serde")]
    pub hold_recheck: Duration,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        Self {
            monthly: None,
            warn_at: default_quota_warn_at(),
            reserve: 0,
            timezone: default_timezone(),
            hold_recheck: default_hold_recheck(),
        }
    }
}

impl QuotaSettings {
    /// The zone the month turns in (Asia/Shanghai when it does not parse; validation names it).
    pub fn tz(&self) -> chrono_tz::Tz {
        self.timezone.parse().unwrap_or(chrono_tz::Asia::Shanghai)
    }
}

/// `routes.<name>.on_quota_low`: what a route does when the month's remaining budget is at or
/// below `dingtalk.quota.reserve`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnQuotaLow {
    /// Keep sending one report per event.
    #[default]
    Send,
    /// Keep deliveries queued until the month turns or the budget is raised.
    Hold,
    /// Fold new events into the route's digest instead of a report each.
    Digest,
}

/// `dingtalk.token_api`: which endpoint gives the access token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenApi {
    /// `GET {base_url}/gettoken?appkey=…&appsecret=…` (filed as historical by DingTalk, still
    /// served, same `errcode` answers as topapi).
    #[default]
    Oapi,
    /// `POST {token_base_url}/v1.0/oauth2/accessToken` with `{"appKey","appSecret"}`.
    V1,
}

/// `dingtalk.apps.<name>.*`
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    /// The app's AppKey (Client ID).
    pub app_key: String,
    /// The app's AppSecret; normally from `DINGTALK_RELAY__DINGTALK__APPS__<NAME>__APP_SECRET`.
    #[serde(default)]
    pub app_secret: Option<Secret>,
    /// A file holding `app_secret` (a mounted Kubernetes Secret), read at start and on every
    /// reload; one trailing newline is dropped.
    #[serde(default)]
    pub app_secret_file: Option<PathBuf>,
}

/// `store.*`
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// `sqlite://PATH` (embedded default), `postgres://…` (several replicas) or `memory:`
    /// (tests only: loses everything on restart).
    #[serde(default = "default_store_url")]
    pub url: String,
    /// Most deliveries waiting in the queue; beyond it webhooks get 503 with `Retry-After`.
    #[serde(default = "default_max_queued")]
    pub max_queued: u64,
    /// SQLite: below this many bytes available on the database's filesystem, webhooks get 503
    /// with `Retry-After` and `/readyz` says why (checked every second), so the deliveries
    /// already accepted keep room to be marked delivered. 0 turns the floor off.
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
}

/// `delivery.*`
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    /// Attempts before a delivery is given up as `failed`.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the first retry; doubled each attempt, with jitter.
    #[serde(default = "default_initial_backoff", with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest wait between two attempts.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How long a webhook's dedup key (and a finished delivery) is remembered.
    #[serde(default = "default_dedup_window", with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Deliveries worked at the same time by this process.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How long a worker holds a delivery; a replica that dies holding one gives it up to the
    /// others after this long. Must cover a whole attempt (at least 4 × `dingtalk.timeout`).
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
}

/// `log.*`
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `text` (human-readable) or `json` (one object per line).
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
    /// Default filter, `RUST_LOG` syntax; the `RUST_LOG` variable wins when set.
    #[serde(default = "default_log_filter")]
    pub filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: default_log_format(),
            filter: default_log_filter(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Which CI system posts to a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// The relay's own job_status / standup JSON.
    Generic,
    /// GitHub Actions.
    Github,
    /// GitLab CI.
    Gitlab,
    /// Gitea Actions.
    Gitea,
    /// Forgejo Actions.
    Forgejo,
    /// Jenkins Notification plugin.
    Jenkins,
    /// CircleCI.
    Circleci,
    /// Buildkite.
    Buildkite,
    /// Drone.
    Drone,
    /// Azure DevOps service hooks.
    AzureDevops,
    /// Bitbucket Cloud.
    Bitbucket,
}

impl SourceKind {
    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Generic => "generic",
            Self::Github => "github",
            Self::Gitlab => "gitlab",
            Self::Gitea => "gitea",
            Self::Forgejo => "forgejo",
            Self::Jenkins => "jenkins",
            Self::Circleci => "circleci",
            Self::Buildkite => "buildkite",
            Self::Drone => "drone",
            Self::AzureDevops => "azure-devops",
            Self::Bitbucket => "bitbucket",
        }
    }
}

/// `routes.<name>.*`
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    /// Which CI system posts here.
    pub source: SourceKind,
    /// Bearer token / HMAC key the sender must present.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// A file holding `secret` (a mounted Kubernetes Secret), read at start and on every
    /// reload; one trailing newline is dropped.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Accept unauthenticated webhooks on this route (refused without it when `secret` is unset).
    #[serde(default)]
    pub insecure: bool,
    /// Most webhooks this route takes (checked after authentication); none by default.
    #[serde(default)]
    pub rate_limit: Option<RateLimitSettings>,
    /// Name of the app in `dingtalk.apps` that posts the report.
    #[serde(default = "default_app")]
    pub app: String,
    /// The DingTalk report template.
    pub template: TemplateSettings,
    /// Report author userid, or `actor` for the event's mapped user.
    pub author: String,
    /// Receiver userids (a key of `users`, or `actor`, is mapped to its userid).
    #[serde(default)]
    pub to_userids: Vec<String>,
    /// Receiver group ids (must be receiving groups of the template).
    #[serde(default)]
    pub to_cids: Vec<String>,
    /// Also send a one-to-one chat message to the receivers.
    #[serde(default)]
    pub to_chat: bool,
    /// Source tag DingTalk shows on the report.
    #[serde(default = "default_dd_from")]
    pub dd_from: String,
    /// Lifecycle phases of job_status events that make reports: `queued`, `in_progress`,
    /// `completed`. Standups are always reported.
    #[serde(default = "default_events")]
    pub events: Vec<String>,
    /// When not empty, only these statuses make reports.
    #[serde(default)]
    pub statuses: Vec<String>,
    /// When not empty, only branches matching one of these globs make reports.
    #[serde(default)]
    pub branches: Vec<String>,
    /// Template field name → minijinja template over the event. Omitted: built-in templates
    /// for the standard 日报 fields.
    #[serde(default)]
    pub fields: Option<BTreeMap<String, String>>,
    /// Digest mode: fold the route's events into one report per group at scheduled times
    /// instead of one report per event. `fields` then are templates over the digest's
    /// variables. Absent: one report per event.
    #[serde(default)]
    pub digest: Option<DigestSettings>,
    /// What the route does when the monthly quota's reserve is reached: `send` (default),
    /// `hold` or `digest`.
    #[serde(default)]
    pub on_quota_low: OnQuotaLow,
    /// With `on_quota_low: digest`: the digest the route's new events are folded into while
    /// the reserve is reached (rendered with the built-in digest templates).
    #[serde(default)]
    pub quota_digest: Option<DigestSettings>,
}

impl RouteSettings {
    /// The digest settings events of this route are folded with: its own `digest`, else its
    /// `quota_digest` (used while the quota's reserve is reached).
    pub fn digest_settings(&self) -> Option<&DigestSettings> {
        self.digest.as_ref().or(self.quota_digest.as_ref())
    }
}

/// `routes.<name>.digest.*`: when and how a route's events are folded into digests.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DigestSettings {
    /// Times of day (`HH:MM`, 24-hour, in `timezone`) at which digests are sent: one time or a
    /// list.
    #[serde(deserialize_with = "one_or_many")]
    pub schedule: Vec<String>,
    /// Days on which the schedule runs (`mon` … `sun`); empty means every day.
    #[serde(default)]
    pub weekdays: Vec<String>,
    /// IANA time zone of `schedule` and `weekdays`; defaults to the top-level `timezone`.
    #[serde(default)]
    pub timezone: Option<String>,
    /// One report per `author` (the event's person, or the route's fixed author), per
    /// `project`, or one per `route`.
    #[serde(default)]
    pub group_by: DigestGroupBy,
    /// Most pipeline lines listed in a report; the rest are summarised in one line.
    #[serde(default = "default_digest_max_lines")]
    pub max_lines: usize,
    /// How late a missed digest (the relay was down at the scheduled time) is still sent;
    /// later, its events go into the next digest instead.
    #[serde(default = "default_digest_grace", with = "humantime_serde")]
    pub grace: Duration,
    /// Send a report saying nothing happened when a period had no events (`group_by: route`
    /// only, since other groups are only known from events).
    #[serde(default)]
    pub send_empty: bool,
}

impl DigestSettings {
    /// The digest's time zone: its own, else `default`; `None` when its own does not parse
    /// (configuration validation names it).
    pub fn tz(&self, default: chrono_tz::Tz) -> Option<chrono_tz::Tz> {
        match &self.timezone {
            Some(name) => name.parse().ok(),
            None => Some(default),
        }
    }
}

/// How a digest route groups its events into reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DigestGroupBy {
    /// One report per person (their DingTalk userid), written as them.
    #[default]
    Author,
    /// One report per project or repository.
    Project,
    /// One report for the whole route.
    Route,
}

impl DigestGroupBy {
    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Author => "author",
            Self::Project => "project",
            Self::Route => "route",
        }
    }
}

/// Accepts one string or a list of strings.
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

/// Day names accepted by `routes.*.digest.weekdays`, Monday first.
pub const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Parses a digest schedule time `HH:MM`.
pub fn parse_time_of_day(value: &str) -> Option<chrono::NaiveTime> {
    let (h, m) = value.trim().split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    chrono::NaiveTime::from_hms_opt(h.parse().ok()?, m.parse().ok()?, 0)
}

/// `routes.<name>.template.*`: either `name` (looked up with getbyname) or `id` + `fields`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSettings {
    /// Template name, resolved with template/getbyname and cached.
    #[serde(default)]
    pub name: Option<String>,
    /// Template id, used as is (needs `fields`).
    #[serde(default)]
    pub id: Option<String>,
    /// The template's fields, when given by `id`.
    #[serde(default)]
    pub fields: Option<Vec<TemplateFieldSettings>>,
    /// Userid used for the getbyname lookup; defaults to the route's `author` (required when
    /// `author` is `actor` and the template is given by name).
    #[serde(default)]
    pub owner: Option<String>,
}

/// One field of a template given by `id`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateFieldSettings {
    /// The field's title (the `key` of a content).
    pub name: String,
    /// The field's sequence number in the template.
    pub sort: i64,
    /// The field's type; only 1 (text) can be filled.
    #[serde(default = "default_field_type", rename = "type")]
    pub kind: i64,
}

/// A section's built-in defaults: every field's serde default, so that a field added with a
/// default is covered without listing it here (a section whose fields all have defaults).
fn section_defaults<T: serde::de::DeserializeOwned>(section: &str) -> T {
    serde_json::from_value(serde_json::Value::Object(serde_json::Map::new()))
        .unwrap_or_else(|e| unreachable!("every field of {section} has a default: {e}"))
}

impl Default for ServerSettings {
    fn default() -> Self {
        section_defaults("server")
    }
}

impl Default for DingTalkSettings {
    fn default() -> Self {
        section_defaults("dingtalk")
    }
}

impl Default for StoreSettings {
    fn default() -> Self {
        section_defaults("store")
    }
}

impl Default for DeliverySettings {
    fn default() -> Self {
        section_defaults("delivery")
    }
}

fn default_listen() -> String {
    "0.0.0.0:8080".to_owned()
}
fn default_admin_listen() -> String {
    "0.0.0.0:8081".to_owned()
}
fn default_store_url() -> String {
    "sqlite://data/relay.db".to_owned()
}
fn default_timezone() -> String {
    "Asia/Shanghai".to_owned()
}
fn default_hold_recheck() -> Duration {
    Duration::from_secs(60)
}
fn default_quota_warn_at() -> f64 {
    0.8
}
fn default_max_body_bytes() -> usize {
    1_048_576
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(40)
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_concurrent_requests() -> usize {
    1024
}
fn default_body_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_unverified_requests() -> usize {
    64
}
fn default_base_url() -> String {
    "https://oapi.dingtalk.com".to_owned()
}
fn default_token_base_url() -> String {
    "https://api.dingtalk.com".to_owned()
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_refresh_margin() -> Duration {
    Duration::from_secs(300)
}
/// Highest `dingtalk.max_qps` accepted (DingTalk's enterprise editions allow 60 per app).
pub const MAX_QPS: u32 = 60;

fn default_max_qps() -> u32 {
    15
}
fn default_template_ttl() -> Duration {
    Duration::from_secs(600)
}
fn default_min_free_bytes() -> u64 {
    32 * 1024 * 1024
}

fn default_max_queued() -> u64 {
    100_000
}
fn default_max_attempts() -> u32 {
    12
}
fn default_initial_backoff() -> Duration {
    Duration::from_secs(1)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(600)
}
fn default_dedup_window() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_concurrency() -> usize {
    8
}
fn default_lease() -> Duration {
    Duration::from_secs(60)
}
fn default_log_format() -> LogFormat {
    LogFormat::Text
}
fn default_log_filter() -> String {
    "info".to_owned()
}
fn default_app() -> String {
    "default".to_owned()
}
fn default_dd_from() -> String {
    "dingtalk-relay".to_owned()
}
fn default_events() -> Vec<String> {
    vec!["completed".to_owned()]
}
fn default_field_type() -> i64 {
    1
}
fn default_digest_max_lines() -> usize {
    20
}
fn default_digest_grace() -> Duration {
    Duration::from_secs(6 * 3600)
}

/// The shortest `server.admin_token` accepted, in characters.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// The longest duration any setting accepts (ten years).
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 24 * 3600);

/// Lifecycle phases a route's `events` may name.
pub const PHASES: [&str; 3] = ["queued", "in_progress", "completed"];

/// Statuses a route's `statuses` may name: the relay's vocabulary, into which every source's
/// own names are mapped (GitHub's `timed_out` is `failure`, GitLab's `failed` too).
pub const STATUSES: [&str; 7] = [
    "success",
    "failure",
    "cancelled",
    "running",
    "pending",
    "skipped",
    "unknown",
];

/// A configuration problem, naming the key path (`routes.ci.template: …`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key path, e.g. `routes.ci.template`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file was unreadable, not YAML, or did not match the schema (unknown key, bad type).
    #[error("configuration: {0}")]
    Load(String),
    /// The configuration loaded but is inconsistent; every problem is listed.
    #[error("configuration is invalid: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<ConfigIssue>),
}

/// How the settings are being used; some checks depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A real deployment: app secrets are required, unauthenticated routes need `insecure`.
    Production,
    /// `serve --sandbox`: the built-in DingTalk stand-in; secrets may be absent.
    Sandbox,
    /// `render` and `check-config` without `--online`: nothing is sent, secrets may be absent.
    Offline,
}

impl Settings {
    /// Loads `file` (or the default files), then the environment, without validating.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// Like [`Settings::load`] with the environment given explicitly (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        match file {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError::Load(format!(
                        "{}: file not found",
                        path.display()
                    )));
                }
                builder = builder.add_source(yaml_file(path));
            }
            None => {
                let default = PathBuf::from(DEFAULT_CONFIG_FILE);
                if !default.exists() {
                    return Err(ConfigError::Load(format!(
                        "{DEFAULT_CONFIG_FILE}: file not found (run from the repository root or pass --config FILE)"
                    )));
                }
                builder = builder
                    .add_source(yaml_file(&default))
                    .add_source(yaml_file(Path::new(LOCAL_CONFIG_FILE)).required(false));
            }
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .collect();
        // The files alone first: an override must name a route or app they define.
        let files = builder
            .build_cloned()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        let misfits = env_misfits(&files, env.keys());
        if !misfits.is_empty() {
            return Err(ConfigError::Invalid(misfits));
        }
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env.clone())),
        );
        let explain = |e: config::ConfigError| ConfigError::Load(explain_load_error(&e, &env));
        let raw = builder.build().map_err(explain)?;
        let mut settings = raw.try_deserialize::<Settings>().map_err(explain)?;
        settings.read_secret_files()?;
        Ok(settings)
    }

    /// Reads every `*_file` secret (`server.admin_token_file`, `dingtalk.apps.*.app_secret_file`,
    /// `routes.*.secret_file`) into its secret. A key given both ways, an unreadable file or an
    /// empty one is an error naming the key (and the path, never the content).
    pub fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        let mut issues = Vec::new();
        let mut read = |key: String, file: &Option<PathBuf>, secret: &mut Option<Secret>| {
            let Some(path) = file else {
                return;
            };
            if secret.is_some() {
                issues.push(ConfigIssue {
                    message: format!(
                        "is set, and so is {key}_file ({}): give the secret one way",
                        path.display()
                    ),
                    path: key,
                });
                return;
            }
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let value = text
                        .strip_suffix('\n')
                        .map(|t| t.strip_suffix('\r').unwrap_or(t))
                        .unwrap_or(&text);
                    if value.trim().is_empty() {
                        issues.push(ConfigIssue {
                            path: format!("{key}_file"),
                            message: format!("{} is empty", path.display()),
                        });
                    } else {
                        *secret = Some(Secret::new(value));
                    }
                }
                Err(e) => issues.push(ConfigIssue {
                    path: format!("{key}_file"),
                    message: format!("cannot read {}: {e}", path.display()),
                }),
            }
        };
        read(
            "server.admin_token".to_owned(),
            &self.server.admin_token_file,
            &mut self.server.admin_token,
        );
        for (name, app) in &mut self.dingtalk.apps {
            read(
                format!("dingtalk.apps.{name}.app_secret"),
                &app.app_secret_file,
                &mut app.app_secret,
            );
        }
        for (name, route) in &mut self.routes {
            read(
                format!("routes.{name}.secret"),
                &route.secret_file,
                &mut route.secret,
            );
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(issues))
        }
    }

    /// Parses settings from a YAML string (tests and `check-config` use files; this is for
    /// building settings in code).
    pub fn from_yaml(yaml: &str) -> Result<Self, ConfigError> {
        config::Config::builder()
            .add_source(config::File::from_str(yaml, config::FileFormat::Yaml))
            .build()
            .and_then(|c| c.try_deserialize::<Settings>())
            .map_err(|e| ConfigError::Load(e.to_string()))
            .and_then(|mut settings| {
                settings.read_secret_files()?;
                Ok(settings)
            })
    }

    /// What is valid but probably not meant, each naming its key path: shown by
    /// `check-config` and logged at startup.
    pub fn warnings(&self) -> Vec<ConfigIssue> {
        self.routes
            .iter()
            .filter(|(_, route)| route.to_userids.is_empty() && route.to_cids.is_empty())
            .map(|(name, _)| ConfigIssue {
                path: format!("routes.{name}"),
                message: "has no receivers (to_userids and to_cids are empty): DingTalk accepts such a report and nobody is notified; it only shows in the author's own reports".to_owned(),
            })
            .collect()
    }

    /// Every cross-field problem, each naming its key path. Empty means valid.
    pub fn issues(&self, mode: Mode) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let mut push = |path: String, message: String| issues.push(ConfigIssue { path, message });

        for (key, value) in [
            ("server.listen", &self.server.listen),
            ("server.admin_listen", &self.server.admin_listen),
        ] {
            if value.parse::<SocketAddr>().is_err() {
                push(
                    key.to_owned(),
                    format!("{value:?} is not an address like 0.0.0.0:8080"),
                );
            }
        }
        if self.server.listen == self.server.admin_listen && !self.server.listen.ends_with(":0") {
            push(
                "server.admin_listen".to_owned(),
                "must differ from server.listen".to_owned(),
            );
        }
        if self.server.max_body_bytes == 0 {
            push(
                "server.max_body_bytes".to_owned(),
                "must be greater than 0".to_owned(),
            );
        }
        for (key, value) in [
            ("server.request_timeout", self.server.request_timeout),
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.body_read_timeout", self.server.body_read_timeout),
        ] {
            if value.is_zero() {
                push(key.to_owned(), "must be greater than 0".to_owned());
            }
        }
        if self.server.max_unverified_requests == 0 {
            push(
                "server.max_unverified_requests".to_owned(),
                "must be at least 1".to_owned(),
            );
        }
        if let Some(token) = &self.server.admin_token {
            let token = token.expose();
            if token.trim().is_empty() {
                push(
                    "server.admin_token".to_owned(),
                    "is empty or only whitespace; leave it out or set a token".to_owned(),
                );
            } else if token.chars().count() < MIN_ADMIN_TOKEN_CHARS {
                push(
                    "server.admin_token".to_owned(),
                    format!(
                        "is shorter than {MIN_ADMIN_TOKEN_CHARS} characters; use a long random token (e.g. openssl rand -hex 32)"
                    ),
                );
            }
        }
        for (key, url) in [
            ("dingtalk.base_url", &self.dingtalk.base_url),
            ("dingtalk.token_base_url", &self.dingtalk.token_base_url),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || reqwest::Url::parse(url).is_err()
            {
                push(key.to_owned(), format!("{url:?} is not an http(s) URL"));
            }
        }
        if self.dingtalk.timeout.is_zero() {
            push(
                "dingtalk.timeout".to_owned(),
                "must be greater than 0".to_owned(),
            );
        }
        if self.dingtalk.max_qps == 0 {
            push(
                "dingtalk.max_qps".to_owned(),
                "must be at least 1".to_owned(),
            );
        } else if self.dingtalk.max_qps > MAX_QPS {
            push(
                "dingtalk.max_qps".to_owned(),
                format!(
                    "DingTalk allows at most 20 calls per second per app on the standard edition and 60 on enterprise editions; set {MAX_QPS} or less"
                ),
            );
        }
        for (name, app) in &self.dingtalk.apps {
            let path = format!("dingtalk.apps.{name}");
            check_name(&path, name, &mut push);
            if app.app_key.trim().is_empty() {
                push(format!("{path}.app_key"), "is empty".to_owned());
            }
            let missing = app
                .app_secret
                .as_ref()
                .is_none_or(|s| s.expose().is_empty());
            if mode == Mode::Production && missing {
                push(
                    format!("{path}.app_secret"),
                    format!(
                        "is not set (set {ENV_PREFIX}__DINGTALK__APPS__{}__APP_SECRET, or app_secret_file)",
                        name.to_uppercase()
                    ),
                );
            }
        }
        if let Err(message) = store_kind(&self.store.url) {
            push("store.url".to_owned(), message);
        }
        if self.store.max_queued == 0 {
            push(
                "store.max_queued".to_owned(),
                "must be at least 1".to_owned(),
            );
        }
        let d = &self.delivery;
        if d.max_attempts == 0 {
            push(
                "delivery.max_attempts".to_owned(),
                "must be at least 1".to_owned(),
            );
        }
        if d.initial_backoff.is_zero() {
            push(
                "delivery.initial_backoff".to_owned(),
                "must be greater than 0".to_owned(),
            );
        }
        if d.max_backoff < d.initial_backoff {
            push(
                "delivery.max_backoff".to_owned(),
                "must not be shorter than delivery.initial_backoff".to_owned(),
            );
        }
        if d.dedup_window.is_zero() {
            push(
                "delivery.dedup_window".to_owned(),
                "must be greater than 0".to_owned(),
            );
        }
        // Durations beyond ten years are typos, and would overflow time arithmetic.
        for (key, value) in [
            ("server.request_timeout", self.server.request_timeout),
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.body_read_timeout", self.server.body_read_timeout),
            ("dingtalk.timeout", self.dingtalk.timeout),
            (
                "dingtalk.token_refresh_margin",
                self.dingtalk.token_refresh_margin,
            ),
            (
                "dingtalk.template_cache_ttl",
                self.dingtalk.template_cache_ttl,
            ),
            (
                "dingtalk.quota.hold_recheck",
                self.dingtalk.quota.hold_recheck,
            ),
            ("delivery.initial_backoff", d.initial_backoff),
            ("delivery.max_backoff", d.max_backoff),
            ("delivery.dedup_window", d.dedup_window),
            ("delivery.lease", d.lease),
        ] {
            if value > MAX_DURATION {
                push(key.to_owned(), "must be at most 3650d".to_owned());
            }
        }
        if d.lease < self.dingtalk.timeout.saturating_mul(4) {
            push(
                "delivery.lease".to_owned(),
                format!(
                    "must be at least 4 × dingtalk.timeout ({}) so that an attempt ends before another replica may take it over",
                    humantime::format_duration(self.dingtalk.timeout.saturating_mul(4))
                ),
            );
        }
        if d.concurrency == 0 {
            push(
                "delivery.concurrency".to_owned(),
                "must be at least 1".to_owned(),
            );
        }
        if self.timezone.parse::<chrono_tz::Tz>().is_err() {
            push(
                "timezone".to_owned(),
                format!(
                    "{:?} is not an IANA time zone such as Asia/Shanghai",
                    self.timezone
                ),
            );
        }
        let quota = &self.dingtalk.quota;
        if quota.timezone.parse::<chrono_tz::Tz>().is_err() {
            push(
                "dingtalk.quota.timezone".to_owned(),
                format!(
                    "{:?} is not an IANA time zone such as Asia/Shanghai",
                    quota.timezone
                ),
            );
        }
        if !(quota.warn_at > 0.0 && quota.warn_at <= 1.0) {
            push(
                "dingtalk.quota.warn_at".to_owned(),
                format!(
                    "{} is not a fraction of the budget (more than 0, at most 1)",
                    quota.warn_at
                ),
            );
        }
        match quota.monthly {
            Some(0) => push(
                "dingtalk.quota.monthly".to_owned(),
                "must be at least 1 (null counts without a limit)".to_owned(),
            ),
            Some(monthly) if quota.reserve >= monthly => push(
                "dingtalk.quota.reserve".to_owned(),
                format!(
                    "{} is not below dingtalk.quota.monthly ({monthly}): the reserve would be reached from the first call",
                    quota.reserve
                ),
            ),
            _ => {}
        }
        for (login, userid) in &self.users {
            if userid.trim().is_empty() {
                push(format!("users.{login}"), "userid is empty".to_owned());
            }
        }
        if self.routes.is_empty() {
            push(
                "routes".to_owned(),
                "no route is configured; add at least one under routes:".to_owned(),
            );
        }
        for (name, route) in &self.routes {
            self.route_issues(name, route, mode, &mut push);
        }
        issues
    }

    fn route_issues(
        &self,
        name: &str,
        route: &RouteSettings,
        mode: Mode,
        push: &mut impl FnMut(String, String),
    ) {
        let path = format!("routes.{name}");
        check_name(&path, name, push);
        if !crate::sources::IMPLEMENTED.contains(&route.source) {
            push(
                format!("{path}.source"),
                format!(
                    "source {:?} is not supported by this build yet",
                    route.source.as_str()
                ),
            );
        }
        match &route.secret {
            Some(secret) if secret.expose().trim().is_empty() => {
                push(
                    format!("{path}.secret"),
                    "is empty or only whitespace; leave it out with insecure: true, or set a secret"
                        .to_owned(),
                );
            }
            None if !route.insecure && mode == Mode::Production => push(
                format!("{path}.secret"),
                format!(
                    "is not set: anyone could post to this route; set it (e.g. {ENV_PREFIX}__ROUTES__{}__SECRET) or say insecure: true",
                    name.to_uppercase()
                ),
            ),
            _ => {}
        }
        if let Some(limit) = &route.rate_limit {
            if !(limit.per_second.is_finite() && limit.per_second > 0.0) {
                push(
                    format!("{path}.rate_limit.per_second"),
                    "must be a number greater than 0 (e.g. 0.5 for one every two seconds)"
                        .to_owned(),
                );
            }
            if limit.burst == Some(0) {
                push(
                    format!("{path}.rate_limit.burst"),
                    "must be at least 1".to_owned(),
                );
            }
        }
        if !self.dingtalk.apps.contains_key(&route.app) {
            push(
                format!("{path}.app"),
                format!(
                    "{:?} is not an app under dingtalk.apps (known: {})",
                    route.app,
                    join_keys(self.dingtalk.apps.keys())
                ),
            );
        }
        if route.author.trim().is_empty() {
            push(
                format!("{path}.author"),
                "is empty; give a userid or \"actor\"".to_owned(),
            );
        }
        if route.dd_from.trim().is_empty() {
            push(format!("{path}.dd_from"), "is empty".to_owned());
        }
        let t = &route.template;
        match (&t.name, &t.id) {
            (Some(_), Some(_)) => push(
                format!("{path}.template"),
                "give either name or id, not both".to_owned(),
            ),
            (None, None) => push(
                format!("{path}.template"),
                "give name (looked up in DingTalk) or id with fields".to_owned(),
            ),
            (Some(n), None) => {
                if n.trim().is_empty() {
                    push(format!("{path}.template.name"), "is empty".to_owned());
                }
                if t.fields.is_some() {
                    push(
                        format!("{path}.template.fields"),
                        "only with template.id; a named template's fields come from DingTalk"
                            .to_owned(),
                    );
                }
                if route.author == "actor" && t.owner.is_none() {
                    push(
                        format!("{path}.template.owner"),
                        "is required when author is \"actor\": the userid used to look the template up".to_owned(),
                    );
                }
            }
            (None, Some(id)) => {
                if id.trim().is_empty() {
                    push(format!("{path}.template.id"), "is empty".to_owned());
                }
                match &t.fields {
                    None => push(
                        format!("{path}.template.fields"),
                        "is required with template.id: list the template's fields as {name, sort}"
                            .to_owned(),
                    ),
                    Some(fields) => {
                        let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
                        match &route.fields {
                            Some(mapped) => {
                                for key in mapped.keys() {
                                    match fields.iter().find(|f| &f.name == key) {
                                        None => push(
                                            format!("{path}.fields.{key}"),
                                            format!(
                                                "is not a field of the template (fields: {})",
                                                names.join(", ")
                                            ),
                                        ),
                                        Some(f) if f.kind != 1 => push(
                                            format!("{path}.fields.{key}"),
                                            format!(
                                                "template field has type {}; only text fields (type 1) can be filled",
                                                f.kind
                                            ),
                                        ),
                                        Some(_) => {}
                                    }
                                }
                            }
                            None => {
                                if let Some(missing) =
                                    STANDARD_FIELDS.iter().find(|s| !names.contains(s))
                                {
                                    push(
                                        format!("{path}.fields"),
                                        format!(
                                            "is required: the template lacks the standard 日报 field {missing} that the built-in templates fill"
                                        ),
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        if route.fields.as_ref().is_some_and(BTreeMap::is_empty) {
            push(
                format!("{path}.fields"),
                "is empty; leave it out for the built-in templates".to_owned(),
            );
        }
        for (i, event) in route.events.iter().enumerate() {
            if !PHASES.contains(&event.as_str()) {
                push(
                    format!("{path}.events[{i}]"),
                    format!(
                        "{event:?} is not one of {}{}",
                        PHASES.join(", "),
                        closest(event, PHASES)
                            .map(|c| format!(" (did you mean {c}?)"))
                            .unwrap_or_default()
                    ),
                );
            }
        }
        for (i, status) in route.statuses.iter().enumerate() {
            if status.trim().is_empty() {
                push(format!("{path}.statuses[{i}]"), "is empty".to_owned());
            } else if !STATUSES.contains(&status.trim().to_lowercase().as_str()) {
                let meant = closest(status.trim(), STATUSES)
                    .map(|c| format!(" (did you mean {c}?)"))
                    .unwrap_or_default();
                push(
                    format!("{path}.statuses[{i}]"),
                    format!(
                        "{status:?} is not a status the relay reports; valid: {}{meant}",
                        STATUSES.join(", ")
                    ),
                );
            }
        }
        for (i, glob) in route.branches.iter().enumerate() {
            if let Err(e) = globset::Glob::new(glob) {
                push(
                    format!("{path}.branches[{i}]"),
                    format!("{glob:?} is not a valid glob: {e}"),
                );
            }
        }
        if let Some(digest) = &route.digest {
            digest_issues(&format!("{path}.digest"), route, digest, push);
        }
        if let Some(digest) = &route.quota_digest {
            digest_issues(&format!("{path}.quota_digest"), route, digest, push);
        }
        match (route.on_quota_low, &route.quota_digest) {
            (OnQuotaLow::Digest, _) if route.digest.is_some() => push(
                format!("{path}.on_quota_low"),
                "a digest route already folds every event; use send or hold".to_owned(),
            ),
            (OnQuotaLow::Digest, None) => push(
                format!("{path}.quota_digest"),
                "on_quota_low: digest needs the digest to fold into, e.g. quota_digest: {schedule: \"18:00\"}".to_owned(),
            ),
            (OnQuotaLow::Digest, Some(_)) if route.fields.is_some() => push(
                format!("{path}.fields"),
                "on_quota_low: digest renders the quota digest with the built-in digest templates, which fill the standard 日报 fields; leave fields out or use hold".to_owned(),
            ),
            (OnQuotaLow::Send | OnQuotaLow::Hold, Some(_)) => push(
                format!("{path}.quota_digest"),
                "is used only with on_quota_low: digest".to_owned(),
            ),
            _ => {}
        }
        let _ = mode;
    }

    /// Validates for `mode`, turning the issues into one error.
    pub fn validate(&self, mode: Mode) -> Result<(), ConfigError> {
        let issues = self.issues(mode);
        if issues.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(issues))
        }
    }

    /// The webhook listener address (validated).
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_addr("server.listen", &self.server.listen)
    }

    /// The admin listener address (validated).
    pub fn admin_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_addr("server.admin_listen", &self.server.admin_listen)
    }

    /// The configured time zone (Asia/Shanghai when it does not parse; validation reports it).
    pub fn tz(&self) -> chrono_tz::Tz {
        self.timezone.parse().unwrap_or(chrono_tz::Asia::Shanghai)
    }
}

/// Problems of `routes.<name>.digest`.
fn digest_issues(
    path: &str,
    route: &RouteSettings,
    digest: &DigestSettings,
    push: &mut impl FnMut(String, String),
) {
    if digest.schedule.is_empty() {
        push(
            format!("{path}.schedule"),
            "needs at least one time of day, e.g. \"18:00\"".to_owned(),
        );
    }
    for (i, time) in digest.schedule.iter().enumerate() {
        if parse_time_of_day(time).is_none() {
            push(
                format!("{path}.schedule[{i}]"),
                format!("{time:?} is not a time of day like 18:00 (HH:MM, 24-hour)"),
            );
        }
    }
    for (i, day) in digest.weekdays.iter().enumerate() {
        if !WEEKDAYS.contains(&day.trim().to_lowercase().as_str()) {
            push(
                format!("{path}.weekdays[{i}]"),
                format!("{day:?} is not one of {}", WEEKDAYS.join(", ")),
            );
        }
    }
    if let Some(tz) = &digest.timezone
        && tz.parse::<chrono_tz::Tz>().is_err()
    {
        push(
            format!("{path}.timezone"),
            format!("{tz:?} is not an IANA time zone such as Asia/Shanghai"),
        );
    }
    if digest.max_lines == 0 || digest.max_lines > 1000 {
        push(
            format!("{path}.max_lines"),
            "must be between 1 and 1000".to_owned(),
        );
    }
    if digest.grace > MAX_DURATION {
        push(format!("{path}.grace"), "must be at most 3650d".to_owned());
    }
    if digest.group_by != DigestGroupBy::Author {
        let group_by = digest.group_by.as_str();
        if route.author == "actor" {
            push(
                format!("{path}.group_by"),
                format!(
                    "{group_by} needs a fixed author userid in routes.*.author: a report has one author, and a {group_by} digest folds several people's events"
                ),
            );
        }
        if route.to_userids.iter().any(|u| u == "actor") {
            push(
                format!("{path}.group_by"),
                format!(
                    "{group_by}: to_userids cannot name actor (a {group_by} digest has no single actor)"
                ),
            );
        }
    }
    if digest.send_empty && digest.group_by != DigestGroupBy::Route {
        push(
            format!("{path}.send_empty"),
            "needs group_by: route (other groups are only known from their events)".to_owned(),
        );
    }
}

fn parse_addr(path: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::Invalid(vec![ConfigIssue {
            path: path.to_owned(),
            message: format!("{value:?} is not an address"),
        }])
    })
}

/// The maps keyed by name whose entries must come from a file: an environment variable can set
/// a key of an entry, not create one (it would lack the entry's required keys).
const NAMED_MAPS: [(&str, &str); 2] = [("routes", "route"), ("dingtalk.apps", "app")];

/// Environment overrides that do not fit the files: a variable naming a route or app the files
/// do not define (`DINGTALK_RELAY__ROUTES__CI_SECRET` names a route `ci_secret`), or setting a
/// whole entry. Each issue names the variable and, where one is close, the variable meant.
fn env_misfits<'a>(
    files: &config::Config,
    variables: impl Iterator<Item = &'a String>,
) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    let mut variables: Vec<&String> = variables.collect();
    variables.sort();
    for variable in variables {
        let Some(rest) = variable.strip_prefix(&format!("{ENV_PREFIX}__")) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
        for (map, what) in NAMED_MAPS {
            let depth = map.split('.').count();
            let prefix: Vec<&str> = map.split('.').collect();
            if path.len() <= depth || path[..depth] != prefix[..] {
                continue;
            }
            let names: Vec<String> = files
                .get_table(map)
                .map(|t| t.keys().cloned().collect())
                .unwrap_or_default();
            let name = &path[depth];
            let mut sorted = names.clone();
            sorted.sort();
            let known = if sorted.is_empty() {
                "none".to_owned()
            } else {
                sorted.join(", ")
            };
            if !names.contains(name) {
                // `ROUTES__CI_SECRET`: a known entry name, then `_` where `__` was meant.
                let meant = sorted.iter().find_map(|entry| {
                    let key = name.strip_prefix(&format!("{entry}_"))?;
                    Some(format!(
                        "; did you mean {ENV_PREFIX}__{}__{}__{}?",
                        map.replace('.', "__").to_uppercase(),
                        entry.to_uppercase(),
                        key.to_uppercase()
                    ))
                });
                issues.push(ConfigIssue {
                    path: variable.clone(),
                    message: format!(
                        "sets {}, but the configuration file defines no {what} {name:?} ({map}: {known}); an environment variable can only set keys of {what}s the file defines{}",
                        path.join("."),
                        meant.unwrap_or_default()
                    ),
                });
            } else if path.len() == depth + 1 {
                issues.push(ConfigIssue {
                    path: variable.clone(),
                    message: format!(
                        "sets the whole {what} {map}.{name}; set one of its keys, e.g. {variable}__SECRET"
                    ),
                });
            }
        }
    }
    issues
}

/// A loading error in words an operator can act on: an unknown enum value lists the valid
/// ones, and a key set from the environment names its variable.
fn explain_load_error(error: &config::ConfigError, env: &config::Map<String, String>) -> String {
    let mut text = error.to_string();
    // config's wording for an unknown variant: "enum X does not have variant constructor v".
    if let Some(at) = text.find("does not have variant constructor ") {
        let enum_name = text[..at]
            .trim_end()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_owned();
        let after = &text[at + "does not have variant constructor ".len()..];
        let value = after.split(' ').next().unwrap_or_default().to_owned();
        let key = after
            .split_once("for key `")
            .and_then(|(_, k)| k.split('`').next())
            .unwrap_or_default()
            .to_owned();
        if let Some(valid) = enum_values(&enum_name) {
            let closest = closest(&value, valid.iter().copied())
                .map(|c| format!(" (did you mean {c}?)"))
                .unwrap_or_default();
            text = format!(
                "{key}: {value:?} is not a valid value; valid: {}{closest}",
                valid.join(", ")
            );
        }
    }
    for variable in env.keys() {
        let Some(rest) = variable.strip_prefix(&format!("{ENV_PREFIX}__")) else {
            continue;
        };
        let path = rest
            .split("__")
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
            .join(".");
        if text.contains(&format!("`{path}`")) || text.contains(&format!("{path}:")) {
            text.push_str(&format!(" (set by the environment variable {variable})"));
        }
    }
    text
}

/// The configuration names of an enum the configuration uses, by its Rust name.
fn enum_values(name: &str) -> Option<&'static [&'static str]> {
    match name {
        "SourceKind" => Some(&[
            "generic",
            "github",
            "gitlab",
            "gitea",
            "forgejo",
            "jenkins",
            "circleci",
            "buildkite",
            "drone",
            "azure-devops",
            "bitbucket",
        ]),
        "LogFormat" => Some(&["text", "json"]),
        "DigestGroupBy" => Some(&["author", "project", "route"]),
        _ => None,
    }
}

/// The candidate closest to `word` by edit distance, when it is close enough to be a typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= (c.chars().count() / 2).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance in characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

fn yaml_file(path: &Path) -> config::File<config::FileSourceFile, config::FileFormat> {
    config::File::from(path).format(config::FileFormat::Yaml)
}

fn join_keys<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    let keys: Vec<&str> = keys.map(String::as_str).collect();
    if keys.is_empty() {
        "none".to_owned()
    } else {
        keys.join(", ")
    }
}

/// Route and app names are lower-case so that environment overrides reach them.
fn check_name(path: &str, name: &str, push: &mut impl FnMut(String, String)) {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        push(
            path.to_owned(),
            "names must be lower-case letters, digits, '-' or '_'".to_owned(),
        );
    }
}

/// The kinds of store a `store.url` can select.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// `memory:`
    Memory,
    /// `sqlite://PATH`
    Sqlite(String),
    /// `postgres://…` or `postgresql://…`
    Postgres(String),
}

/// Parses `store.url`.
pub fn store_kind(url: &str) -> Result<StoreKind, String> {
    if url == "memory:" || url == "memory" {
        Ok(StoreKind::Memory)
    } else if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            Err("sqlite:// needs a path, e.g. sqlite://data/relay.db".to_owned())
        } else {
            Ok(StoreKind::Sqlite(path.to_owned()))
        }
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(StoreKind::Postgres(url.to_owned()))
    } else {
        Err(
            "must start with sqlite://, postgres:// or be memory: (e.g. sqlite://data/relay.db)"
                .to_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
server: {listen: "127.0.0.1:8080", admin_listen: "127.0.0.1:8081"}
dingtalk:
  apps:
    default: {app_key: "k"}
store: {url: "memory:"}
delivery: {}
routes:
  ci:
    source: generic
    secret: "s3cret"
    template: {name: "日报"}
    author: "manager01"
"#;

    fn settings(extra: &str) -> Settings {
        Settings::from_yaml(&format!("{BASE}{extra}")).expect("test yaml parses")
    }

    #[test]
    fn quota_settings_parse_and_are_checked() {
        let s = settings("");
        assert_eq!(s.dingtalk.quota, QuotaSettings::default());
        assert_eq!(s.routes["ci"].on_quota_low, OnQuotaLow::Send);
        let quota = |q: &str| {
            Settings::from_yaml(&BASE.replace(
                "    default: {app_key: \"k\"}\n",
                &format!("    default: {{app_key: \"k\"}}\n  quota: {q}\n"),
            ))
            .expect("test yaml parses")
        };
        let s = quota("{monthly: 5000, warn_at: 0.8, reserve: 250, hold_recheck: 30s}");
        assert_eq!(s.dingtalk.quota.monthly, Some(5000));
        assert_eq!(s.dingtalk.quota.hold_recheck, Duration::from_secs(30));
        assert!(
            s.issues(Mode::Offline).is_empty(),
            "{:?}",
            s.issues(Mode::Offline)
        );
        for (q, path) in [
            ("{monthly: 0}", "dingtalk.quota.monthly"),
            ("{monthly: 100, reserve: 100}", "dingtalk.quota.reserve"),
            ("{warn_at: 0}", "dingtalk.quota.warn_at"),
            ("{warn_at: 1.5}", "dingtalk.quota.warn_at"),
            ("{timezone: Mars/Base}", "dingtalk.quota.timezone"),
            ("{hold_recheck: 4000d}", "dingtalk.quota.hold_recheck"),
        ] {
            let issues = quota(q).issues(Mode::Offline);
            assert!(issues.iter().any(|i| i.path == path), "{q}: {issues:?}");
        }
        assert!(Settings::from_yaml(&format!("{BASE}    on_quota_low: later\n")).is_err());
        let ok = settings("    on_quota_low: digest\n    quota_digest: {schedule: \"18:00\"}\n");
        assert!(
            ok.issues(Mode::Offline).is_empty(),
            "{:?}",
            ok.issues(Mode::Offline)
        );
        for (extra, path) in [
            ("    on_quota_low: digest\n", "routes.ci.quota_digest"),
            (
                "    on_quota_low: digest\n    quota_digest: {schedule: \"6pm\"}\n",
                "routes.ci.quota_digest.schedule[0]",
            ),
            (
                "    on_quota_low: digest\n    digest: {schedule: \"18:00\"}\n",
                "routes.ci.on_quota_low",
            ),
            (
                "    on_quota_low: digest\n    quota_digest: {schedule: \"18:00\"}\n    fields: {今日完成工作: \"x\"}\n",
                "routes.ci.fields",
            ),
            (
                "    on_quota_low: hold\n    quota_digest: {schedule: \"18:00\"}\n",
                "routes.ci.quota_digest",
            ),
        ] {
            let issues = settings(extra).issues(Mode::Offline);
            assert!(issues.iter().any(|i| i.path == path), "{extra}: {issues:?}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let s = settings("");
        let debug = format!("{s:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("[redacted]"));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Settings::from_yaml(&format!("{BASE}\nbogus: 1\n")).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err =
            Settings::from_yaml(&BASE.replace("author:", "autor: x\n    author:")).unwrap_err();
        assert!(err.to_string().contains("autor"), "{err}");
    }

    #[test]
    fn durations_parse() {
        let s = Settings::from_yaml(&BASE.replace(
            "delivery: {}",
            "delivery: {initial_backoff: 30s, max_backoff: 5m, dedup_window: 2h}",
        ))
        .unwrap();
        assert_eq!(s.delivery.initial_backoff, Duration::from_secs(30));
        assert_eq!(s.delivery.max_backoff, Duration::from_secs(300));
        assert_eq!(s.delivery.dedup_window, Duration::from_secs(7200));
    }

    #[test]
    fn cross_field_issues_name_the_key_path() {
        let cases: &[(&str, &str, &str)] = &[
            ("app", "    app: other\n", "routes.ci.app"),
            ("both", "", "routes.ci.template"),
            ("events", "    events: [finished]\n", "routes.ci.events[0]"),
            ("glob", "    branches: [\"[\"]\n", "routes.ci.branches[0]"),
        ];
        for (label, extra, path) in cases {
            let yaml = if *label == "both" {
                BASE.replace("{name: \"日报\"}", "{name: \"日报\", id: \"x\"}")
            } else {
                format!("{BASE}{extra}")
            };
            let s = Settings::from_yaml(&yaml).unwrap();
            let issues = s.issues(Mode::Offline);
            assert!(
                issues.iter().any(|i| i.path == *path),
                "{label}: {issues:?}"
            );
        }
    }

    #[test]
    fn digest_settings_parse_and_are_checked() {
        let s = settings("    digest: {schedule: \"18:00\"}\n");
        let digest = s.routes["ci"].digest.clone().unwrap();
        assert_eq!(digest.schedule, vec!["18:00"]);
        assert_eq!(digest.group_by, DigestGroupBy::Author);
        assert_eq!(digest.max_lines, 20);
        assert_eq!(digest.grace, Duration::from_secs(6 * 3600));
        assert!(
            s.issues(Mode::Offline).is_empty(),
            "{:?}",
            s.issues(Mode::Offline)
        );
        let s = settings(
            "    digest: {schedule: [\"09:30\", \"18:00\"], weekdays: [mon, FRI], timezone: Europe/Berlin, group_by: project, grace: 2h}\n",
        );
        assert!(
            s.issues(Mode::Offline).is_empty(),
            "{:?}",
            s.issues(Mode::Offline)
        );
        let cases: &[(&str, &str)] = &[
            ("{schedule: \"25:00\"}", "routes.ci.digest.schedule[0]"),
            ("{schedule: \"6pm\"}", "routes.ci.digest.schedule[0]"),
            ("{schedule: []}", "routes.ci.digest.schedule"),
            (
                "{schedule: \"18:00\", weekdays: [someday]}",
                "routes.ci.digest.weekdays[0]",
            ),
            (
                "{schedule: \"18:00\", timezone: Mars/Base}",
                "routes.ci.digest.timezone",
            ),
            (
                "{schedule: \"18:00\", max_lines: 0}",
                "routes.ci.digest.max_lines",
            ),
            (
                "{schedule: \"18:00\", grace: 4000d}",
                "routes.ci.digest.grace",
            ),
            (
                "{schedule: \"18:00\", send_empty: true}",
                "routes.ci.digest.send_empty",
            ),
        ];
        for (digest, path) in cases {
            let s = settings(&format!("    digest: {digest}\n"));
            let issues = s.issues(Mode::Offline);
            assert!(
                issues.iter().any(|i| i.path == *path),
                "{digest}: {issues:?}"
            );
        }
        // A project or route digest folds several people's events: one author is needed.
        let s = Settings::from_yaml(&format!(
            "{}    digest: {{schedule: \"18:00\", group_by: project}}\n",
            BASE.replace("author: \"manager01\"", "author: actor")
        ))
        .unwrap();
        let issues = s.issues(Mode::Offline);
        assert!(
            issues.iter().any(|i| i.path == "routes.ci.digest.group_by"),
            "{issues:?}"
        );
        let err = Settings::from_yaml(&format!(
            "{BASE}    digest: {{schedule: \"18:00\", group_by: team}}\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("team"), "{err}");
    }

    #[test]
    fn rate_limits_must_be_positive() {
        for (extra, path) in [
            ("{per_second: 0}", "routes.ci.rate_limit.per_second"),
            ("{per_second: -2}", "routes.ci.rate_limit.per_second"),
            ("{per_second: 5, burst: 0}", "routes.ci.rate_limit.burst"),
        ] {
            let s = settings(&format!("    rate_limit: {extra}\n"));
            let issues = s.issues(Mode::Offline);
            assert!(issues.iter().any(|i| i.path == path), "{extra}: {issues:?}");
        }
        let err = Settings::from_yaml(&format!(
            "{BASE}    rate_limit: {{per_second: 5, burst: -1}}\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("burst"), "{err}");
        let s = settings("    rate_limit: {per_second: 0.5}\n");
        assert!(s.issues(Mode::Offline).is_empty());
        assert_eq!(s.routes["ci"].rate_limit.unwrap().burst(), 1);
    }

    #[test]
    fn server_timeouts_must_be_positive() {
        let s = settings("").server;
        assert_eq!(s.header_read_timeout, Duration::from_secs(10));
        let s = Settings::from_yaml(&BASE.replace(
            "admin_listen: \"127.0.0.1:8081\"}",
            "admin_listen: \"127.0.0.1:8081\", header_read_timeout: 0s, request_timeout: 0s}",
        ))
        .unwrap();
        let issues = s.issues(Mode::Offline);
        for path in ["server.header_read_timeout", "server.request_timeout"] {
            assert!(issues.iter().any(|i| i.path == path), "{path}: {issues:?}");
        }
    }

    #[test]
    fn production_requires_app_secret_and_route_secret() {
        let s = Settings::from_yaml(&BASE.replace("    secret: \"s3cret\"\n", "")).unwrap();
        let issues = s.issues(Mode::Production);
        assert!(
            issues
                .iter()
                .any(|i| i.path == "dingtalk.apps.default.app_secret")
        );
        assert!(issues.iter().any(|i| i.path == "routes.ci.secret"));
        assert!(
            s.issues(Mode::Sandbox).is_empty(),
            "{:?}",
            s.issues(Mode::Sandbox)
        );
    }

    #[test]
    fn weak_secrets_are_refused_naming_the_key() {
        // (server.admin_token, routes.ci.secret, the paths that must be named)
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "\"   \"",
                "\" \\t \"",
                &["server.admin_token", "routes.ci.secret"],
            ),
            ("\"\"", "\"\"", &["server.admin_token", "routes.ci.secret"]),
            ("\"short-token\"", "\"s3cret\"", &["server.admin_token"]),
            ("\"exactly-16-chars\"", "\"s3cret\"", &[]),
            ("~", "\"s3cret\"", &[]),
        ];
        for (token, secret, expected) in cases {
            let yaml = BASE
                .replace(
                    "    secret: \"s3cret\"\n",
                    &format!("    secret: {secret}\n"),
                )
                .replace(
                    "admin_listen: \"127.0.0.1:8081\"}",
                    &format!("admin_listen: \"127.0.0.1:8081\", admin_token: {token}}}"),
                );
            let s = Settings::from_yaml(&yaml).unwrap();
            let issues = s.issues(Mode::Production);
            for path in ["server.admin_token", "routes.ci.secret"] {
                assert_eq!(
                    issues.iter().any(|i| i.path == path),
                    expected.contains(&path),
                    "{token} {secret}: {issues:?}"
                );
            }
        }
    }

    #[test]
    fn id_templates_check_mapped_fields() {
        let yaml = BASE.replace(
            "{name: \"日报\"}",
            "{id: \"t1\", fields: [{name: \"A\", sort: 0}, {name: \"B\", sort: 1, type: 5}]}",
        ) + "    fields: {A: \"x\", B: \"y\", C: \"z\"}\n";
        let s = Settings::from_yaml(&yaml).unwrap();
        let issues = s.issues(Mode::Offline);
        assert!(
            issues.iter().any(|i| i.path == "routes.ci.fields.C"),
            "{issues:?}"
        );
        assert!(
            issues.iter().any(|i| i.path == "routes.ci.fields.B"),
            "{issues:?}"
        );
        assert!(!issues.iter().any(|i| i.path == "routes.ci.fields.A"));
    }

    #[test]
    fn env_overrides_reach_nested_maps() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, BASE).unwrap();
        let env = vec![
            (
                "DINGTALK_RELAY__DINGTALK__APPS__DEFAULT__APP_SECRET".to_owned(),
                "from-env".to_owned(),
            ),
            (
                "DINGTALK_RELAY__DINGTALK__MAX_QPS".to_owned(),
                "7".to_owned(),
            ),
            (
                "DINGTALK_RELAY__ROUTES__CI__SECRET".to_owned(),
                "12345".to_owned(),
            ),
        ];
        let s = Settings::load_with_env(Some(&file), env).unwrap();
        assert_eq!(
            s.dingtalk.apps["default"]
                .app_secret
                .as_ref()
                .unwrap()
                .expose(),
            "from-env"
        );
        assert_eq!(s.dingtalk.max_qps, 7);
        assert_eq!(s.routes["ci"].secret.as_ref().unwrap().expose(), "12345");
    }

    /// Loads `yaml` from a file with `env` (pairs of name and value).
    fn load_yaml_env(yaml: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, yaml).unwrap();
        Settings::load_with_env(
            Some(&file),
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
    }

    const SMALL: &str = r#"
dingtalk:
  apps:
    default: {app_key: "k"}
routes:
  ci:
    source: generic
    secret: "s3cret"
    template: {name: "日报"}
    author: "manager01"
"#;

    #[test]
    fn a_file_holds_only_what_differs_from_the_built_in_defaults() {
        let small = load_yaml_env(SMALL, &[]).expect("a file without server/store/delivery");
        assert!(
            small.issues(Mode::Sandbox).is_empty(),
            "{:?}",
            small.issues(Mode::Sandbox)
        );
        // The built-in defaults are the values config/default.yaml documents.
        let documented = Settings::load_with_env(
            Some(Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/config/default.yaml"
            ))),
            std::iter::empty(),
        )
        .unwrap();
        let json = |v: &Settings| serde_json::to_value(v).unwrap();
        let (small, documented) = (json(&small), json(&documented));
        for section in ["server", "store", "delivery", "log", "timezone"] {
            assert_eq!(small[section], documented[section], "{section}");
        }
        let mut dingtalk = documented["dingtalk"].clone();
        dingtalk["apps"] = small["dingtalk"]["apps"].clone();
        assert_eq!(small["dingtalk"], dingtalk);
        // The environment comes last, over the defaults too.
        let s = load_yaml_env(
            SMALL,
            &[("DINGTALK_RELAY__SERVER__LISTEN", "127.0.0.1:9999")],
        )
        .unwrap();
        assert_eq!(s.server.listen, "127.0.0.1:9999");
        assert_eq!(s.server.admin_listen, "0.0.0.0:8081");
    }

    #[test]
    fn environment_overrides_that_do_not_fit_name_the_variable() {
        let Err(ConfigError::Invalid(issues)) = load_yaml_env(
            SMALL,
            &[
                ("DINGTALK_RELAY__ROUTES__CI_SECRET", "x"),
                ("DINGTALK_RELAY__ROUTES__DEPLOY__SECRET", "y"),
                ("DINGTALK_RELAY__DINGTALK__APPS__OTHER__APP_SECRET", "z"),
            ],
        ) else {
            panic!("accepted");
        };
        let text: Vec<String> = issues.iter().map(ToString::to_string).collect();
        assert_eq!(issues.len(), 3, "{text:#?}");
        assert!(
            text[0].starts_with("DINGTALK_RELAY__DINGTALK__APPS__OTHER__APP_SECRET: ")
                && text[0].contains("no app \"other\""),
            "{text:#?}"
        );
        assert!(
            text[1].starts_with("DINGTALK_RELAY__ROUTES__CI_SECRET: ")
                && text[1].contains("did you mean DINGTALK_RELAY__ROUTES__CI__SECRET?"),
            "{text:#?}"
        );
        assert!(
            text[2].starts_with("DINGTALK_RELAY__ROUTES__DEPLOY__SECRET: ")
                && text[2].contains("(routes: ci)"),
            "{text:#?}"
        );
        // A value of the wrong type names its variable.
        let Err(ConfigError::Load(message)) =
            load_yaml_env(SMALL, &[("DINGTALK_RELAY__DINGTALK__MAX_QPS", "many")])
        else {
            panic!("accepted");
        };
        assert!(
            message.contains("DINGTALK_RELAY__DINGTALK__MAX_QPS"),
            "{message}"
        );
        // Secrets never reach the message.
        assert!(!message.contains("s3cret"), "{message}");
    }

    #[test]
    fn an_unknown_enum_value_lists_the_valid_ones() {
        let Err(ConfigError::Load(message)) =
            load_yaml_env(&SMALL.replace("source: generic", "source: githb"), &[])
        else {
            panic!("accepted");
        };
        assert!(
            message.contains(
                "routes.ci.source: \"githb\" is not a valid value; valid: generic, github, gitlab"
            ) && message.contains("did you mean github?"),
            "{message}"
        );
        let Err(ConfigError::Load(message)) =
            load_yaml_env(SMALL, &[("DINGTALK_RELAY__LOG__FORMAT", "xml")])
        else {
            panic!("accepted");
        };
        assert!(
            message.contains("valid: text, json")
                && message.contains("DINGTALK_RELAY__LOG__FORMAT"),
            "{message}"
        );
    }

    #[test]
    fn statuses_and_events_outside_the_vocabulary_are_errors() {
        let s = settings("    statuses: [failed, Success]\n    events: [complete]\n");
        let issues: Vec<String> = s
            .issues(Mode::Sandbox)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(issues.len(), 2, "{issues:#?}");
        assert!(
            issues
                .iter()
                .any(|i| i.starts_with("routes.ci.statuses[0]: \"failed\"")
                    && i.contains("valid: success, failure, cancelled")
                    && i.contains("did you mean failure?")),
            "{issues:#?}"
        );
        assert!(
            issues
                .iter()
                .any(|i| i.starts_with("routes.ci.events[0]")
                    && i.contains("did you mean completed?")),
            "{issues:#?}"
        );
    }

    #[test]
    fn print_form_redacts_every_secret() {
        let s = load_yaml_env(
            &SMALL.replace("k\"}", "k\", app_secret: \"app-s3cret\"}"),
            &[("DINGTALK_RELAY__SERVER__ADMIN_TOKEN", "adm1n-t0ken")],
        )
        .unwrap();
        let text = serde_json::to_string(&s).unwrap();
        for secret in ["app-s3cret", "adm1n-t0ken", "s3cret\""] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(text.matches("[redacted]").count(), 3, "{text}");
    }

    #[test]
    fn secrets_are_read_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("app_secret");
        let route = dir.path().join("route_secret");
        let token = dir.path().join("admin_token");
        std::fs::write(&app, "app-from-file\n").unwrap();
        std::fs::write(&route, "route-from-file").unwrap();
        std::fs::write(&token, "token-from-file-0123456789\r\n").unwrap();
        let yaml = SMALL
            .replace(
                "{app_key: \"k\"}",
                &format!("{{app_key: \"k\", app_secret_file: \"{}\"}}", app.display()),
            )
            .replace(
                "    secret: \"s3cret\"\n",
                &format!("    secret_file: \"{}\"\n", route.display()),
            );
        let s = load_yaml_env(
            &yaml,
            &[(
                "DINGTALK_RELAY__SERVER__ADMIN_TOKEN_FILE",
                token.to_str().unwrap(),
            )],
        )
        .unwrap();
        let expose = |s: &Option<Secret>| s.as_ref().unwrap().expose().to_owned();
        assert_eq!(
            expose(&s.dingtalk.apps["default"].app_secret),
            "app-from-file"
        );
        assert_eq!(expose(&s.routes["ci"].secret), "route-from-file");
        assert_eq!(expose(&s.server.admin_token), "token-from-file-0123456789");
        assert!(
            s.issues(Mode::Production).is_empty(),
            "{:?}",
            s.issues(Mode::Production)
        );

        // Both ways, a missing file, an empty file: each names its key and path.
        std::fs::write(&route, "\n").unwrap();
        let both = yaml.replace(
            "{app_key: \"k\", ",
            "{app_key: \"k\", app_secret: \"inline\", ",
        );
        let missing = dir.path().join("nope");
        let Err(ConfigError::Invalid(issues)) = load_yaml_env(
            &both,
            &[(
                "DINGTALK_RELAY__SERVER__ADMIN_TOKEN_FILE",
                missing.to_str().unwrap(),
            )],
        ) else {
            panic!("accepted");
        };
        let text: Vec<String> = issues.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:#?}");
        assert!(
            text[0].starts_with("server.admin_token_file: cannot read ")
                && text[0].contains("nope"),
            "{text:#?}"
        );
        assert!(
            text[1].starts_with("dingtalk.apps.default.app_secret: is set, and so is"),
            "{text:#?}"
        );
        assert!(
            text[2].starts_with("routes.ci.secret_file: ") && text[2].ends_with("is empty"),
            "{text:#?}"
        );
        assert!(!text.concat().contains("app-from-file") && !text.concat().contains("inline"));
    }
}
