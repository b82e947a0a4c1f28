//! The monthly quota budget: metered calls counted in the store (across a restart, across two
//! PostgreSQL replicas), the month turning in the configured zone, `hold` at the reserve and
//! its release, and DingTalk's 90020 holding every replica until the month turns.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dingtalk_relay::quota::Clock;
use dingtalk_relay::sandbox::{FakeDingTalk, FakeOptions};
use dingtalk_relay::store::QuotaCalls;
use serde_json::{Value, json};
use sqlx::Connection;

use crate::helpers::{
    ID_TEMPLATE, TestApp, TestConfig, fresh_postgres_database, job_status_n, metric_value,
    poll_until, settings_yaml, spawn_app_on, spawn_app_with,
};

/// A clock the test moves by hand.
#[derive(Clone)]
struct TestClock(Arc<Mutex<DateTime<Utc>>>);

impl TestClock {
    fn at(rfc3339: &str) -> Self {
        Self(Arc::new(Mutex::new(parse(rfc3339))))
    }

    fn set(&self, rfc3339: &str) {
        *self.0.lock().unwrap() = parse(rfc3339);
    }

    fn clock(&self) -> Clock {
        let now = self.0.clone();
        Arc::new(move || *now.lock().unwrap())
    }
}

fn parse(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .with_timezone(&Utc)
}

