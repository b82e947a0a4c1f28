//! The webhook API: accepted, duplicate, ignored, every 4xx with nothing sent, ?wait.

use dingtalk_relay::sources::auth::sign_sha256 as sign;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn job_status_webhook_creates_a_report() {
    // Arrange
    let app = spawn_app().await;
    // Act
    let id = app.accept(&job_status()).await;
    // Assert
    let delivery = app.wait_for_state(&id, "delivered").await;
    let reports = app.fake.reports();
    assert_eq!(reports.len(), 1);
    let report = &reports[0];
    assert_eq!(delivery["report_id"], report.report_id.as_str());
    assert_eq!(report.userid, "manager01");
    assert_eq!(report.to_userids, vec!["lead01"]);
    assert_eq!(report.template_id, "sandbox-daily-report-template");
    let done = &report.contents[0];
    assert_eq!((done.key.as_str(), done.sort), ("今日完成工作", 0));
    for needle in [
        "✅",
        "CI",
        "acme/api",
        "main",
        "9f2c1e7",
        "3m12s",
        "https://ci.example.com/runs/812",
    ] {
        assert!(
            done.content.contains(needle),
            "{needle} missing in {}",
            done.content
        );
    }
    assert_eq!(delivery["attempts"], 1);
    app.stop().await;
}

#[tokio::test]
async fn standup_webhook_fills_the_three_fields() {
    let app = spawn_app().await;
    let body = json!({"type":"standup","user":"octocat","date":"2026-11-24","done":["Shipped retries"],
        "todo":["Write docs"],"blockers":["Waiting on infra"],"notes":"Out Friday"});
    let id = app.accept(&body).await;
    app.wait_for_state(&id, "delivered").await;
    let report = &app.fake.reports()[0];
    let by_key = |k: &str| {
        report
            .contents
            .iter()
            .find(|c| c.key == k)
            .map(|c| c.content.clone())
            .unwrap_or_default()
    };
    assert!(by_key("今日完成工作").contains("Shipped retries"));
    assert!(by_key("未完成工作").contains("Write docs"));
    assert!(by_key("需协调工作").contains("Waiting on infra"));
    assert!(by_key("需协调工作").contains("Out Friday"));
    app.stop().await;
}

