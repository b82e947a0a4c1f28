//! Authenticated nonsense costs nothing: a native event missing what its sender always sends
//! is a 400 naming the field, a status the relay does not know is ignored unless the route
//! asks for it, and a route nobody would see gets a warning.

use dingtalk_relay::sources::auth::sign_sha256;
use serde_json::{Value, json};

use crate::helpers::*;

const SECRET: &str = "native-s3cret";

fn routes() -> String {
    format!(
        "  gl:\n    source: gitlab\n    secret: \"{SECRET}\"\n    template: {ID_TEMPLATE}\n    author: \"manager01\"\n    to_userids: [\"lead01\"]\n\
         \x20 gl_all:\n    source: gitlab\n    secret: \"{SECRET}\"\n    template: {ID_TEMPLATE}\n    author: \"manager01\"\n    to_userids: [\"lead01\"]\n    statuses: [success, failure, unknown]\n\
         \x20 gh:\n    source: github\n    secret: \"{SECRET}\"\n    template: {ID_TEMPLATE}\n    author: \"manager01\"\n    to_userids: [\"lead01\"]\n\
         \x20 jk:\n    source: jenkins\n    secret: \"{SECRET}\"\n    template: {ID_TEMPLATE}\n    author: \"manager01\"\n    to_userids: [\"lead01\"]\n"
    )
}

async fn app() -> TestApp {
    spawn_app_with(TestConfig {
        extra_routes: routes(),
        ..TestConfig::default()
    })
    .await
}

async fn gitlab(app: &TestApp, route: &str, body: &Value) -> reqwest::Response {
    app.post_raw(
        route,
        body.to_string().into_bytes(),
        &[
            ("x-gitlab-event", "Pipeline Hook"),
            ("x-gitlab-token", SECRET),
            ("authorization", ""),
        ],
    )
    .await
}

fn pipeline(status: &str) -> Value {
    json!({"object_kind":"pipeline","object_attributes":{"id":31,"iid":3,"status":status,
        "ref":"main","sha":"bcbb5ec396a2c0f828686f14fac9b80b780504f2",
        "finished_at":"2026-11-24 08:03:12 UTC"},
        "project":{"path_with_namespace":"acme/api"},"user":{"username":"octocat"}})
}

#[tokio::test]
async fn a_signed_gitlab_hook_without_its_pipeline_is_400_and_costs_nothing() {
    let app = app().await;
    for (body, field) in [
        (json!({}), "object_attributes"),
        (
            json!({"object_kind":"pipeline","object_attributes":{"id":1}}),
            "object_attributes.status",
        ),
    ] {
        let response = gitlab(&app, "gl", &body).await;
        assert_eq!(response.status(), 400, "{body}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }
    let stored = app.get_admin("/v1/deliveries?limit=10").await;
    let stored: Value = stored.json().await.unwrap();
    assert_eq!(
        stored["deliveries"].as_array().unwrap().len(),
        0,
        "{stored}"
    );
    assert_eq!(app.fake.create_calls(), 0);
    app.stop().await;
}

#[tokio::test]
async fn a_signed_github_run_that_is_empty_is_400() {
    let app = app().await;
    let body = br#"{"action":"completed","workflow_run":{}}"#.to_vec();
    let signature = sign_sha256(SECRET, &body);
    let response = app
        .post_raw(
            "gh",
            body,
            &[
                ("x-github-event", "workflow_run"),
                ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
                ("x-hub-signature-256", &signature),
                ("authorization", ""),
            ],
        )
        .await;
    assert_eq!(response.status(), 400);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["field"], "workflow_run", "{answer}");
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_native_status_is_ignored_unless_the_route_asks_for_it() {
    let app = app().await;
    // Act: a status GitLab may add one day.
    let response = gitlab(&app, "gl", &pipeline("weird_new")).await;
    // Assert: ignored, naming the raw value, counted; nothing made.
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "ignored");
    assert!(
        answer["reason"].as_str().unwrap().contains("weird_new"),
        "{answer}"
    );
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "dingtalk_relay_webhooks_received_total",
            &[("route", "gl"), ("outcome", "ignored")]
        ),
        1.0
    );
    // A known status is reported as before.
    assert_eq!(gitlab(&app, "gl", &pipeline("failed")).await.status(), 202);
    // A route that lists unknown (the vocabulary has no raw values: check-config refuses
    // them) reports it.
    assert_eq!(
        gitlab(&app, "gl_all", &pipeline("weird_new"))
            .await
            .status(),
        202
    );
    app.stop().await;
}

#[tokio::test]
async fn jenkins_finished_from_older_plugins_makes_the_one_report() {
    let app = app().await;
    let build = |phase: &str| {
        json!({"name":"asgard","url":"job/asgard/","build":{"number":18,"phase":phase,
            "status":"SUCCESS","full_url":"http://jenkins.example.com/job/asgard/18/"}})
        .to_string()
        .into_bytes()
    };
    let bearer = format!("Bearer {SECRET}");
    let mut answers = Vec::new();
    for phase in ["STARTED", "COMPLETED", "FINISHED"] {
        let response = app
            .post_raw("jk", build(phase), &[("authorization", &bearer)])
            .await;
        answers.push(response.status().as_u16());
    }
    assert_eq!(answers, [200, 200, 202]);
    assert!(
        poll_until(std::time::Duration::from_secs(5), || async {
            app.fake.reports().len() == 1
        })
        .await
    );
    app.stop().await;
}

#[tokio::test]
async fn a_route_without_receivers_is_warned_about_by_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = settings_yaml(&TestConfig::default(), "http://127.0.0.1:1")
        .replace("    to_userids: [\"lead01\"]\n", "");
    let file = dir.path().join("relay.yaml");
    std::fs::write(&file, yaml).unwrap();
    let summary = dingtalk_relay::cli::check_config(Some(&file), false, false)
        .await
        .unwrap();
    assert!(summary.starts_with("configuration is valid"), "{summary}");
    assert!(
        summary.contains("warning: routes.ci: has no receivers"),
        "{summary}"
    );
    // With a receiver, no warning.
    let quiet = settings_yaml(&TestConfig::default(), "http://127.0.0.1:1");
    std::fs::write(&file, quiet).unwrap();
    let summary = dingtalk_relay::cli::check_config(Some(&file), false, false)
        .await
        .unwrap();
    assert!(!summary.contains("warning"), "{summary}");
}
