//! Exactly once against DingTalk as it really answers: answers that are not a definite "no"
//! (a 5xx after a commit, an odd success, a lost answer) are reconciled with report/list
//! before anything is resent, and the listing is read the way DingTalk writes it (opaque
//! cursors, rewritten text). What cannot be decided is parked, never doubled.

use std::time::Duration;

use dingtalk_relay::sandbox::{FakeDingTalk, FakeOptions, Fault};
use serde_json::Value;

use crate::helpers::*;

fn ambiguous_count(metrics: &str) -> f64 {
    metric_value(
        metrics,
        "dingtalk_relay_deliveries_total",
        &[("outcome", "ambiguous")],
    )
}

#[tokio::test]
async fn a_gateway_error_after_a_commit_is_reconciled_not_doubled() {
    for status in [502, 504, 500] {
        // Arrange: DingTalk creates the report, then the gateway answers 5xx.
        let app = spawn_app().await;
        app.fake.push_create_fault(Fault::CommitThenHttp(status));
        // Act
        let id = app.accept(&job_status()).await;
        // Assert: found by report/list and recorded, never sent twice.
        let delivery = app.wait_for_state(&id, "delivered").await;
        assert_eq!(app.fake.create_calls(), 1, "{status}");
        assert_eq!(app.fake.reports().len(), 1, "{status}");
        assert_eq!(
            delivery["report_id"],
            app.fake.reports()[0].report_id.as_str(),
            "{status}"
        );
        assert!(app.fake.list_calls() >= 1, "{status}");
        assert_eq!(ambiguous_count(&app.metrics().await), 1.0, "{status}");
        app.stop().await;
    }
}

#[tokio::test]
async fn a_gateway_error_without_a_commit_is_resent_after_the_lookup() {
    // Arrange: a 503 before anything was created.
    let app = spawn_app().await;
    app.fake.push_create_fault(Fault::Http(503));
    // Act
    let id = app.accept(&job_status()).await;
    // Assert: looked up first, then resent once.
    app.wait_for_state(&id, "delivered").await;
    assert_eq!(app.fake.create_calls(), 2);
    assert_eq!(app.fake.reports().len(), 1);
    assert!(app.fake.list_calls() >= 1);
    app.stop().await;
}

#[tokio::test]
async fn a_success_with_the_id_in_an_object_is_a_success() {
    // Arrange
    let app = spawn_app().await;
    app.fake.push_create_fault(Fault::CommitThenResultObject);
    // Act
    let id = app.accept(&job_status()).await;
    // Assert
    let delivery = app.wait_for_state(&id, "delivered").await;
    assert_eq!(delivery["attempts"], 1);
    assert_eq!(app.fake.create_calls(), 1);
    assert_eq!(
        delivery["report_id"],
        app.fake.reports()[0].report_id.as_str()
    );
    app.stop().await;
}

#[tokio::test]
async fn a_success_without_an_id_is_delivered_with_the_id_unknown() {
    // Arrange
    let app = spawn_app().await;
    app.fake.push_create_fault(Fault::CommitWithoutResult);
    // Act
    let id = app.accept(&job_status()).await;
    // Assert: delivered, not resent, id unknown, counted.
    let delivery = app.wait_for_state(&id, "delivered").await;
    assert_eq!(delivery["report_id"], Value::Null, "{delivery}");
    assert_eq!(app.fake.create_calls(), 1);
    assert_eq!(app.fake.reports().len(), 1);
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "dingtalk_relay_deliveries_total",
            &[("outcome", "delivered_without_id")]
        ),
        1.0
    );
    app.stop().await;
}

#[tokio::test]
async fn a_waiting_sender_of_a_success_without_an_id_is_told_the_id_is_unknown() {
    // Arrange
    let app = spawn_app().await;
    app.fake.push_create_fault(Fault::CommitWithoutResult);
    // Act
    let response = app.post_hook("ci?wait=10", &job_status()).await;
    // Assert: 201 delivered with report_id null (not an empty string), made once.
    assert_eq!(response.status(), 201);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "delivered", "{answer}");
    assert_eq!(answer["report_id"], Value::Null, "{answer}");
    assert_eq!(app.fake.create_calls(), 1);
    app.stop().await;
}

