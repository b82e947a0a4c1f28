//! Digest mode end to end: webhooks kept, the digest made at the scheduled time (the clock is
//! passed to `digest::make_due`, so tests stand anywhere in time), exactly once across a
//! restart and across two replicas, and visible before it is sent.

use std::time::Duration;

use chrono::{DateTime, Utc};
use dingtalk_relay::digest;
use dingtalk_relay::sandbox::{FakeDingTalk, FakeOptions};
use serde_json::{Value, json};

use crate::helpers::{
    ID_TEMPLATE, TestApp, TestConfig, fresh_postgres_database, job_status_n, metric_value,
    poll_until, spawn_app_on, spawn_app_with,
};

/// A digest route `daily` (grouped by `group_by`, sent at 18:00 UTC) beside the usual `ci`.
fn config(group_by: &str, extra: &str) -> TestConfig {
    let author = if group_by == "author" {
        "actor"
    } else {
        "manager01"
    };
    TestConfig {
        extra_routes: format!(
            r#"  daily:
    source: generic
    secret: "route-s3cret"
    template: {ID_TEMPLATE}
    author: "{author}"
    to_userids: ["lead01"]
    digest: {{schedule: "18:00", timezone: UTC, group_by: {group_by}, grace: 1h{extra}}}
"#
        ),
        ..TestConfig::default()
    }
}

/// The next scheduled time of `daily` after now.
fn next_digest(app: &TestApp) -> DateTime<Utc> {
    let settings = app.state.settings();
    digest::schedule_of(&settings, &settings.routes["daily"])
        .expect("daily is a digest route")
        .next_after(Utc::now())
        .expect("a next time")
}

fn run(pipeline: &str, status: &str, actor: &str, n: usize) -> Value {
    let mut body = job_status_n(n);
    body["pipeline"] = json!(pipeline);
    body["job"] = json!(pipeline);
    body["status"] = json!(status);
    body["actor"] = json!(actor);
    body["url"] = json!(format!("https://ci.example.com/{pipeline}/{n}"));
    body
}

async fn keep(app: &TestApp, body: &Value) -> Value {
    let response = app.post_hook("daily", body).await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "digest", "{answer}");
    answer
}

/// `GET /v1/digests/daily`.
async fn pending_digest(app: &TestApp) -> Value {
    app.get_admin("/v1/digests/daily")
        .await
        .json()
        .await
        .unwrap()
}

fn content<'a>(report: &'a dingtalk_relay::sandbox::CreatedReport, key: &str) -> &'a str {
    report
        .contents
        .iter()
        .find(|c| c.key == key)
        .map_or("", |c| c.content.as_str())
}

async fn wait_for_reports(fake: &FakeDingTalk, n: usize) {
    assert!(
        poll_until(Duration::from_secs(10), || async {
            fake.reports().len() >= n
        })
        .await,
        "expected {n} reports, got {}",
        fake.reports().len()
    );
}

