//! `check-config` (and `serve`) through the real binary: a file holding only what differs from
//! the defaults, `--print` without secrets, `--online` failing when DingTalk is unreachable or
//! refuses, `--sandbox` refusing exactly what `serve --sandbox` refuses, and the checks that
//! catch configurations which would silently drop reports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dingtalk_relay::sandbox::{FakeDingTalk, FakeOptions};
use serde_json::Value;

use crate::helpers::*;
use crate::process::start_relay_with;

/// One app and one route; everything else is the built-in defaults.
const SMALL: &str = r#"# one app, one route: the rest is the built-in defaults
dingtalk:
  apps:
    default:
      app_key: "dingabc"
routes:
  ci:
    source: generic
    secret: "file-route-s3cret"
    template:
      name: "日报"
    author: "manager01"
    to_userids: ["lead01"]
"#;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` and `env` (nothing else from the environment that names the
/// relay) and waits for it.
async fn run(args: &[&str], config: &Path, env: &[(&str, &str)]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_dingtalk-relay"));
    for (key, _) in std::env::vars() {
        if key.starts_with("DINGTALK_RELAY__") {
            command.env_remove(key);
        }
    }
    let output = command
        .args(args)
        .arg("--config")
        .arg(config)
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("the command finishes")
        .expect("the binary runs");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn a_file_with_only_what_differs_from_the_defaults_checks_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    assert!(SMALL.lines().count() <= 15);
    let config = write(dir.path(), "small.yaml", SMALL);
    let env = [(
        "DINGTALK_RELAY__DINGTALK__APPS__DEFAULT__APP_SECRET",
        "app-s3cret",
    )];
    let checked = run(&["check-config"], &config, &env).await;
    assert_eq!(checked.code, Some(0), "{}", checked.stderr);
    assert!(
        checked
            .stdout
            .contains("configuration is valid: 1 route(s), 1 app(s)"),
        "{}",
        checked.stdout
    );
    let sandbox = run(&["check-config", "--sandbox"], &config, &[]).await;
    assert_eq!(sandbox.code, Some(0), "{}", sandbox.stderr);
    // serve --sandbox takes webhooks with it (ports, store and JSON logs, which the test reads
    // the ports from, from the environment, so that tests can run side by side).
    let relay = start_relay_with(
        &config,
        &["--sandbox"],
        &[
            ("DINGTALK_RELAY__SERVER__LISTEN", "127.0.0.1:0"),
            ("DINGTALK_RELAY__SERVER__ADMIN_LISTEN", "127.0.0.1:0"),
            ("DINGTALK_RELAY__STORE__URL", "memory:"),
            ("DINGTALK_RELAY__LOG__FORMAT", "json"),
        ],
    );
    let mut child = relay.child;
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/hooks/ci?wait=10", relay.address))
        .bearer_auth("file-route-s3cret")
        .json(&job_status())
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let body: Value = answer.json().await.unwrap();
    child.kill().ok();
    let _ = child.wait();
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "delivered", "{body}");
}