async fn quota(app: &TestApp) -> Value {
    let response = app.get_admin("/v1/quota").await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn accept_on(app: &TestApp, route: &str, n: usize) -> String {
    let response = app.post_hook(route, &job_status_n(n)).await;
    assert_eq!(response.status(), 202, "{route} {n}");
    let answer: Value = response.json().await.unwrap();
    answer["delivery_id"].as_str().unwrap().to_owned()
}

/// Waits until the delivery's last error starts with `prefix` (and it is still queued).
async fn wait_until_held(app: &TestApp, id: &str, prefix: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let last = app.delivery(id).await;
        let held = last["state"] == "queued"
            && last["last_error"]["errmsg"]
                .as_str()
                .is_some_and(|m| m.starts_with(prefix));
        if held {
            return last;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivery {id} was not held ({prefix}): {last}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const CD_ROUTE: &str = r#"
  cd:
    source: generic
    secret: "route-s3cret"
    template: {id: "sandbox-daily-report-template", fields: [{name: "今日完成工作", sort: 0}, {name: "未完成工作", sort: 1}, {name: "需协调工作", sort: 2}]}
    author: "manager01"
"#;

#[tokio::test]
async fn metered_calls_are_counted_by_api_and_route_and_gettoken_is_not() {
    // Arrange: a template given by name (one getbyname at startup, for route ci).
    let (fake, base_url) = FakeDingTalk::spawn(FakeOptions::default()).await.unwrap();
    let config = TestConfig {
        quota: "{monthly: 5000, warn_at: 0.8, reserve: 250}".to_owned(),
        extra_routes: CD_ROUTE.to_owned(),
        ..TestConfig::default()
    };
    let app = spawn_app_on(config, fake.clone(), base_url).await;

    // Act: two reports on ci, one on cd.
    for (route, n) in [("ci", 1), ("ci", 2), ("cd", 3)] {
        let id = accept_on(&app, route, n).await;
        app.wait_for_state(&id, "delivered").await;
    }

    // Assert
    let status = quota(&app).await;
    assert_eq!(fake.getbyname_calls(), 1);
    assert_eq!(fake.create_calls(), 3);
    assert!(fake.gettoken_calls() >= 1);
    assert_eq!(status["used"], 4, "{status}");
    assert_eq!(status["limit"], 5000);
    assert_eq!(status["remaining"], 4996);
    assert_eq!(status["reserve"], 250);
    assert_eq!(status["reserve_reached"], false);
    assert_eq!(status["timezone"], "Asia/Shanghai");
    assert_eq!(
        status["by_api"],
        json!({"report_create": 3, "report_list": 0, "template_getbyname": 1})
    );
    assert_eq!(
        status["by_route"],
        json!({"ci": {"report_create": 2, "template_getbyname": 1}, "cd": {"report_create": 1}})
    );
    assert!(status["days_left"].as_f64().unwrap() <= 31.0);
    assert!(status["projected"].as_u64().unwrap() >= 4);
    assert_eq!(status["warnings"], json!([]));
    let metrics = app.metrics().await;
    let used = |api| metric_value(&metrics, "dingtalk_relay_quota_used_calls", &[("api", api)]);
    assert_eq!(used("report_create"), 3.0, "{metrics}");
    assert_eq!(used("template_getbyname"), 1.0);
    assert_eq!(used("report_list"), 0.0);
    assert_eq!(
        metric_value(&metrics, "dingtalk_relay_quota_limit_calls", &[]),
        5000.0
    );
    app.stop().await;
}

#[tokio::test]
async fn counts_and_resolved_templates_survive_a_restart_on_sqlite() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let (fake, base_url) = FakeDingTalk::spawn(FakeOptions::default()).await.unwrap();
    let config = || TestConfig {
        store_url: format!("sqlite://{}", dir.path().join("relay.db").display()),
        ..TestConfig::default()
    };
    let first = spawn_app_on(config(), fake.clone(), base_url.clone()).await;
    let id = accept_on(&first, "ci", 1).await;
    first.wait_for_state(&id, "delivered").await;
    first.stop().await;

    // Act: the restarted relay checks its template at startup and sends one more report.
    let second = spawn_app_on(config(), fake.clone(), base_url).await;
    let id = accept_on(&second, "ci", 2).await;
    second.wait_for_state(&id, "delivered").await;

    // Assert: the template came from the store, not from a second getbyname.
    assert_eq!(
        fake.getbyname_calls(),
        1,
        "the restart looked the template up again"
    );
    let status = quota(&second).await;
    assert_eq!(status["used"], 3, "{status}");
    assert_eq!(status["by_api"]["report_create"], 2);
    second.stop().await;
}

#[tokio::test]
async fn the_month_turns_at_midnight_in_the_configured_zone() {
    // Arrange: 23:59:59 on 30 November in Shanghai.
    let clock = TestClock::at("2026-11-30T15:59:59Z");
    let app = spawn_app_with(TestConfig {
        template: ID_TEMPLATE.to_owned(),
        clock: Some(clock.clock()),
        ..TestConfig::default()
    })
    .await;

    // Act: one report a second before midnight, one at midnight.
    let id = accept_on(&app, "ci", 1).await;
    app.wait_for_state(&id, "delivered").await;
    let november = quota(&app).await;
    clock.set("2026-11-30T16:00:00Z");
    let id = accept_on(&app, "ci", 2).await;
    app.wait_for_state(&id, "delivered").await;
    let december = quota(&app).await;

    // Assert
    assert_eq!(november["month"], "2026-11");
    assert_eq!(november["used"], 1);
    assert_eq!(november["resets_at"], "2026-11-30T16:00:00Z");
    assert_eq!(december["month"], "2026-12");
    assert_eq!(december["used"], 1, "{december}");
    assert_eq!(december["days_left"], 31.0);
    let stored = app.state.store.quota().month("2026-11").await.unwrap();
    assert_eq!(
        stored.calls,
        vec![QuotaCalls {
            api: "report_create".to_owned(),
            route: "ci".to_owned(),
            calls: 1
        }]
    );
    app.stop().await;
}

#[tokio::test]
async fn hold_keeps_deliveries_queued_at_the_reserve_until_the_month_turns() {
    // Arrange: a budget of 3 with a reserve of 1; ci holds, cd keeps sending.
    let clock = TestClock::at("2026-11-30T15:59:59Z");
    let (fake, base_url) = FakeDingTalk::spawn(FakeOptions::default()).await.unwrap();
    let app = spawn_app_on(
        TestConfig {
            template: ID_TEMPLATE.to_owned(),
            quota: "{monthly: 3, reserve: 1}".to_owned(),
            route_extra: "    on_quota_low: hold\n".to_owned(),
            extra_routes: CD_ROUTE.to_owned(),
            clock: Some(clock.clock()),
            ..TestConfig::default()
        },
        fake.clone(),
        base_url,
    )
    .await;
    for n in 0..2 {
        let id = accept_on(&app, "ci", n).await;
        app.wait_for_state(&id, "delivered").await;
    }

    // Act: the remaining budget (1) is at the reserve.
    let held = accept_on(&app, "ci", 2).await;
    let shown = wait_until_held(&app, &held, "quota_hold:").await;
    let sent = accept_on(&app, "cd", 3).await;
    app.wait_for_state(&sent, "delivered").await;

    // Assert: held without spending an attempt or a call; the send route went on.
    assert_eq!(fake.create_calls(), 3);
    assert_eq!(shown["last_error"]["errcode"], Value::Null);
    assert!(
        shown["last_error"]["errmsg"]
            .as_str()
            .unwrap()
            .contains("2 of the month's 3 calls used, reserve 1 reached"),
        "{shown}"
    );
    let status = quota(&app).await;
    assert_eq!(status["reserve_reached"], true);
    assert_eq!(status["remaining"], 0);
    let metrics = app.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "dingtalk_relay_deliveries_total",
            &[("route", "ci"), ("outcome", "held")]
        ) >= 1.0
    );
    let readyz: Value = app.get_admin("/readyz").await.json().await.unwrap();
    assert_eq!(readyz["status"], "ready");
    assert!(
        readyz["warnings"].to_string().contains("3 of 3 calls used"),
        "{readyz}"
    );

    // Act: the month turns.
    clock.set("2026-11-30T16:00:00Z");
    let delivered = app.wait_for_state(&held, "delivered").await;

    // Assert
    assert_eq!(fake.create_calls(), 4);
    assert_eq!(delivered["attempts"], 1, "{delivered}");
    assert_eq!(quota(&app).await["used"], 1);
    app.stop().await;
}