#[tokio::test]
async fn a_day_of_events_becomes_one_report_per_author() {
    let app = spawn_app_with(config("author", "")).await;
    let at = next_digest(&app);
    let first = keep(&app, &run("build", "failure", "octocat", 1)).await;
    assert_eq!(
        first["digest_at"],
        at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    keep(&app, &run("build", "success", "octocat", 2)).await;
    keep(&app, &run("deploy", "failure", "octocat", 3)).await;
    keep(&app, &run("build", "success", "dev@example.com", 4)).await;
    keep(
        &app,
        &json!({"type": "standup", "user": "octocat", "done": ["review"], "todo": ["ship"]}),
    )
    .await;
    // Redelivery is still deduplicated; `?wait` does not hold a digest route's answer.
    let again = app
        .post_hook("daily", &run("build", "success", "octocat", 2))
        .await;
    assert_eq!(again.status(), 200);
    let waited = app
        .http
        .post(format!("{}/v1/hooks/daily?wait=5", app.address))
        .bearer_auth("route-s3cret")
        .json(&run("lint", "success", "octocat", 5))
        .send()
        .await
        .unwrap();
    assert_eq!(waited.status(), 202);

    // The preview shows what would be sent now, and sends nothing.
    let preview: Value = pending_digest(&app).await;
    assert_eq!(preview["pending_events"], 6, "{preview}");
    assert_eq!(preview["reports"].as_array().unwrap().len(), 2, "{preview}");
    assert_eq!(app.fake.create_calls(), 0);

    // A minute before the scheduled time nothing is due.
    let early = digest::make_due(&app.state, at - chrono::Duration::minutes(1)).await;
    assert!(
        early
            .iter()
            .all(|m| m.route != "daily" || m.period_end < at),
        "{early:?}"
    );
    let made = digest::make_due(&app.state, at).await;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!((made[0].events, made[0].deliveries.len()), (6, 2));
    wait_for_reports(&app.fake, 2).await;
    let reports = app.fake.reports();
    let octo = reports
        .iter()
        .find(|r| r.userid == "dd_octo")
        .expect("octocat's");
    let dev = reports
        .iter()
        .find(|r| r.userid == "dd_dev")
        .expect("dev's");
    let done = content(octo, "今日完成工作");
    assert!(done.contains("4 次运行 runs · ✅ 2 · ❌ 2"), "{done}");
    assert!(done.contains("• review"), "{done}");
    // The failure that was not fixed is listed to do; the fixed one is not.
    let todo = content(octo, "未完成工作");
    assert!(todo.contains("deploy") && !todo.contains("build"), "{todo}");
    assert!(todo.contains("• ship"), "{todo}");
    assert!(content(dev, "今日完成工作").contains("1 次运行 runs · ✅ 1"));
    assert_eq!(octo.to_userids, vec!["lead01"]);

    // Made once: asking again (or later within grace) makes nothing, sends nothing more.
    assert!(digest::make_due(&app.state, at).await.is_empty());
    assert!(
        digest::make_due(&app.state, at + chrono::Duration::minutes(30))
            .await
            .is_empty()
    );
    let preview: Value = pending_digest(&app).await;
    assert_eq!(preview["pending_events"], 0, "{preview}");
    let metrics = app.metrics().await;
    let folded = metric_value(
        &metrics,
        "dingtalk_relay_digest_events_folded_total",
        &[("route", "daily")],
    );
    let saved = metric_value(
        &metrics,
        "dingtalk_relay_digest_reports_saved_total",
        &[("route", "daily")],
    );
    assert_eq!((folded, saved), (6.0, 4.0), "{metrics}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(app.fake.create_calls(), 2);
    app.stop().await;
}

#[tokio::test]
async fn a_missed_digest_is_sent_within_grace_and_rolled_over_after() {
    let app = spawn_app_with(config("route", "")).await;
    let at = next_digest(&app);
    keep(&app, &run("build", "failure", "octocat", 1)).await;
    // Down at `at`, back 2 hours later: beyond the 1 h grace, nothing is sent...
    let late = digest::make_due(&app.state, at + chrono::Duration::hours(2)).await;
    assert!(late.is_empty(), "{late:?}");
    let preview: Value = pending_digest(&app).await;
    assert_eq!(preview["pending_events"], 1, "kept for the next digest");
    // ...and the next digest carries the events over.
    let next = at + chrono::Duration::days(1);
    keep(&app, &run("build", "success", "octocat", 2)).await;
    let made = digest::make_due(&app.state, next + chrono::Duration::minutes(59)).await;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0].period_end, next);
    assert_eq!(made[0].events, 2);
    wait_for_reports(&app.fake, 1).await;
    let report = &app.fake.reports()[0];
    assert_eq!(report.userid, "manager01");
    assert!(
        content(report, "今日完成工作").contains("2 次运行 runs · ✅ 1 · ❌ 1"),
        "{}",
        content(report, "今日完成工作")
    );
    app.stop().await;
}

#[tokio::test]
async fn an_empty_period_sends_nothing_unless_asked() {
    let quiet = spawn_app_with(config("route", "")).await;
    let at = next_digest(&quiet);
    let made = digest::make_due(&quiet.state, at).await;
    assert_eq!(made.len(), 1);
    assert!(made[0].deliveries.is_empty());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(quiet.fake.create_calls(), 0);
    quiet.stop().await;

    let chatty = spawn_app_with(config("route", ", send_empty: true")).await;
    let made = digest::make_due(&chatty.state, at).await;
    assert_eq!(made[0].deliveries.len(), 1);
    wait_for_reports(&chatty.fake, 1).await;
    let done = content(&chatty.fake.reports()[0], "今日完成工作").to_owned();
    assert!(done.contains("No CI runs in this period"), "{done}");
    chatty.stop().await;
}

#[tokio::test]
async fn a_restart_across_the_scheduled_time_sends_the_digest_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("relay.db").display());
    let with_store = || TestConfig {
        store_url: store.clone(),
        ..config("project", "")
    };
    let (fake, base_url) = FakeDingTalk::spawn(FakeOptions::default()).await.unwrap();
    let first = spawn_app_on(with_store(), fake.clone(), base_url.clone()).await;
    let at = next_digest(&first);
    for n in 0..5 {
        keep(&first, &run(&format!("job-{n}"), "success", "octocat", n)).await;
    }
    first.stop().await;

    // Back 10 minutes after the scheduled time, on the same file.
    let second = spawn_app_on(with_store(), fake.clone(), base_url.clone()).await;
    let made = digest::make_due(&second.state, at + chrono::Duration::minutes(10)).await;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0].events, 5);
    wait_for_reports(&fake, 1).await;
    assert!(content(&fake.reports()[0], "今日完成工作").contains("acme/api"));
    second.stop().await;

    // Another restart does not make it again.
    let third = spawn_app_on(with_store(), fake.clone(), base_url).await;
    assert!(
        digest::make_due(&third.state, at + chrono::Duration::minutes(20))
            .await
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.reports().len(), 1);
    third.stop().await;
}