#[tokio::test]
async fn print_shows_the_effective_configuration_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "small.yaml", SMALL);
    let printed = run(
        &["check-config", "--print"],
        &config,
        &[
            (
                "DINGTALK_RELAY__DINGTALK__APPS__DEFAULT__APP_SECRET",
                "app-s3cret-from-env",
            ),
            ("DINGTALK_RELAY__SERVER__ADMIN_TOKEN", "adm1n-t0ken"),
            ("DINGTALK_RELAY__DINGTALK__MAX_QPS", "7"),
            (
                "DINGTALK_RELAY__STORE__URL",
                "postgres://relay:pg-pa55word@db.example:5432/relay?sslmode=require",
            ),
        ],
    )
    .await;
    assert_eq!(printed.code, Some(0), "{}", printed.stderr);
    for secret in [
        "app-s3cret-from-env",
        "adm1n-t0ken",
        "file-route-s3cret",
        "pg-pa55word",
    ] {
        assert!(
            !printed.stdout.contains(secret) && !printed.stderr.contains(secret),
            "{secret} printed:\n{}",
            printed.stdout
        );
    }
    let effective: Value = serde_json::from_str(&printed.stdout).expect("JSON (YAML too)");
    // Defaults, the file and the environment, in that order.
    assert_eq!(effective["server"]["listen"], "0.0.0.0:8080");
    assert_eq!(effective["delivery"]["max_attempts"], 12);
    assert_eq!(effective["dingtalk"]["max_qps"], 7);
    assert_eq!(
        effective["dingtalk"]["apps"]["default"]["app_key"],
        "dingabc"
    );
    assert_eq!(
        effective["dingtalk"]["apps"]["default"]["app_secret"],
        "[redacted]"
    );
    assert_eq!(effective["server"]["admin_token"], "[redacted]");
    assert_eq!(effective["routes"]["ci"]["secret"], "[redacted]");
    assert_eq!(
        effective["store"]["url"],
        "postgres://relay:[redacted]@db.example:5432/relay?sslmode=require"
    );
    // What it prints loads again as a configuration file (secrets aside).
    let again = write(dir.path(), "printed.yaml", &printed.stdout);
    let reread = run(&["check-config", "--print"], &again, &[]).await;
    assert_eq!(reread.code, Some(0), "{}", reread.stderr);
}

/// A configuration for the DingTalk at `base_url`.
fn online_config(base_url: &str) -> String {
    SMALL
        .replace(
            "dingtalk:\n",
            &format!("dingtalk:\n  base_url: \"{base_url}\"\n  timeout: 2s\n"),
        )
        .replace("dingabc", &FakeOptions::default().app_key)
}

#[tokio::test]
async fn online_exits_non_zero_when_dingtalk_is_unreachable_or_refuses_the_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, base_url) = FakeDingTalk::spawn(FakeOptions::default()).await.unwrap();
    let config = write(dir.path(), "online.yaml", &online_config(&base_url));
    let secret = FakeOptions::default().app_secret;

    // The right credentials: tokens and templates checked.
    let good = run(
        &["check-config", "--online"],
        &config,
        &[(
            "DINGTALK_RELAY__DINGTALK__APPS__DEFAULT__APP_SECRET",
            &secret,
        )],
    )
    .await;
    assert_eq!(good.code, Some(0), "{}", good.stderr);
    assert!(
        good.stdout
            .contains("tokens of 1 app(s) and 1 template(s) checked against DingTalk"),
        "{}",
        good.stdout
    );
    assert!(!fake.issued_tokens().is_empty(), "a token was fetched");

    // Refused credentials: named app, DingTalk's errcode.
    let refused = run(
        &["check-config", "--online"],
        &config,
        &[(
            "DINGTALK_RELAY__DINGTALK__APPS__DEFAULT__APP_SECRET",
            "wrong-secret",
        )],
    )
    .await;
    assert_eq!(refused.code, Some(1), "{}", refused.stdout);
    assert!(
        refused
            .stderr
            .contains("dingtalk.apps.default: no access_token")
            && refused.stderr.contains("errcode"),
        "{}",
        refused.stderr
    );
    assert!(!refused.stdout.contains("checked against DingTalk"));
    assert!(
        !refused.stderr.contains("wrong-secret"),
        "{}",
        refused.stderr
    );

    // Nothing listening.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let unreachable = write(
        dir.path(),
        "unreachable.yaml",
        &online_config(&format!("http://127.0.0.1:{closed}")),
    );
    let down = run(
        &["check-config", "--online"],
        &unreachable,
        &[(
            "DINGTALK_RELAY__DINGTALK__APPS__DEFAULT__APP_SECRET",
            &secret,
        )],
    )
    .await;
    assert_eq!(down.code, Some(1), "{}", down.stdout);
    assert!(
        down.stderr
            .contains("dingtalk.apps.default: no access_token")
            && down.stderr.contains("could not connect"),
        "{}",
        down.stderr
    );
    assert!(
        down.stderr.contains("routes.ci.template (app default)"),
        "{}",
        down.stderr
    );
}

