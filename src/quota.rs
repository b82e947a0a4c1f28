//! The monthly quota budget: [`Quota`] counts every metered DingTalk call (report/create,
//! uncached template/getbyname, report/list; gettoken is exempt) per quota month, API and
//! route in the store, so that restarts and every replica sharing a PostgreSQL store see one
//! count; it says how much is spent and how much the month will need at its rate so far
//! (`/v1/quota`, metrics, `/readyz`), and decides whether a delivery may spend a call now: a
//! route with `on_quota_low: hold` waits once the remaining budget is at or below the reserve,
//! and every route waits once DingTalk answered 90020, until the month turns.
//!
//! The month turns at midnight on the 1st in `dingtalk.quota.timezone` (DingTalk's own:
//! Asia/Shanghai). The clock is passed in, so tests can stand on either side of it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::Serialize;

use crate::config::{OnQuotaLow, QuotaSettings};
use crate::dingtalk::{self, Ledger, ResolvedTemplate};
use crate::metrics::Metrics;
use crate::store::{self, MonthUse, QuotaStore, TemplateKey};

/// The APIs DingTalk meters against the monthly quota (metric label values).
pub const METERED: [&str; 3] = [
    dingtalk::api::REPORT_CREATE,
    dingtalk::api::TEMPLATE_GETBYNAME,
    dingtalk::api::REPORT_LIST,
];

/// The route label of calls made outside a route's delivery (e.g. startup template checks
/// are attributed to their route; nothing else should be).
pub const NO_ROUTE: &str = "-";

/// What time it is (passed in so tests can move it).
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The real clock.
pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

tokio::task_local! {
    // The route whose work the current task does. A task-local rather than a parameter: the
    // DingTalk client knows nothing of routes, yet each call it makes is counted by route.
    static ROUTE: String;
}

/// Runs `work` with its metered calls counted for `route`.
pub async fn spending_for<F: std::future::Future>(route: &str, work: F) -> F::Output {
    ROUTE.scope(route.to_owned(), work).await
}

fn current_route() -> String {
    ROUTE
        .try_with(Clone::clone)
        .unwrap_or_else(|_| NO_ROUTE.to_owned())
}

/// How long a decision may rest on what the store said before it is read again (other
/// replicas' calls, their 90020).
const FRESH_FOR: Duration = Duration::from_secs(2);

/// The quota month of `at` in `tz`: `YYYY-MM`.
pub fn month_of(at: DateTime<Utc>, tz: chrono_tz::Tz) -> String {
    let local = at.with_timezone(&tz);
    format!("{:04}-{:02}", local.year(), local.month())
}

/// The first instant of the month of `at` in `tz`, and of the next one.
pub fn month_bounds(at: DateTime<Utc>, tz: chrono_tz::Tz) -> (DateTime<Utc>, DateTime<Utc>) {
    let local = at.with_timezone(&tz);
    let first = NaiveDate::from_ymd_opt(local.year(), local.month(), 1).unwrap_or_default();
    let next = first
        .checked_add_months(chrono::Months::new(1))
        .unwrap_or(first);
    let start = |day: NaiveDate| {
        // Midnight exists in every IANA zone on the 1st except in a few historic transitions;
        // `earliest` then takes the first valid instant of that day.
        tz.from_local_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default())
            .earliest()
            .map_or(at, |t| t.with_timezone(&Utc))
    };
    (start(first), start(next))
}

/// What a delivery may do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Spend the call.
    Send,
    /// Stay queued for `wait` (then look again), with the reason shown on the delivery.
    Hold {
        /// Why (`quota_hold: …` or `quota_exhausted: …`).
        reason: String,
        /// Until it looks again.
        wait: Duration,
    },
}

