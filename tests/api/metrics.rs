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

/// The values of the series of `name` whose labels contain every `labels` pair (empty when no
/// such series is exported, unlike [`metric_value`], which sums to 0 then).
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect()
}

/// Before any traffic, every series whose labels the configuration names is there at 0 (so
/// `increase()` sees the first failure), with build info and the reload gauges.
#[tokio::test]
async fn labelled_series_are_exported_at_zero_from_the_first_scrape() {
    // Templates by id: startup calls nothing, so every DingTalk series is still at 0.
    let app = spawn_app_with(TestConfig {
        template: ID_TEMPLATE.to_owned(),
        extra_routes: format!("  daily:\n    source: generic\n    secret: \"route-s3cret\"\n    template: {ID_TEMPLATE}\n    author: \"manager01\"\n    digest: {{schedule: \"18:00\", group_by: route}}\n"),
        ..TestConfig::default()
    })
    .await;
    let metrics = app.metrics().await;
    let mut expected: Vec<(&str, Vec<(&str, &str)>)> = Vec::new();
    for route in ["ci", "daily"] {
        for outcome in dingtalk_relay::metrics::DELIVERY_OUTCOMES {
            expected.push((
                "dingtalk_relay_deliveries_total",
                vec![("route", route), ("outcome", outcome)],
            ));
        }
        for outcome in dingtalk_relay::metrics::WEBHOOK_OUTCOMES {
            expected.push((
                "dingtalk_relay_webhooks_received_total",
                vec![("route", route), ("outcome", outcome)],
            ));
        }
        for reason in dingtalk_relay::metrics::IGNORE_REASONS {
            expected.push((
                "dingtalk_relay_webhooks_ignored_total",
                vec![("route", route), ("reason", reason)],
            ));
        }
        expected.push((
            "dingtalk_relay_content_truncated_total",
            vec![("route", route)],
        ));
    }
    for outcome in ["made", "empty", "error"] {
        expected.push((
            "dingtalk_relay_digests_total",
            vec![("route", "daily"), ("outcome", outcome)],
        ));
    }
    expected.push((
        "dingtalk_relay_digest_events_folded_total",
        vec![("route", "daily")],
    ));
    for outcome in ["ok", "error"] {
        expected.push((
            "dingtalk_relay_token_refreshes_total",
            vec![("app", "default"), ("outcome", outcome)],
        ));
        expected.push((
            "dingtalk_relay_config_reloads_total",
            vec![("outcome", outcome)],
        ));
    }
    for api in [
        "gettoken",
        "report_create",
        "template_getbyname",
        "report_list",
    ] {
        for outcome in ["ok", "errcode", "http_error", "invalid_body", "transport"] {
            expected.push((
                "dingtalk_relay_dingtalk_requests_total",
                vec![("api", api), ("outcome", outcome)],
            ));
        }
    }
    expected.push((
        "dingtalk_relay_webhooks_received_total",
        vec![("route", "_unknown"), ("outcome", "not_found")],
    ));
    for (name, labels) in &expected {
        assert_eq!(
            series(&metrics, name, labels),
            [0.0],
            "{name} {labels:?} is not exported at 0\n{metrics}"
        );
    }
    // Only a digest route has digest series.
    assert!(series(&metrics, "dingtalk_relay_digests_total", &[("route", "ci")]).is_empty());
    // Build info: the package version and a revision (git's, or "unknown").
    let info = metrics
        .lines()
        .find(|l| l.starts_with("dingtalk_relay_build_info{"))
        .unwrap_or_else(|| panic!("no build info\n{metrics}"));
    assert!(
        info.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{info}"
    );
    assert!(info.contains("revision=\""), "{info}");
    assert!(!info.contains("revision=\"\""), "{info}");
    assert!(info.ends_with(" 1"), "{info}");
    // The startup load counts as a successful one.
    assert_eq!(
        series(
            &metrics,
            "dingtalk_relay_config_last_reload_successful",
            &[]
        ),
        [1.0]
    );
    let stamp = series(
        &metrics,
        "dingtalk_relay_config_last_reload_success_timestamp_seconds",
        &[],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        stamp.len() == 1 && stamp[0] > now - 600.0 && stamp[0] <= now + 1.0,
        "{stamp:?}"
    );
    app.stop().await;
}