#[tokio::test]
async fn two_replicas_racing_make_each_digest_once() {
    let Some((_url, _database, database_url)) =
        fresh_postgres_database("two replicas racing for a digest").await
    else {
        return;
    };
    let with_store = || TestConfig {
        store_url: database_url.clone(),
        ..config("author", "")
    };
    let (fake, base_url) = FakeDingTalk::spawn(FakeOptions::default()).await.unwrap();
    let one = spawn_app_on(with_store(), fake.clone(), base_url.clone()).await;
    let two = spawn_app_on(with_store(), fake, base_url).await;
    let at = next_digest(&one);
    for n in 0..10 {
        let replica = if n % 2 == 0 { &one } else { &two };
        let actor = if n % 3 == 0 {
            "dev@example.com"
        } else {
            "octocat"
        };
        keep(replica, &run(&format!("job-{n}"), "success", actor, n)).await;
    }
    for round in 0..5 {
        let when = at + chrono::Duration::seconds(round);
        let (a, b) = tokio::join!(
            digest::make_due(&one.state, when),
            digest::make_due(&two.state, when)
        );
        let made: Vec<_> = a.into_iter().chain(b).collect();
        if round == 0 {
            assert_eq!(made.len(), 1, "exactly one replica makes it: {made:?}");
            assert_eq!(made[0].events, 10);
        } else {
            assert!(made.is_empty(), "{made:?}");
        }
    }
    wait_for_reports(&one.fake, 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut authors: Vec<String> = one.fake.reports().into_iter().map(|r| r.userid).collect();
    authors.sort();
    assert_eq!(authors, vec!["dd_dev", "dd_octo"]);
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn the_scheduler_makes_due_digests_by_itself() {
    // Scheduled two minutes ago (within the 1 h grace), with send_empty: the running relay
    // makes that digest on its own as soon as it starts.
    let two_minutes_ago = (Utc::now() - chrono::Duration::minutes(2)).format("%H:%M");
    let mut config = config("route", ", send_empty: true");
    config.extra_routes = config.extra_routes.replace(
        "schedule: \"18:00\"",
        &format!("schedule: \"{two_minutes_ago}\""),
    );
    let app = spawn_app_with(config).await;
    wait_for_reports(&app.fake, 1).await;
    assert!(content(&app.fake.reports()[0], "今日完成工作").contains("No CI runs"));
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "dingtalk_relay_digests_total",
            &[("route", "daily"), ("outcome", "made")]
        ),
        1.0,
        "{metrics}"
    );
    app.stop().await;
}