#[tokio::test]
async fn a_budget_raised_by_a_reload_releases_held_deliveries() {
    // Arrange: a budget of 2 with a reserve of 1, one delivery held.
    let (fake, base_url) = FakeDingTalk::spawn(FakeOptions::default()).await.unwrap();
    let config = |quota: &str| TestConfig {
        template: ID_TEMPLATE.to_owned(),
        quota: quota.to_owned(),
        route_extra: "    on_quota_low: hold\n".to_owned(),
        ..TestConfig::default()
    };
    let app = spawn_app_on(
        config("{monthly: 2, reserve: 1, hold_recheck: 200ms}"),
        fake.clone(),
        base_url.clone(),
    )
    .await;
    let id = accept_on(&app, "ci", 0).await;
    app.wait_for_state(&id, "delivered").await;
    let held = accept_on(&app, "ci", 1).await;
    wait_until_held(&app, &held, "quota_hold:").await;

    // Act: the operator raises dingtalk.quota.monthly and reloads.
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    let raised = settings_yaml(
        &config("{monthly: 100, reserve: 1, hold_recheck: 200ms}"),
        &base_url,
    );
    std::fs::write(file.path(), raised).unwrap();
    app.state
        .reloader
        .set_config_file(Some(file.path().to_owned()));
    let reload = app
        .http
        .post(format!("{}/-/reload", app.admin_address))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);

    // Assert: the held delivery looks again within hold_recheck and goes out.
    app.wait_for_state(&held, "delivered").await;
    let status = quota(&app).await;
    assert_eq!(status["limit"], 100);
    assert_eq!(status["reserve_reached"], false);
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(&metrics, "dingtalk_relay_quota_limit_calls", &[]),
        100.0
    );
    app.stop().await;
}