#[tokio::test]
async fn hmac_signature_is_accepted_instead_of_bearer() {
    let app = spawn_app().await;
    let body = job_status().to_string().into_bytes();
    let signature = sign(ROUTE_SECRET, &body);
    let response = app
        .http
        .post(format!("{}/v1/hooks/ci", app.address))
        .header("content-type", "application/json")
        .header("x-signature-256", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    app.stop().await;
}

#[tokio::test]
async fn every_rejection_answers_with_the_error_shape_and_sends_nothing() {
    // Arrange
    let app = spawn_app_with(TestConfig {
        max_body_bytes: 2048,
        ..TestConfig::default()
    })
    .await;
    let good = job_status().to_string();
    let mut no_status = job_status();
    no_status.as_object_mut().unwrap().remove("status");
    let huge = json!({"type":"job_status","job":"b","status":"success","summary":"x".repeat(5000)});
    let bad_sig = sign("wrong", good.as_bytes());
    let cases: Vec<(
        &str,
        &str,
        Vec<u8>,
        Vec<(&str, &str)>,
        u16,
        &str,
        Option<&str>,
    )> = vec![
        (
            "not json",
            "ci",
            b"{nope".to_vec(),
            vec![],
            400,
            "invalid_payload",
            None,
        ),
        (
            "missing status",
            "ci",
            no_status.to_string().into_bytes(),
            vec![],
            400,
            "invalid_payload",
            Some("status"),
        ),
        (
            "missing type",
            "ci",
            b"{\"job\":\"x\"}".to_vec(),
            vec![],
            400,
            "invalid_payload",
            Some("type"),
        ),
        (
            "json array",
            "ci",
            b"[1,2]".to_vec(),
            vec![],
            400,
            "invalid_payload",
            None,
        ),
        (
            "wrong secret",
            "ci",
            good.clone().into_bytes(),
            vec![("authorization", "Bearer nope")],
            401,
            "unauthorized",
            None,
        ),
        (
            "wrong signature",
            "ci",
            good.clone().into_bytes(),
            vec![("authorization", ""), ("x-signature-256", bad_sig.as_str())],
            401,
            "unauthorized",
            None,
        ),
        (
            "no route",
            "nope",
            good.clone().into_bytes(),
            vec![],
            404,
            "route_not_found",
            None,
        ),
        (
            "too large",
            "ci",
            huge.to_string().into_bytes(),
            vec![],
            413,
            "payload_too_large",
            None,
        ),
        (
            "form body",
            "ci",
            good.clone().into_bytes(),
            vec![("content-type", "application/x-www-form-urlencoded")],
            415,
            "unsupported_media_type",
            None,
        ),
        (
            "bad wait",
            "ci",
            good.clone().into_bytes(),
            vec![],
            400,
            "bad_request",
            Some("wait"),
        ),
    ];
    for (label, route, body, headers, status, code, field) in cases {
        // Act
        let route = if label == "bad wait" {
            "ci?wait=99"
        } else {
            route
        };
        let response = app.post_raw(route, body, &headers).await;
        // Assert
        assert_eq!(response.status().as_u16(), status, "{label}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["code"], code, "{label}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{label}"
        );
        if let Some(field) = field {
            assert_eq!(answer["error"]["field"], field, "{label}: {answer}");
        }
        assert!(
            !answer.to_string().contains(ROUTE_SECRET),
            "{label} leaks the secret"
        );
    }
    // Nothing stored, nothing sent.
    let stored = app
        .get_admin("/v1/deliveries")
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(stored["deliveries"].as_array().unwrap().len(), 0);
    assert_eq!(app.fake.create_calls(), 0);
    app.stop().await;
}

#[tokio::test]
async fn missing_credentials_get_401() {
    let app = spawn_app().await;
    let response = app
        .http
        .post(format!("{}/v1/hooks/ci", app.address))
        .header("content-type", "application/json")
        .body(job_status().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn a_repeated_webhook_is_a_duplicate_and_makes_one_report() {
    let app = spawn_app().await;
    let first = app.accept(&job_status()).await;
    let again = app.post_hook("ci", &job_status()).await;
    assert_eq!(again.status(), 200);
    let answer: Value = again.json().await.unwrap();
    assert_eq!(answer, json!({"delivery_id": first, "status": "duplicate"}));
    // Idempotency-Key makes different bodies the same delivery.
    let keyed = |n: usize| job_status_n(n).to_string().into_bytes();
    let a = app
        .post_raw("ci", keyed(1), &[("idempotency-key", "k-1")])
        .await;
    assert_eq!(a.status(), 202);
    let b = app
        .post_raw("ci", keyed(2), &[("idempotency-key", "k-1")])
        .await;
    assert_eq!(b.status(), 200);
    app.wait_for_state(&first, "delivered").await;
    assert!(
        poll_until(std::time::Duration::from_secs(5), || async {
            app.fake.reports().len() == 2
        })
        .await
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(app.fake.reports().len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn filtered_events_are_ignored_with_a_reason() {
    let app = spawn_app_with(TestConfig {
        route_extra: "    statuses: [failure]\n    branches: [\"release/*\"]\n".to_owned(),
        ..TestConfig::default()
    })
    .await;
    let cases = [
        (
            json!({"type":"job_status","job":"b","status":"success","branch":"release/1"}),
            "statuses",
        ),
        (
            json!({"type":"job_status","job":"b","status":"failure","branch":"main"}),
            "branches",
        ),
        (
            json!({"type":"job_status","job":"b","status":"running","branch":"release/1"}),
            "events",
        ),
    ];
    for (body, key) in cases {
        let response = app.post_hook("ci", &body).await;
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["status"], "ignored");
        assert!(answer["reason"].as_str().unwrap().contains(key), "{answer}");
    }
    let ok = json!({"type":"job_status","job":"b","status":"failure","branch":"release/1"});
    assert_eq!(app.post_hook("ci", &ok).await.status(), 202);
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_status_is_kept_and_shown() {
    let app = spawn_app().await;
    let body = json!({"type":"job_status","job":"deploy","status":"timed_out_weirdly"});
    let id = app.accept(&body).await;
    app.wait_for_state(&id, "delivered").await;
    assert!(
        app.fake.reports()[0].contents[0]
            .content
            .contains("timed_out_weirdly")
    );
    app.stop().await;
}

#[tokio::test]
async fn long_contents_are_cut_at_1000_characters_and_counted() {
    let app = spawn_app().await;
    let mut body = job_status();
    body["summary"] = json!("测".repeat(3000));
    let id = app.accept(&body).await;
    app.wait_for_state(&id, "delivered").await;
    let sent = app.fake.create_requests();
    let content = sent[0]["contents"][0]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(content.chars().count(), 1000);
    assert!(content.contains("truncated"), "visible marker");
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "dingtalk_relay_content_truncated_total",
            &[("route", "ci")]
        ),
        1.0
    );
    app.stop().await;
}

#[tokio::test]
async fn wait_answers_201_when_delivered_and_502_when_failed() {
    let app = spawn_app().await;
    let response = app.post_hook("ci?wait=5", &job_status()).await;
    assert_eq!(response.status(), 201);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "delivered");
    assert_eq!(
        answer["report_id"],
        app.fake.reports()[0].report_id.as_str()
    );

    app.fake
        .push_create_fault(dingtalk_relay::sandbox::Fault::Wrapped("60011".to_owned()));
    let response = app.post_hook("ci?wait=5", &job_status_n(2)).await;
    assert_eq!(response.status(), 502);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "failed");
    assert_eq!(answer["errcode"], 60011);
    app.stop().await;
}

#[tokio::test]
async fn wait_answers_202_when_time_is_up() {
    let app = spawn_app().await;
    app.fake
        .push_create_fault(dingtalk_relay::sandbox::Fault::Delay(
            std::time::Duration::from_millis(1800),
        ));
    let response = app.post_hook("ci?wait=1", &job_status()).await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "queued");
    app.stop().await;
}

#[tokio::test]
async fn requests_beyond_the_concurrency_cap_get_503_at_once() {
    // Arrange: room for two requests; two ?wait requests hold their slots while DingTalk is slow.
    let app = spawn_app_with(TestConfig {
        max_concurrent_requests: 2,
        ..TestConfig::default()
    })
    .await;
    app.fake.set_latency(std::time::Duration::from_secs(2));
    let (body1, body2) = (job_status_n(1), job_status_n(2));
    let (first, second, third) = tokio::join!(
        app.post_hook("ci?wait=3", &body1),
        app.post_hook("ci?wait=3", &body2),
        async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            app.post_hook("ci", &job_status_n(3)).await
        }
    );
    // Assert: the third was shed at once with Retry-After; the two held ones were stored.
    assert_eq!(third.status(), 503);
    assert!(third.headers().contains_key("retry-after"));
    assert!(first.status().is_success() && second.status().is_success());
    app.fake.set_latency(std::time::Duration::ZERO);
    app.stop().await;
}