#[tokio::test]
async fn paging_follows_opaque_cursors_to_the_last_page() {
    // Arrange: the author already has 45 reports in the window (three pages of 20), and
    // the fake's cursors shrink from page to page.
    let app = spawn_app_with(TestConfig {
        timeout: "1s",
        template: ID_TEMPLATE.to_owned(),
        ..TestConfig::default()
    })
    .await;
    let mut earlier = Vec::new();
    for n in 0..45 {
        earlier.push(app.accept(&job_status_n(n)).await);
    }
    for id in &earlier {
        app.wait_for_state(id, "delivered").await;
    }
    app.fake
        .push_create_fault(Fault::CommitThenHang(Duration::from_secs(3)));
    // Act: the 46th create commits and its answer is lost; it is listed on page 3.
    let id = app.accept(&job_status_n(45)).await;
    // Assert
    let delivery = app.wait_for_state(&id, "delivered").await;
    assert_eq!(
        app.fake.create_calls(),
        46 + app.fake.qps_rejections(),
        "not resent"
    );
    assert_eq!(app.fake.reports().len(), 46);
    assert_eq!(
        delivery["report_id"],
        app.fake.reports()[45].report_id.as_str()
    );
    assert!(app.fake.list_calls() >= 3, "{}", app.fake.list_calls());
    app.stop().await;
}

#[tokio::test]
async fn reconciliation_forgives_text_the_server_rewrote() {
    // Arrange: DingTalk lists text with CRLF, no trailing spaces, entities; the report's
    // text has `&`, `<`, `>` and lines ending in two spaces.
    let app = spawn_app_with(TestConfig {
        timeout: "1s",
        fake: FakeOptions {
            normalise_listed_text: true,
            ..FakeOptions::default()
        },
        route_extra: "    fields:\n      今日完成工作: \"{{ status }} & <{{ job }}>\\n{{ summary }}\\n\\n\\nend\"\n"
            .to_owned(),
        ..TestConfig::default()
    })
    .await;
    app.fake
        .push_create_fault(Fault::CommitThenHang(Duration::from_secs(3)));
    // Act
    let id = app.accept(&job_status()).await;
    // Assert: recognised as ours despite the rewrite; not resent.
    let delivery = app.wait_for_state(&id, "delivered").await;
    let stored = &app.fake.reports()[0].contents[0].content;
    assert!(
        stored.contains('&') && stored.contains("  \n"),
        "{stored:?}"
    );
    assert_eq!(app.fake.create_calls(), 1);
    assert_eq!(
        delivery["report_id"],
        app.fake.reports()[0].report_id.as_str()
    );
    app.stop().await;
}

