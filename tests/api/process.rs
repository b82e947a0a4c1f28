//! The real binary as a process: killed with SIGKILL mid-flight and restarted on the same
//! SQLite file, two replicas on PostgreSQL with one killed (every webhook that got a 202 is
//! delivered exactly once), and the proxy from the environment.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dingtalk_relay::sandbox::{FakeDingTalk, FakeOptions};
use serde_json::Value;

use crate::helpers::*;

pub struct Relay {
    pub child: Child,
    pub address: String,
    pub admin_address: String,
}

/// Starts the binary and reads its ports from the JSON startup log line.
pub fn start_relay(config: &Path) -> Relay {
    start_relay_with_env(config, &[])
}

/// Like [`start_relay`] with extra environment variables.
pub fn start_relay_with_env(config: &Path, env: &[(&str, &str)]) -> Relay {
    start_relay_with(config, &[], env)
}

/// Like [`start_relay`] with extra `serve` arguments (`--sandbox`) and environment variables.
pub fn start_relay_with(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Relay {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dingtalk-relay"))
        .arg("serve")
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent
                && let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["message"] == "dingtalk-relay listening"
            {
                let _ = tx.send((v["port"].as_u64(), v["admin_port"].as_u64()));
                sent = true;
            }
        }
    });
    let (port, admin_port) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the relay logs its ports");
    Relay {
        child,
        address: format!("http://127.0.0.1:{}", port.unwrap()),
        admin_address: format!("http://127.0.0.1:{}", admin_port.unwrap()),
    }
}

/// Writes a config for the binary (JSON logs, so its ports can be read) into `dir`.
pub fn write_config(
    dir: &Path,
    base_url: &str,
    fake: &FakeOptions,
    store_url: &str,
) -> std::path::PathBuf {
    let config = TestConfig {
        template: ID_TEMPLATE.to_owned(),
        store_url: store_url.to_owned(),
        fake: fake.clone(),
        max_attempts: 50,
        timeout: "1s",
        lease: "5s",
        ..TestConfig::default()
    };
    let yaml = settings_yaml(&config, base_url) + "log: {format: json, filter: info}\n";
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Polls the admin API until every delivery is delivered (60 s at most).
pub async fn all_delivered<'a>(
    http: &reqwest::Client,
    admin_address: &str,
    ids: impl Iterator<Item = &'a String> + Clone,
) -> bool {
    poll_until(Duration::from_secs(60), || {
        let ids = ids.clone();
        async move {
            for id in ids {
                let d: Value = match http
                    .get(format!("{admin_address}/v1/deliveries/{id}"))
                    .send()
                    .await
                {
                    Ok(r) => r.json().await.unwrap_or_default(),
                    Err(_) => return false,
                };
                if d["state"] != "delivered" {
                    return false;
                }
            }
            true
        }
    })
    .await
}