/// The month's state as `/v1/quota` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QuotaStatus {
    /// `YYYY-MM` in `timezone`.
    pub month: String,
    /// Zone the month turns in.
    pub timezone: String,
    /// Metered calls this month (all replicas).
    pub used: u64,
    /// `dingtalk.quota.monthly` (`null`: count only).
    pub limit: Option<u64>,
    /// `dingtalk.quota.reserve`.
    pub reserve: u64,
    /// `limit - used` (0 at least), when a limit is set.
    pub remaining: Option<u64>,
    /// Calls by API.
    pub by_api: BTreeMap<String, u64>,
    /// Calls by route (then API).
    pub by_route: BTreeMap<String, BTreeMap<String, u64>>,
    /// Days until the month turns (fractional).
    pub days_left: f64,
    /// When the month turns.
    pub resets_at: DateTime<Utc>,
    /// Month-end use at the rate so far.
    pub projected: u64,
    /// Whether the remaining budget is at or below the reserve.
    pub reserve_reached: bool,
    /// When DingTalk answered 90020 this month, and what it said.
    pub exhausted: Option<ExhaustedStatus>,
    /// `/readyz` warnings.
    pub warnings: Vec<String>,
}

/// DingTalk's 90020 for the month.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExhaustedStatus {
    /// First seen.
    pub at: DateTime<Utc>,
    /// DingTalk's error.
    pub detail: String,
}

/// The month as last read from the store, with this process's calls since.
struct Snapshot {
    month: String,
    used: MonthUse,
    read_at: tokio::time::Instant,
}

/// Counts and protects the monthly quota. Shared by the client (as its [`Ledger`]), the
/// workers and the admin API; the settings are swapped on reload.
pub struct Quota {
    store: Arc<dyn QuotaStore>,
    clock: Clock,
    metrics: Metrics,
    settings: ArcSwap<QuotaSettings>,
    snapshot: tokio::sync::Mutex<Option<Snapshot>>,
    /// Calls the store failed to count, added on the next success (nothing counted is lost).
    unsaved: std::sync::Mutex<HashMap<(String, String, String), u64>>,
}

