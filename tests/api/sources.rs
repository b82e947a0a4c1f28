//! Every CI system through the real server: its own payload and authentication make a report;
//! wrong or missing credentials get 401 with nothing stored; pings are ignored with 200.

use dingtalk_relay::sources::auth::{base64, hmac_sha256, sign_sha256};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::*;

const SECRET: &str = "ci-s3cret";

fn corpus(path: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap_or_else(|e| panic!("tests/fixtures/{path}: {e}"))
}

/// One route per CI system, all with the same secret.
fn routes() -> String {
    [
        "github",
        "gitlab",
        "gitea",
        "forgejo",
        "jenkins",
        "circleci",
        "buildkite",
        "drone",
        "azure-devops",
        "bitbucket",
    ]
    .iter()
    .map(|source| {
        format!(
            "  {}:\n    source: {source}\n    secret: \"{SECRET}\"\n    template: {{name: \"日报\"}}\n    author: \"manager01\"\n",
            source.replace('-', "_")
        )
    })
    .collect()
}

fn jenkins_finalized() -> Vec<u8> {
    json!({"name":"asgard","display_name":"asgard","url":"job/asgard/","build":{
        "full_url":"http://jenkins.example.com/job/asgard/18/","number":18,"phase":"FINALIZED",
        "status":"FAILURE","url":"job/asgard/18/","duration":61000,"timestamp":1795550000000u64,
        "scm":{"url":"https://github.com/acme/asgard.git","branch":"origin/main","commit":"c6fa1a2b3c4d"}}})
    .to_string()
    .into_bytes()
}

fn circleci_workflow() -> Vec<u8> {
    json!({"type":"workflow-completed","id":"3888f21b-eaa7-38e3-8f3d-75a63bba8895",
        "happened_at":"2026-11-24T08:03:12.000Z",
        "webhook":{"id":"cf8c4fdd-0587-4da1-b4ca-4846e9640af9","name":"relay"},
        "workflow":{"id":"fda08377-fe7e-46b1-8992-3a7aaecac9c3","name":"build-and-test",
            "status":"failed","created_at":"2026-11-24T08:00:00.000Z","stopped_at":"2026-11-24T08:03:12.000Z",
            "url":"https://app.circleci.com/pipelines/github/acme/api/130/workflows/fda08377"},
        "pipeline":{"id":"1285fe1d-d3a6-44fc-8886-8979558254c4","number":130,
            "created_at":"2026-11-24T08:00:00.000Z","trigger":{"type":"webhook"},
            "vcs":{"provider_name":"github","origin_repository_url":"https://github.com/acme/api",
                "target_repository_url":"https://github.com/acme/api","revision":"1dc6aa69429bff4806ad6afe58d3d8f57e25973e",
                "branch":"main","commit":{"subject":"Fix the flaky test","body":"",
                "author":{"name":"Octo Cat","email":"octocat@example.com"}}}},
        "project":{"id":"84996744-a854-4f5e-aea3-04e2851dc1d2","name":"api","slug":"gh/acme/api"},
        "organization":{"id":"f22b6566-597d-46d5-ba74-99ef5bb3d85c","name":"acme"}})
    .to_string()
    .into_bytes()
}

fn buildkite_finished() -> Vec<u8> {
    json!({"event":"build.finished","build":{"id":"f62a1b4d-10f9-4790-bc1c-e2c3a0c80983",
        "web_url":"https://buildkite.com/acme/api/builds/42","number":42,"state":"passed",
        "message":"Fix the flaky test","commit":"b1f6c2d","branch":"main",
        "created_at":"2026-11-24T08:00:00.000Z","started_at":"2026-11-24T08:00:05.000Z",
        "finished_at":"2026-11-24T08:03:12.000Z","creator":{"name":"Octo Cat","email":"octocat@example.com"}},
        "pipeline":{"name":"API","slug":"api"},"sender":{"name":"Octo Cat"}})
    .to_string()
    .into_bytes()
}

