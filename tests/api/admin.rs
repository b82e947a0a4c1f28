//! The admin listener: health, readiness, the delivery API and its token.

use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn health_and_readiness_answer_200() {
    let app = spawn_app().await;
    assert_eq!(app.get_admin("/healthz").await.status(), 200);
    let ready = app.get_admin("/readyz").await;
    assert_eq!(ready.status(), 200);
    // The webhook listener does not serve admin endpoints.
    let on_webhook_port = app
        .http
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(on_webhook_port.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn unknown_delivery_is_404_with_the_error_shape() {
    let app = spawn_app().await;
    let response = app.get_admin("/v1/deliveries/nope").await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    let bad = app.get_admin("/v1/deliveries?state=lost").await;
    assert_eq!(bad.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn the_delivery_api_needs_the_admin_token_when_set() {
    let app = spawn_app_with(TestConfig {
        admin_token: Some("adm1n-t0ken-0123456789"),
        ..TestConfig::default()
    })
    .await;
    let id = app.accept(&job_status()).await;
    assert_eq!(
        app.get_admin(&format!("/v1/deliveries/{id}"))
            .await
            .status(),
        401
    );
    let with_token = app
        .http
        .get(format!("{}/v1/deliveries/{id}", app.admin_address))
        .bearer_auth("adm1n-t0ken-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 200);
    let body: Value = with_token.json().await.unwrap();
    for key in [
        "delivery_id",
        "route",
        "state",
        "attempts",
        "last_error",
        "report_id",
        "created_at",
        "updated_at",
    ] {
        assert!(body.get(key).is_some(), "{key} missing: {body}");
    }
    // Metrics and health stay open for scrapers and probes.
    assert_eq!(app.get_admin("/metrics").await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn without_a_token_a_non_loopback_admin_listener_closes_the_api_but_not_the_probes() {
    // Arrange: serve (production mode), no admin_token, admin listener on every address.
    let app = spawn_app_with(TestConfig {
        admin_listen: "0.0.0.0:0",
        ..TestConfig::default()
    })
    .await;
    let id = app.accept(&job_status()).await;

    // Act / Assert: the API and reload answer 403 saying how to open them …
    for response in [
        app.get_admin(&format!("/v1/deliveries/{id}")).await,
        app.get_admin("/v1/deliveries?state=failed").await,
        app.get_admin("/v1/digests/ci").await,
        app.http
            .post(format!("{}/v1/deliveries/{id}/retry", app.admin_address))
            .send()
            .await
            .unwrap(),
        app.http
            .post(format!("{}/-/reload", app.admin_address))
            .send()
            .await
            .unwrap(),
    ] {
        assert_eq!(response.status(), 403);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("server.admin_token") && message.contains("ADMIN_TOKEN"),
            "{message}"
        );
        assert!(!message.contains("route-s3cret"), "{message}");
    }
    // … while metrics and the probes stay open.
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(app.get_admin(path).await.status(), 200, "{path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_bearer_scheme_is_matched_in_any_case_and_near_miss_tokens_are_refused() {
    let token = "adm1n-t0ken-0123456789";
    let app = spawn_app_with(TestConfig {
        admin_token: Some(token),
        admin_listen: "0.0.0.0:0",
        ..TestConfig::default()
    })
    .await;
    let id = app.accept(&job_status()).await;
    let get = |authorization: String| {
        let request = app
            .http
            .get(format!("{}/v1/deliveries/{id}", app.admin_address));
        async move {
            request
                .header("authorization", authorization)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        assert_eq!(get(format!("{scheme} {token}")).await, 200, "{scheme}");
    }
    let longer = format!("{token}x");
    for wrong in [
        &token[..token.len() - 1],
        longer.as_str(),
        "adm1n-t0ken-0123456788",
        "",
    ] {
        assert_eq!(get(format!("Bearer {wrong}")).await, 401, "{wrong:?}");
    }
    assert_eq!(get(format!("Basic {token}")).await, 401);
    app.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_deliveries() {
    let app = spawn_app().await;
    app.fake
        .push_create_fault(dingtalk_relay::sandbox::Fault::Delay(
            std::time::Duration::from_millis(500),
        ));
    let id = app.accept(&job_status()).await;
    assert!(
        poll_until(std::time::Duration::from_secs(5), || async {
            app.fake.create_calls() == 1
        })
        .await
    );
    let store = app.state.store.clone();
    app.stop().await;
    let delivery = store.get(&id).await.unwrap().unwrap();
    assert_eq!(delivery.state, dingtalk_relay::store::State::Delivered);
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_and_readyz_says_why() {
    // Arrange: DingTalk keeps failing, so deliveries stay queued; room for two.
    let app = spawn_app_with(TestConfig {
        max_queued: 2,
        max_attempts: 100,
        ..TestConfig::default()
    })
    .await;
    for _ in 0..100 {
        app.fake
            .push_create_fault(dingtalk_relay::sandbox::Fault::Http(503));
    }
    app.accept(&job_status_n(1)).await;
    app.accept(&job_status_n(2)).await;
    // Act
    let refused = app.post_hook("ci", &job_status_n(3)).await;
    // Assert
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    let ready = app.get_admin("/readyz").await;
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert!(
        ready["reason"].as_str().unwrap().contains("full"),
        "{ready}"
    );
    // Nothing was stored for the refused webhook.
    let listed: Value = app.get_admin("/v1/deliveries").await.json().await.unwrap();
    assert_eq!(listed["deliveries"].as_array().unwrap().len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_store_answers_503_and_readyz_says_why() {
    use sqlx::Connection;
    // Arrange: a relay on its own PostgreSQL database.
    let Some((server, database, store_url)) =
        fresh_postgres_database("the unreachable-store test").await
    else {
        return;
    };
    let app = spawn_app_with(TestConfig {
        store_url,
        ..TestConfig::default()
    })
    .await;
    app.accept(&job_status_n(1)).await;
    // Act: the database goes away under it.
    let mut conn = sqlx::PgConnection::connect(&server).await.unwrap();
    sqlx::query(&format!("DROP DATABASE {database} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .unwrap();
    let refused = app.post_hook("ci", &job_status_n(2)).await;
    // Assert
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(
        !body.to_string().contains("postgres://"),
        "no connection string: {body}"
    );
    let ready = app.get_admin("/readyz").await;
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert!(
        ready["reason"].as_str().unwrap().contains("store"),
        "{ready}"
    );
    app.cancel.cancel();
}

#[tokio::test]
async fn reload_swaps_a_good_configuration_and_keeps_the_old_one_when_bad() {
    // Arrange: the app reloads from a file holding its own configuration.
    let config = TestConfig {
        admin_token: Some("adm1n-t0ken-0123456789"),
        ..TestConfig::default()
    };
    let (fake, base_url) = dingtalk_relay::sandbox::FakeDingTalk::spawn(config.fake.clone())
        .await
        .unwrap();
    let yaml = settings_yaml(&config, &base_url);
    let app = spawn_app_on(config, fake, base_url).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.yaml");
    app.state.reloader.set_config_file(Some(file.clone()));
    let reload = || async {
        app.http
            .post(format!("{}/-/reload", app.admin_address))
            .bearer_auth("adm1n-t0ken-0123456789")
            .send()
            .await
            .unwrap()
    };
    assert_eq!(app.post_hook("deploy", &job_status()).await.status(), 404);

    // Act 1: a new route appears.
    let with_route = yaml.clone()
        + "  deploy:\n    source: generic\n    secret: \"route-s3cret\"\n    template: {name: \"日报\"}\n    author: \"manager02\"\n";
    std::fs::write(&file, &with_route).unwrap();
    let answer = reload().await;
    // Assert 1
    assert_eq!(answer.status(), 200);
    let id = {
        let response = app.post_hook("deploy", &job_status()).await;
        assert_eq!(response.status(), 202);
        response.json::<Value>().await.unwrap()["delivery_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.fake.reports().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not delivered: {id}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(app.fake.reports()[0].userid, "manager02");

    // Act 2: a bad file (unknown key) is refused and the old configuration keeps working.
    std::fs::write(&file, with_route.clone() + "bogus_key: 1\n").unwrap();
    let refused = reload().await;
    assert_eq!(refused.status(), 422);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_config");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bogus_key"),
        "{body}"
    );
    assert_eq!(
        app.post_hook("deploy", &job_status_n(2)).await.status(),
        202
    );
    // A change that needs a restart is refused too.
    std::fs::write(
        &file,
        with_route.replace("memory:", "sqlite:///tmp/other.db"),
    )
    .unwrap();
    assert_eq!(reload().await.status(), 422);
    // Without the token the endpoint is closed.
    let anonymous = app
        .http
        .post(format!("{}/-/reload", app.admin_address))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "dingtalk_relay_config_reloads_total",
            &[("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "dingtalk_relay_config_reloads_total",
            &[("outcome", "error")]
        ),
        2.0
    );
    app.stop().await;
}

#[tokio::test]
async fn reloads_keep_tokens_templates_and_pauses_and_run_one_at_a_time() {
    // Arrange: a relay that reloads from a file holding its own configuration, with a token
    // and the 日报 template cached by startup and a first delivery.
    // (The admin listener is on loopback, so no token is needed.)
    let config = TestConfig::default();
    let (fake, base_url) = dingtalk_relay::sandbox::FakeDingTalk::spawn(config.fake.clone())
        .await
        .unwrap();
    let yaml = settings_yaml(&config, &base_url);
    let app = spawn_app_on(config, fake, base_url).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.yaml");
    std::fs::write(&file, &yaml).unwrap();
    app.state.reloader.set_config_file(Some(file.clone()));
    let id = app.accept(&job_status()).await;
    app.wait_for_state(&id, "delivered").await;
    let (tokens, templates) = (app.fake.gettoken_calls(), app.fake.getbyname_calls());
    assert_eq!((tokens, templates), (1, 1));
    let reload = || async {
        app.http
            .post(format!("{}/-/reload", app.admin_address))
            .send()
            .await
            .unwrap()
            .status()
    };

    // Act 1: 50 reloads, ten at a time.
    for _ in 0..5 {
        let statuses = futures::future::join_all((0..10).map(|_| reload())).await;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }

    // Assert 1: no metered call was spent, and the cached token still delivers.
    assert_eq!(app.fake.gettoken_calls(), tokens);
    assert_eq!(app.fake.getbyname_calls(), templates);
    let id = app.accept(&job_status_n(1)).await;
    app.wait_for_state(&id, "delivered").await;
    assert_eq!(app.fake.gettoken_calls(), tokens);
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "dingtalk_relay_config_reloads_total",
            &[("outcome", "ok")]
        ),
        50.0
    );

    // Act 2: the monthly quota runs out, then the operator reloads.
    app.fake
        .push_create_fault(dingtalk_relay::sandbox::Fault::Errcode(90020));
    let id = app.accept(&job_status_n(2)).await;
    let paused = || async {
        metric_value(
            &app.metrics().await,
            "dingtalk_relay_dingtalk_paused",
            &[("app", "default"), ("reason", "quota_exhausted")],
        ) == 1.0
    };
    assert!(poll_until(std::time::Duration::from_secs(10), paused).await);
    let creates = app.fake.create_calls();
    assert_eq!(reload().await, 200);

    // Assert 2: the pause is still in force: said by /readyz and the gauge, and a new
    // webhook is not sent.
    let ready: Value = app.get_admin("/readyz").await.json().await.unwrap();
    assert!(
        ready["warnings"].to_string().contains("quota_exhausted"),
        "{ready}"
    );
    assert!(paused().await);
    let second = app.accept(&job_status_n(3)).await;
    let waiting = app.delivery(&second).await;
    assert_ne!(waiting["state"], "delivered", "{waiting}");
    assert_eq!(app.fake.create_calls(), creates);
    assert_ne!(app.delivery(&id).await["state"], "delivered");
    app.stop().await;
}

#[tokio::test]
async fn a_reload_that_changes_an_apps_secret_drops_its_cached_token() {
    let config = TestConfig::default();
    let (fake, base_url) = dingtalk_relay::sandbox::FakeDingTalk::spawn(config.fake.clone())
        .await
        .unwrap();
    let yaml = settings_yaml(&config, &base_url);
    let secret = config.fake.app_secret.clone();
    let app = spawn_app_on(config, fake, base_url).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.yaml");
    app.state.reloader.set_config_file(Some(file.clone()));
    assert_eq!(app.fake.gettoken_calls(), 1);

    // Act: the secret changes (rotated to one DingTalk does not know).
    let rotated = yaml.replace(
        &format!("app_secret: \"{secret}\""),
        "app_secret: \"rotated-secret\"",
    );
    assert_ne!(rotated, yaml);
    std::fs::write(&file, &rotated).unwrap();
    let answer = app
        .http
        .post(format!("{}/-/reload", app.admin_address))
        .send()
        .await
        .unwrap();

    // Assert: the old token is not used with the new credentials: the next delivery fetches
    // a token again (the resolved template may be kept, in the store: it does not depend on
    // the secret). A refused secret does not stop a reload: deliveries wait until it is fixed.
    assert_eq!(answer.status(), 200);
    app.accept(&job_status()).await;
    assert!(
        poll_until(std::time::Duration::from_secs(20), || async {
            app.fake.gettoken_calls() >= 2
        })
        .await,
        "no new gettoken after the secret changed"
    );
    assert_eq!(app.fake.create_calls(), 0, "the old token was used");
    app.stop().await;
}
