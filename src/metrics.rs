//! Metrics: the relay's Prometheus series, held in a registry owned by [`Metrics`] (never the
//! global one, so several apps can live in one test binary). Labels come from route, app and API
//! names, never from raw URLs.

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

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
