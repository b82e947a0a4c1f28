//! Metrics: the relay's Prometheus series, held in a registry owned by [`Metrics`] (never the
//! global one, so several apps can live in one test binary). Labels come from route, app and API
//! names, never from raw URLs. Every series whose labels the configuration names (routes, apps,
//! DingTalk APIs, outcomes) is exported at 0 from the first scrape ([`Metrics::track`]), so
//! `increase()` sees the first failure.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::config::Settings;
use crate::dingtalk::api;

/// `outcome` values of `dingtalk_relay_webhooks_received_total` for a configured route
/// (`not_found` is only ever counted under the route label `_unknown`).
pub const WEBHOOK_OUTCOMES: &[&str] = &[
    "accepted",
    "duplicate",
    "ignored",
    "invalid",
    "unauthorized",
    "too_large",
    "unsupported_media_type",
    "unavailable",
    "rate_limited",
    "error",
];

/// The route label webhooks to a route that is not configured are counted under.
pub const UNKNOWN_ROUTE: &str = "_unknown";

/// `outcome` values of `dingtalk_relay_deliveries_total`.
pub const DELIVERY_OUTCOMES: &[&str] = &[
    "delivered",
    "retried",
    "failed",
    "duplicate",
    "ambiguous",
    "deferred",
];

/// The DingTalk APIs the relay calls (`api` label).
pub const DINGTALK_APIS: &[&str] = &[
    api::GETTOKEN,
    api::REPORT_CREATE,
    api::TEMPLATE_GETBYNAME,
    api::REPORT_LIST,
];

/// `outcome` values of `dingtalk_relay_dingtalk_requests_total`.
pub const DINGTALK_OUTCOMES: &[&str] = &[
    "ok",
    "errcode",
    "http_error",
    "invalid_body",
    "transport",
    "config",
];

/// `outcome` values of `dingtalk_relay_digests_total`.
pub const DIGEST_OUTCOMES: &[&str] = &["made", "empty", "error"];

/// `reason` values of `dingtalk_relay_webhooks_ignored_total`: a bounded set, whatever the
/// free-text reason in the webhook's answer says.
pub const IGNORE_REASONS: &[&str] = &[
    "source_event",
    "filtered",
    "unknown_actor",
    "empty",
    "unlisted_userid",
];

/// The version and revision (`git rev-parse --short=12 HEAD` at build time, or the
/// `DINGTALK_RELAY_REVISION` environment variable of the build; `unknown` without either) of this
/// binary.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// See [`VERSION`].
pub const REVISION: &str = env!("DINGTALK_RELAY_REVISION");

/// Every series the relay exports (fields through [`Series`]). Cheap to clone: one `Arc`
/// (the application state holding it is cloned for every request).
#[derive(Clone)]
pub struct Metrics(Arc<Series>);

impl std::ops::Deref for Metrics {
    type Target = Series;

    fn deref(&self) -> &Series {
        &self.0
    }
}