/// A Drone delivery signed now, as the Drone server signs it.
fn drone_signed(body: &[u8]) -> Vec<(String, String)> {
    let date = chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let digest = format!("SHA-256={}", base64(&Sha256::digest(body)));
    let signing = format!("date: {date}\ndigest: {digest}");
    let signature = base64(&hmac_sha256(SECRET.as_bytes(), signing.as_bytes()));
    vec![
        ("x-drone-event".to_owned(), "build".to_owned()),
        ("date".to_owned(), date),
        ("digest".to_owned(), digest),
        (
            "signature".to_owned(),
            format!(
                "keyId=\"hmac-key\",algorithm=\"hmac-sha256\",signature=\"{signature}\",headers=\"date digest\""
            ),
        ),
    ]
}

/// (route, body, headers with valid auth, a header that must appear in the report)
fn deliveries() -> Vec<(&'static str, Vec<u8>, Vec<(String, String)>)> {
    let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let github = corpus("github/workflow_run.completed.payload.json");
    let gitlab = corpus("gitlab/pipeline.json");
    let bitbucket = corpus("bitbucket/repo-commit-status-updated.json");
    let azure = corpus("azuredevops/build.complete.json");
    let drone = corpus("drone/build_success.json");
    let circleci = circleci_workflow();
    let hex = |body: &[u8]| hex::encode(hmac_sha256(SECRET.as_bytes(), body));
    vec![
        (
            "github",
            github.clone(),
            h(&[
                ("x-github-event", "workflow_run"),
                ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
                ("x-hub-signature-256", &sign_sha256(SECRET, &github)),
            ]),
        ),
        (
            "gitea",
            github.clone(),
            h(&[
                ("x-gitea-event", "workflow_run"),
                ("x-gitea-delivery", "d1e5b1a4-0000-4000-8000-000000000001"),
                ("x-gitea-signature", &hex(&github)),
            ]),
        ),
        (
            "forgejo",
            github.clone(),
            h(&[
                ("x-forgejo-event", "workflow_run"),
                ("x-forgejo-delivery", "d1e5b1a4-0000-4000-8000-000000000002"),
                ("x-forgejo-signature", &hex(&github)),
            ]),
        ),
        (
            "gitlab",
            gitlab,
            h(&[
                ("x-gitlab-event", "Pipeline Hook"),
                ("x-gitlab-token", SECRET),
            ]),
        ),
        (
            "bitbucket",
            bitbucket.clone(),
            h(&[
                ("x-event-key", "repo:commit_status_updated"),
                ("x-hub-signature", &sign_sha256(SECRET, &bitbucket)),
            ]),
        ),
        (
            "azure_devops",
            azure,
            h(&[("authorization", &format!("Bearer {SECRET}"))]),
        ),
        (
            "jenkins",
            jenkins_finalized(),
            h(&[(
                "authorization",
                &format!("Basic {}", base64(format!("jenkins:{SECRET}").as_bytes())),
            )]),
        ),
        (
            "circleci",
            circleci.clone(),
            h(&[
                ("circleci-event-type", "workflow-completed"),
                ("circleci-signature", &format!("v1={}", hex(&circleci))),
            ]),
        ),
        (
            "buildkite",
            buildkite_finished(),
            h(&[
                ("x-buildkite-event", "build.finished"),
                ("x-buildkite-token", SECRET),
            ]),
        ),
        ("drone", drone.clone(), drone_signed(&drone)),
    ]
}

fn app_config() -> TestConfig {
    TestConfig {
        extra_routes: routes(),
        ..TestConfig::default()
    }
}

