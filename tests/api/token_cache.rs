//! The access_token: one fetch for a burst, one refetch when DingTalk drops it.

use std::time::Duration;

use dingtalk_relay::sandbox::{FakeDingTalk, FakeOptions, Fault};

use crate::helpers::*;

#[tokio::test]
async fn concurrent_first_deliveries_fetch_exactly_one_token() {
    // Arrange: an id template, so startup makes no DingTalk call at all.
    let app = spawn_app_with(TestConfig {
        template: ID_TEMPLATE.to_owned(),
        ..TestConfig::default()
    })
    .await;
    assert_eq!(app.fake.gettoken_calls(), 0);
    // Act: 40 webhooks at once.
    let posts = (0..40).map(|n| {
        let app = &app;
        async move { app.accept(&job_status_n(n)).await }
    });
    let ids = futures::future::join_all(posts).await;
    // Assert
    for id in &ids {
        app.wait_for_state(id, "delivered").await;
    }
    assert_eq!(app.fake.gettoken_calls(), 1);
    assert_eq!(app.fake.reports().len(), 40);
    app.stop().await;
}

#[tokio::test]
async fn a_token_invalidated_upstream_is_refetched_once_and_nothing_is_lost() {
    let app = spawn_app().await;
    let first = app.accept(&job_status_n(1)).await;
    app.wait_for_state(&first, "delivered").await;
    let tokens_before = app.fake.gettoken_calls();
    // Act: DingTalk forgets the token (88 / 40014 on next use).
    app.fake.invalidate_tokens();
    let second = app.accept(&job_status_n(2)).await;
    // Assert
    let delivery = app.wait_for_state(&second, "delivered").await;
    assert_eq!(
        delivery["attempts"], 1,
        "refresh-and-retry happens inside one attempt"
    );
    assert_eq!(app.fake.gettoken_calls(), tokens_before + 1);
    assert_eq!(app.fake.reports().len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn an_expired_token_is_refetched() {
    let app = spawn_app().await;
    let first = app.accept(&job_status_n(1)).await;
    app.wait_for_state(&first, "delivered").await;
    let tokens_before = app.fake.gettoken_calls();
    app.fake.expire_tokens();
    let second = app.accept(&job_status_n(2)).await;
    app.wait_for_state(&second, "delivered").await;
    assert_eq!(app.fake.gettoken_calls(), tokens_before + 1);
    app.stop().await;
}

#[tokio::test]
async fn a_token_error_that_persists_after_one_refresh_fails_the_delivery() {
    let app = spawn_app().await;
    let first = app.accept(&job_status_n(1)).await;
    app.wait_for_state(&first, "delivered").await;
    let tokens_before = app.fake.gettoken_calls();
    app.fake
        .push_create_fault(Fault::Wrapped("40014".to_owned()));
    app.fake
        .push_create_fault(Fault::Wrapped("40014".to_owned()));
    let second = app.accept(&job_status_n(2)).await;
    let delivery = app.wait_for_state(&second, "failed").await;
    assert_eq!(delivery["last_error"]["errcode"], 40014);
    assert_eq!(
        app.fake.gettoken_calls(),
        tokens_before + 1,
        "no refresh loop"
    );
    app.stop().await;
}

#[tokio::test]
async fn refused_app_credentials_make_deliveries_wait_and_readyz_say_so() {
    let mut config = TestConfig {
        template: ID_TEMPLATE.to_owned(),
        ..TestConfig::default()
    };
    let (fake, base_url) = dingtalk_relay::sandbox::FakeDingTalk::spawn(config.fake.clone())
        .await
        .unwrap();
    config.fake.app_secret = "not-the-secret".to_owned();
    let app = spawn_app_on(config, fake, base_url).await;
    let id = app.accept(&job_status()).await;
    assert!(
        poll_until(std::time::Duration::from_secs(5), || async {
            app.delivery(&id).await["last_error"]["errcode"] == 40096
        })
        .await
    );
    // Waiting, not failed, and no attempt spent.
    let delivery = app.delivery(&id).await;
    assert_eq!(delivery["state"], "queued", "{delivery}");
    assert_eq!(delivery["attempts"], 0, "{delivery}");
    assert!(
        delivery["last_error"]["errmsg"]
            .as_str()
            .unwrap()
            .contains("app_secret")
    );
    assert_eq!(app.fake.create_calls(), 0);
    // Ready (webhooks are still taken), with the reason.
    let ready = app.get_admin("/readyz").await;
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert!(
        ready["warnings"][0]
            .as_str()
            .unwrap()
            .contains("credentials_refused"),
        "{ready}"
    );
    let metrics = app.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "dingtalk_relay_token_refreshes_total",
            &[("outcome", "error")]
        ) >= 1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "dingtalk_relay_dingtalk_paused",
            &[("app", "default"), ("reason", "credentials_refused")]
        ),
        1.0
    );
    // The secret never shows in the API or the metrics.
    let text = app
        .get_admin(&format!("/v1/deliveries/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(!text.contains("not-the-secret"));
    assert!(!metrics.contains("not-the-secret"));
    app.stop().await;
}

/// The test configuration with `dingtalk.token_api: v1` served by the fake itself.
fn v1_yaml(base_url: &str, secret: &str) -> String {
    settings_yaml(&TestConfig::default(), base_url)
        .replace(
            "  max_qps: 20\n",
            &format!("  max_qps: 20\n  token_api: v1\n  token_base_url: \"{base_url}\"\n"),
        )
        .replace(
            "app_secret: \"sandbox-app-secret\"",
            &format!("app_secret: \"{secret}\""),
        )
}

#[tokio::test]
async fn the_v1_token_endpoint_gives_the_token_when_configured() {
    // Arrange
    let (fake, base_url) = FakeDingTalk::spawn(FakeOptions::default()).await.unwrap();
    let app = spawn_app_from_yaml(&v1_yaml(&base_url, "sandbox-app-secret"), fake).await;
    // Act
    let id = app.accept(&job_status()).await;
    // Assert: every token came from POST /v1.0/oauth2/accessToken.
    app.wait_for_state(&id, "delivered").await;
    assert!(app.fake.access_token_calls() >= 1);
    assert_eq!(app.fake.gettoken_calls(), app.fake.access_token_calls());
    app.stop().await;
}

#[tokio::test]
async fn a_v1_refusal_of_the_secret_makes_deliveries_wait() {
    // Arrange: the secret is wrong; the v1 host answers HTTP 400 invalidClientIdOrSecret.
    let (fake, base_url) = FakeDingTalk::spawn(FakeOptions::default()).await.unwrap();
    let app = spawn_app_from_yaml(&v1_yaml(&base_url, "wrong-secret"), fake).await;
    // Act
    let id = app.accept(&job_status()).await;
    // Assert: deferred without spending attempts, with DingTalk's code and request id.
    assert!(
        poll_until(Duration::from_secs(5), || async {
            app.delivery(&id).await["last_error"]["errmsg"]
                .as_str()
                .is_some_and(|m| m.contains("invalidClientIdOrSecret"))
        })
        .await
    );
    let delivery = app.delivery(&id).await;
    assert_eq!(delivery["state"], "queued", "{delivery}");
    assert_eq!(delivery["attempts"], 0, "{delivery}");
    assert!(
        delivery["last_error"]["errmsg"]
            .as_str()
            .unwrap()
            .contains("request_id"),
        "{delivery}"
    );
    assert_eq!(app.fake.create_calls(), 0);
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "dingtalk_relay_dingtalk_paused",
            &[("app", "default"), ("reason", "credentials_refused")]
        ),
        1.0
    );
    assert!(!metrics.contains("wrong-secret"));
    app.stop().await;
}