/// The series themselves.
pub struct Series {
    registry: Registry,
    /// `dingtalk_relay_webhooks_received_total{route,outcome}`.
    pub webhooks_received: IntCounterVec,
    /// `dingtalk_relay_deliveries_total{route,outcome}`: delivered, retried, failed, duplicate,
    /// ambiguous, deferred, held (the monthly quota).
    pub deliveries: IntCounterVec,
    /// `dingtalk_relay_dingtalk_requests_total{api,outcome}`.
    pub dingtalk_requests: IntCounterVec,
    /// `dingtalk_relay_dingtalk_errors_total{api,errcode}`: non-zero errcodes by effective code.
    pub dingtalk_errors: IntCounterVec,
    /// `dingtalk_relay_dingtalk_request_duration_seconds{api}`.
    pub dingtalk_duration: HistogramVec,
    /// `dingtalk_relay_token_refreshes_total{app,outcome}`.
    pub token_refreshes: IntCounterVec,
    /// `dingtalk_relay_queue_depth`: deliveries queued or being delivered.
    pub queue_depth: IntGauge,
    /// `dingtalk_relay_queue_oldest_age_seconds`: age of the oldest queued delivery.
    pub queue_oldest_age: IntGauge,
    /// `dingtalk_relay_content_truncated_total{route}`.
    pub content_truncated: IntCounterVec,
    /// `dingtalk_relay_delivery_latency_seconds`: webhook accepted → report created.
    pub delivery_latency: Histogram,
    /// `dingtalk_relay_http_requests_total{listener,path,status}`.
    pub http_requests: IntCounterVec,
    /// `dingtalk_relay_http_request_duration_seconds{listener,path}`.
    pub http_duration: HistogramVec,
    /// `dingtalk_relay_config_reloads_total{outcome}`: ok, error.
    pub config_reloads: IntCounterVec,
    /// `dingtalk_relay_dingtalk_paused{app,reason}`: 1 while the relay does not call DingTalk
    /// for an app (quota_exhausted, credentials_refused, ip_banned; app `*` = every app).
    pub dingtalk_paused: prometheus::IntGaugeVec,
    /// `dingtalk_relay_digests_total{route,outcome}`: digests made (made, empty, error).
    pub digests: IntCounterVec,
    /// `dingtalk_relay_digest_events_folded_total{route}`: events folded into digests.
    pub digest_events_folded: IntCounterVec,
    /// `dingtalk_relay_digest_reports_saved_total{route}`: reports (metered DingTalk calls)
    /// saved by digests: events folded minus digest reports made.
    pub digest_reports_saved: IntCounterVec,
    /// `dingtalk_relay_webhooks_ignored_total{route,reason}`: webhooks answered `ignored`, by
    /// one of [`IGNORE_REASONS`].
    pub webhooks_ignored: IntCounterVec,
    /// `dingtalk_relay_config_last_reload_successful`: 1 when the last load (startup or
    /// reload) succeeded, 0 when the last reload was refused.
    pub config_last_reload_successful: IntGauge,
    /// `dingtalk_relay_config_last_reload_success_timestamp_seconds`: Unix time of the last
    /// successful load (startup counts).
    pub config_last_reload_success_timestamp: Gauge,
    /// `dingtalk_relay_store_errors_total{op}`: store operations that failed, by operation.
    pub store_errors: IntCounterVec,
    /// `dingtalk_relay_quota_used_calls{api}`: metered DingTalk calls this quota month (every
    /// replica's, as the store counts them).
    pub quota_used: prometheus::IntGaugeVec,
    /// `dingtalk_relay_quota_limit_calls`: `dingtalk.quota.monthly` (0 = no limit set).
    pub quota_limit: IntGauge,
    /// `dingtalk_relay_quota_reserve_calls`: `dingtalk.quota.reserve`.
    pub quota_reserve: IntGauge,
    /// `dingtalk_relay_quota_projected_calls`: month-end use at this month's rate so far.
    pub quota_projected: IntGauge,
    /// `dingtalk_relay_quota_exhausted`: 1 when DingTalk answered 90020 this month.
    pub quota_exhausted: IntGauge,
    /// The labels [`Metrics::track`] exported at 0 last time, to drop those a reload removed.
    tracked: Mutex<Tracked>,
}

/// Route, digest route and app names whose series are exported.
#[derive(Default)]
struct Tracked {
    routes: BTreeSet<String>,
    digest_routes: BTreeSet<String>,
    apps: BTreeSet<String>,
}