async fn post(
    app: &TestApp,
    route: &str,
    body: Vec<u8>,
    headers: &[(String, String)],
) -> reqwest::Response {
    let mut request = app
        .http
        .post(format!("{}/v1/hooks/{route}", app.address))
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in headers {
        request = request.header(k, v);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn every_ci_system_makes_a_report_through_the_server() {
    // Arrange
    let app = spawn_app_with(app_config()).await;
    for (route, body, headers) in deliveries() {
        // Act
        let before = app.fake.reports().len();
        let response = post(&app, route, body, &headers).await;
        // Assert
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(status, 202, "{route}: {answer}");
        let id = answer["delivery_id"].as_str().unwrap().to_owned();
        app.wait_for_state(&id, "delivered").await;
        let reports = app.fake.reports();
        assert_eq!(reports.len(), before + 1, "{route}");
        let text = &reports[before].contents[0].content;
        assert!(!text.trim().is_empty(), "{route}: empty report");
    }
    app.stop().await;
}

#[tokio::test]
async fn wrong_or_missing_credentials_get_401_and_nothing_is_stored() {
    let app = spawn_app_with(app_config()).await;
    for (route, body, headers) in deliveries() {
        // Missing: none of the auth headers.
        let event_only: Vec<(String, String)> = headers
            .iter()
            .filter(|(k, _)| {
                k.ends_with("-event") || k.ends_with("-event-type") || k == "x-event-key"
            })
            .cloned()
            .collect();
        let missing = post(&app, route, body.clone(), &event_only).await;
        assert_eq!(missing.status(), 401, "{route}: missing credentials");
        // Wrong: the body changed after signing (or a token that is not the secret).
        let mut tampered = body.clone();
        tampered.extend_from_slice(b" ");
        let wrong_headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| {
                if v.contains(SECRET) {
                    (k.clone(), v.replace(SECRET, "not-the-secret"))
                } else if k == "authorization" {
                    (
                        k.clone(),
                        format!("Basic {}", base64(b"jenkins:not-the-secret")),
                    )
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect();
        let wrong = post(&app, route, tampered, &wrong_headers).await;
        assert_eq!(wrong.status(), 401, "{route}: wrong credentials");
        let body: Value = wrong.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{route}");
        assert!(
            !body.to_string().contains(SECRET),
            "{route} echoes the secret"
        );
    }
    let stored: Value = app.get_admin("/v1/deliveries").await.json().await.unwrap();
    assert_eq!(stored["deliveries"].as_array().unwrap().len(), 0);
    assert_eq!(app.fake.create_calls(), 0);
    app.stop().await;
}

#[tokio::test]
async fn pings_and_unrelated_events_are_ignored_with_200() {
    let app = spawn_app_with(app_config()).await;
    let ping = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#.to_vec();
    let cases: Vec<(&str, Vec<u8>, Vec<(String, String)>)> = vec![
        (
            "github",
            ping.clone(),
            vec![
                ("x-github-event".to_owned(), "ping".to_owned()),
                ("x-hub-signature-256".to_owned(), sign_sha256(SECRET, &ping)),
            ],
        ),
        (
            "gitlab",
            br#"{"object_kind":"push"}"#.to_vec(),
            vec![
                ("x-gitlab-event".to_owned(), "Push Hook".to_owned()),
                ("x-gitlab-token".to_owned(), SECRET.to_owned()),
            ],
        ),
        (
            "github",
            corpus("github/workflow_run.requested.payload.json"),
            vec![
                ("x-github-event".to_owned(), "workflow_run".to_owned()),
                (
                    "x-hub-signature-256".to_owned(),
                    sign_sha256(
                        SECRET,
                        &corpus("github/workflow_run.requested.payload.json"),
                    ),
                ),
            ],
        ),
    ];
    for (route, body, headers) in cases {
        let response = post(&app, route, body, &headers).await;
        assert_eq!(response.status(), 200, "{route}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["status"], "ignored", "{route}: {answer}");
    }
    assert_eq!(app.fake.create_calls(), 0);
    app.stop().await;
}

#[tokio::test]
async fn a_redelivery_with_the_same_delivery_id_is_a_duplicate() {
    let app = spawn_app_with(app_config()).await;
    let (route, body, headers) = deliveries().remove(0);
    let first = post(&app, route, body.clone(), &headers).await;
    assert_eq!(first.status(), 202);
    let again = post(&app, route, body, &headers).await;
    assert_eq!(again.status(), 200);
    let answer: Value = again.json().await.unwrap();
    assert_eq!(answer["status"], "duplicate");
    app.stop().await;
}

#[tokio::test]
async fn a_signed_webhook_replayed_with_a_new_delivery_id_is_a_duplicate() {
    let app = spawn_app_with(app_config()).await;
    let (route, body, headers) = deliveries().remove(0);
    assert_eq!(route, "github");
    let first = post(&app, route, body.clone(), &headers).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let first_id = first["delivery_id"].as_str().unwrap().to_owned();
    // A captured webhook: same body and signature, a new X-GitHub-Delivery (not signed).
    let replayed: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| match k.as_str() {
            "x-github-delivery" => (k.clone(), "0b5e7c2a-0000-4000-8000-00000000beef".to_owned()),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    assert_ne!(replayed, headers);
    let again = post(&app, route, body, &replayed).await;
    assert_eq!(again.status(), 200);
    let answer: Value = again.json().await.unwrap();
    assert_eq!(answer["status"], "duplicate", "{answer}");
    assert_eq!(answer["delivery_id"], first_id.as_str(), "{answer}");
    // Another real event with its own id still makes its report.
    let other = corpus("github/workflow_run.completed.with-pull-requests.payload.json");
    let other_headers = vec![
        ("x-github-event".to_owned(), "workflow_run".to_owned()),
        (
            "x-github-delivery".to_owned(),
            "0b5e7c2a-0000-4000-8000-00000000cafe".to_owned(),
        ),
        (
            "x-hub-signature-256".to_owned(),
            sign_sha256(SECRET, &other),
        ),
    ];
    let other = post(&app, route, other, &other_headers).await;
    assert_eq!(other.status(), 202);
    let other: Value = other.json().await.unwrap();
    let other_id = other["delivery_id"].as_str().unwrap().to_owned();
    app.wait_for_state(&first_id, "delivered").await;
    app.wait_for_state(&other_id, "delivered").await;
    assert_eq!(app.fake.reports().len(), 2, "one report per real event");
    let stored: Value = app.get_admin("/v1/deliveries").await.json().await.unwrap();
    assert_eq!(stored["deliveries"].as_array().unwrap().len(), 2);
    app.stop().await;
}

#[test]
fn render_shows_the_report_of_every_ci_system() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.yaml");
    std::fs::write(&config, settings_yaml(&app_config(), "http://127.0.0.1:9")).unwrap();
    for (route, body, headers) in deliveries() {
        let body_file = dir.path().join(format!("{route}.json"));
        std::fs::write(&body_file, &body).unwrap();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_dingtalk-relay"));
        command
            .args(["render", "--route", route, "--config"])
            .arg(&config)
            .arg("--body")
            .arg(&body_file);
        for (k, v) in &headers {
            command.args(["-H", &format!("{k}: {v}")]);
        }
        let output = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{route}: {stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let rendered: Value = serde_json::from_str(&stdout).unwrap();
        let contents = rendered["create_report_param"]["contents"]
            .as_array()
            .unwrap();
        assert!(!contents.is_empty(), "{route}: {rendered}");
        assert!(
            !stdout.contains(SECRET),
            "{route}: render printed the secret"
        );
    }
}

// === the fixtures belong to the repository ===

/// Every file under `dir` (recursively), skipping build output.
fn files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            let name = entry.file_name();
            if name != "target" && name != "corpus" && name != "artifacts" {
                files_under(&path, out);
            }
        } else {
            out.push(path);
        }
    }
}

/// A fresh clone has nothing beside it: no source, test, bench or fuzz target may read a path
/// that leaves the repository (the captured payloads used to come from a `shared/corpus` folder
/// beside the checkout).
#[test]
fn nothing_references_files_outside_the_repository() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches", "fuzz"] {
        files_under(&root.join(dir), &mut files);
    }
    assert!(files.len() > 50, "{} files", files.len());
    // Spelled in pieces so this file does not match itself.
    let outside = [concat!("..", "/shared"), concat!("..", "\\shared")];
    let offenders: Vec<String> = files
        .iter()
        .filter(|p| !p.starts_with(root.join("tests/fixtures")))
        .filter_map(|p| {
            let text = std::fs::read_to_string(p).ok()?;
            outside
                .iter()
                .any(|o| text.contains(o))
                .then(|| p.strip_prefix(root).unwrap_or(p).display().to_string())
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "paths outside the repository in {offenders:?}"
    );
}

/// Each source's captured payloads carry their licence, and the payloads this suite posts exist.
#[test]
fn every_fixture_source_has_its_licence() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut sources: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/fixtures")
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    sources.sort_by_key(|e| e.file_name());
    let names: Vec<String> = sources
        .iter()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["azuredevops", "bitbucket", "drone", "github", "gitlab"]
    );
    for source in &sources {
        let licence = source.path().join("LICENSE");
        let text = std::fs::read_to_string(&licence)
            .unwrap_or_else(|e| panic!("{}: {e}", licence.display()));
        assert!(text.contains("License"), "{}", licence.display());
        let payloads = std::fs::read_dir(source.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .count();
        assert!(payloads > 0, "{:?} has no payloads", source.file_name());
    }
}

// === the examples a user can run ===

/// Splits one command line of the examples' README: words, `'single quoted'` ones whole.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(word);
    }
    words
}