#[tokio::test]
async fn two_postgres_replicas_share_one_count_and_the_exhausted_month() {
    // Arrange: two relays on one database and one fake DingTalk.
    let Some((server, database, store_url)) =
        fresh_postgres_database("the shared quota test").await
    else {
        return;
    };
    let (fake, base_url) = FakeDingTalk::spawn(FakeOptions::default()).await.unwrap();
    let config = || TestConfig {
        store_url: store_url.clone(),
        quota: "{monthly: 100, reserve: 10, hold_recheck: 200ms}".to_owned(),
        ..TestConfig::default()
    };
    let first = spawn_app_on(config(), fake.clone(), base_url.clone()).await;
    let second = spawn_app_on(config(), fake.clone(), base_url).await;

    // Act: a report through each replica.
    for (app, n) in [(&first, 1), (&second, 2)] {
        let id = accept_on(app, "ci", n).await;
        app.wait_for_state(&id, "delivered").await;
    }

    // Assert: one count (the second replica's startup took the template from the store).
    assert_eq!(fake.getbyname_calls(), 1);
    for app in [&first, &second] {
        let status = quota(app).await;
        assert_eq!(status["used"], 3, "{status}");
        assert_eq!(status["by_api"]["report_create"], 2);
    }

    // Act: the organisation's quota runs out; the next create is answered 90020.
    fake.set_monthly_quota(Some(0));
    let refused = accept_on(&first, "ci", 3).await;
    let marked = poll_until(Duration::from_secs(10), || async {
        !quota(&first).await["exhausted"].is_null() && !quota(&second).await["exhausted"].is_null()
    })
    .await;
    assert!(marked, "{}", quota(&second).await);
    let creates = fake.create_calls();
    let held_first = accept_on(&first, "ci", 4).await;
    let held_second = accept_on(&second, "ci", 5).await;

    // Assert: both replicas hold without calling DingTalk.
    wait_until_held(&first, &held_first, "quota_exhausted:").await;
    wait_until_held(&second, &held_second, "quota_exhausted:").await;
    assert_eq!(fake.create_calls(), creates, "a replica called DingTalk");
    let shown = first.delivery(&refused).await;
    assert_eq!(shown["state"], "queued", "{shown}");
    assert_eq!(
        quota(&second).await["used"],
        3,
        "a refused call was counted"
    );
    let readyz: Value = second.get_admin("/readyz").await.json().await.unwrap();
    assert!(readyz["warnings"].to_string().contains("90020"), "{readyz}");
    let metrics = second.metrics().await;
    assert_eq!(
        metric_value(&metrics, "dingtalk_relay_quota_exhausted", &[]),
        1.0
    );

    first.stop().await;
    second.stop().await;
    let mut conn = sqlx::PgConnection::connect(&server).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn clearing_the_exhausted_month_releases_held_deliveries() {
    // Arrange: DingTalk answers 90020, so the month is marked exhausted.
    let app = spawn_app_with(TestConfig {
        template: ID_TEMPLATE.to_owned(),
        quota: "{hold_recheck: 200ms}".to_owned(),
        ..TestConfig::default()
    })
    .await;
    app.fake.set_monthly_quota(Some(0));
    let refused = accept_on(&app, "ci", 1).await;
    assert!(
        poll_until(Duration::from_secs(10), || async {
            app.delivery(&refused).await["last_error"]["errcode"] == 90020
        })
        .await
    );
    let held = accept_on(&app, "ci", 2).await;
    wait_until_held(&app, &held, "quota_exhausted:").await;
    assert_eq!(app.fake.create_calls(), 1);

    // Act: the organisation was upgraded; an operator clears the mark.
    app.fake.set_monthly_quota(None);
    let url = format!("{}/v1/quota/exhausted", app.admin_address);
    let cleared: Value = app
        .http
        .delete(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    // Assert
    assert_eq!(cleared["cleared"], true);
    app.wait_for_state(&held, "delivered").await;
    assert!(quota(&app).await["exhausted"].is_null());
    let again: Value = app
        .http
        .delete(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["cleared"], false);
    app.stop().await;
}

#[tokio::test]
async fn digest_folds_new_events_into_the_quota_digest_at_the_reserve() {
    // Arrange: a budget of 3 with a reserve of 1; ci folds into a daily digest when low.
    let app = spawn_app_with(TestConfig {
        template: ID_TEMPLATE.to_owned(),
        quota: "{monthly: 3, reserve: 1}".to_owned(),
        route_extra:
            "    on_quota_low: digest\n    quota_digest: {schedule: \"18:00\", group_by: route}\n"
                .to_owned(),
        ..TestConfig::default()
    })
    .await;
    let id = accept_on(&app, "ci", 0).await;
    app.wait_for_state(&id, "delivered").await;
    let id = accept_on(&app, "ci", 1).await;
    app.wait_for_state(&id, "delivered").await;

    // Act: two more events once the reserve is reached.
    let mut kept = Vec::new();
    for n in [2, 3] {
        let response = app.post_hook("ci", &job_status_n(n)).await;
        assert_eq!(response.status(), 202);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["status"], "digest", "{answer}");
        assert!(answer["digest_at"].is_string(), "{answer}");
        kept.push(answer["event_id"].as_str().unwrap().to_owned());
    }
    let settings = app.state.settings();
    let at = dingtalk_relay::digest::schedule_of(&settings, &settings.routes["ci"])
        .and_then(|s| s.next_after(Utc::now()))
        .unwrap();
    let made = dingtalk_relay::digest::make_due(&app.state, at).await;

    // Assert: one report for both events, sent from the reserve.
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0].events, 2);
    assert_eq!(made[0].deliveries.len(), 1);
    app.wait_for_state(&made[0].deliveries[0], "delivered")
        .await;
    assert_eq!(app.fake.create_calls(), 3);
    let report = app.fake.reports().last().cloned().unwrap();
    let text: String = report.contents.iter().map(|c| c.content.as_str()).collect();
    assert!(text.contains("2 次运行 runs"), "{text}");
    assert_eq!(quota(&app).await["used"], 3);
    app.stop().await;
}