impl Metrics {
    /// Creates and registers every series in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("metric names and labels are static and valid");
            registry
                .register(Box::new(c.clone()))
                .expect("each metric is registered once in a fresh registry");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("metric names are static and valid");
            registry
                .register(Box::new(g.clone()))
                .expect("each metric is registered once in a fresh registry");
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("metric names and labels are static and valid");
            registry
                .register(Box::new(h.clone()))
                .expect("each metric is registered once in a fresh registry");
            h
        };
        let fast = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        let slow = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            1800.0, 3600.0,
        ];
        let webhooks_received = counter(
            "dingtalk_relay_webhooks_received_total",
            "Webhooks received, by route and outcome (accepted, duplicate, ignored, invalid, unauthorized, not_found, too_large, unsupported_media_type, unavailable, rate_limited).",
            &["route", "outcome"],
        );
        let deliveries = counter(
            "dingtalk_relay_deliveries_total",
            "Delivery attempts' results, by route and outcome (delivered, retried, failed, duplicate, ambiguous, deferred, held: kept queued by the monthly quota).",
            &["route", "outcome"],
        );
        let dingtalk_requests = counter(
            "dingtalk_relay_dingtalk_requests_total",
            "Requests to DingTalk, by API and outcome (ok, errcode, http_error, invalid_body, transport).",
            &["api", "outcome"],
        );
        let dingtalk_errors = counter(
            "dingtalk_relay_dingtalk_errors_total",
            "Non-zero DingTalk errcodes, by API and effective code (sub_code under 88).",
            &["api", "errcode"],
        );
        let dingtalk_duration = histogram(
            "dingtalk_relay_dingtalk_request_duration_seconds",
            "Duration of requests to DingTalk, by API.",
            &["api"],
            fast.clone(),
        );
        let token_refreshes = counter(
            "dingtalk_relay_token_refreshes_total",
            "access_token fetches, by app and outcome (ok, error).",
            &["app", "outcome"],
        );
        let queue_depth = gauge(
            "dingtalk_relay_queue_depth",
            "Deliveries queued or being delivered.",
        );
        let queue_oldest_age = gauge(
            "dingtalk_relay_queue_oldest_age_seconds",
            "Age in seconds of the oldest delivery still queued (0 when empty).",
        );
        let content_truncated = counter(
            "dingtalk_relay_content_truncated_total",
            "Report contents cut at DingTalk's 1000-character limit, by route.",
            &["route"],
        );
        let delivery_latency = histogram(
            "dingtalk_relay_delivery_latency_seconds",
            "Time from webhook accepted to report created.",
            &[],
            slow,
        )
        .with_label_values(&[] as &[&str]);
        let http_requests = counter(
            "dingtalk_relay_http_requests_total",
            "HTTP requests served, by listener, matched path and status.",
            &["listener", "path", "status"],
        );
        let http_duration = histogram(
            "dingtalk_relay_http_request_duration_seconds",
            "Duration of HTTP requests served, by listener and matched path.",
            &["listener", "path"],
            fast,
        );
        // CPU, memory and file descriptors of this process (Linux), for the dashboard and for
        // sizing requests and limits.
        #[cfg(target_os = "linux")]
        if let Err(e) = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            tracing::warn!(error = %e, "process metrics unavailable");
        }
        let config_reloads = counter(
            "dingtalk_relay_config_reloads_total",
            "Configuration reloads (SIGHUP, POST /-/reload), by outcome (ok, error).",
            &["outcome"],
        );
        let dingtalk_paused = prometheus::IntGaugeVec::new(
            Opts::new(
                "dingtalk_relay_dingtalk_paused",
                "1 while the relay does not call DingTalk for an app (quota_exhausted, credentials_refused, ip_banned; app \"*\" = every app).",
            ),
            &["app", "reason"],
        )
        .expect("metric names and labels are static and valid");
        registry
            .register(Box::new(dingtalk_paused.clone()))
            .expect("each metric is registered once in a fresh registry");
        let digests = counter(
            "dingtalk_relay_digests_total",
            "Digests made, by route and outcome (made, empty: no report needed, error: kept for a later try).",
            &["route", "outcome"],
        );
        let digest_events_folded = counter(
            "dingtalk_relay_digest_events_folded_total",
            "Events folded into digest reports, by route.",
            &["route"],
        );
        let digest_reports_saved = counter(
            "dingtalk_relay_digest_reports_saved_total",
            "Reports (metered DingTalk calls) saved by digest mode: events folded minus digest reports made, by route.",
            &["route"],
        );
        let webhooks_ignored = counter(
            "dingtalk_relay_webhooks_ignored_total",
            "Webhooks answered ignored, by route and reason (source_event: the source does not report this event kind; filtered: events, statuses or branches; unknown_actor: the person has no DingTalk userid in users; empty: every field rendered empty; unlisted_userid: a userid in the payload that users does not list).",
            &["route", "reason"],
        );
        let build_info = IntGaugeVec::new(
            Opts::new(
                "dingtalk_relay_build_info",
                "Always 1: the relay's version and the source revision it was built from.",
            ),
            &["version", "revision"],
        )
        .expect("metric names and labels are static and valid");
        registry
            .register(Box::new(build_info.clone()))
            .expect("each metric is registered once in a fresh registry");
        build_info.with_label_values(&[VERSION, REVISION]).set(1);
        let config_last_reload_successful = gauge(
            "dingtalk_relay_config_last_reload_successful",
            "1 when the last configuration load (startup or reload) succeeded, 0 when the last reload was refused.",
        );
        let config_last_reload_success_timestamp = Gauge::new(
            "dingtalk_relay_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load (startup or reload).",
        )
        .expect("metric names are static and valid");
        registry
            .register(Box::new(config_last_reload_success_timestamp.clone()))
            .expect("each metric is registered once in a fresh registry");
        for outcome in ["ok", "error"] {
            config_reloads.with_label_values(&[outcome]);
        }
        webhooks_received.with_label_values(&[UNKNOWN_ROUTE, "not_found"]);
        for api in DINGTALK_APIS {
            dingtalk_duration.with_label_values(&[api]);
            for outcome in DINGTALK_OUTCOMES {
                dingtalk_requests.with_label_values(&[api, outcome]);
            }
        }
        let store_errors = counter(
            "dingtalk_relay_store_errors_total",
            "Store operations that failed (the database unreachable, full or failing), by operation (enqueue, add_digest_event, claim, mark_delivered, probe, …).",
            &["op"],
        );
        for op in ["enqueue", "add_digest_event", "mark_delivered", "probe"] {
            store_errors.with_label_values(&[op]);
        }
        let quota_used = prometheus::IntGaugeVec::new(
            Opts::new(
                "dingtalk_relay_quota_used_calls",
                "Metered DingTalk calls this quota month, by API (all replicas sharing the store).",
            ),
            &["api"],
        )
        .expect("metric names and labels are static and valid");
        registry
            .register(Box::new(quota_used.clone()))
            .expect("each metric is registered once in a fresh registry");
        for api in crate::quota::METERED {
            quota_used.with_label_values(&[api]).set(0);
        }
        let quota_limit = gauge(
            "dingtalk_relay_quota_limit_calls",
            "The relay's monthly budget of metered DingTalk calls (dingtalk.quota.monthly; 0 = no limit).",
        );
        let quota_reserve = gauge(
            "dingtalk_relay_quota_reserve_calls",
            "Remaining budget at or below which routes follow on_quota_low (dingtalk.quota.reserve).",
        );
        let quota_projected = gauge(
            "dingtalk_relay_quota_projected_calls",
            "Metered DingTalk calls projected for the whole quota month at the rate so far.",
        );
        let quota_exhausted = gauge(
            "dingtalk_relay_quota_exhausted",
            "1 when DingTalk answered 90020 (organisation quota used up) this quota month.",
        );
        Self(Arc::new(Series {
            registry,
            webhooks_ignored,
            config_last_reload_successful,
            config_last_reload_success_timestamp,
            tracked: Mutex::default(),
            store_errors,
            quota_used,
            quota_limit,
            quota_reserve,
            quota_projected,
            quota_exhausted,
            digests,
            digest_events_folded,
            digest_reports_saved,
            config_reloads,
            dingtalk_paused,
            webhooks_received,
            deliveries,
            dingtalk_requests,
            dingtalk_errors,
            dingtalk_duration,
            token_refreshes,
            queue_depth,
            queue_oldest_age,
            content_truncated,
            delivery_latency,
            http_requests,
            http_duration,
        }))
    }

    /// Exports at 0 every series whose labels `settings` names and that has not been counted
    /// yet (existing values are kept): per route × outcome, per app × outcome,
    /// `content_truncated_total` per route, the digest series per digest route. Series of routes
    /// and apps that are no longer configured are dropped. Called at startup and after every
    /// successful reload.
    pub fn track(&self, settings: &Settings) {
        let routes: BTreeSet<String> = settings.routes.keys().cloned().collect();
        let digest_routes: BTreeSet<String> = settings
            .routes
            .iter()
            .filter(|(_, r)| r.digest.is_some())
            .map(|(name, _)| name.clone())
            .collect();
        let apps: BTreeSet<String> = settings.dingtalk.apps.keys().cloned().collect();
        let mut tracked = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
        // Removing a series that was never created is an error prometheus reports; ignored.
        for route in tracked.routes.difference(&routes) {
            for outcome in WEBHOOK_OUTCOMES {
                let _ = self
                    .webhooks_received
                    .remove_label_values(&[route.as_str(), outcome]);
            }
            for outcome in DELIVERY_OUTCOMES {
                let _ = self
                    .deliveries
                    .remove_label_values(&[route.as_str(), outcome]);
            }
            for reason in IGNORE_REASONS {
                let _ = self
                    .webhooks_ignored
                    .remove_label_values(&[route.as_str(), reason]);
            }
            let _ = self
                .content_truncated
                .remove_label_values(&[route.as_str()]);
        }
        for route in tracked.digest_routes.difference(&digest_routes) {
            for outcome in DIGEST_OUTCOMES {
                let _ = self.digests.remove_label_values(&[route.as_str(), outcome]);
            }
            let _ = self
                .digest_events_folded
                .remove_label_values(&[route.as_str()]);
            let _ = self
                .digest_reports_saved
                .remove_label_values(&[route.as_str()]);
        }
        for app in tracked.apps.difference(&apps) {
            for outcome in ["ok", "error"] {
                let _ = self
                    .token_refreshes
                    .remove_label_values(&[app.as_str(), outcome]);
            }
        }
        for route in &routes {
            for outcome in WEBHOOK_OUTCOMES {
                self.webhooks_received
                    .with_label_values(&[route.as_str(), outcome]);
            }
            for outcome in DELIVERY_OUTCOMES {
                self.deliveries
                    .with_label_values(&[route.as_str(), outcome]);
            }
            for reason in IGNORE_REASONS {
                self.webhooks_ignored
                    .with_label_values(&[route.as_str(), reason]);
            }
            self.content_truncated.with_label_values(&[route.as_str()]);
        }
        for route in &digest_routes {
            for outcome in DIGEST_OUTCOMES {
                self.digests.with_label_values(&[route.as_str(), outcome]);
            }
            self.digest_events_folded
                .with_label_values(&[route.as_str()]);
            self.digest_reports_saved
                .with_label_values(&[route.as_str()]);
        }
        for app in &apps {
            for outcome in ["ok", "error"] {
                self.token_refreshes
                    .with_label_values(&[app.as_str(), outcome]);
            }
        }
        *tracked = Tracked {
            routes,
            digest_routes,
            apps,
        };
    }

    /// Records a configuration load: `ok` sets the success gauge and its timestamp, a refused
    /// reload sets the gauge to 0 (the timestamp keeps the last success).
    pub fn config_loaded(&self, ok: bool) {
        self.config_last_reload_successful.set(i64::from(ok));
        if ok {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            self.config_last_reload_success_timestamp.set(now);
        }
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