/// Every `dingtalk-relay render` command in examples/README.md and docs/sources/*.md, run as
/// written from the repository root, prints a report.
#[test]
fn every_example_command_renders_a_report() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut documents = vec![root.join("examples/README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs/sources"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    docs.sort();
    documents.extend(docs);
    let mut commands = Vec::new();
    for document in &documents {
        let text = std::fs::read_to_string(document).unwrap();
        let found: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("dingtalk-relay render "))
            .map(str::to_owned)
            .collect();
        assert!(!found.is_empty(), "{} has no example", document.display());
        commands.extend(found);
    }
    let routes: std::collections::BTreeSet<String> = commands
        .iter()
        .filter_map(|c| {
            let words = shell_words(c);
            let at = words.iter().position(|w| w == "--route")?;
            words.get(at + 1).cloned()
        })
        .collect();
    assert_eq!(
        routes.len(),
        11,
        "one per CI system and generic: {routes:?}"
    );
    for command in &commands {
        let words = shell_words(command);
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_dingtalk-relay"))
            .args(&words[1..])
            .current_dir(root)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{command}\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let rendered: Value = serde_json::from_str(&stdout).unwrap();
        let contents = rendered["create_report_param"]["contents"].as_array();
        assert!(
            contents.is_some_and(|c| !c.is_empty()),
            "{command}: no report\n{stdout}"
        );
    }
}