#[tokio::test]
async fn a_listed_report_with_our_words_but_other_text_is_undecided() {
    // Arrange: a create loses its answer and creates nothing; meanwhile a report of the same
    // author and template appears with our words and numbers but other markup (as if
    // DingTalk had rewritten ours beyond what the relay normalises).
    let app = spawn_app_with(TestConfig {
        timeout: "1s",
        ..TestConfig::default()
    })
    .await;
    app.fake
        .push_create_fault(Fault::HangWithoutCommit(Duration::from_millis(1500)));
    let id = app.accept(&job_status()).await;
    assert!(
        poll_until(Duration::from_secs(5), || async {
            !app.fake.create_requests().is_empty()
        })
        .await
    );
    let mut rewritten = app.fake.create_requests()[0].clone();
    for content in rewritten["contents"].as_array_mut().unwrap() {
        let text = content["content"]
            .as_str()
            .unwrap()
            .replace(['*', '•', '#'], "");
        content["content"] = Value::String(text);
    }
    let base_url = app.state.settings().dingtalk.base_url.clone();
    let token: Value = app
        .http
        .get(format!(
            "{base_url}/gettoken?appkey=sandbox-app-key&appsecret=sandbox-app-secret"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let made: Value = app
        .http
        .post(format!(
            "{base_url}/topapi/report/create?access_token={}",
            token["access_token"].as_str().unwrap()
        ))
        .json(&serde_json::json!({"create_report_param": rewritten}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(made["errcode"], 0, "{made}");
    // Assert: parked as ambiguous for an operator, not resent.
    let delivery = app.wait_for_state(&id, "failed").await;
    let errmsg = delivery["last_error"]["errmsg"].as_str().unwrap();
    assert!(errmsg.starts_with("ambiguous"), "{errmsg}");
    assert!(errmsg.contains("text differs"), "{errmsg}");
    assert_eq!(app.fake.reports().len(), 1, "only the rewritten one");
    assert_eq!(ambiguous_count(&app.metrics().await), 2.0);
    app.stop().await;
}

#[tokio::test]
async fn another_replica_s_report_for_another_run_is_not_a_verdict() {
    // Arrange: another replica (its own process, the same DingTalk) makes a report for the
    // same author during this replica's attempt, whose answer is lost and which created
    // nothing; this process does not know that report.
    let options = FakeOptions::default();
    let (fake, base_url) = FakeDingTalk::spawn(options.clone()).await.unwrap();
    let config = || TestConfig {
        timeout: "1s",
        fake: options.clone(),
        ..TestConfig::default()
    };
    let other = spawn_app_on(config(), fake.clone(), base_url.clone()).await;
    let app = spawn_app_on(config(), fake.clone(), base_url).await;
    fake.push_create_fault(Fault::HangWithoutCommit(Duration::from_millis(1500)));
    let id = app.accept(&job_status_n(2)).await;
    assert!(
        poll_until(Duration::from_secs(5), || async {
            fake.create_calls() == 1
        })
        .await
    );
    let first = other.accept(&job_status_n(1)).await;
    other.wait_for_state(&first, "delivered").await;
    // Act / Assert: another run's text is not ours, so the lost one is sent again once.
    app.wait_for_state(&id, "delivered").await;
    assert_eq!(fake.create_calls(), 3);
    assert_eq!(fake.reports().len(), 2);
    other.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn another_delivery_s_report_made_by_this_process_is_not_a_verdict() {
    // Arrange: this process delivers report A for the author; then a create of the same
    // author loses its answer without creating anything.
    let app = spawn_app_with(TestConfig {
        timeout: "1s",
        ..TestConfig::default()
    })
    .await;
    let first = app.accept(&job_status_n(1)).await;
    app.wait_for_state(&first, "delivered").await;
    app.fake
        .push_create_fault(Fault::HangWithoutCommit(Duration::from_millis(1500)));
    // Act
    let id = app.accept(&job_status_n(2)).await;
    // Assert: A is known to be the other delivery's, so the lost one is resent once.
    app.wait_for_state(&id, "delivered").await;
    assert_eq!(app.fake.create_calls(), 3);
    assert_eq!(app.fake.reports().len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn transient_list_errors_are_not_verdicts() {
    // Arrange: the create's answer is lost, then report/list is busy, 503 and cut short.
    let app = spawn_app_with(TestConfig {
        timeout: "1s",
        max_attempts: 6,
        ..TestConfig::default()
    })
    .await;
    app.fake
        .push_create_fault(Fault::HangWithoutCommit(Duration::from_millis(1500)));
    app.fake.push_list_fault(Fault::Errcode(-1));
    app.fake.push_list_fault(Fault::Http(503));
    app.fake.push_list_fault(Fault::Wrapped("90018".to_owned()));
    // Act
    let id = app.accept(&job_status()).await;
    // Assert: looked again until report/list answered, then sent once more; the three
    // failed lookups spent no attempt (only the two creates did).
    let delivery = app.wait_for_state(&id, "delivered").await;
    assert_eq!(app.fake.create_calls(), 2);
    assert_eq!(app.fake.reports().len(), 1);
    assert!(app.fake.list_calls() >= 4, "{}", app.fake.list_calls());
    assert_eq!(delivery["attempts"], 2, "{delivery}");
    app.stop().await;
}

#[tokio::test]
async fn report_list_failing_past_the_attempt_budget_parks_the_delivery_as_ambiguous() {
    // Arrange: the create's answer is lost and report/list never answers. The budget is the
    // create's timeout (1 s) plus two of the longest waits (the 2 s ambiguous pause): 5 s.
    let app = spawn_app_with(TestConfig {
        timeout: "1s",
        max_attempts: 2,
        ..TestConfig::default()
    })
    .await;
    app.fake
        .push_create_fault(Fault::HangWithoutCommit(Duration::from_millis(1500)));
    for _ in 0..200 {
        app.fake.push_list_fault(Fault::Http(503));
    }
    // Act
    let id = app.accept(&job_status()).await;
    // Assert: held without spending attempts until the budget ran out, never resent.
    let delivery = app.wait_for_state(&id, "failed").await;
    assert_eq!(app.fake.create_calls(), 1);
    assert!(app.fake.reports().is_empty());
    // Two attempts: the create and the claim that parked it; the many lookups between them
    // (each its own claim) spent none.
    assert_eq!(delivery["attempts"], 2, "{delivery}");
    assert!(app.fake.list_calls() >= 5, "{}", app.fake.list_calls());
    let errmsg = delivery["last_error"]["errmsg"].as_str().unwrap();
    assert!(
        errmsg.starts_with("ambiguous: ") && errmsg.contains("longer than the attempt budget"),
        "{errmsg}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_failing_gettoken_does_not_fail_a_delivery_that_was_never_sent() {
    // Arrange: the token the relay holds is dropped by DingTalk, and gettoken then fails
    // more times than the attempt budget allows.
    let app = spawn_app_with(TestConfig {
        max_attempts: 2,
        ..TestConfig::default()
    })
    .await;
    let startup_fetches = app.fake.gettoken_calls();
    app.fake.invalidate_tokens();
    for fault in [
        Fault::Http(503),
        Fault::Errcode(-1),
        Fault::HangWithoutCommit(Duration::from_millis(2500)),
        Fault::Http(502),
    ] {
        app.fake.push_gettoken_fault(fault);
    }
    // Act
    let id = app.accept(&job_status()).await;
    // Assert: no attempt was spent on it; delivered once gettoken works.
    let delivery = app.wait_for_state(&id, "delivered").await;
    assert_eq!(delivery["attempts"], 1, "{delivery}");
    assert_eq!(app.fake.gettoken_calls() - startup_fetches, 5);
    assert_eq!(app.fake.reports().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_refused_gettoken_stays_a_verdict_only_for_credentials() {
    // A wrong secret is a definite refusal: the delivery waits (deferred) instead of
    // being retried against the budget, as before.
    let app = spawn_app().await;
    app.fake.invalidate_tokens();
    app.fake.push_gettoken_fault(Fault::Errcode(40096));
    let id = app.accept(&job_status()).await;
    assert!(
        poll_until(Duration::from_secs(5), || async {
            app.delivery(&id).await["last_error"]["errcode"] == 40096
        })
        .await
    );
    let delivery = app.delivery(&id).await;
    assert_eq!(delivery["state"], "queued", "{delivery}");
    assert_eq!(delivery["attempts"], 0, "{delivery}");
    app.stop().await;
}

#[tokio::test]
async fn the_request_id_of_an_error_answer_is_kept() {
    let app = spawn_app().await;
    app.fake
        .push_create_fault(Fault::Wrapped("60011".to_owned()));
    let id = app.accept(&job_status()).await;
    let delivery = app.wait_for_state(&id, "failed").await;
    let errmsg = delivery["last_error"]["errmsg"].as_str().unwrap();
    let request_id = errmsg
        .rsplit_once("(request_id ")
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no request_id in {errmsg}"));
    assert_eq!(request_id.len(), 13, "{errmsg}");
    assert!(request_id.chars().all(|c| c.is_ascii_alphanumeric()));
    app.stop().await;
}

#[tokio::test]
async fn a_huge_answer_is_not_read_whole_and_counts_as_ambiguous() {
    // Arrange: 300 MB streamed at HTTP 200 instead of an envelope.
    let app = spawn_app().await;
    app.fake
        .push_create_fault(Fault::Oversized(300 * 1024 * 1024));
    // Act
    let id = app.accept(&job_status()).await;
    // Assert: treated as ambiguous (looked up, then resent once), quickly.
    app.wait_for_state(&id, "delivered").await;
    assert_eq!(app.fake.create_calls(), 2);
    assert_eq!(app.fake.reports().len(), 1);
    assert_eq!(ambiguous_count(&app.metrics().await), 1.0);
    app.stop().await;
}

#[tokio::test]
async fn unknown_errcodes_share_one_metric_label() {
    let app = spawn_app().await;
    app.fake.push_create_fault(Fault::Errcode(777_777));
    let id = app.accept(&job_status()).await;
    app.wait_for_state(&id, "failed").await;
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "dingtalk_relay_dingtalk_errors_total",
            &[("errcode", "other")]
        ),
        1.0,
        "{metrics}"
    );
    assert!(!metrics.contains("777777"));
    app.stop().await;
}

#[tokio::test]
async fn long_contents_are_cut_as_dingtalk_counts_never_inside_a_link() {
    // Arrange: a summary of emoji (2 UTF-16 units each) followed by a link across the cut.
    let app = spawn_app_with(TestConfig {
        route_extra: "    fields:\n      今日完成工作: \"{{ summary }}[run 812](https://ci.example.com/runs/812) tail\"\n"
            .to_owned(),
        ..TestConfig::default()
    })
    .await;
    let mut body = job_status();
    body["summary"] = serde_json::json!("👍🏽".repeat(240));
    // Act
    let id = app.accept(&body).await;
    app.wait_for_state(&id, "delivered").await;
    // Assert: within 1000 UTF-16 units as DingTalk received it, whole emoji, no half link.
    let sent = app.fake.reports()[0].contents[0].content.clone();
    assert!(
        sent.encode_utf16().count() <= 1000,
        "{}",
        sent.encode_utf16().count()
    );
    assert!(
        sent.ends_with(dingtalk_relay::mapping::TRUNCATION_MARKER),
        "{sent}"
    );
    assert!(!sent.contains("[run"), "{sent}");
    let kept = sent
        .strip_suffix(dingtalk_relay::mapping::TRUNCATION_MARKER)
        .unwrap();
    assert_eq!(kept, "👍🏽".repeat(240));
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(&metrics, "dingtalk_relay_content_truncated_total", &[]),
        1.0
    );
    app.stop().await;
}
