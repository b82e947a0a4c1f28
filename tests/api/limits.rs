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

/// The soft limit on open files of this process (`/proc/self/limits`).
fn open_files_soft_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Sends one byte of body every 250 ms until the server answers; the answer's status, or
/// `None` when it closed without one or kept quiet for 60 s.
async fn trickle_until_answered(mut stream: TcpStream) -> Option<u16> {
    let mut buffer = [0_u8; 512];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        tokio::select! {
            read = stream.read(&mut buffer) => {
                let n = read.ok().filter(|n| *n > 0)?;
                let head = String::from_utf8_lossy(&buffer[..n]);
                return head.split(' ').nth(1)?.parse().ok();
            }
            () = tokio::time::sleep(Duration::from_millis(250)) => {
                // A write to a connection the server has answered may fail; the read says how.
                let _ = stream.write_all(b" ").await;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
    }
}

#[tokio::test]
async fn trickling_unauthenticated_bodies_cannot_block_an_authenticated_webhook() {
    // Arrange: the default caps (1024 requests, 64 unverified body reads) and a 15 s body
    // read timeout (long enough that no read slot is freed while the heads arrive, however
    // loaded the machine); 1,100 connections each send a whole request head for a 1 MB body that
    // claims a body signature (so its sender cannot be known before the body is read), or a
    // wrong bearer token, and then trickle it.
    const TRICKLERS: usize = 1100;
    let needed = 3 * TRICKLERS as u64;
    let soft = open_files_soft_limit().unwrap_or(0);
    assert!(
        soft >= needed,
        "this test needs {needed} open files (client and server ends); the soft limit is {soft}: raise it with ulimit -n"
    );
    let app = spawn_app_with(TestConfig {
        max_body_bytes: 1_048_576,
        server_extra: "  body_read_timeout: 15s".to_owned(),
        ..TestConfig::default()
    })
    .await;
    let host = app.address.trim_start_matches("http://").to_owned();
    let mut tricklers = Vec::with_capacity(TRICKLERS);
    for i in 0..TRICKLERS {
        let mut stream = TcpStream::connect(&host).await.unwrap();
        let credential = if i % 10 == 0 {
            "Authorization: Bearer not-the-secret".to_owned()
        } else {
            format!("X-Signature-256: sha256={}", "0".repeat(64))
        };
        let head = format!(
            "POST /v1/hooks/ci HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n{credential}\r\nContent-Length: 1000000\r\n\r\n{{"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        tricklers.push(tokio::spawn(trickle_until_answered(stream)));
    }

    // Act: an authenticated webhook on a fresh connection while they trickle.
    let started = tokio::time::Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{}/v1/hooks/ci", app.address))
        .bearer_auth(ROUTE_SECRET)
        .json(&job_status())
        .send()
        .await
        .unwrap();
    let took = started.elapsed();

    // Assert: it is accepted within a few seconds …
    assert_eq!(response.status(), 202);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // … and every trickler is answered: a wrong token 401 before its body, a claimed
    // signature 503 beyond the unverified cap, or 408 when its body time is up.
    let mut statuses = std::collections::BTreeMap::<Option<u16>, usize>::new();
    for trickler in tricklers {
        *statuses.entry(trickler.await.unwrap()).or_default() += 1;
    }
    assert_eq!(
        statuses.get(&Some(401)),
        Some(&(TRICKLERS / 10)),
        "{statuses:?}"
    );
    let timed_out = statuses.get(&Some(408)).copied().unwrap_or(0);
    assert!((1..=64).contains(&timed_out), "{statuses:?}");
    assert_eq!(
        statuses.get(&Some(503)).copied().unwrap_or(0) + timed_out + TRICKLERS / 10,
        TRICKLERS,
        "{statuses:?}"
    );
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "dingtalk_relay_webhooks_received_total",
            &[("route", "ci"), ("outcome", "body_timeout")]
        ),
        timed_out as f64
    );
    app.stop().await;
}

#[tokio::test]
async fn a_malformed_chunked_body_answers_400() {
    let app = spawn_app().await;
    let host = app.address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(host).await.unwrap();
    stream
        .write_all(
            format!("POST /v1/hooks/ci HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {ROUTE_SECRET}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("invalid_payload"), "{answer}");
    assert!(app.state.store.list(None, 10).await.unwrap().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn an_insecure_routes_stalled_bodies_are_capped_and_timed_out() {
    // Arrange: one unverified read at a time, for at most one second.
    let app = spawn_app_with(TestConfig {
        server_extra: "  max_unverified_requests: 1\n  body_read_timeout: 1s".to_owned(),
        extra_routes: "  open:\n    source: generic\n    insecure: true\n    template: {name: \"日报\"}\n    author: \"manager01\"\n".to_owned(),
        ..TestConfig::default()
    })
    .await;
    let host = app.address.trim_start_matches("http://").to_owned();
    let stall = || async {
        let mut stream = TcpStream::connect(&host).await.unwrap();
        stream
            .write_all(
                b"POST /v1/hooks/open HTTP/1.1\r\nHost: relay\r\nContent-Length: 100\r\n\r\n{",
            )
            .await
            .unwrap();
        stream
    };
    // Act: the first stalls and holds the one slot …
    let first = tokio::spawn(trickle_until_answered(stall().await));
    let held = poll_until(Duration::from_secs(10), || async {
        let second = app.post_hook("open", &job_status()).await;
        second.status() == 503
    })
    .await;
    // Assert: … so another body on that route is refused at once, the first is cut after
    // the body timeout, and then the route takes webhooks again.
    assert!(held, "the stalled body never held the unverified slot");
    assert_eq!(first.await.unwrap(), Some(408));
    assert_eq!(app.post_hook("open", &job_status_n(1)).await.status(), 202);
    app.stop().await;
}
