//! `/metrics`: every series of spec §6 after traffic.

use crate::helpers::*;

#[tokio::test]
async fn every_required_series_is_exported_after_traffic() {
    let app = spawn_app().await;
    let mut long = job_status_n(1);
    long["summary"] = serde_json::json!("x".repeat(2000));
    let id = app.accept(&long).await;
    app.wait_for_state(&id, "delivered").await;
    app.post_hook("ci", &long).await; // duplicate
    let metrics = app.metrics().await;
    for (name, labels) in [
        (
            "dingtalk_relay_webhooks_received_total",
            vec![("route", "ci"), ("outcome", "accepted")],
        ),
        (
            "dingtalk_relay_webhooks_received_total",
            vec![("route", "ci"), ("outcome", "duplicate")],
        ),
        (
            "dingtalk_relay_deliveries_total",
            vec![("route", "ci"), ("outcome", "delivered")],
        ),
        (
            "dingtalk_relay_deliveries_total",
            vec![("route", "ci"), ("outcome", "duplicate")],
        ),
        (
            "dingtalk_relay_dingtalk_requests_total",
            vec![("api", "report_create"), ("outcome", "ok")],
        ),
        (
            "dingtalk_relay_dingtalk_requests_total",
            vec![("api", "gettoken"), ("outcome", "ok")],
        ),
        (
            "dingtalk_relay_dingtalk_request_duration_seconds_count",
            vec![("api", "report_create")],
        ),
        (
            "dingtalk_relay_token_refreshes_total",
            vec![("app", "default"), ("outcome", "ok")],
        ),
        (
            "dingtalk_relay_content_truncated_total",
            vec![("route", "ci")],
        ),
    ] {
        assert!(
            metric_value(&metrics, name, &labels) >= 1.0,
            "{name} {labels:?}\n{metrics}"
        );
    }
    assert!(
        metrics.contains("dingtalk_relay_queue_depth 0"),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE dingtalk_relay_dingtalk_request_duration_seconds histogram"));
    // Labels are route names, never raw URLs.
    app.post_hook("no-such-route", &job_status()).await;
    let metrics = app.metrics().await;
    assert!(!metrics.contains("no-such-route"));
    assert!(
        metric_value(
            &metrics,
            "dingtalk_relay_webhooks_received_total",
            &[("route", "_unknown"), ("outcome", "not_found")]
        ) >= 1.0
    );
    app.stop().await;
}