/// Every run in `accepted` has exactly one report at the fake, and no run has two.
pub fn assert_each_reported_once<'a>(
    fake: &FakeDingTalk,
    accepted: impl Iterator<Item = &'a usize>,
) {
    let mut per_run: HashMap<usize, usize> = HashMap::new();
    for report in fake.reports() {
        let text = &report.contents[0].content;
        let n = text
            .split("run ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|d| d.parse().ok())
            .expect("the report names its run");
        *per_run.entry(n).or_default() += 1;
    }
    let doubled: HashSet<_> = per_run.iter().filter(|(_, c)| **c > 1).collect();
    assert!(doubled.is_empty(), "reports sent twice: {doubled:?}");
    for n in accepted {
        assert_eq!(
            per_run.get(n),
            Some(&1),
            "run {n} accepted but not reported once"
        );
    }
}

#[tokio::test]
async fn kill_9_mid_flight_loses_nothing_and_doubles_nothing() {
    // Arrange: a slow DingTalk (80 ms per answer), so deliveries are in flight when killed.
    let dir = tempfile::tempdir().unwrap();
    let options = FakeOptions {
        latency: Duration::from_millis(80),
        ..FakeOptions::default()
    };
    let (fake, base_url) = FakeDingTalk::spawn(options.clone()).await.unwrap();
    let store_url = format!("sqlite://{}", dir.path().join("relay.db").display());
    let config = write_config(dir.path(), &base_url, &options, &store_url);
    let mut relay = start_relay(&config);
    let http = reqwest::Client::new();

    // Act: 300 webhooks from 16 senders; SIGKILL after the first 150 answers.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, String)>();
    let address = relay.address.clone();
    let senders: Vec<_> = (0..16)
        .map(|s| {
            let http = http.clone();
            let address = address.clone();
            let done_tx = done_tx.clone();
            tokio::spawn(async move {
                for n in (s..300).step_by(16) {
                    let answer = http
                        .post(format!("{address}/v1/hooks/ci"))
                        .bearer_auth(ROUTE_SECRET)
                        .json(&job_status_n(n))
                        .send()
                        .await;
                    let Ok(answer) = answer else { break };
                    if answer.status() == 202 {
                        let body: Value = answer.json().await.unwrap_or_default();
                        let id = body["delivery_id"].as_str().unwrap_or_default().to_owned();
                        let _ = done_tx.send((n, id));
                    }
                }
            })
        })
        .collect();
    drop(done_tx);
    let mut accepted: HashMap<usize, String> = HashMap::new();
    while let Some((n, id)) = done_rx.recv().await {
        accepted.insert(n, id);
        if accepted.len() == 150 {
            relay.child.kill().expect("SIGKILL");
        }
    }
    for s in senders {
        let _ = s.await;
    }
    let _ = relay.child.wait();
    let delivered_before_restart = fake.reports().len();
    assert!(accepted.len() >= 150, "only {} accepted", accepted.len());
    assert!(
        delivered_before_restart < accepted.len(),
        "the kill came too late to test anything"
    );

    // Restart on the same file.
    let mut relay = start_relay(&config);
    let all_done = all_delivered(&http, &relay.admin_address, accepted.values()).await;
    relay.child.kill().ok();
    let _ = relay.child.wait();
    assert!(
        all_done,
        "not every accepted webhook was delivered after the restart"
    );

    // Assert: each accepted webhook made exactly one report; no webhook made two.
    assert_each_reported_once(&fake, accepted.keys());
}

#[tokio::test]
async fn two_replicas_on_postgres_one_killed_lose_nothing_and_double_nothing() {
    // Arrange: two processes share one PostgreSQL database; DingTalk is slow.
    let Some((_, _, store_url)) = fresh_postgres_database("the two-replica test").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let options = FakeOptions {
        latency: Duration::from_millis(50),
        ..FakeOptions::default()
    };
    let (fake, base_url) = FakeDingTalk::spawn(options.clone()).await.unwrap();
    let config = write_config(dir.path(), &base_url, &options, &store_url);
    let mut a = start_relay(&config);
    let mut b = start_relay(&config);
    let http = reqwest::Client::new();

    // Act: 200 webhooks alternating between the replicas, as a Service would spread them;
    // replica A is SIGKILLed after 100 answers and its share goes to B from then on.
    let mut accepted: HashMap<usize, String> = HashMap::new();
    let mut a_alive = true;
    for n in 0..200 {
        if accepted.len() == 100 && a_alive {
            a.child.kill().expect("SIGKILL");
            let _ = a.child.wait();
            a_alive = false;
        }
        let target = if a_alive && n % 2 == 0 {
            &a.address
        } else {
            &b.address
        };
        let answer = http
            .post(format!("{target}/v1/hooks/ci"))
            .bearer_auth(ROUTE_SECRET)
            .json(&job_status_n(n))
            .send()
            .await
            .expect("the replica answers");
        assert_eq!(answer.status(), 202, "run {n}");
        let body: Value = answer.json().await.unwrap();
        accepted.insert(n, body["delivery_id"].as_str().unwrap().to_owned());
    }
    assert!(
        fake.reports().len() < accepted.len(),
        "the kill came too late to test anything"
    );

    // Assert: B finishes everything, A's held deliveries included (after their lease).
    let done = all_delivered(&http, &b.admin_address, accepted.values()).await;
    b.child.kill().ok();
    let _ = b.child.wait();
    assert!(done, "not every accepted webhook was delivered");
    assert_each_reported_once(&fake, accepted.keys());
}

#[tokio::test]
async fn dingtalk_is_reached_through_the_proxy_from_the_environment() {
    // Arrange: the DingTalk host does not resolve; only the proxy (the fake, which serves
    // absolute-form requests) can answer.
    let dir = tempfile::tempdir().unwrap();
    let options = FakeOptions::default();
    let (fake, proxy) = FakeDingTalk::spawn(options.clone()).await.unwrap();
    let store_url = format!("sqlite://{}", dir.path().join("relay.db").display());
    let config = write_config(dir.path(), "http://dingtalk.invalid", &options, &store_url);
    let mut relay =
        start_relay_with_env(&config, &[("HTTP_PROXY", proxy.as_str()), ("NO_PROXY", "")]);
    let http = reqwest::Client::new();
    // Act
    let answer = http
        .post(format!("{}/v1/hooks/ci?wait=10", relay.address))
        .bearer_auth(ROUTE_SECRET)
        .json(&job_status())
        .send()
        .await
        .unwrap();
    let status = answer.status();
    relay.child.kill().ok();
    let _ = relay.child.wait();
    // Assert
    assert_eq!(status, 201);
    assert_eq!(fake.reports().len(), 1);
    assert_eq!(fake.gettoken_calls(), 1);
}

#[tokio::test]
async fn sighup_reloads_the_configuration_file() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let options = FakeOptions::default();
    let (fake, base_url) = FakeDingTalk::spawn(options.clone()).await.unwrap();
    let store_url = format!("sqlite://{}", dir.path().join("relay.db").display());
    let config = write_config(dir.path(), &base_url, &options, &store_url);
    let mut relay = start_relay(&config);
    let http = reqwest::Client::new();
    let post = |route: &'static str| {
        let http = http.clone();
        let url = format!("{}/v1/hooks/{route}", relay.address);
        async move {
            http.post(url)
                .bearer_auth(ROUTE_SECRET)
                .json(&job_status())
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(post("deploy").await, 404);
    // Act: add a route to the file, then SIGHUP.
    let mut yaml = std::fs::read_to_string(&config).unwrap();
    yaml = yaml.replace(
        "routes:\n",
        "routes:\n  deploy:\n    source: generic\n    secret: \"route-s3cret\"\n    template: {name: \"日报\"}\n    author: \"manager02\"\n",
    );
    std::fs::write(&config, yaml).unwrap();
    let pid = relay.child.id().to_string();
    let status = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(status.success());
    // Assert: the new route answers, without a restart.
    let reloaded = poll_until(Duration::from_secs(10), || async {
        post("deploy").await == 202
    })
    .await;
    relay.child.kill().ok();
    let _ = relay.child.wait();
    assert!(reloaded, "the route never appeared after SIGHUP");
    assert!(fake.create_calls() <= 1);
}

#[tokio::test]
async fn no_secret_or_token_appears_in_any_output_of_a_full_run() {
    // Arrange: every kind of secret, given through the environment as operators do.
    let dir = tempfile::tempdir().unwrap();
    let options = FakeOptions {
        app_secret: "APP-SECRET-7f3a9c".to_owned(),
        ..FakeOptions::default()
    };
    let (fake, base_url) = FakeDingTalk::spawn(options.clone()).await.unwrap();
    let store_url = format!("sqlite://{}", dir.path().join("relay.db").display());
    let config = write_config(dir.path(), &base_url, &options, &store_url);
    // The file holds other values; the environment wins.
    let route_secret = "ROUTE-SECRET-51be02";
    let admin_token = "ADMIN-TOKEN-c0ffee";
    let env = [
        (
            "DINGTALK_RELAY__DINGTALK__APPS__DEFAULT__APP_SECRET",
            "APP-SECRET-7f3a9c",
        ),
        ("DINGTALK_RELAY__ROUTES__CI__SECRET", route_secret),
        ("DINGTALK_RELAY__SERVER__ADMIN_TOKEN", admin_token),
        ("RUST_LOG", "debug"),
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_dingtalk-relay"))
        .args(["serve", "--config"])
        .arg(&config)
        .envs(env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let collect = |pipe: Box<dyn std::io::Read + Send>| {
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        rx
    };
    let err_lines = collect(Box::new(stderr));
    let out_lines = collect(Box::new(stdout));
    let mut output = Vec::new();
    let (port, admin_port) = loop {
        let line = err_lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the relay logs its ports");
        let parsed: Option<Value> = serde_json::from_str(&line).ok();
        output.push(line);
        if let Some(v) = parsed
            && v["message"] == "dingtalk-relay listening"
        {
            break (
                v["port"].as_u64().unwrap(),
                v["admin_port"].as_u64().unwrap(),
            );
        }
    };
    let base = format!("http://127.0.0.1:{port}");
    let admin = format!("http://127.0.0.1:{admin_port}");
    let http = reqwest::Client::new();
    let mut bodies = Vec::new();

    // Act: good and bad webhooks, a token refresh, a failing create, every admin endpoint.
    fake.push_create_fault(dingtalk_relay::sandbox::Fault::Wrapped("60011".to_owned()));
    for (n, auth) in [(1, route_secret), (2, route_secret), (3, "wrong")].into_iter() {
        let r = http
            .post(format!("{base}/v1/hooks/ci"))
            .bearer_auth(auth)
            .json(&job_status_n(n))
            .send()
            .await
            .unwrap();
        bodies.push(r.text().await.unwrap());
    }
    assert!(
        poll_until(Duration::from_secs(10), || async {
            fake.reports().len() == 1
        })
        .await
    );
    let first_tokens = fake.issued_tokens();
    fake.invalidate_tokens();
    let r = http
        .post(format!("{base}/v1/hooks/ci?wait=5"))
        .bearer_auth(route_secret)
        .json(&job_status_n(4))
        .send()
        .await
        .unwrap();
    bodies.push(r.text().await.unwrap());
    for path in [
        "/metrics",
        "/readyz",
        "/healthz",
        "/v1/deliveries?limit=100",
    ] {
        for token in [Some(admin_token), None, Some("wrong")] {
            let mut request = http.get(format!("{admin}{path}"));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            bodies.push(request.send().await.unwrap().text().await.unwrap());
        }
    }
    // A reload that fails must not print the configuration it read.
    let bad = std::fs::read_to_string(&config).unwrap() + "unknown_key: 1\n";
    std::fs::write(&config, bad).unwrap();
    let r = http
        .post(format!("{admin}/-/reload"))
        .bearer_auth(admin_token)
        .send()
        .await
        .unwrap();
    bodies.push(r.text().await.unwrap());
    // The offline commands with the same environment.
    let good = write_config(dir.path(), &base_url, &options, &store_url);
    let body_file = dir.path().join("body.json");
    std::fs::write(&body_file, job_status().to_string()).unwrap();
    for args in [
        vec!["render", "--route", "ci", "--body"],
        vec!["check-config"],
        vec!["check-config", "--online"],
        vec!["check-config", "--print"],
    ] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_dingtalk-relay"));
        command.args(&args);
        if args[0] == "render" {
            command.arg(&body_file);
        }
        let result = command
            .arg("--config")
            .arg(&good)
            .envs(env)
            .output()
            .unwrap();
        bodies.push(String::from_utf8_lossy(&result.stdout).into_owned());
        bodies.push(String::from_utf8_lossy(&result.stderr).into_owned());
    }
    child.kill().ok();
    let _ = child.wait();
    tokio::time::sleep(Duration::from_millis(200)).await;
    output.extend(err_lines.try_iter());
    output.extend(out_lines.try_iter());

    // Assert
    let everything = output.join("\n") + &bodies.join("\n");
    assert!(
        everything.contains("report created"),
        "the run did its work"
    );
    let mut secrets = vec![
        "APP-SECRET-7f3a9c".to_owned(),
        route_secret.to_owned(),
        admin_token.to_owned(),
    ];
    secrets.extend(first_tokens);
    secrets.extend(fake.issued_tokens());
    assert!(
        secrets.len() >= 5,
        "two tokens were issued: {}",
        secrets.len()
    );
    for secret in &secrets {
        assert!(
            !everything.contains(secret.as_str()),
            "a secret leaked: {secret}"
        );
    }
}

#[tokio::test]
async fn a_forged_route_name_cannot_write_a_log_line_or_an_escape_sequence() {
    // Arrange: the binary with text logs on a pipe (not a terminal).
    let dir = tempfile::tempdir().unwrap();
    let options = FakeOptions::default();
    let (_fake, base_url) = FakeDingTalk::spawn(options.clone()).await.unwrap();
    let config = write_config(dir.path(), &base_url, &options, "memory:");
    let yaml = std::fs::read_to_string(&config).unwrap().replace(
        "log: {format: json, filter: info}",
        "log: {format: text, filter: info}",
    );
    std::fs::write(&config, yaml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dingtalk-relay"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let port = |name: &str| {
        let lines = lines.lock().unwrap();
        let line = lines
            .iter()
            .find(|l| l.contains("dingtalk-relay listening"))?;
        let value = line.split(&format!(" {name}=")).nth(1)?;
        value.split(' ').next()?.parse::<u16>().ok()
    };
    assert!(
        poll_until(Duration::from_secs(30), || async { port("port").is_some() }).await,
        "no listening line: {:?}",
        lines.lock().unwrap()
    );
    let port = port("port").unwrap();

    // Act: the request, byte for byte, with no authentication.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(b"POST /v1/hooks/ci%0a2026-12-04T00:00:00Z%20ERROR%20forged%1b[31m HTTP/1.1\r\nHost: relay\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 404"));
    let logged = poll_until(Duration::from_secs(10), || async {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("webhook rejected"))
    })
    .await;
    child.kill().ok();
    let _ = child.wait();

    // Assert: the route name is in the log, escaped; no line is forged, none has ESC.
    let lines = lines.lock().unwrap();
    assert!(logged, "{lines:?}");
    let rejected = lines
        .iter()
        .find(|l| l.contains("webhook rejected"))
        .unwrap();
    assert!(
        rejected.contains("ci\\n2026-12-04T00:00:00Z ERROR forged"),
        "{rejected}"
    );
    for line in lines.iter() {
        assert!(!line.starts_with("2026-12-04T00:00:00Z"), "forged: {line}");
        assert!(!line.contains('\u{1b}'), "escape sequence: {line:?}");
    }
}
