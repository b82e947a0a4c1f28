//! Inbound abuse limits through the real listeners: slow-loris connections are closed after
//! `server.header_read_timeout`, a request that outlives `server.request_timeout` gets the JSON
//! 503 with `Retry-After`, a route's `rate_limit` answers 429 with `Retry-After`, and a request
//! in flight at shutdown still gets its answer.

use std::time::Duration;

use dingtalk_relay::sandbox::Fault;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// Reads until the server closes the connection (EOF or reset); `false` if it stays open for
/// `limit`.
async fn closed_by_server(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buffer = [0_u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn slow_loris_connections_are_closed_after_the_header_read_timeout() {
    // Arrange: a one-second header timeout.
    let app = spawn_app_with(TestConfig {
        header_read_timeout: "1s",
        ..TestConfig::default()
    })
    .await;
    for address in [&app.address, &app.admin_address] {
        let host = address.trim_start_matches("http://");
        // Act: one client trickles a request head and stops; another sends nothing at all.
        let mut trickling = TcpStream::connect(host).await.unwrap();
        trickling
            .write_all(b"POST /v1/hooks/ci HTTP/1.1\r\nHost: relay\r\nContent-Ty")
            .await
            .unwrap();
        let mut silent = TcpStream::connect(host).await.unwrap();
        // Assert: the server hangs up on both (the limit here is only the test's patience).
        assert!(
            closed_by_server(&mut trickling, Duration::from_secs(15)).await,
            "{address}: a trickling client was not disconnected"
        );
        assert!(
            closed_by_server(&mut silent, Duration::from_secs(15)).await,
            "{address}: a silent client was not disconnected"
        );
    }
    // Normal requests are unaffected, on both listeners.
    app.accept(&job_status()).await;
    assert_eq!(app.get_admin("/healthz").await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_request_that_outlives_the_request_timeout_gets_503_with_retry_after() {
    // Arrange: a one-second request timeout; DingTalk takes three seconds, so `?wait=10`
    // cannot be answered in time.
    let app = spawn_app_with(TestConfig {
        request_timeout: "1s",
        ..TestConfig::default()
    })
    .await;
    app.fake
        .push_create_fault(Fault::Delay(Duration::from_secs(3)));
    // Act
    let response = app.post_hook("ci?wait=10", &job_status()).await;
    // Assert: the one error shape, with Retry-After, counted under the webhook path.
    assert_eq!(response.status(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("server.request_timeout"),
        "{body}"
    );
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "dingtalk_relay_http_requests_total",
            &[("path", "/v1/hooks/{route}"), ("status", "503")]
        ),
        1.0
    );
    // The delivery stored before the cut is not lost: the sender's retry is a duplicate and
    // the report is created once.
    assert!(
        poll_until(Duration::from_secs(10), || async {
            app.fake.reports().len() == 1
        })
        .await
    );
    let retry = app.post_hook("ci", &job_status()).await;
    assert_eq!(retry.status(), 200);
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry["status"], "duplicate");
    app.stop().await;
}

#[tokio::test]
async fn a_request_in_flight_at_shutdown_gets_its_answer() {
    // Arrange: DingTalk answers after half a second; a `?wait` request is in flight.
    let app = spawn_app().await;
    app.fake
        .push_create_fault(Fault::Delay(Duration::from_millis(500)));
    let request = app
        .http
        .post(format!("{}/v1/hooks/ci?wait=10", app.address))
        .bearer_auth(ROUTE_SECRET)
        .json(&job_status())
        .send();
    let request = tokio::spawn(request);
    assert!(
        poll_until(Duration::from_secs(10), || async {
            app.fake.create_calls() == 1
        })
        .await
    );
    // Act: shut down while the request waits.
    app.cancel.cancel();
    // Assert: the request is answered (the delivery finishes), then the server stops.
    let response = request.await.unwrap().expect("the request is answered");
    assert_eq!(response.status(), 201);
    app.server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_route_over_its_rate_limit_gets_429_with_retry_after() {
    // Arrange: two webhooks at once, then one every 20 s.
    let app = spawn_app_with(TestConfig {
        route_extra: "    rate_limit: {per_second: 0.05, burst: 2}\n".to_owned(),
        ..TestConfig::default()
    })
    .await;
    // Unauthenticated requests do not spend the sender's budget.
    for n in 0..5 {
        let wrong = app
            .post_raw(
                "ci",
                job_status_n(n).to_string().into_bytes(),
                &[("authorization", "Bearer wrong")],
            )
            .await;
        assert_eq!(wrong.status(), 401);
    }
    app.accept(&job_status_n(10)).await;
    app.accept(&job_status_n(11)).await;
    // Act
    let refused = app.post_hook("ci", &job_status_n(12)).await;
    // Assert: 429, Retry-After until the next token, the error shape, counted; nothing stored.
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "dingtalk_relay_webhooks_received_total",
            &[("route", "ci"), ("outcome", "rate_limited")]
        ),
        1.0
    );
    let listed: Value = app.get_admin("/v1/deliveries").await.json().await.unwrap();
    assert_eq!(listed["deliveries"].as_array().unwrap().len(), 2);
    app.stop().await;
}