#[tokio::test]
async fn check_config_sandbox_refuses_exactly_what_serve_sandbox_refuses() {
    let dir = tempfile::tempdir().unwrap();
    // A field the sandbox's 日报 does not have.
    let lacking = SMALL.to_owned()
        + "    fields:\n      今日完成工作: \"{{ status }}\"\n      明日计划: \"{{ summary }}\"\n";
    let config = write(dir.path(), "lacking.yaml", &lacking);
    let env = [
        ("DINGTALK_RELAY__SERVER__LISTEN", "127.0.0.1:0"),
        ("DINGTALK_RELAY__SERVER__ADMIN_LISTEN", "127.0.0.1:0"),
        ("DINGTALK_RELAY__STORE__URL", "memory:"),
    ];
    let checked = run(&["check-config", "--sandbox"], &config, &env).await;
    let served = run(&["serve", "--sandbox"], &config, &env).await;
    assert_eq!(checked.code, Some(1), "{}", checked.stdout);
    assert_ne!(served.code, Some(0), "{}", served.stderr);
    for stderr in [&checked.stderr, &served.stderr] {
        assert!(
            stderr.contains("routes.ci.fields") && stderr.contains("明日计划"),
            "{stderr}"
        );
    }

    // And both accept what the sandbox makes irrelevant: a base_url it replaces.
    let elsewhere = write(
        dir.path(),
        "elsewhere.yaml",
        &SMALL.replace(
            "dingtalk:\n",
            "dingtalk:\n  base_url: \"ftp://not-dingtalk\"\n",
        ),
    );
    let checked = run(&["check-config", "--sandbox"], &elsewhere, &env).await;
    assert_eq!(checked.code, Some(0), "{}", checked.stderr);
    let production = run(&["check-config"], &elsewhere, &env).await;
    assert!(
        production.stderr.contains("dingtalk.base_url"),
        "outside the sandbox it matters: {}",
        production.stderr
    );
    let mut env = env.to_vec();
    env.push(("DINGTALK_RELAY__LOG__FORMAT", "json"));
    let relay = start_relay_with(&elsewhere, &["--sandbox"], &env);
    let mut child = relay.child;
    child.kill().ok();
    let _ = child.wait();
}