impl Quota {
    /// A quota counted in `store`, with `settings`, reading the time from `clock`.
    pub fn new(
        store: Arc<dyn QuotaStore>,
        settings: QuotaSettings,
        clock: Clock,
        metrics: Metrics,
    ) -> Self {
        metrics
            .quota_limit
            .set(settings.monthly.map_or(0, saturating_i64));
        metrics.quota_reserve.set(saturating_i64(settings.reserve));
        Self {
            store,
            clock,
            metrics,
            settings: ArcSwap::from_pointee(settings),
            snapshot: tokio::sync::Mutex::new(None),
            unsaved: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Takes new settings (configuration reload): a raised budget releases held deliveries at
    /// their next look.
    pub fn configure(&self, settings: QuotaSettings) {
        self.metrics
            .quota_limit
            .set(settings.monthly.map_or(0, saturating_i64));
        self.metrics
            .quota_reserve
            .set(saturating_i64(settings.reserve));
        self.settings.store(Arc::new(settings));
    }

    /// The time now, by the clock passed in.
    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    fn month_now(&self) -> (String, DateTime<Utc>) {
        let now = self.now();
        (month_of(now, self.settings.load().tz()), now)
    }

    /// Whether a delivery of `route` (with its policy) may spend a call now.
    pub async fn decide(&self, route: &str, policy: OnQuotaLow) -> store::Result<Decision> {
        let used = self.current(false).await?;
        let settings = self.settings.load();
        let now = self.now();
        let (_, resets_at) = month_bounds(now, settings.tz());
        let wait = (resets_at - now)
            .to_std()
            .unwrap_or_default()
            .min(settings.hold_recheck)
            .max(Duration::from_millis(100));
        if let Some(exhausted) = &used.exhausted {
            return Ok(Decision::Hold {
                reason: format!(
                    "quota_exhausted: DingTalk said the organisation's monthly quota is used up ({}); held until the month turns at {}",
                    exhausted.detail,
                    resets_at.to_rfc3339()
                ),
                wait,
            });
        }
        let total = total(&used);
        if policy == OnQuotaLow::Hold
            && let Some(limit) = settings.monthly
            && limit.saturating_sub(total) <= settings.reserve
        {
            tracing::info!(route, used = total, limit, "quota reserve reached; holding");
            return Ok(Decision::Hold {
                reason: format!(
                    "quota_hold: {total} of the month's {limit} calls used, reserve {} reached; route {route} holds its deliveries until the month turns at {} or dingtalk.quota.monthly is raised",
                    settings.reserve,
                    resets_at.to_rfc3339()
                ),
                wait,
            });
        }
        Ok(Decision::Send)
    }

    /// The month as the store counts it (re-read when older than [`FRESH_FOR`], when the
    /// month turned, or when `fresh`).
    async fn current(&self, fresh: bool) -> store::Result<MonthUse> {
        let (month, _) = self.month_now();
        let mut snapshot = self.snapshot.lock().await;
        if let Some(s) = snapshot.as_ref()
            && !fresh
            && s.month == month
            && s.read_at.elapsed() < FRESH_FOR
        {
            return Ok(s.used.clone());
        }
        self.save_unsaved().await;
        let used = self.store.month(&month).await?;
        self.publish(&used, &month);
        *snapshot = Some(Snapshot {
            month,
            used: used.clone(),
            read_at: tokio::time::Instant::now(),
        });
        Ok(used)
    }

    /// Whether the remaining budget is at or below the reserve, or the month is exhausted
    /// (a store error counts as not low: DingTalk still has the last word).
    pub async fn low(&self) -> bool {
        let Ok(used) = self.current(false).await else {
            return false;
        };
        let settings = self.settings.load();
        used.exhausted.is_some()
            || settings
                .monthly
                .is_some_and(|limit| limit.saturating_sub(total(&used)) <= settings.reserve)
    }

    /// Re-reads the month when the last read is stale (for `/metrics`); a store error is
    /// logged and the gauges keep their last values.
    pub async fn refresh(&self) {
        if let Err(e) = self.current(false).await {
            tracing::warn!(error = %e, "quota unavailable; gauges keep their last values");
        }
    }

    /// The month's status, read from the store now.
    pub async fn status(&self) -> store::Result<QuotaStatus> {
        let used = self.current(true).await?;
        let settings = self.settings.load();
        let now = self.now();
        let tz = settings.tz();
        let (start, resets_at) = month_bounds(now, tz);
        let mut by_api: BTreeMap<String, u64> =
            METERED.iter().map(|api| ((*api).to_owned(), 0)).collect();
        let mut by_route: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for c in &used.calls {
            *by_api.entry(c.api.clone()).or_default() += c.calls;
            *by_route
                .entry(c.route.clone())
                .or_default()
                .entry(c.api.clone())
                .or_default() += c.calls;
        }
        let total = total(&used);
        let projected = projection(total, start, resets_at, now);
        let remaining = settings.monthly.map(|l| l.saturating_sub(total));
        Ok(QuotaStatus {
            month: month_of(now, tz),
            timezone: settings.timezone.clone(),
            used: total,
            limit: settings.monthly,
            reserve: settings.reserve,
            remaining,
            by_api,
            by_route,
            days_left: (resets_at - now).num_seconds().max(0) as f64 / 86_400.0,
            resets_at,
            projected,
            reserve_reached: remaining.is_some_and(|r| r <= settings.reserve),
            exhausted: used.exhausted.as_ref().map(|e| ExhaustedStatus {
                at: e.at,
                detail: e.detail.clone(),
            }),
            warnings: warnings(&settings, total, used.exhausted.is_some(), projected),
        })
    }

    /// Forgets that this month is exhausted (after the organisation was upgraded); whether
    /// it was.
    pub async fn clear_exhausted(&self) -> store::Result<bool> {
        let (month, _) = self.month_now();
        let cleared = self.store.clear_exhausted(&month).await?;
        self.current(true).await?;
        Ok(cleared)
    }

    /// Sets the gauges from a month read from the store.
    fn publish(&self, used: &MonthUse, month: &str) {
        let m = &self.metrics;
        for api in METERED {
            let calls: u64 = used
                .calls
                .iter()
                .filter(|c| c.api == api)
                .map(|c| c.calls)
                .sum();
            m.quota_used
                .with_label_values(&[api])
                .set(saturating_i64(calls));
        }
        m.quota_exhausted.set(i64::from(used.exhausted.is_some()));
        let now = self.now();
        let tz = self.settings.load().tz();
        if month_of(now, tz) == month {
            let (start, end) = month_bounds(now, tz);
            m.quota_projected
                .set(saturating_i64(projection(total(used), start, end, now)));
        }
    }

    async fn save(&self, month: &str, api: &str, route: &str, calls: u64) {
        if let Err(e) = self.store.add_calls(month, api, route, calls).await {
            tracing::warn!(error = %e, api, route, "could not count a DingTalk call; it is counted later");
            *self
                .unsaved
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry((month.to_owned(), api.to_owned(), route.to_owned()))
                .or_default() += calls;
        }
    }

    async fn save_unsaved(&self) {
        let unsaved = std::mem::take(&mut *self.unsaved.lock().unwrap_or_else(|p| p.into_inner()));
        for ((month, api, route), calls) in unsaved {
            self.save(&month, &api, &route, calls).await;
        }
    }
}

/// `/readyz` warnings: past `warn_at`, projected past the budget, exhausted.
fn warnings(settings: &QuotaSettings, used: u64, exhausted: bool, projected: u64) -> Vec<String> {
    let mut out = Vec::new();
    if exhausted {
        out.push(
            "dingtalk quota: DingTalk answered 90020 this month (the organisation's quota is used up); deliveries wait until the month turns".to_owned(),
        );
    }
    if let Some(limit) = settings.monthly {
        let share = used as f64 / limit as f64;
        if share >= settings.warn_at {
            out.push(format!(
                "dingtalk quota: {used} of {limit} calls used this month ({:.0} %, warn_at {:.0} %)",
                share * 100.0,
                settings.warn_at * 100.0
            ));
        }
        if projected > limit && !exhausted {
            out.push(format!(
                "dingtalk quota: projected {projected} calls by month end at this rate, over the {limit} budgeted"
            ));
        }
    }
    out
}

fn total(used: &MonthUse) -> u64 {
    used.calls.iter().map(|c| c.calls).sum()
}

/// Month-end use if the rest of the month goes like the part so far (`used` when less than an
/// hour has passed: too little to extrapolate from).
pub fn projection(used: u64, start: DateTime<Utc>, end: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    let elapsed = (now - start).num_seconds();
    let length = (end - start).num_seconds();
    if elapsed < 3600 || length <= 0 {
        return used;
    }
    let projected = used as f64 * length as f64 / elapsed.min(length) as f64;
    projected.ceil().min(u64::MAX as f64) as u64
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[async_trait]
impl Ledger for Quota {
    async fn spent(&self, api: &'static str) {
        let (month, _) = self.month_now();
        let route = current_route();
        self.save_unsaved().await;
        self.save(&month, api, &route, 1).await;
        if let Some(s) = self.snapshot.lock().await.as_mut()
            && s.month == month
        {
            match s
                .used
                .calls
                .iter_mut()
                .find(|c| c.api == api && c.route == route)
            {
                Some(c) => c.calls += 1,
                None => s.used.calls.push(store::QuotaCalls {
                    api: api.to_owned(),
                    route,
                    calls: 1,
                }),
            }
            self.publish(&s.used.clone(), &month);
        }
    }

    async fn exhausted(&self, detail: &str) {
        let (month, now) = self.month_now();
        tracing::error!(
            month,
            detail,
            "DingTalk says the organisation's monthly quota is used up; every replica holds deliveries until the month turns"
        );
        if let Err(e) = self.store.mark_exhausted(&month, now, detail).await {
            tracing::warn!(error = %e, "could not record the exhausted quota in the store");
        }
        if let Some(s) = self.snapshot.lock().await.as_mut()
            && s.month == month
            && s.used.exhausted.is_none()
        {
            s.used.exhausted = Some(store::Exhausted {
                at: now,
                detail: detail.to_owned(),
            });
        }
        self.metrics.quota_exhausted.set(1);
    }

    async fn template(
        &self,
        app_key: &str,
        name: &str,
        owner: &str,
    ) -> Option<(ResolvedTemplate, Duration)> {
        let key = TemplateKey {
            app_key,
            name,
            owner,
        };
        // Template expiry is real time, not the quota clock: it is about DingTalk edits.
        let now = Utc::now();
        let kept = match self.store.template(key, now).await {
            Ok(kept) => kept?,
            Err(e) => {
                tracing::warn!(error = %e, "cached templates unavailable; looking the template up");
                return None;
            }
        };
        let (template, expires_at): (ResolvedTemplate, DateTime<Utc>) = match serde_json::from_str(
            &kept,
        ) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, name, "a cached template is unreadable; looking it up again");
                return None;
            }
        };
        let left = (expires_at - now).to_std().ok()?;
        Some((template, left))
    }