#[tokio::test]
async fn hostile_bodies_get_4xx_never_5xx() {
    let app = spawn_app_with(TestConfig {
        max_body_bytes: 1_048_576,
        ..TestConfig::default()
    })
    .await;
    let deep = format!(
        "{{\"type\":\"job_status\",\"status\":\"success\",\"job\":{}1{}}}",
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        ("deep nesting", deep.into_bytes(), &[400]),
        (
            "huge number",
            br#"{"type":"job_status","job":"b","status":"success","duration_secs":1e400}"#.to_vec(),
            &[400],
        ),
        (
            "huge integer",
            br#"{"type":"job_status","job":"b","status":"success","duration_secs":123456789012345678901234567890}"#.to_vec(),
            &[400, 202],
        ),
        (
            "invalid UTF-8",
            b"{\"type\":\"job_status\",\"job\":\"\xff\xfe\",\"status\":\"success\"}".to_vec(),
            &[400],
        ),
        (
            "duplicate keys",
            br#"{"type":"job_status","job":"a","job":"b","status":"success"}"#.to_vec(),
            &[400, 202],
        ),
        ("empty body", Vec::new(), &[400]),
        ("a lone string", br#""job_status""#.to_vec(), &[400]),
        ("NUL bytes", b"{\"type\":\"job_status\",\"job\":\"a\0b\",\"status\":\"success\"}".to_vec(), &[400, 202]),
    ];
    for (label, body, allowed) in cases {
        let response = app.post_raw("ci", body, &[]).await;
        let status = response.status().as_u16();
        assert!(allowed.contains(&status), "{label}: {status}");
        if status == 400 {
            let answer: Value = response.json().await.unwrap();
            assert_eq!(answer["error"]["code"], "invalid_payload", "{label}");
        }
    }
    // Still serving.
    assert_eq!(app.get_admin("/healthz").await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn hostile_list_sizes_and_fuel_hungry_renders_answer_4xx_naming_the_field() {
    // Arrange: a route template that loops over the standup's list three times nested.
    let app = spawn_app_with(TestConfig {
        route_extra: "    fields:\n      今日完成工作: \"{% for a in done %}{% for b in done %}{% for c in done %}.{% endfor %}{% endfor %}{% endfor %}\"\n".to_owned(),
        template: ID_TEMPLATE.to_owned(),
        max_body_bytes: 1_048_576,
        ..TestConfig::default()
    })
    .await;
    let items = |n: usize| (0..n).map(|i| format!("item {i}")).collect::<Vec<_>>();

    // Act 1: 20,000 items.
    let huge = app
        .post_hook(
            "ci",
            &serde_json::json!({"type":"standup","user":"octocat","done": items(20_000)}),
        )
        .await;
    // Assert 1: refused at parse time, naming the list.
    assert_eq!(huge.status(), 400);
    let body: Value = huge.json().await.unwrap();
    assert_eq!(body["error"]["field"], "done", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 100 items"),
        "{body}"
    );

    // Act 2: 100 items are allowed, but 100³ iterations exceed the template's fuel.
    let hungry = app
        .post_hook(
            "ci",
            &serde_json::json!({"type":"standup","user":"octocat","done": items(100)}),
        )
        .await;
    // Assert 2: a 4xx naming the template field, counted, nothing stored.
    assert_eq!(hungry.status(), 422);
    let body: Value = hungry.json().await.unwrap();
    assert_eq!(body["error"]["code"], "render_limit", "{body}");
    assert_eq!(body["error"]["field"], "今日完成工作", "{body}");
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "dingtalk_relay_webhooks_received_total",
            &[("route", "ci"), ("outcome", "render_limit")]
        ),
        1.0
    );
    assert!(app.state.store.list(None, 10).await.unwrap().is_empty());
    // A payload the template can handle still goes through.
    let small = app
        .post_hook(
            "ci",
            &serde_json::json!({"type":"standup","user":"octocat","done": items(3)}),
        )
        .await;
    assert_eq!(small.status(), 202);
    app.stop().await;
}