#[tokio::test]
async fn checks_that_catch_silent_drops_name_each_problem_on_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    let silent = SMALL.to_owned()
        + "    statuses: [failed]\n    fields:\n      今日完成工作: \"{{ commit_sha }} {{ workflow_run.name }}\"\n";
    let config = write(dir.path(), "silent.yaml", &silent);
    let checked = run(
        &["check-config", "--sandbox"],
        &config,
        &[
            ("DINGTALK_RELAY__ROUTES__CI_SECRET", "env-s3cret"),
            ("DINGTALK_RELAY__ROUTES__DEPLOY__SECRET", "env-s3cret"),
        ],
    )
    .await;
    assert_eq!(checked.code, Some(1), "{}", checked.stdout);
    // The environment is checked first: its two problems, one per line.
    let lines: Vec<&str> = checked.stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{}", checked.stderr);
    assert!(lines[0].contains("2 problems"), "{}", checked.stderr);
    assert!(
        lines[1]
            .trim_start()
            .starts_with("DINGTALK_RELAY__ROUTES__CI_SECRET: ")
            && lines[1].contains("DINGTALK_RELAY__ROUTES__CI__SECRET"),
        "{}",
        checked.stderr
    );
    assert!(
        lines[2]
            .trim_start()
            .starts_with("DINGTALK_RELAY__ROUTES__DEPLOY__SECRET: "),
        "{}",
        checked.stderr
    );
    assert!(!checked.stderr.contains("env-s3cret"));

    // Without them, the file's own problems.
    let checked = run(&["check-config", "--sandbox"], &config, &[]).await;
    assert_eq!(checked.code, Some(1), "{}", checked.stdout);
    let lines: Vec<&str> = checked.stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{}", checked.stderr);
    let expected = [
        "routes.ci.statuses[0]: \"failed\"",
        "routes.ci.fields.今日完成工作: unknown variable `commit_sha`",
        "routes.ci.fields.今日完成工作: unknown variable `workflow_run.name`",
    ];
    for (line, start) in lines[1..].iter().zip(expected) {
        assert!(line.trim_start().starts_with(start), "{}", checked.stderr);
    }
    assert!(lines[1].contains("did you mean failure?"));
    assert!(lines[2].contains("closest documented variable: `commit`"));
    assert!(lines[3].contains("closest documented variable: `pipeline`"));

    // An unknown enum value lists the valid ones.
    let typo = write(
        dir.path(),
        "typo.yaml",
        &SMALL.replace("source: generic", "source: githb"),
    );
    let checked = run(&["check-config", "--sandbox"], &typo, &[]).await;
    assert_eq!(checked.code, Some(1));
    assert!(
        checked.stderr.contains("routes.ci.source: \"githb\" is not a valid value; valid: generic, github, gitlab, gitea, forgejo, jenkins, circleci, buildkite, drone, azure-devops, bitbucket (did you mean github?)"),
        "{}",
        checked.stderr
    );
}

/// A route secret from a mounted file is read at start and again on every reload (a rotated
/// Kubernetes Secret takes effect with a reload, without a restart).
#[tokio::test]
async fn secret_files_are_read_at_start_and_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("route-secret");
    std::fs::write(&secret_file, "first-s3cret\n").unwrap();
    let config = TestConfig::default();
    let (fake, base_url) = FakeDingTalk::spawn(config.fake.clone()).await.unwrap();
    // routes.ci's secret comes from the file instead.
    let yaml = settings_yaml(&config, &base_url).replace(
        &format!("    secret: \"{ROUTE_SECRET}\"\n"),
        &format!("    secret_file: \"{}\"\n", secret_file.display()),
    );
    let file = write(dir.path(), "relay.yaml", &yaml);
    let settings = dingtalk_relay::config::Settings::load_with_env(Some(&file), std::iter::empty())
        .expect("loads");
    let app = dingtalk_relay::startup::Application::build(
        settings,
        dingtalk_relay::config::Mode::Production,
    )
    .await
    .expect("builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let reloader = app.state().reloader.clone();
    reloader.set_config_file(Some(file.clone()));
    let cancel = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(app.run_until_stopped(cancel.clone()));
    let http = reqwest::Client::new();
    let post = |secret: &'static str, n: usize| {
        http.post(format!("{address}/v1/hooks/ci"))
            .bearer_auth(secret)
            .json(&job_status_n(n))
            .send()
    };
    assert_eq!(post("first-s3cret", 1).await.unwrap().status(), 202);
    assert_eq!(post("second-s3cret", 2).await.unwrap().status(), 401);

    std::fs::write(&secret_file, "second-s3cret\n").unwrap();
    reloader
        .reload()
        .await
        .expect("the reload reads the file again");
    assert_eq!(post("second-s3cret", 3).await.unwrap().status(), 202);
    assert_eq!(post("first-s3cret", 4).await.unwrap().status(), 401);

    // An unreadable file refuses the reload and keeps the secret in use.
    std::fs::remove_file(&secret_file).unwrap();
    let refused = reloader.reload().await.expect_err("the file is gone");
    assert!(refused.contains("routes.ci.secret_file"), "{refused}");
    assert!(!refused.contains("second-s3cret"), "{refused}");
    assert_eq!(post("second-s3cret", 5).await.unwrap().status(), 202);
    cancel.cancel();
    let _ = server.await;
    drop(fake);
}
