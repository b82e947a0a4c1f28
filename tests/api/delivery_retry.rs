//! Retries on transient DingTalk errors, give-up on permanent ones, the QPS limit, the
//! ambiguous create, and a restart on the SQLite store.

use std::time::Duration;

use dingtalk_relay::sandbox::{FakeDingTalk, FakeOptions, Fault};

use crate::helpers::*;

#[tokio::test]
async fn transient_errors_are_retried_until_delivered() {
    let cases = [
        ("system busy", Fault::Errcode(-1)),
        ("qps wrapped", Fault::Wrapped("90018".to_owned())),
        ("qps bare", Fault::Errcode(90018)),
        ("org too often", Fault::Wrapped("90005".to_owned())),
        ("gateway 502", Fault::Http(502)),
    ];
    for (label, fault) in cases {
        // Arrange
        let app = spawn_app().await;
        app.fake.push_create_fault(fault);
        // Act
        let id = app.accept(&job_status()).await;
        // Assert
        let delivery = app.wait_for_state(&id, "delivered").await;
        assert_eq!(delivery["attempts"], 2, "{label}");
        assert_eq!(app.fake.reports().len(), 1, "{label}");
        let metrics = app.metrics().await;
        assert_eq!(
            metric_value(
                &metrics,
                "dingtalk_relay_deliveries_total",
                &[("outcome", "retried")]
            ),
            1.0,
            "{label}"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn permanent_errors_fail_at_once_with_the_errcode_kept() {
    let cases = [
        ("no permission", Fault::Wrapped("60011".to_owned()), 60011),
        ("bad param", Fault::Errcode(400002), 400002),
        ("no such user", Fault::Errcode(60121), 60121),
        ("unknown code", Fault::Errcode(777777), 777777),
    ];
    for (label, fault, code) in cases {
        let app = spawn_app().await;
        app.fake.push_create_fault(fault);
        let id = app.accept(&job_status()).await;
        let delivery = app.wait_for_state(&id, "failed").await;
        assert_eq!(delivery["attempts"], 1, "{label}");
        assert_eq!(delivery["last_error"]["errcode"], code, "{label}");
        assert_eq!(app.fake.create_calls(), 1, "{label}: not retried");
        let failed = app.get_admin("/v1/deliveries?state=failed&limit=5").await;
        let failed: serde_json::Value = failed.json().await.unwrap();
        assert_eq!(
            failed["deliveries"][0]["delivery_id"],
            id.as_str(),
            "{label}"
        );
        app.stop().await;
    }
}

/// The delivery's next attempt time, in seconds from now.
fn next_attempt_in(delivery: &serde_json::Value) -> i64 {
    let at = delivery["next_attempt_at"]
        .as_str()
        .expect("next_attempt_at");
    let at = chrono::DateTime::parse_from_rfc3339(at).expect("an RFC 3339 time");
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_seconds()
}

#[tokio::test]
async fn ip_throttling_backs_off_for_minutes_and_stops_all_calls() {
    for fault in [Fault::NonJson, Fault::IpBan] {
        // Arrange
        let app = spawn_app_with(TestConfig {
            template: ID_TEMPLATE.to_owned(),
            ..TestConfig::default()
        })
        .await;
        app.fake.push_create_fault(fault.clone());
        // Act
        let first = app.accept(&job_status_n(1)).await;
        assert!(
            poll_until(Duration::from_secs(5), || async {
                app.delivery(&first).await["state"] == "queued"
                    && app.delivery(&first).await["attempts"] == 1
            })
            .await
        );
        let second = app.accept(&job_status_n(2)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Assert: minutes, not seconds; and no further call while banned.
        let delivery = app.delivery(&first).await;
        assert!(next_attempt_in(&delivery) >= 240, "{fault:?}: {delivery}");
        assert_eq!(app.fake.create_calls(), 1, "{fault:?}");
        let waiting = app.delivery(&second).await;
        assert_eq!(waiting["state"], "queued", "{fault:?}: {waiting}");
        assert!(next_attempt_in(&waiting) >= 240, "{fault:?}: {waiting}");
        let metrics = app.metrics().await;
        assert_eq!(
            metric_value(
                &metrics,
                "dingtalk_relay_dingtalk_paused",
                &[("app", "*"), ("reason", "ip_banned")]
            ),
            1.0,
            "{fault:?}"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn an_exhausted_monthly_quota_pauses_sending_instead_of_failing() {
    // Arrange
    let app = spawn_app_with(TestConfig {
        template: ID_TEMPLATE.to_owned(),
        ..TestConfig::default()
    })
    .await;
    app.fake.push_create_fault(Fault::Errcode(90020));
    // Act
    let first = app.accept(&job_status_n(1)).await;
    assert!(
        poll_until(Duration::from_secs(5), || async {
            app.delivery(&first).await["last_error"]["errcode"] == 90020
        })
        .await
    );
    let second = app.accept(&job_status_n(2)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Assert: queued for about an hour, no attempt spent, nothing more sent, visible.
    let delivery = app.delivery(&first).await;
    assert_eq!(delivery["state"], "queued", "{delivery}");
    assert_eq!(delivery["attempts"], 0, "{delivery}");
    assert!(next_attempt_in(&delivery) >= 3000, "{delivery}");
    assert!(
        delivery["last_error"]["errmsg"]
            .as_str()
            .unwrap()
            .contains("quota")
    );
    assert_eq!(app.delivery(&second).await["state"], "queued");
    assert_eq!(app.fake.create_calls(), 1);
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "dingtalk_relay_dingtalk_paused",
            &[("app", "default"), ("reason", "quota_exhausted")]
        ),
        1.0
    );
    let ready: serde_json::Value = app.get_admin("/readyz").await.json().await.unwrap();
    assert!(
        ready["warnings"][0]
            .as_str()
            .unwrap()
            .contains("quota_exhausted"),
        "{ready}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_permission_error_names_the_missing_permission() {
    let app = spawn_app().await;
    app.fake
        .push_create_fault(Fault::Wrapped("60011".to_owned()));
    let id = app.accept(&job_status()).await;
    let delivery = app.wait_for_state(&id, "failed").await;
    let errmsg = delivery["last_error"]["errmsg"].as_str().unwrap();
    assert!(errmsg.contains("qyapi_report_manage"), "{errmsg}");
    app.stop().await;
}

#[tokio::test]
async fn a_total_outage_then_recovery_delivers_everything_exactly_once() {
    // Arrange: DingTalk fails every way it can for a while. Each webhook goes to its own
    // route and author: a lost answer is reconciled against the author's reports, and
    // another report of the same author made meanwhile would (rightly) leave it undecided.
    let routes: String = (0..6)
        .map(|n| {
            format!(
                "  r{n}:\n    source: generic\n    secret: \"{ROUTE_SECRET}\"\n    template: {ID_TEMPLATE}\n    author: \"author{n}\"\n    to_userids: [\"lead01\"]\n"
            )
        })
        .collect();
    let app = spawn_app_with(TestConfig {
        template: ID_TEMPLATE.to_owned(),
        timeout: "1s",
        max_attempts: 100,
        extra_routes: routes,
        ..TestConfig::default()
    })
    .await;
    for fault in [
        Fault::Http(503),
        Fault::Errcode(-1),
        Fault::Http(502),
        Fault::HangWithoutCommit(Duration::from_millis(1500)),
        Fault::Wrapped("90018".to_owned()),
        Fault::Http(500),
        Fault::CommitThenHttp(504),
    ] {
        app.fake.push_create_fault(fault);
    }
    // Act
    let mut ids = Vec::new();
    for n in 0..6 {
        let response = app.post_hook(&format!("r{n}"), &job_status_n(n)).await;
        assert_eq!(response.status(), 202);
        let answer: serde_json::Value = response.json().await.unwrap();
        ids.push(answer["delivery_id"].as_str().unwrap().to_owned());
    }
    // Assert
    for id in &ids {
        app.wait_for_state(id, "delivered").await;
    }
    assert_eq!(app.fake.reports().len(), 6);
    let mut runs: Vec<String> = app
        .fake
        .reports()
        .iter()
        .map(|r| r.contents[0].content.clone())
        .collect();
    runs.sort();
    runs.dedup();
    assert_eq!(runs.len(), 6, "a report was doubled");
    app.stop().await;
}

#[tokio::test]
async fn retries_stop_after_max_attempts() {
    let app = spawn_app_with(TestConfig {
        max_attempts: 3,
        ..TestConfig::default()
    })
    .await;
    for _ in 0..5 {
        app.fake.push_create_fault(Fault::Errcode(-1));
    }
    let id = app.accept(&job_status()).await;
    let delivery = app.wait_for_state(&id, "failed").await;
    assert_eq!(delivery["attempts"], 3);
    assert_eq!(delivery["last_error"]["errcode"], -1);
    assert_eq!(app.fake.create_calls(), 3);
    assert!(app.fake.reports().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_failed_delivery_can_be_retried_by_an_operator() {
    let app = spawn_app().await;
    app.fake
        .push_create_fault(Fault::Wrapped("60011".to_owned()));
    let id = app.accept(&job_status()).await;
    app.wait_for_state(&id, "failed").await;
    let response = app
        .http
        .post(format!("{}/v1/deliveries/{id}/retry", app.admin_address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    app.wait_for_state(&id, "delivered").await;
    let again = app
        .http
        .post(format!("{}/v1/deliveries/{id}/retry", app.admin_address))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409, "only failed deliveries can be retried");
    app.stop().await;
}

#[tokio::test]
async fn report_creates_never_exceed_max_qps() {
    // The fake answers 90018 above 20 creates per calendar second, like DingTalk.
    let app = spawn_app_with(TestConfig {
        template: ID_TEMPLATE.to_owned(),
        max_qps: 20,
        ..TestConfig::default()
    })
    .await;
    let mut ids = Vec::new();
    for n in 0..50 {
        ids.push(app.accept(&job_status_n(n)).await);
    }
    for id in &ids {
        app.wait_for_state(id, "delivered").await;
    }
    assert_eq!(app.fake.qps_rejections(), 0);
    assert_eq!(app.fake.reports().len(), 50);
    app.stop().await;
}

#[tokio::test]
async fn a_create_whose_answer_is_lost_is_reconciled_not_doubled() {
    // Arrange: DingTalk creates the report but answers after the relay's 1 s timeout.
    let app = spawn_app_with(TestConfig {
        timeout: "1s",
        ..TestConfig::default()
    })
    .await;
    app.fake
        .push_create_fault(Fault::CommitThenHang(Duration::from_secs(3)));
    // Act
    let id = app.accept(&job_status()).await;
    // Assert: found by report/list, recorded as delivered, never sent twice.
    let delivery = app.wait_for_state(&id, "delivered").await;
    assert_eq!(app.fake.reports().len(), 1);
    assert_eq!(
        delivery["report_id"],
        app.fake.reports()[0].report_id.as_str()
    );
    assert_eq!(app.fake.create_calls(), 1);
    assert!(app.fake.list_calls() >= 1);
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "dingtalk_relay_deliveries_total",
            &[("outcome", "ambiguous")]
        ),
        1.0
    );
    app.stop().await;
}

#[tokio::test]
async fn a_lost_answer_for_a_create_that_did_not_happen_is_resent_once() {
    // Arrange: DingTalk hangs past the relay's 1 s timeout and creates nothing.
    let app = spawn_app_with(TestConfig {
        timeout: "1s",
        ..TestConfig::default()
    })
    .await;
    app.fake
        .push_create_fault(Fault::HangWithoutCommit(Duration::from_millis(1500)));
    // Act
    let id = app.accept(&job_status()).await;
    // Assert: report/list says absent, so it is sent again, exactly once.
    let delivery = app.wait_for_state(&id, "delivered").await;
    assert_eq!(app.fake.create_calls(), 2);
    assert_eq!(app.fake.reports().len(), 1);
    assert_eq!(
        delivery["report_id"],
        app.fake.reports()[0].report_id.as_str()
    );
    assert!(app.fake.list_calls() >= 1);
    app.stop().await;
}

#[tokio::test]
async fn an_undecidable_lost_answer_fails_as_ambiguous() {
    // Arrange: the create's answer is lost and report/list cannot be used (no permission).
    let app = spawn_app_with(TestConfig {
        timeout: "1s",
        ..TestConfig::default()
    })
    .await;
    app.fake
        .push_create_fault(Fault::HangWithoutCommit(Duration::from_millis(1500)));
    app.fake.push_list_fault(Fault::Wrapped("60011".to_owned()));
    // Act
    let id = app.accept(&job_status()).await;
    // Assert: failed for an operator, never resent.
    let delivery = app.wait_for_state(&id, "failed").await;
    assert!(
        delivery["last_error"]["errmsg"]
            .as_str()
            .unwrap()
            .starts_with("ambiguous"),
        "{delivery}"
    );
    assert_eq!(app.fake.create_calls(), 1);
    app.stop().await;
}

#[tokio::test]
async fn queued_deliveries_survive_a_restart_on_sqlite() {
    // Arrange: DingTalk is failing, so deliveries stay queued.
    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("sqlite://{}", dir.path().join("relay.db").display());
    let options = FakeOptions::default();
    let (fake, base_url) = FakeDingTalk::spawn(options.clone()).await.unwrap();
    let config = || TestConfig {
        template: ID_TEMPLATE.to_owned(),
        store_url: store_url.clone(),
        max_attempts: 100,
        fake: options.clone(),
        ..TestConfig::default()
    };
    for _ in 0..1000 {
        fake.push_create_fault(Fault::Http(503));
    }
    let app = spawn_app_on(config(), fake.clone(), base_url.clone()).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(app.accept(&job_status_n(n)).await);
    }
    app.stop().await;
    // Act: DingTalk recovers; a new process opens the same file.
    let fake_recovered = {
        let (f, u) = FakeDingTalk::spawn(options.clone()).await.unwrap();
        (f, u)
    };
    let app = spawn_app_on(config(), fake_recovered.0, fake_recovered.1).await;
    // Assert
    for id in &ids {
        app.wait_for_state(id, "delivered").await;
    }
    assert_eq!(app.fake.reports().len(), 5);
    // Dedup survives the restart too.
    let again = app.post_hook("ci", &job_status_n(0)).await;
    assert_eq!(again.status(), 200);
    app.stop().await;
}