/// examples/post-job-status.sh (what the GitHub Actions and Jenkins examples run) posts a
/// job_status the relay verifies and reports; a wrong secret is refused and the script fails.
#[tokio::test]
async fn the_example_script_posts_a_signed_job_status() {
    let app = spawn_app().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/post-job-status.sh");
    let run = |secret: &'static str| {
        tokio::process::Command::new("bash")
            .arg(script)
            .env("RELAY_URL", format!("{}/v1/hooks/ci", app.address))
            .env("RELAY_SECRET", secret)
            .env("JOB", "build")
            .env("STATUS", "failure")
            .env("PROJECT", "acme/api")
            .env("PIPELINE", "CI \"nightly\"")
            .env("BRANCH", "main")
            .env("COMMIT", "9f2c1e7a")
            .env("RUN_URL", "https://ci.example.com/runs/9")
            .env("RUN_ID", "9")
            .env("ACTOR", "octocat")
            .output()
    };
    let posted = run(ROUTE_SECRET).await.expect("bash runs the script");
    let stdout = String::from_utf8_lossy(&posted.stdout).into_owned();
    assert!(
        posted.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&posted.stderr)
    );
    let answer: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(answer["status"], "queued", "{answer}");
    let id = answer["delivery_id"].as_str().unwrap().to_owned();
    app.wait_for_state(&id, "delivered").await;
    let report = &app.fake.reports()[0];
    let text = serde_json::to_string(&report.contents).unwrap();
    assert!(
        text.contains("acme/api") && text.contains("nightly"),
        "{text}"
    );
    // Again: the Idempotency-Key makes it a duplicate.
    let again = run(ROUTE_SECRET).await.unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("duplicate"));
    // A wrong secret: 401, and the script says so.
    let refused = run("not-the-secret").await.unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("HTTP 401"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(app.fake.reports().len(), 1);
    app.stop().await;
}