/// A reload adds the zero series of a new route and app, drops those of a removed route, and
/// sets the reload gauges; a refused reload sets `…_last_reload_successful` to 0.
#[tokio::test]
async fn zero_series_and_reload_gauges_follow_reloads() {
    let config = TestConfig::default();
    let (fake, base_url) = dingtalk_relay::sandbox::FakeDingTalk::spawn(config.fake.clone())
        .await
        .unwrap();
    let yaml = settings_yaml(&config, &base_url);
    let app = spawn_app_on(config, fake, base_url).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.yaml");
    app.state.reloader.set_config_file(Some(file.clone()));
    let before = app.metrics().await;
    let first_stamp = series(
        &before,
        "dingtalk_relay_config_last_reload_success_timestamp_seconds",
        &[],
    );
    // The ci route renamed to deploy, and a second app.
    let renamed = yaml.replace("  ci:\n", "  deploy:\n").replace(
        "    default:\n",
        "    second:\n      app_key: \"k2\"\n      app_secret: \"s2\"\n    default:\n",
    );
    std::fs::write(&file, &renamed).unwrap();
    app.state.reloader.reload().await.expect("reload");
    let after = app.metrics().await;
    assert_eq!(
        series(
            &after,
            "dingtalk_relay_deliveries_total",
            &[("route", "deploy"), ("outcome", "failed")]
        ),
        [0.0],
        "{after}"
    );
    assert_eq!(
        series(
            &after,
            "dingtalk_relay_token_refreshes_total",
            &[("app", "second"), ("outcome", "error")]
        ),
        [0.0]
    );
    assert!(
        series(
            &after,
            "dingtalk_relay_deliveries_total",
            &[("route", "ci")]
        )
        .is_empty(),
        "{after}"
    );
    assert_eq!(
        series(&after, "dingtalk_relay_config_last_reload_successful", &[]),
        [1.0]
    );
    let second_stamp = series(
        &after,
        "dingtalk_relay_config_last_reload_success_timestamp_seconds",
        &[],
    );
    assert!(
        second_stamp[0] >= first_stamp[0],
        "{first_stamp:?} {second_stamp:?}"
    );

    std::fs::write(&file, renamed + "bogus_key: 1\n").unwrap();
    assert!(app.state.reloader.reload().await.is_err());
    let refused = app.metrics().await;
    assert_eq!(
        series(
            &refused,
            "dingtalk_relay_config_last_reload_successful",
            &[]
        ),
        [0.0]
    );
    assert_eq!(
        series(
            &refused,
            "dingtalk_relay_config_last_reload_success_timestamp_seconds",
            &[]
        ),
        second_stamp,
        "a refused reload keeps the last success's time"
    );
    app.stop().await;
}

/// Webhooks ignored because the actor has no userid in `users` (or the route's filters) are
/// counted by a bounded reason.
#[tokio::test]
async fn ignored_webhooks_are_counted_by_reason() {
    let app = spawn_app_with(TestConfig {
        route_extra: "    statuses: [failure]\n".to_owned(),
        extra_routes: format!("  mine:\n    source: generic\n    secret: \"route-s3cret\"\n    template: {ID_TEMPLATE}\n    author: actor\n"),
        ..TestConfig::default()
    })
    .await;
    let mut stranger = job_status_n(1);
    stranger["actor"] = serde_json::json!("stranger");
    let answer = app.post_hook("mine", &stranger).await;
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["status"], "ignored", "{body}");
    // A success on a route that only reports failures.
    let answer = app.post_hook("ci", &job_status_n(2)).await;
    assert_eq!(answer.status(), 200);
    let metrics = app.metrics().await;
    assert_eq!(
        series(
            &metrics,
            "dingtalk_relay_webhooks_ignored_total",
            &[("route", "mine"), ("reason", "unknown_actor")]
        ),
        [1.0],
        "{metrics}"
    );
    assert_eq!(
        series(
            &metrics,
            "dingtalk_relay_webhooks_ignored_total",
            &[("route", "ci"), ("reason", "filtered")]
        ),
        [1.0]
    );
    assert_eq!(
        metric_value(
            &metrics,
            "dingtalk_relay_webhooks_ignored_total",
            &[("reason", "empty")]
        ),
        0.0
    );
    // The reason text (which names the actor) never becomes a label.
    assert!(!metrics.contains("stranger"), "{metrics}");
    app.stop().await;
}