#[test]
fn render_digest_folds_the_given_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("relay.yaml");
    std::fs::write(
        &config_file,
        crate::helpers::settings_yaml(&config("project", ", max_lines: 3"), "http://127.0.0.1:9"),
    )
    .unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_dingtalk-relay"));
    command
        .args(["render", "--route", "daily", "--digest", "--config"])
        .arg(&config_file);
    for n in 0..8 {
        let status = if n == 5 { "failure" } else { "success" };
        let file = dir.path().join(format!("{n}.json"));
        std::fs::write(
            &file,
            run(&format!("job-{n}"), status, "octocat", n).to_string(),
        )
        .unwrap();
        command.arg("--body").arg(&file);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rendered: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(rendered["events"], 8, "{rendered}");
    let report = &rendered["reports"][0];
    assert_eq!(report["group"], "acme/api");
    assert_eq!(report["summarised_pipelines"], 5);
    let done = report["create_report_param"]["contents"][0]["content"]
        .as_str()
        .unwrap();
    assert!(done.contains("8 次运行 runs · ✅ 7 · ❌ 1"), "{done}");
    assert!(
        done.contains("job-5"),
        "the failure is listed first: {done}"
    );
    assert!(done.contains("and 5 more pipelines (all passed)"), "{done}");
    assert!(
        !stdout.contains("route-s3cret"),
        "render printed the secret"
    );

    // Without --digest, a digest route says where the event would go.
    let single = std::process::Command::new(env!("CARGO_BIN_EXE_dingtalk-relay"))
        .args(["render", "--route", "daily", "--config"])
        .arg(&config_file)
        .arg("--body")
        .arg(dir.path().join("0.json"))
        .output()
        .unwrap();
    let answer: Value = serde_json::from_slice(&single.stdout).unwrap();
    assert_eq!(answer["status"], "digest", "{answer}");
    // --digest on an ordinary route is refused, naming it.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_dingtalk-relay"))
        .args(["render", "--route", "ci", "--digest", "--config"])
        .arg(&config_file)
        .arg("--body")
        .arg(dir.path().join("0.json"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("routes.ci has no digest"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// Digest events count toward `store.max_queued`, and what is kept of each is cut to what a
/// digest can show (a 200 KB commit message is not stored whole).
#[tokio::test]
async fn kept_events_are_bounded_and_cut() {
    let app = spawn_app_with(TestConfig {
        max_queued: 3,
        max_body_bytes: 1 << 20,
        ..config("route", "")
    })
    .await;
    for n in 0..3 {
        let mut body = run("build", "success", "octocat", n);
        body["commit_message"] = json!("m".repeat(200_000));
        keep(&app, &body).await;
    }
    let response = app
        .post_hook("daily", &run("build", "success", "octocat", 9))
        .await;
    assert_eq!(
        response.status(),
        503,
        "a fourth event was kept beyond max_queued"
    );
    assert!(response.headers().contains_key("retry-after"));
    let kept = app.state.store.digest_events("daily").await.unwrap();
    assert_eq!(kept.len(), 3);
    for event in kept {
        let dingtalk_relay::sources::Event::JobStatus(job) = event.event else {
            panic!("a job_status was kept as something else");
        };
        let message = job.commit_message.unwrap_or_default();
        assert_eq!(
            message.chars().count(),
            dingtalk_relay::mapping::MAX_CONTENT_CHARS
        );
    }
}

/// A brand-new install (no digest yet, no events) that starts after a scheduled time has missed
/// nothing, so it does not warn "digest missed (the relay was down)"; with events from before
/// the time, or a digest before it, it has; once the digest is made, it has not.
#[tokio::test]
async fn a_brand_new_install_has_missed_no_digest() {
    let app = spawn_app_with(config("route", "")).await;
    let at = next_digest(&app);
    let before = at - chrono::Duration::days(1);
    assert!(
        !digest::missed(&app.state, "daily", before).await,
        "nothing to miss yet"
    );
    assert!(!digest::missed(&app.state, "daily", at).await);
    // An event kept before `at`: a relay down at `at` would miss it.
    keep(&app, &run("build", "failure", "octocat", 1)).await;
    assert!(digest::missed(&app.state, "daily", at).await);
    assert!(
        !digest::missed(&app.state, "daily", before).await,
        "the event came after the earlier time"
    );
    // Made at `at`: not missed, and the day after, with a digest before it, missed.
    assert_eq!(digest::make_due(&app.state, at).await.len(), 1);
    assert!(!digest::missed(&app.state, "daily", at).await);
    assert!(digest::missed(&app.state, "daily", at + chrono::Duration::days(1)).await);
    app.stop().await;
}

/// A kept event this relay cannot read is shown by the preview with its reason and left out
/// of the reports; when the digest is made it becomes a `failed` delivery (same id, same
/// reason) in `/v1/deliveries`, and the other events' report is still sent.
#[tokio::test]
async fn an_unreadable_kept_event_is_shown_and_does_not_stop_the_digest() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("relay.db").display());
    let app = spawn_app_with(TestConfig {
        store_url: url.clone(),
        ..config("author", "")
    })
    .await;
    let at = next_digest(&app);
    keep(&app, &run("build", "success", "octocat", 1)).await;
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("connect");
    sqlx::query(
        "INSERT INTO digest_events (id, route, group_key, event, received_at) \
         VALUES ('unreadable', 'daily', 'dd_octo', '{\"v\":1,\"event\":{\"type\":\"deploy\"}}', ?1)",
    )
    .bind(Utc::now().timestamp_millis())
    .execute(&mut conn)
    .await
    .expect("raw insert");
    drop(conn);

    let preview = pending_digest(&app).await;
    assert_eq!(preview["pending_events"], 1, "{preview}");
    assert_eq!(preview["reports"].as_array().map(Vec::len), Some(1));
    assert_eq!(preview["undecodable_events"][0]["id"], "unreadable");
    let reason = preview["undecodable_events"][0]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.starts_with("undecodable: event: ") && reason.contains("deploy"),
        "{preview}"
    );

    let made = digest::make_due(&app.state, at).await;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!((made[0].events, made[0].deliveries.len()), (1, 1));
    wait_for_reports(&app.fake, 1).await;
    let failed: Value = app
        .get_admin("/v1/deliveries/unreadable")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["last_error"]["errmsg"], reason, "{failed}");
    let preview = pending_digest(&app).await;
    assert_eq!(preview["undecodable_events"], json!([]), "{preview}");
    app.stop().await;
}