    async fn keep_template(
        &self,
        app_key: &str,
        name: &str,
        owner: &str,
        template: &ResolvedTemplate,
        ttl: Duration,
    ) {
        let expires_at = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default();
        let Ok(json) = serde_json::to_string(&(template, expires_at)) else {
            return;
        };
        let key = TemplateKey {
            app_key,
            name,
            owner,
        };
        if let Err(e) = self.store.keep_template(key, &json, expires_at).await {
            tracing::warn!(error = %e, name, "could not keep the resolved template in the store");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_month_turns_at_midnight_in_the_zone() {
        let tz = chrono_tz::Asia::Shanghai;
        // 23:59:59 on 30 November in Shanghai is 15:59:59 UTC.
        assert_eq!(month_of(at("2026-11-30T15:59:59Z"), tz), "2026-11");
        assert_eq!(month_of(at("2026-11-30T16:00:00Z"), tz), "2026-12");
        let (start, next) = month_bounds(at("2026-12-04T19:00:00Z"), tz);
        assert_eq!(start, at("2026-11-30T16:00:00Z"));
        assert_eq!(next, at("2026-12-31T16:00:00Z"));
        let (start, next) = month_bounds(at("2026-12-31T16:00:00Z"), tz);
        assert_eq!(start, at("2026-12-31T16:00:00Z"));
        assert_eq!(next, at("2027-01-31T16:00:00Z"));
        assert_eq!(
            month_of(at("2026-11-30T16:00:00Z"), chrono_tz::UTC),
            "2026-11"
        );
    }

    #[test]
    fn projection_extrapolates_the_rate_so_far() {
        let start = at("2026-11-01T00:00:00Z");
        let end = at("2026-12-01T00:00:00Z");
        // A third of the month, 1000 calls: 3000 by its end.
        assert_eq!(
            projection(1000, start, end, at("2026-11-11T00:00:00Z")),
            3000
        );
        // Too early to tell.
        assert_eq!(projection(7, start, end, at("2026-11-01T00:10:00Z")), 7);
        assert_eq!(projection(10, start, end, at("2026-12-01T00:00:00Z")), 10);
    }

    fn quota_at(now: &str, settings: QuotaSettings) -> (Quota, Arc<store::MemoryQuota>) {
        let store = Arc::new(store::MemoryQuota::default());
        let now = at(now);
        let quota = Quota::new(
            store.clone(),
            settings,
            Arc::new(move || now),
            Metrics::new(),
        );
        (quota, store)
    }

    #[tokio::test]
    async fn calls_are_counted_for_the_route_whose_work_makes_them() {
        let (quota, store) = quota_at("2026-11-30T16:00:00Z", QuotaSettings::default());
        spending_for("ci", quota.spent(dingtalk::api::REPORT_CREATE)).await;
        spending_for("ci", quota.spent(dingtalk::api::REPORT_CREATE)).await;
        quota.spent(dingtalk::api::TEMPLATE_GETBYNAME).await;
        let december = store.month("2026-12").await.unwrap();
        let calls: Vec<(&str, &str, u64)> = december
            .calls
            .iter()
            .map(|c| (c.api.as_str(), c.route.as_str(), c.calls))
            .collect();
        assert_eq!(
            calls,
            [
                ("report_create", "ci", 2),
                ("template_getbyname", NO_ROUTE, 1)
            ]
        );
        let status = quota.status().await.unwrap();
        assert_eq!((status.month.as_str(), status.used), ("2026-12", 3));
        assert_eq!(status.limit, None);
    }

    #[tokio::test]
    async fn hold_applies_at_the_reserve_and_to_hold_routes_only() {
        let settings = QuotaSettings {
            monthly: Some(3),
            reserve: 1,
            ..QuotaSettings::default()
        };
        // One second before the month turns: a held delivery looks again then.
        let (quota, _) = quota_at("2026-11-30T15:59:59Z", settings);
        quota.spent(dingtalk::api::REPORT_CREATE).await;
        assert_eq!(
            quota.decide("ci", OnQuotaLow::Hold).await.unwrap(),
            Decision::Send
        );
        quota.spent(dingtalk::api::REPORT_CREATE).await;
        assert!(quota.low().await);
        match quota.decide("ci", OnQuotaLow::Hold).await.unwrap() {
            Decision::Hold { reason, wait } => {
                assert!(reason.starts_with("quota_hold:"), "{reason}");
                assert_eq!(wait, Duration::from_secs(1));
            }
            Decision::Send => panic!("not held at the reserve"),
        }
        assert_eq!(
            quota.decide("cd", OnQuotaLow::Send).await.unwrap(),
            Decision::Send
        );
        quota.exhausted("errcode 88 sub_code 90020").await;
        assert!(matches!(
            quota.decide("cd", OnQuotaLow::Send).await.unwrap(),
            Decision::Hold { reason, .. } if reason.starts_with("quota_exhausted:")
        ));
    }

    #[tokio::test]
    async fn kept_templates_come_back_with_the_time_they_have_left() {
        let (quota, _) = quota_at("2026-11-30T16:00:00Z", QuotaSettings::default());
        let template = ResolvedTemplate {
            id: "t1".to_owned(),
            name: "日报".to_owned(),
            fields: Vec::new(),
        };
        assert_eq!(quota.template("k", "日报", "u1").await, None);
        quota
            .keep_template("k", "日报", "u1", &template, Duration::from_secs(600))
            .await;
        let (kept, left) = quota.template("k", "日报", "u1").await.unwrap();
        assert_eq!(kept, template);
        assert!(
            left <= Duration::from_secs(600) && left > Duration::from_secs(590),
            "{left:?}"
        );
        assert_eq!(quota.template("k", "日报", "other").await, None);
        quota
            .keep_template("k", "周报", "u1", &template, Duration::ZERO)
            .await;
        assert_eq!(quota.template("k", "周报", "u1").await, None);
    }

    #[test]
    fn warnings_past_warn_at_and_over_the_projection() {
        let settings = QuotaSettings {
            monthly: Some(5000),
            warn_at: 0.8,
            reserve: 250,
            ..QuotaSettings::default()
        };
        assert!(warnings(&settings, 3999, false, 4000).is_empty());
        let w = warnings(&settings, 4000, false, 4000);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("4000 of 5000"), "{w:?}");
        let w = warnings(&settings, 100, false, 6000);
        assert!(w[0].contains("projected 6000"), "{w:?}");
        let count_only = QuotaSettings {
            monthly: None,
            ..settings
        };
        assert!(warnings(&count_only, 100_000, false, 1_000_000).is_empty());
        assert_eq!(warnings(&count_only, 1, true, 1).len(), 1);
    }
}
