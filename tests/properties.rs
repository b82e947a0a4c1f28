//! Property tests (proptest) over the relay's untrusted-input surfaces: every source's `parse`,
//! `verify` and `delivery_id` on arbitrary bytes, arbitrary JSON, mutated real payloads and
//! arbitrary header sets; each signature scheme's sign/verify round trip and its rejection of
//! any single-byte change; the generic payload's round trip and its errors; the mapper's field
//! rendering and the 1000-character limit; and the configuration loader.
//!
//! Every property runs a bounded number of cases (see [`CASES`]; `PROPTEST_CASES=N` overrides it
//! for a longer local run) so the whole binary stays well under half a minute in a debug build.
//! A failure prints the minimised (shrunk) input.
//!
//! Properties that currently find a bug in `src/` are `#[ignore]`d with the reason, so CI stays
//! green until it is fixed: run them with `cargo test --test properties -- --ignored`.

use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};
use dingtalk_relay::config::{Mode, Secret, Settings, SourceKind};
use dingtalk_relay::mapping::{
    MAX_CONTENT_CHARS, Mapped, Mapper, TRUNCATION_MARKER, content_len, truncate,
};
use dingtalk_relay::sources::{
    self, Event, IMPLEMENTED, JobStatus, Parsed, PayloadError, Phase, Request, Standup, Status,
    generic,
};
use hmac::{Hmac, Mac};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// Cases per property: enough to reach the interesting branches, bounded for CI time.
const CASES: u32 = 256;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(CASES),
        // A failure is shrunk, but not for ever.
        max_shrink_iters: 2048,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// When the requests "arrive": timestamp windows are checked against it.
fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap()
}

/// A regex string strategy, compiled once (a `&str` strategy recompiles its regex for every
/// value, which dominates the run time in a debug build).
fn re(pattern: &str) -> BoxedStrategy<String> {
    proptest::string::string_regex(pattern)
        .expect("valid regex")
        .boxed()
}

// === requests ===

/// Every header name a source reads, so arbitrary header sets reach the code that reads them.
const HEADER_NAMES: &[&str] = &[
    "authorization",
    "x-relay-token",
    "x-signature-256",
    "idempotency-key",
    "content-type",
    "x-hub-signature",
    "x-hub-signature-256",
    "x-github-event",
    "x-github-delivery",
    "x-github-hook-id",
    "x-gitlab-event",
    "x-gitlab-token",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-gitea-event",
    "x-gitea-event-type",
    "x-gitea-signature",
    "x-gitea-delivery",
    "x-forgejo-event",
    "x-forgejo-event-type",
    "x-forgejo-signature",
    "x-forgejo-delivery",
    "x-gogs-event",
    "x-gogs-signature",
    "x-gogs-delivery",
    "circleci-signature",
    "circleci-event-type",
    "x-buildkite-event",
    "x-buildkite-token",
    "x-buildkite-signature",
    "x-drone-event",
    "signature",
    "date",
    "digest",
    "x-event-key",
    "x-request-uuid",
];

/// Header values a sender might plausibly send (event names, credential shapes), to mix with
/// arbitrary ones.
const HEADER_VALUES: &[&str] = &[
    "",
    " ",
    "push",
    "ping",
    "workflow_job",
    "workflow_run",
    "check_run",
    "check_suite",
    "action_run_success",
    "Pipeline Hook",
    "Job Hook",
    "job hook",
    "build",
    "build.finished",
    "build.running",
    "job.finished",
    "job.started",
    "workflow-completed",
    "job-completed",
    "repo:commit_status_created",
    "repo:commit_status_updated",
    "Bearer ",
    "Bearer s3cret",
    "Basic czNjcmV0",
    "Basic OnMzY3JldA==",
    "Basic !!!",
    "Signature signature=\"\"",
    "sha256=",
    "sha256=zz",
    "sha1=00",
    "v1=",
    "v1,",
    "v1,AAAA",
    "timestamp=,signature=",
    "timestamp=1795510800,signature=00",
    "timestamp=-9223372036854775808,signature=00",
    "timestamp=99999999999999999999,signature=00",
    "keyId=\"k\",algorithm=\"hmac-sha256\",signature=\"AA==\",headers=\"date digest\"",
    "keyId=\"k\",algorithm=\"rsa\",signature=\"AA==\"",
    "signature=\"AA==\",headers=\"(request-target) (created) (expires) date digest\"",
    "signature=\"AA==\",headers=\"date digest x-missing\",created=",
    "algorithm=hmac-sha256,signature=\"unterminated",
    "SHA-256=",
    "SHA-256=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
    "Tue, 24 Nov 2026 09:00:00 GMT",
    "Tue, 31 Dec 9999 23:59:59 GMT",
    "Mon, 01 Jan 0001 00:00:00 GMT",
    "1795510800",
    "-1",
    "9223372036854775807",
    "-9223372036854775808",
    "msg_1",
    "whsec_",
];

/// A header value: a plausible one, one built from arbitrary text (credential prefixes
/// included), or arbitrary bytes (non-UTF-8 `obs-text` too; invalid ones are dropped).
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => select(HEADER_VALUES).prop_map(|v| v.as_bytes().to_vec()),
        2 => (
            select(&["", "Bearer ", "Basic ", "sha256=", "v1=", "v1,", "timestamp=1795510800,signature=", "SHA-256=", "Signature "][..]),
            re("\\PC{0,40}")
        ).prop_map(|(prefix, rest)| format!("{prefix}{rest}").into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..48),
    ]
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => select(HEADER_NAMES).prop_map(str::to_owned),
        1 => re("[a-z][a-z0-9-]{0,15}"),
    ]
}

/// An arbitrary header set (repeated names kept; values invalid for HTTP dropped).
fn header_map() -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec((header_name(), header_value()), 0..8).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(&value),
            ) {
                map.append(name, value);
            }
        }
        map
    })
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    map
}

fn request<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> Request<'a> {
    Request {
        headers,
        body,
        target: "/v1/hooks/ci",
        method: "post",
        now: now(),
    }
}

/// Runs every source's three functions on the request and checks what each promises.
fn exercise_all_sources(headers: &HeaderMap, body: &[u8], secret: &Secret) {
    let request = request(headers, body);
    for &kind in IMPLEMENTED {
        check_parse(kind, sources::parse(kind, &request));
        if let Err(message) = sources::verify(kind, secret, &request) {
            assert!(!message.is_empty(), "{kind:?}: empty 401 message");
            if secret.expose().len() >= 6 {
                assert!(
                    !message.contains(secret.expose()),
                    "{kind:?}: the 401 message {message:?} contains the secret"
                );
            }
        }
        if let Some(id) = sources::delivery_id(kind, &request) {
            assert!(!id.is_empty() && id.trim() == id, "{kind:?}: id {id:?}");
        }
    }
}

/// `parse` returns an event, an ignore reason, or a 400 whose message starts with its field.
fn check_parse(kind: SourceKind, parsed: Result<Parsed, PayloadError>) {
    match parsed {
        Ok(Parsed::Event(_)) => {}
        Ok(Parsed::Ignored(reason)) => assert!(!reason.is_empty(), "{kind:?}: empty reason"),
        Err(e) => check_payload_error(kind, &e),
    }
}

fn check_payload_error(kind: SourceKind, e: &PayloadError) {
    assert!(!e.message.is_empty(), "{kind:?}: empty 400 message");
    if let Some(field) = &e.field {
        assert!(
            e.message.starts_with(field.as_str()),
            "{kind:?}: message {:?} does not start with its field {field:?}",
            e.message
        );
    }
}

// === JSON ===

/// Keys the parsers look up, so generated objects reach past the first `get`.
const KEYS: &[&str] = &[
    "type",
    "job",
    "pipeline",
    "status",
    "phase",
    "branch",
    "run_id",
    "started_at",
    "finished_at",
    "duration_secs",
    "user",
    "userid",
    "date",
    "done",
    "todo",
    "blockers",
    "notes",
    "action",
    "workflow_run",
    "workflow_job",
    "check_run",
    "check_suite",
    "conclusion",
    "object_kind",
    "object_attributes",
    "build",
    "build_status",
    "build_id",
    "event",
    "state",
    "id",
    "name",
    "number",
    "repo",
    "slug",
    "commit_status",
    "eventType",
    "resource",
    "run",
    "workflow",
    "created",
    "started",
    "finished",
    "updated",
    "timestamp",
    "duration",
    "scm",
];

const STRINGS: &[&str] = &[
    "",
    "  ",
    "job_status",
    "standup",
    "success",
    "FAILURE",
    "completed",
    "in_progress",
    "queued",
    "running",
    "timed_out",
    "FINALIZED",
    "STARTED",
    "pipeline",
    "build",
    "refs/heads/",
    "refs/heads/main",
    "origin/",
    "2026-11-24T08:00:00Z",
    "2026-11-24 08:00:00 UTC",
    "2026-11-24 16:00:00 +0800",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59+14:00",
    "0000-01-01T00:00:00-14:00",
    "2026-02-30",
    "2026-11-24",
    "build.finished",
    "job.finished",
    "workflow-completed",
    "job-completed",
    "ms.vss-build.build-completed",
    "\u{0}",
    "é",
    "日报",
];

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![
            Just(0.5),
            Just(-0.5),
            Just(1e300),
            Just(-1e300),
            Just(18_446_744_073_709_551_615.0),
            Just(9_223_372_036_854_775_807.0),
            any::<f64>()
        ]
        .prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        select(STRINGS).prop_map(Value::from),
        re("\\PC{0,24}").prop_map(Value::String),
    ]
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(KEYS).prop_map(str::to_owned),
        1 => re("\\PC{0,8}"),
    ]
}

/// An arbitrary JSON value, nested a few levels, with the parsers' keys and values common.
fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((json_key(), inner), 0..8)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// Every JSON pointer inside `value` ("" is the root).
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let escaped = key.replace('~', "~0").replace('/', "~1");
                pointers(child, format!("{at}/{escaped}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

/// One change to a JSON document: at the chosen place, a new value, `null`, or removal.
#[derive(Debug, Clone)]
enum Mutation {
    Replace(Index, Value),
    Null(Index),
    Remove(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), json_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        1 => any::<Index>().prop_map(Mutation::Null),
        2 => any::<Index>().prop_map(Mutation::Remove),
    ]
}

fn mutate(value: &mut Value, mutation: &Mutation) {
    let mut all = Vec::new();
    pointers(value, String::new(), &mut all);
    let index = match mutation {
        Mutation::Replace(i, _) | Mutation::Null(i) | Mutation::Remove(i) => i,
    };
    let pointer = index.get(&all).clone();
    match mutation {
        Mutation::Replace(_, new) => {
            if let Some(slot) = value.pointer_mut(&pointer) {
                *slot = new.clone();
            }
        }
        Mutation::Null(_) => {
            if let Some(slot) = value.pointer_mut(&pointer) {
                *slot = Value::Null;
            }
        }
        Mutation::Remove(_) => {
            let Some((parent, last)) = pointer.rsplit_once('/') else {
                return;
            };
            let last = last.replace("~1", "/").replace("~0", "~");
            match value.pointer_mut(parent) {
                Some(Value::Object(map)) => {
                    map.remove(&last);
                }
                Some(Value::Array(items)) => {
                    if let Ok(i) = last.parse::<usize>()
                        && i < items.len()
                    {
                        items.remove(i);
                    }
                }
                _ => {}
            }
        }
    }
}

// === seed payloads ===

/// A realistic delivery: the body and the headers its sender adds, to be mutated.
#[derive(Debug, Clone)]
struct Seed {
    name: String,
    kind: SourceKind,
    headers: Vec<(String, String)>,
    body: Value,
}

fn seed(name: &str, kind: SourceKind, headers: &[(&str, &str)], body: Value) -> Seed {
    Seed {
        name: name.to_owned(),
        kind,
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        body,
    }
}

/// Captured payloads from the repository's fixtures (`tests/fixtures/<source>/`), plus small
/// payloads written here for the sources the fixtures lack.
static SEEDS: LazyLock<Vec<Seed>> = LazyLock::new(|| {
    let mut seeds = inline_seeds();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let read = |source: &str, file: &str| -> Option<Value> {
        let text = std::fs::read_to_string(dir.join(source).join(file))
            .unwrap_or_else(|e| panic!("tests/fixtures/{source}/{file}: {e}"));
        serde_json::from_str(&text).ok()
    };
    let listing = |source: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join(source))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.ends_with(".json"))
                    .collect()
            })
            .unwrap_or_else(|e| panic!("tests/fixtures/{source}: {e}"));
        names.sort();
        assert!(!names.is_empty(), "tests/fixtures/{source} has no payloads");
        names
    };
    for file in listing("github") {
        let event = file.split('.').next().unwrap_or("").to_owned();
        if let Some(body) = read("github", &file) {
            for kind in [SourceKind::Github, SourceKind::Gitea, SourceKind::Forgejo] {
                seeds.push(seed(
                    &file,
                    kind,
                    &[("x-github-event", &event)],
                    body.clone(),
                ));
            }
        }
    }
    for file in listing("gitlab") {
        let hook = if file.starts_with("pipeline") {
            "Pipeline Hook"
        } else {
            "Job Hook"
        };
        if let Some(body) = read("gitlab", &file) {
            seeds.push(seed(
                &file,
                SourceKind::Gitlab,
                &[("x-gitlab-event", hook)],
                body.clone(),
            ));
            seeds.push(seed(&file, SourceKind::Gitlab, &[], body));
        }
    }
    for file in listing("drone") {
        if let Some(body) = read("drone", &file) {
            seeds.push(seed(
                &file,
                SourceKind::Drone,
                &[("x-drone-event", "build")],
                body,
            ));
        }
    }
    for file in listing("bitbucket") {
        let event = if file.contains("created") {
            "repo:commit_status_created"
        } else {
            "repo:commit_status_updated"
        };
        if let Some(body) = read("bitbucket", &file) {
            seeds.push(seed(
                &file,
                SourceKind::Bitbucket,
                &[("x-event-key", event)],
                body.clone(),
            ));
            seeds.push(seed(&file, SourceKind::Bitbucket, &[], body));
        }
    }
    for file in listing("azuredevops") {
        if let Some(body) = read("azuredevops", &file) {
            seeds.push(seed(&file, SourceKind::AzureDevops, &[], body));
        }
    }
    seeds
});

fn inline_seeds() -> Vec<Seed> {
    let jenkins = json!({"name": "asgard", "display_name": "Asgard", "url": "job/asgard/",
        "build": {"full_url": "http://jenkins.example.com/job/asgard/18/", "number": 18,
        "queue_id": 42, "timestamp": 1_700_000_070_432_i64, "phase": "FINALIZED",
        "status": "FAILURE", "url": "job/asgard/18/", "duration": 65432,
        "scm": {"url": "https://github.com/acme/asgard.git", "branch": "origin/main",
            "commit": "c6d86dc6a1b2c3d4e5f60718293a4b5c6d7e8f90", "changes": ["src/lib.rs"],
            "culprits": ["alice"]}, "log": "", "notes": "nightly", "artifacts": {},
        "test_summary": {"total": 420, "failed": 3, "passed": 412, "skipped": 5,
            "failed_tests": ["a.b.C.test1"]}}});
    let circleci_vcs = json!({"provider_name": "github",
        "origin_repository_url": "https://github.com/circleci/webhook-service",
        "revision": "1dc6aa69429bff4806ad6afe58d3d8f57e25973e",
        "commit": {"subject": "Description of change", "body": "More",
            "author": {"name": "Author Name", "email": "author@example.com"}},
        "branch": "main"});
    let circleci_workflow = json!({"id": "3888f21b", "type": "workflow-completed",
        "happened_at": "2021-09-01T22:49:34.317Z",
        "project": {"id": "8499", "name": "webhook-service", "slug": "github/circleci/webhook-service"},
        "workflow": {"id": "fda08377", "name": "build-test-deploy",
            "created_at": "2021-09-01T22:49:03.616Z", "stopped_at": "2021-09-01T22:49:34.170Z",
            "url": "https://app.circleci.com/pipelines/x/130/workflows/fda08377", "status": "success"},
        "pipeline": {"id": "1285fe1d", "number": 130, "created_at": "2021-09-01T22:49:03.544Z",
            "trigger": {"type": "webhook", "actor": {"login": "octocat"}}, "vcs": circleci_vcs.clone()}});
    let circleci_job = json!({"id": "8bd71c28", "type": "job-completed",
        "happened_at": "2021-09-01T22:49:34.279Z",
        "project": {"id": "8499", "name": "webhook-service", "slug": "gh/circleci/webhook-service"},
        "pipeline": {"id": "1285fe1d", "number": 130, "created_at": "2021-09-01T22:49:03.544Z",
            "trigger": {"type": "webhook"}, "vcs": circleci_vcs},
        "workflow": {"id": "fda08377", "name": "welcome", "url": "https://app.circleci.com/w"},
        "job": {"id": "8b91f9a8", "name": "test", "started_at": "2021-09-01T22:49:28.841Z",
            "stopped_at": "2021-09-01T22:49:34.170Z", "status": "failed", "number": 136}});
    let buildkite_build = json!({"id": "f62a1b4d", "web_url": "https://buildkite.com/o/p/builds/1",
        "number": 1, "state": "failed", "blocked": false, "message": "Bump\n\nbody",
        "commit": "abcd0b72a1e580e90712cdd9eb26d3fb41cd09c8", "branch": "main",
        "creator": {"name": "Keith Pitt", "email": "keith@buildkite.com"},
        "created_at": "2015-05-09T21:05:59.874Z", "started_at": "2015-05-09T21:05:59.874Z",
        "finished_at": "2015-05-09T21:08:59.874Z"});
    let buildkite_pipeline = json!({"id": "8494", "name": "Great Pipeline", "slug": "great-pipeline",
        "repository": "git@github.com:o/p"});
    let buildkite = json!({"event": "build.finished", "build": buildkite_build.clone(),
        "pipeline": buildkite_pipeline.clone(), "sender": {"id": "8a76", "name": "Some Person"}});
    let buildkite_job = json!({"event": "job.finished", "build": buildkite_build,
        "pipeline": buildkite_pipeline, "job": {"id": "b632", "type": "script",
            "name": ":rspec: RSpec", "state": "failed", "web_url": "https://buildkite.com/j",
            "exit_status": 1, "started_at": "2015-05-09T21:07:59.874Z",
            "finished_at": "2015-05-09T21:08:59.874Z"}});
    let user = json!({"id": 1, "login": "octocat", "email": "octocat@example.com"});
    let repository = json!({"id": 3, "name": "api", "full_name": "acme/api",
        "html_url": "https://gitea.example.com/acme/api"});
    let gitea_run = json!({"action": "completed",
        "workflow": {"id": "ci.yml", "name": "CI", "path": ".gitea/workflows/ci.yml"},
        "workflow_run": {"id": 812, "html_url": "https://gitea.example.com/acme/api/actions/runs/57",
            "display_title": "Fix", "path": "ci.yml@refs/heads/main", "event": "push",
            "run_number": 57, "head_sha": "9f2c1e7a", "head_branch": "main",
            "status": "completed", "conclusion": "failure", "actor": user.clone(),
            "repository": repository.clone(), "started_at": "2025-06-02T10:00:05+08:00",
            "completed_at": "2025-06-02T10:03:17+08:00"},
        "repository": repository.clone(), "sender": user.clone()});
    let forgejo_run = json!({"action": "success",
        "run": {"id": 4321, "title": "Fix", "repository": repository, "workflow_id": "ci.yml",
            "index_in_repo": 57, "trigger_user": user, "prettyref": "main",
            "commit_sha": "9f2c1e7a", "event": "push", "status": "success",
            "started": "2025-08-01T10:00:05+02:00", "stopped": "2025-08-01T10:03:17+02:00",
            "duration": 192_000_000_000_u64,
            "html_url": "https://forgejo.example.com/acme/api/actions/runs/57"},
        "prior_status": "running"});
    let generic_job = json!({"type": "job_status", "job": "build", "status": "success",
        "project": "acme/api", "pipeline": "CI", "run_id": "812", "branch": "main",
        "commit": "9f2c1e7", "commit_message": "Fix\n\nbody", "url": "https://ci.example.com/812",
        "actor": "octocat", "started_at": "2026-11-24T08:00:00Z",
        "finished_at": "2026-11-24T08:03:12Z", "duration_secs": 192, "summary": "ok"});
    let generic_standup = json!({"type": "standup", "user": "alice", "date": "2026-11-24",
        "done": ["a", "b"], "todo": "c", "blockers": [], "notes": "n"});
    vec![
        seed("jenkins", SourceKind::Jenkins, &[], jenkins),
        seed(
            "circleci-workflow",
            SourceKind::Circleci,
            &[("circleci-event-type", "workflow-completed")],
            circleci_workflow.clone(),
        ),
        seed(
            "circleci-workflow-no-header",
            SourceKind::Circleci,
            &[],
            circleci_workflow,
        ),
        seed(
            "circleci-job",
            SourceKind::Circleci,
            &[("circleci-event-type", "job-completed")],
            circleci_job,
        ),
        seed(
            "buildkite-build",
            SourceKind::Buildkite,
            &[("x-buildkite-event", "build.finished")],
            buildkite,
        ),
        seed(
            "buildkite-job",
            SourceKind::Buildkite,
            &[("x-buildkite-event", "job.finished")],
            buildkite_job,
        ),
        seed(
            "gitea-run",
            SourceKind::Gitea,
            &[("x-gitea-event", "workflow_run")],
            gitea_run.clone(),
        ),
        seed("gitea-run-no-header", SourceKind::Gitea, &[], gitea_run),
        seed(
            "forgejo-run",
            SourceKind::Forgejo,
            &[("x-forgejo-event", "action_run_success")],
            forgejo_run,
        ),
        seed("generic-job", SourceKind::Generic, &[], generic_job),
        seed("generic-standup", SourceKind::Generic, &[], generic_standup),
    ]
}

fn seeded_request() -> impl Strategy<Value = (Seed, Vec<Mutation>, HeaderMap, bool)> {
    (
        select(SEEDS.clone()),
        prop::collection::vec(mutation(), 0..5),
        header_map(),
        any::<bool>(),
    )
}

// === signatures ===

/// One way a sender authenticates a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    /// generic: `X-Signature-256: sha256=<hex>`.
    GenericHmac,
    /// generic: `Authorization: Bearer <secret>`.
    GenericBearer,
    /// GitHub: `X-Hub-Signature-256: sha256=<hex>`.
    Github,
    /// GitLab signing token (Standard Webhooks), a `whsec_` key.
    GitlabStandardWhsec,
    /// GitLab Standard Webhooks with a plain secret used as the key.
    GitlabStandardPlain,
    /// GitLab `X-Gitlab-Token`.
    GitlabToken,
    /// Gitea `X-Gitea-Signature: <hex>`.
    Gitea,
    /// Forgejo `X-Forgejo-Signature: <hex>`.
    Forgejo,
    /// Gitea's GitHub-compatible `X-Hub-Signature-256`.
    GiteaHub,
    /// A Gitea hook without a secret but with an `Authorization` header.
    GiteaAuthorization,
    /// Jenkins: `Authorization: Bearer`.
    JenkinsBearer,
    /// Azure DevOps: basic auth with the secret as password.
    AzureBasic,
    /// Azure DevOps: `X-Relay-Token`.
    AzureRelayToken,
    /// CircleCI: `circleci-signature: v1=<hex>`.
    Circleci,
    /// Buildkite: `X-Buildkite-Signature: timestamp=…,signature=<hex of "ts.body">`.
    BuildkiteSignature,
    /// Buildkite: `X-Buildkite-Token`.
    BuildkiteToken,
    /// Drone: HTTP signature over `date` and `digest`.
    Drone,
    /// Bitbucket: `X-Hub-Signature: sha256=<hex>`.
    Bitbucket,
}

const SCHEMES: &[Scheme] = &[
    Scheme::GenericHmac,
    Scheme::GenericBearer,
    Scheme::Github,
    Scheme::GitlabStandardWhsec,
    Scheme::GitlabStandardPlain,
    Scheme::GitlabToken,
    Scheme::Gitea,
    Scheme::Forgejo,
    Scheme::GiteaHub,
    Scheme::GiteaAuthorization,
    Scheme::JenkinsBearer,
    Scheme::AzureBasic,
    Scheme::AzureRelayToken,
    Scheme::Circleci,
    Scheme::BuildkiteSignature,
    Scheme::BuildkiteToken,
    Scheme::Drone,
    Scheme::Bitbucket,
];

impl Scheme {
    fn kind(self) -> SourceKind {
        match self {
            Self::GenericHmac | Self::GenericBearer => SourceKind::Generic,
            Self::Github => SourceKind::Github,
            Self::GitlabStandardWhsec | Self::GitlabStandardPlain | Self::GitlabToken => {
                SourceKind::Gitlab
            }
            Self::Gitea | Self::GiteaHub | Self::GiteaAuthorization => SourceKind::Gitea,
            Self::Forgejo => SourceKind::Forgejo,
            Self::JenkinsBearer => SourceKind::Jenkins,
            Self::AzureBasic | Self::AzureRelayToken => SourceKind::AzureDevops,
            Self::Circleci => SourceKind::Circleci,
            Self::BuildkiteSignature | Self::BuildkiteToken => SourceKind::Buildkite,
            Self::Drone => SourceKind::Drone,
            Self::Bitbucket => SourceKind::Bitbucket,
        }
    }

    /// Whether the credential covers the body (token schemes do not: any body passes).
    fn signs_body(self) -> bool {
        !matches!(
            self,
            Self::GenericBearer
                | Self::GitlabToken
                | Self::GiteaAuthorization
                | Self::JenkinsBearer
                | Self::AzureBasic
                | Self::AzureRelayToken
                | Self::BuildkiteToken
        )
    }

    /// Whether the credential is compared case-insensitively by design (hex digits and the
    /// `sha256=` algorithm name): a change of ASCII letter case is then not a change.
    fn case_insensitive(self) -> bool {
        matches!(
            self,
            Self::GenericHmac
                | Self::Github
                | Self::Gitea
                | Self::Forgejo
                | Self::GiteaHub
                | Self::Circleci
                | Self::BuildkiteSignature
                | Self::Bitbucket
        )
    }

    /// The credential the sender computes for `body`: the bytes a single-byte change is made
    /// to. For Drone it is the `signature` parameter (the header's `keyId` is not checked);
    /// for token schemes, the token itself.
    fn credential(self, key: &Key, body: &[u8], clock: i64) -> Vec<u8> {
        let secret = key.secret.as_str();
        match self {
            Self::GenericHmac | Self::Github | Self::GiteaHub | Self::Bitbucket => {
                format!("sha256={}", hex::encode(hmac(secret.as_bytes(), body))).into_bytes()
            }
            Self::Gitea | Self::Forgejo => hex::encode(hmac(secret.as_bytes(), body)).into_bytes(),
            Self::Circleci => {
                format!("v1={}", hex::encode(hmac(secret.as_bytes(), body))).into_bytes()
            }
            Self::GitlabStandardWhsec | Self::GitlabStandardPlain => {
                let ts = clock.to_string();
                let mut message = format!("msg_{clock}.{ts}.").into_bytes();
                message.extend_from_slice(body);
                format!("v1,{}", BASE64.encode(hmac(&key.hmac_key, &message))).into_bytes()
            }
            Self::BuildkiteSignature => {
                let mut message = format!("{clock}.").into_bytes();
                message.extend_from_slice(body);
                format!(
                    "timestamp={clock},signature={}",
                    hex::encode(hmac(secret.as_bytes(), &message))
                )
                .into_bytes()
            }
            Self::Drone => {
                let lines = format!("date: {}\ndigest: {}", http_date(clock), digest(body));
                BASE64
                    .encode(hmac(secret.as_bytes(), lines.as_bytes()))
                    .into_bytes()
            }
            Self::GenericBearer
            | Self::GitlabToken
            | Self::GiteaAuthorization
            | Self::JenkinsBearer
            | Self::AzureBasic
            | Self::AzureRelayToken
            | Self::BuildkiteToken => secret.as_bytes().to_vec(),
        }
    }

    /// The headers of a delivery of `body` carrying `credential`, as the sender sends them.
    /// A credential that cannot be a header value leaves its header out.
    fn headers(self, credential: &[u8], body: &[u8], clock: i64) -> HeaderMap {
        let mut map = HeaderMap::new();
        let mut put = |name: &'static str, value: &[u8]| {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                map.append(HeaderName::from_static(name), value);
            }
        };
        let with_prefix = |prefix: &str| {
            let mut value = prefix.as_bytes().to_vec();
            value.extend_from_slice(credential);
            value
        };
        match self {
            Self::GenericHmac => put("x-signature-256", credential),
            Self::Github | Self::GiteaHub => put("x-hub-signature-256", credential),
            Self::Bitbucket => put("x-hub-signature", credential),
            Self::Gitea => put("x-gitea-signature", credential),
            Self::Forgejo => put("x-forgejo-signature", credential),
            Self::Circleci => put("circleci-signature", credential),
            Self::BuildkiteSignature => put("x-buildkite-signature", credential),
            Self::GitlabStandardWhsec | Self::GitlabStandardPlain => {
                put("webhook-id", format!("msg_{clock}").as_bytes());
                put("webhook-timestamp", clock.to_string().as_bytes());
                put("webhook-signature", credential);
            }
            Self::Drone => {
                put("x-drone-event", b"build");
                put("date", http_date(clock).as_bytes());
                put("digest", digest(body).as_bytes());
                let mut value =
                    b"keyId=\"hmac-key\",algorithm=\"hmac-sha256\",signature=\"".to_vec();
                value.extend_from_slice(credential);
                value.extend_from_slice(b"\",headers=\"date digest\"");
                put("signature", &value);
            }
            Self::GenericBearer | Self::JenkinsBearer => {
                put("authorization", &with_prefix("Bearer "))
            }
            Self::GiteaAuthorization => put("authorization", credential),
            Self::GitlabToken => put("x-gitlab-token", credential),
            Self::BuildkiteToken => put("x-buildkite-token", credential),
            Self::AzureRelayToken => put("x-relay-token", credential),
            Self::AzureBasic => {
                let mut pair = b"azure:".to_vec();
                pair.extend_from_slice(credential);
                put(
                    "authorization",
                    format!("Basic {}", BASE64.encode(pair)).as_bytes(),
                );
            }
        }
        map
    }
}

/// A route secret and the HMAC key it stands for (they differ for `whsec_` signing tokens).
#[derive(Debug, Clone)]
struct Key {
    secret: String,
    hmac_key: Vec<u8>,
}

fn key(scheme: Scheme) -> BoxedStrategy<Key> {
    if scheme == Scheme::GitlabStandardWhsec {
        prop::collection::vec(any::<u8>(), 1..48)
            .prop_map(|bytes| Key {
                secret: format!("whsec_{}", BASE64.encode(&bytes)),
                hmac_key: bytes,
            })
            .boxed()
    } else {
        // Secrets as operators write them: no spaces, no `:` (basic auth splits on it), and
        // not a `whsec_` token (GitLab decodes those).
        "[A-Za-z0-9_.+/=-]{1,48}"
            .prop_filter("not a whsec_ token", |s| !s.starts_with("whsec_"))
            .prop_map(|secret| Key {
                hmac_key: secret.clone().into_bytes(),
                secret,
            })
            .boxed()
    }
}

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn digest(body: &[u8]) -> String {
    format!("SHA-256={}", BASE64.encode(Sha256::digest(body)))
}

fn http_date(clock: i64) -> String {
    DateTime::from_timestamp(clock, 0)
        .expect("test clock")
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

/// `bytes` with the byte at `index` replaced by `new` (which must differ from it).
fn changed(bytes: &[u8], index: Index, new: u8) -> Option<Vec<u8>> {
    if bytes.is_empty() {
        return None;
    }
    let i = index.index(bytes.len());
    (bytes[i] != new).then(|| {
        let mut out = bytes.to_vec();
        out[i] = new;
        out
    })
}

fn verified(scheme: Scheme, key: &Key, credential: &[u8], body: &[u8], clock: i64) -> bool {
    let headers = scheme.headers(credential, body, clock);
    sources::verify(
        scheme.kind(),
        &Secret::new(key.secret.clone()),
        &request(&headers, body),
    )
    .is_ok()
}

fn signature_case() -> impl Strategy<Value = (Scheme, Key, Vec<u8>, i64, Index, u8, Index, u8)> {
    select(SCHEMES).prop_flat_map(|scheme| {
        (
            Just(scheme),
            key(scheme),
            prop::collection::vec(any::<u8>(), 0..512),
            // Within the replay window either way.
            (now().timestamp() - 290)..(now().timestamp() + 290),
            any::<Index>(),
            any::<u8>(),
            any::<Index>(),
            any::<u8>(),
        )
    })
}

// === the generic payload ===

/// Text a sender might put in a field: arbitrary, with surrounding blanks sometimes.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => re("\\PC{1,30}"),
        1 => (re("[ \t\n]{0,2}"), re("\\PC{0,20}"), re("[ \t\n]{0,2}")).prop_map(|(a, b, c)| format!("{a}{b}{c}")),
        1 => select(STRINGS).prop_map(str::to_owned),
    ]
}

/// Text that is not blank (a required field).
fn required_text() -> impl Strategy<Value = String> {
    text().prop_filter("not blank", |s| !s.trim().is_empty())
}

/// What the parser keeps of a text field: trimmed, blank is absent.
fn kept(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// A time between 1970 and 9999 with an arbitrary offset, as RFC 3339 text and the instant.
fn time() -> impl Strategy<Value = (String, DateTime<Utc>)> {
    (
        1i64..253_402_214_400,
        0u32..1_000_000_000,
        -50_400i32..=50_400,
    )
        .prop_filter_map("representable in RFC 3339", |(secs, nanos, offset)| {
            let utc = DateTime::from_timestamp(secs, nanos)?;
            let offset = FixedOffset::east_opt(offset / 60 * 60)?;
            let local = utc.with_timezone(&offset);
            let text = local.to_rfc3339();
            // Years beyond 9999 are not RFC 3339.
            DateTime::parse_from_rfc3339(&text).ok()?;
            Some((text, utc))
        })
}

#[derive(Debug, Clone)]
struct GenericJob {
    job: Option<String>,
    pipeline: Option<String>,
    status: String,
    phase: Option<Phase>,
    project: Option<String>,
    run_id: Option<Value>,
    branch: Option<(bool, String)>,
    commit: Option<String>,
    commit_message: Option<String>,
    url: Option<String>,
    actor: Option<String>,
    actor_email: Option<String>,
    started_at: Option<(String, DateTime<Utc>)>,
    finished_at: Option<(String, DateTime<Utc>)>,
    duration_secs: Option<u64>,
    summary: Option<String>,
}

fn generic_job() -> impl Strategy<Value = GenericJob> {
    let names = prop_oneof![
        (required_text(), prop::option::of(text())).prop_map(|(j, p)| (Some(j), p)),
        (prop::option::of(text()), required_text()).prop_map(|(j, p)| (j, Some(p))),
    ];
    let run_id = prop::option::of(prop_oneof![
        required_text().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
    ]);
    let phase = prop::option::of(select(
        &[Phase::Queued, Phase::InProgress, Phase::Completed][..],
    ));
    let branch = prop::option::of((any::<bool>(), "[A-Za-z0-9_./-]{1,20}"));
    (
        (
            names,
            required_text(),
            phase,
            prop::option::of(text()),
            run_id,
            branch,
        ),
        (
            prop::option::of(text()),
            prop::option::of(text()),
            prop::option::of(text()),
            prop::option::of(text()),
            prop::option::of(text()),
        ),
        (
            prop::option::of(time()),
            prop::option::of(time()),
            prop::option::of(any::<u64>()),
            prop::option::of(text()),
        ),
    )
        .prop_map(
            |(
                ((job, pipeline), status, phase, project, run_id, branch),
                (commit, commit_message, url, actor, actor_email),
                (started_at, finished_at, duration_secs, summary),
            )| GenericJob {
                job,
                pipeline,
                status,
                phase,
                project,
                run_id,
                branch,
                commit,
                commit_message,
                url,
                actor,
                actor_email,
                started_at,
                finished_at,
                duration_secs,
                summary,
            },
        )
}

impl GenericJob {
    fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("type".into(), json!("job_status"));
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.to_owned(), v);
            }
        };
        put("job", self.job.clone().map(Value::from));
        put("pipeline", self.pipeline.clone().map(Value::from));
        put("status", Some(Value::from(self.status.clone())));
        put("phase", self.phase.map(|p| Value::from(p.as_str())));
        put("project", self.project.clone().map(Value::from));
        put("run_id", self.run_id.clone());
        put(
            "branch",
            self.branch.as_ref().map(|(full, b)| {
                Value::from(if *full {
                    format!("refs/heads/{b}")
                } else {
                    b.clone()
                })
            }),
        );
        put("commit", self.commit.clone().map(Value::from));
        put(
            "commit_message",
            self.commit_message.clone().map(Value::from),
        );
        put("url", self.url.clone().map(Value::from));
        put("actor", self.actor.clone().map(Value::from));
        put("actor_email", self.actor_email.clone().map(Value::from));
        put(
            "started_at",
            self.started_at
                .as_ref()
                .map(|(t, _)| Value::from(t.clone())),
        );
        put(
            "finished_at",
            self.finished_at
                .as_ref()
                .map(|(t, _)| Value::from(t.clone())),
        );
        put("duration_secs", self.duration_secs.map(Value::from));
        put("summary", self.summary.clone().map(Value::from));
        // Senders add fields of their own; they are ignored.
        put("x_extra", Some(json!({"nested": [1, "two", null]})));
        m
    }

    fn check(&self, parsed: &JobStatus) {
        assert_eq!(parsed.job, kept(&self.job));
        assert_eq!(parsed.pipeline, kept(&self.pipeline));
        assert_eq!(parsed.status, Some(Status::parse(&self.status)));
        let status = parsed.status.as_ref().expect("status");
        let lower = self.status.trim().to_ascii_lowercase();
        if [
            "success",
            "failure",
            "cancelled",
            "running",
            "pending",
            "skipped",
            "unknown",
        ]
        .contains(&lower.as_str())
        {
            assert_eq!(status.as_str(), lower);
        } else {
            assert_eq!(status, &Status::Other(self.status.trim().to_owned()));
        }
        assert_eq!(parsed.phase, self.phase);
        assert_eq!(parsed.project, kept(&self.project));
        let run_id = match &self.run_id {
            Some(Value::String(s)) => kept(&Some(s.clone())),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        assert_eq!(parsed.run_id, run_id);
        assert_eq!(parsed.branch, self.branch.as_ref().map(|(_, b)| b.clone()));
        assert_eq!(parsed.commit, kept(&self.commit));
        assert_eq!(parsed.commit_message, kept(&self.commit_message));
        assert_eq!(parsed.url, kept(&self.url));
        assert_eq!(parsed.actor, kept(&self.actor));
        assert_eq!(parsed.actor_email, kept(&self.actor_email));
        assert_eq!(parsed.started_at, self.started_at.as_ref().map(|(_, t)| *t));
        assert_eq!(
            parsed.finished_at,
            self.finished_at.as_ref().map(|(_, t)| *t)
        );
        assert_eq!(parsed.duration_secs, self.duration_secs);
        assert_eq!(parsed.summary, kept(&self.summary));
        assert_eq!(parsed.source, None);
        assert_eq!(parsed.status_raw, None);
    }
}

#[derive(Debug, Clone)]
struct GenericStandup {
    user: Option<String>,
    userid: Option<String>,
    date: Option<NaiveDate>,
    done: Value,
    todo: Value,
    blockers: Value,
    notes: Option<String>,
}

/// A list field as sent: one string, or a list of strings (blank and null items allowed).
fn items() -> impl Strategy<Value = Value> {
    prop_oneof![
        text().prop_map(Value::from),
        prop::collection::vec(
            prop_oneof![4 => text().prop_map(Value::from), 1 => Just(Value::Null)],
            0..6
        )
        .prop_map(Value::Array),
    ]
}

/// What the parser keeps of a list field: the non-blank items, trimmed.
fn kept_items(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => kept(&Some(s.clone())).into_iter().collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(|v| kept(&v.as_str().map(str::to_owned)))
            .collect(),
        _ => Vec::new(),
    }
}

fn generic_standup() -> impl Strategy<Value = GenericStandup> {
    let who = prop_oneof![
        (required_text(), prop::option::of(text())).prop_map(|(u, id)| (Some(u), id)),
        (prop::option::of(text()), required_text()).prop_map(|(u, id)| (u, Some(id))),
    ];
    let date = prop::option::of(
        (1i32..=9999, 1u32..=366).prop_filter_map("a day", |(y, d)| NaiveDate::from_yo_opt(y, d)),
    );
    (
        who,
        date,
        items(),
        items(),
        items(),
        prop::option::of(text()),
    )
        .prop_map(
            |((user, userid), date, done, todo, blockers, notes)| GenericStandup {
                user,
                userid,
                date,
                done,
                todo,
                blockers,
                notes,
            },
        )
        .prop_filter("has some content", |s| {
            !(kept_items(&s.done).is_empty()
                && kept_items(&s.todo).is_empty()
                && kept_items(&s.blockers).is_empty()
                && kept(&s.notes).is_none())
        })
}

impl GenericStandup {
    fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("type".into(), json!("standup"));
        if let Some(user) = &self.user {
            m.insert("user".into(), json!(user));
        }
        if let Some(userid) = &self.userid {
            m.insert("userid".into(), json!(userid));
        }
        if let Some(date) = &self.date {
            m.insert("date".into(), json!(date.format("%Y-%m-%d").to_string()));
        }
        m.insert("done".into(), self.done.clone());
        m.insert("todo".into(), self.todo.clone());
        m.insert("blockers".into(), self.blockers.clone());
        if let Some(notes) = &self.notes {
            m.insert("notes".into(), json!(notes));
        }
        m
    }

    fn check(&self, parsed: &Standup) {
        assert_eq!(parsed.user, kept(&self.user));
        assert_eq!(parsed.userid, kept(&self.userid));
        assert_eq!(
            parsed.date,
            self.date.map(|d| d.format("%Y-%m-%d").to_string())
        );
        assert_eq!(parsed.done, kept_items(&self.done));
        assert_eq!(parsed.todo, kept_items(&self.todo));
        assert_eq!(parsed.blockers, kept_items(&self.blockers));
        assert_eq!(parsed.notes, kept(&self.notes));
    }
}

/// How a required field goes missing: left out, `null`, or blank.
fn absent() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        Just(Some(json!(""))),
        Just(Some(json!(" \t")))
    ]
}

fn remove(m: &mut Map<String, Value>, keys: &[&str], how: &Option<Value>) {
    for key in keys {
        match how {
            None => {
                m.remove(*key);
            }
            Some(v) => {
                m.insert((*key).to_owned(), v.clone());
            }
        }
    }
}

fn expect_field_error(body: &Map<String, Value>, field: &str) {
    let bytes = serde_json::to_vec(body).expect("json");
    match generic::parse(&bytes) {
        Ok(event) => panic!("accepted without {field}: {event:?}"),
        Err(e) => {
            assert_eq!(e.field.as_deref(), Some(field), "{e}");
            assert!(e.message.starts_with(field), "{e}");
        }
    }
}

// === mapping ===

const MAPPING_YAML: &str = r#"
server: {listen: "127.0.0.1:8080", admin_listen: "127.0.0.1:8081"}
dingtalk:
  apps:
    default: {app_key: "k"}
store: {url: "memory:"}
delivery: {}
users:
  octocat: "dd_user_01"
  "Alice@Example.com": "dd_alice"
routes:
  builtin:
    source: generic
    template: {name: "日报"}
    author: "manager01"
    to_userids: ["lead01", "actor", "octocat"]
    events: [queued, in_progress, completed]
  actor:
    source: generic
    template: {name: "日报", owner: "manager01"}
    author: actor
    events: [queued, in_progress, completed]
  custom:
    source: generic
    template: {name: "日报"}
    author: "manager01"
    events: [queued, in_progress, completed]
"#;

/// The mapper, with a `custom` route whose fields show every template variable (each alone,
/// then all of them together, then the lists through both filters).
static MAPPER: LazyLock<Mapper> = LazyLock::new(|| {
    let mut yaml = MAPPING_YAML.to_owned();
    yaml.push_str("    fields:\n");
    let mut all = String::new();
    for (name, _) in dingtalk_relay::mapping::variables() {
        yaml.push_str(&format!("      \"var_{name}\": \"{{{{ {name} }}}}\"\n"));
        all.push_str(&format!("{name}={{{{ {name} }}}}\\n"));
    }
    yaml.push_str(&format!("      \"all\": \"{all}\"\n"));
    yaml.push_str(
        "      \"lists\": \"{{ done | bullets }}\\n{{ todo | numbered }}\\n{{ blockers | bullets }}\\n{{ notes | bullets }}\\n{{ commit_message | numbered }}\"\n",
    );
    let settings = Settings::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(settings.issues(Mode::Offline), Vec::new(), "{yaml}");
    Mapper::new(&settings).unwrap_or_else(|e| panic!("{e:?}"))
});

/// A mapper with digest routes: built-in digest templates listing up to 1000 lines, and
/// custom fields showing every digest variable.
static DIGEST_MAPPER: LazyLock<Mapper> = LazyLock::new(|| {
    let mut yaml = MAPPING_YAML.to_owned();
    yaml.push_str(
        r#"  digest_builtin:
    source: generic
    template: {name: "日报"}
    author: "manager01"
    events: [queued, in_progress, completed]
    digest: {schedule: "18:00", group_by: route, max_lines: 1000}
  digest_custom:
    source: generic
    template: {name: "日报"}
    author: "manager01"
    events: [queued, in_progress, completed]
    digest: {schedule: "18:00", group_by: project, max_lines: 7}
    fields:
"#,
    );
    let mut all = String::new();
    for (name, _) in dingtalk_relay::mapping::digest_variables() {
        all.push_str(&format!("{name}={{{{ {name} }}}}\\n"));
    }
    yaml.push_str(&format!("      \"all\": \"{all}\"\n"));
    yaml.push_str(
        "      \"lines\": \"{% for p in pipelines %}{{ p.name }} {{ p.url }} {{ p.summary }}\\n{% endfor %}{{ more_text }}{% for s in standups %}{{ s.done | bullets }}{{ s.notes }}\\n{% endfor %}\"\n",
    );
    let settings = Settings::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(settings.issues(Mode::Offline), Vec::new(), "{yaml}");
    Mapper::new(&settings).unwrap_or_else(|e| panic!("{e:?}"))
});

/// Arbitrary text for an event field: short or long (past the content limit), any chars.
fn field_text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => re("\\PC{0,40}"),
        1 => any::<String>(),
        1 => select(&["octocat", "ALICE@example.com", "{{ x }}", "{% if %}", "\n\n\n", "  \n", "•"][..]).prop_map(str::to_owned),
        1 => (re("\\PC{1,3}"), 300usize..1200).prop_map(|(s, n)| s.repeat(n)),
        1 => prop::collection::vec(prop_oneof![re("\\PC{0,5}"), Just("\n".to_owned())], 0..400).prop_map(|v| v.concat()),
    ]
    .boxed()
}

/// Any instant chrono can hold (far past and future included).
fn any_time() -> BoxedStrategy<DateTime<Utc>> {
    prop_oneof![
        3 => (0i64..4_102_444_800).prop_map(|s| DateTime::from_timestamp(s, 0).expect("in range")),
        1 => (
            DateTime::<Utc>::MIN_UTC.timestamp()..=DateTime::<Utc>::MAX_UTC.timestamp(),
        )
            .prop_map(|(s,)| DateTime::from_timestamp(s, 0).expect("in range")),
        1 => Just(DateTime::<Utc>::MIN_UTC),
        1 => Just(DateTime::<Utc>::MAX_UTC),
    ]
    .boxed()
}

fn status() -> BoxedStrategy<Status> {
    prop_oneof![
        Just(Status::Success),
        Just(Status::Failure),
        Just(Status::Cancelled),
        Just(Status::Running),
        Just(Status::Pending),
        Just(Status::Skipped),
        Just(Status::Unknown),
        field_text().prop_map(Status::Other),
    ]
    .boxed()
}

fn opt_text() -> BoxedStrategy<Option<String>> {
    prop::option::weighted(0.8, field_text()).boxed()
}

fn job_event() -> BoxedStrategy<Event> {
    (
        (
            opt_text(),
            opt_text(),
            prop::option::of(status()),
            opt_text(),
            opt_text(),
        ),
        (
            prop::option::of(select(
                &[Phase::Queued, Phase::InProgress, Phase::Completed][..],
            )),
            opt_text(),
            opt_text(),
            opt_text(),
            opt_text(),
            opt_text(),
        ),
        (opt_text(), opt_text(), opt_text()),
        (
            prop::option::of(any_time()),
            prop::option::of(any_time()),
            prop::option::of(any::<u64>()),
            opt_text(),
        ),
    )
        .prop_map(
            |(
                (job, pipeline, status, status_raw, source),
                (phase, project, run_id, branch, commit, commit_message),
                (url, actor, actor_email),
                (started_at, finished_at, duration_secs, summary),
            )| {
                Event::JobStatus(JobStatus {
                    job,
                    pipeline,
                    status,
                    status_raw,
                    source,
                    phase,
                    project,
                    run_id,
                    branch,
                    commit,
                    commit_message,
                    url,
                    actor,
                    actor_email,
                    started_at,
                    finished_at,
                    duration_secs,
                    summary,
                })
            },
        )
        .boxed()
}

fn standup_event() -> BoxedStrategy<Event> {
    let list = || prop::collection::vec(field_text(), 0..8);
    (
        opt_text(),
        opt_text(),
        opt_text(),
        list(),
        list(),
        list(),
        opt_text(),
    )
        .prop_map(|(user, userid, date, done, todo, blockers, notes)| {
            Event::Standup(Standup {
                user,
                userid,
                date,
                done,
                todo,
                blockers,
                notes,
            })
        })
        .boxed()
}

// === configuration ===

/// Values for YAML keys: valid ones, edge cases, and kinds that are wrong for the key.
const YAML_SCALARS: &[&str] = &[
    "\"\"",
    "~",
    "null",
    "0",
    "-1",
    "1",
    "20",
    "21",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "1e999",
    ".nan",
    "true",
    "[]",
    "{}",
    "[a, b]",
    "{a: b}",
    "\"127.0.0.1:8080\"",
    "\"127.0.0.1:0\"",
    "\"[::1]:0\"",
    "\"localhost:80\"",
    "\"memory:\"",
    "\"sqlite://\"",
    "\"sqlite://x.db\"",
    "\"postgres://u@h/db\"",
    "\"mysql://x\"",
    "\"https://oapi.dingtalk.com\"",
    "\"http://\"",
    "\"https://[\"",
    "\"Asia/Shanghai\"",
    "\"UTC\"",
    "\"Mars/Olympus\"",
    "\"actor\"",
    "\"日报\"",
    "\"{{ x }\"",
    "\"{{ nope | nofilter }}\"",
    "\"{% for x in done %}{{ x }}{% endfor %}\"",
    "\"{{ done | bullets }}\"",
    "\"[a\"",
    "\"**/release-*\"",
    "\"{a,b\"",
    "&anchor x",
    "*anchor",
    "!!binary aGk=",
    "!!str 1",
    "|\n  block",
];

fn yaml_scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(YAML_SCALARS).prop_map(str::to_owned),
        1 => re("\\PC{0,12}").prop_map(|s| serde_json::to_string(&s).expect("json string")),
        1 => re("[ -~]{0,12}"),
    ]
}

/// Durations as humantime text: valid, zero, negative, unparseable.
const DURATIONS: &[&str] = &[
    "\"0s\"",
    "\"1ns\"",
    "\"1s\"",
    "\"10s\"",
    "\"1h 30m\"",
    "\"1000000000000000000s\"",
];

/// Durations that do not load.
const BAD_DURATIONS: &[&str] = &[
    "\"-5s\"",
    "\"5 fortnights\"",
    "\"99999999999999999999999s\"",
];

/// Durations so large that arithmetic on them overflows (more than `u64::MAX / 4` seconds).
const HUGE_DURATIONS: &[&str] = &[
    "\"4611686018427387904s\"",
    "\"18446744073709551615s\"",
    "\"200000000000years\"",
    "\"584542046090years\"",
];

/// Keys whose values are humantime durations.
const DURATION_KEYS: &[&str] = &[
    "request_timeout",
    "header_read_timeout",
    "timeout",
    "token_refresh_margin",
    "template_cache_ttl",
    "initial_backoff",
    "max_backoff",
    "dedup_window",
    "lease",
];

/// Values of the right YAML type for `key` (so that most documents load and `issues` gets to
/// judge them), valid or not for the relay.
fn typed(key: &str) -> &'static [&'static str] {
    match key {
        "listen" | "admin_listen" => &[
            "\"127.0.0.1:8080\"",
            "\"127.0.0.1:8081\"",
            "\"0.0.0.0:0\"",
            "\"[::1]:0\"",
            "\"localhost:80\"",
            "\"\"",
            "\"127.0.0.1:99999\"",
        ],
        "max_body_bytes" | "max_queued" => &["0", "1", "1048576", "18446744073709551615"],
        "max_attempts" | "max_qps" => &["0", "1", "12", "20", "21", "4294967295"],
        "concurrency" => &["0", "1", "8", "18446744073709551615"],
        "admin_token" | "secret" => &["\"\"", "\"s3cret\"", "~"],
        "base_url" => &[
            "\"https://oapi.dingtalk.com\"",
            "\"http://127.0.0.1:1\"",
            "\"http://\"",
            "\"https://[\"",
            "\"ftp://x\"",
            "\"\"",
        ],
        "url" => &[
            "\"memory:\"",
            "\"memory\"",
            "\"sqlite://\"",
            "\"sqlite://x.db\"",
            "\"postgres://u@h/db\"",
            "\"postgresql://\"",
            "\"mysql://x\"",
            "\"\"",
        ],
        "insecure" | "to_chat" => &["true", "false"],
        "app" => &["\"default\"", "\"nope\"", "\"\""],
        "author" => &["\"actor\"", "\"manager01\"", "\"\"", "\" \""],
        "dd_from" => &["\"ci\"", "\"\"", "\" \""],
        "to_userids" | "to_cids" => &["[]", "[\"a\", \"actor\", \"a\"]", "[\"\"]"],
        "events" => &[
            "[]",
            "[completed]",
            "[queued, in_progress, completed]",
            "[Completed, nope, \"\"]",
        ],
        "statuses" => &["[]", "[success]", "[\"\", \" \", FAILURE]"],
        "branches" => &[
            "[]",
            "[main]",
            "[\"**/release-*\"]",
            "[\"[a\"]",
            "[\"{a,b\"]",
            "[\"\"]",
            "[\"a**b\", \"\\\\\"]",
        ],
        _ => &[],
    }
}

/// A value for `key`: of the right type and loadable (`wild` false), or also of the wrong type,
/// unparseable or odd YAML (`wild` true).
fn yaml_value(key: &str, huge: bool, wild: bool) -> BoxedStrategy<String> {
    let pool: Vec<&'static str> = if DURATION_KEYS.contains(&key) {
        let mut pool: Vec<&'static str> = DURATIONS.to_vec();
        if huge {
            pool.extend(HUGE_DURATIONS);
        }
        if wild {
            pool.extend(BAD_DURATIONS);
        }
        pool
    } else {
        typed(key).to_vec()
    };
    if !wild {
        return select(pool).prop_map(str::to_owned).boxed();
    }
    prop_oneof![
        8 => select(pool).prop_map(str::to_owned),
        1 => yaml_scalar(),
    ]
    .boxed()
}

/// One of `good`; when `wild`, sometimes one of `bad` or any YAML scalar instead.
fn pick(
    good: &'static [&'static str],
    bad: &'static [&'static str],
    wild: bool,
) -> BoxedStrategy<String> {
    let good = select(good).prop_map(str::to_owned);
    if !wild {
        return good.boxed();
    }
    if bad.is_empty() {
        return prop_oneof![4 => good, 1 => yaml_scalar()].boxed();
    }
    prop_oneof![4 => good, 1 => select(bad).prop_map(str::to_owned), 1 => yaml_scalar()].boxed()
}

/// `key: value` lines for the keys under one section, each present or not.
fn section(keys: &'static [&'static str], huge: bool, wild: bool) -> impl Strategy<Value = String> {
    keys.iter()
        .map(|key| prop::option::weighted(0.5, yaml_value(key, huge, wild)))
        .collect::<Vec<_>>()
        .prop_map(move |values| {
            let mut out = String::new();
            for (key, value) in keys.iter().zip(values) {
                if let Some(value) = value {
                    out.push_str(&format!("  {key}: {}\n", value.replace('\n', "\n    ")));
                }
            }
            out
        })
}

/// A YAML document with the settings' shape: every section and key may be present, absent or
/// of any value; most values have the right type so that most documents load.
fn settings_yaml(huge: bool) -> impl Strategy<Value = String> {
    prop_oneof![settings_doc(huge, false), settings_doc(huge, true)]
}

/// [`settings_yaml`] of one kind: every value loadable (`wild` false) or not.
fn settings_doc(huge: bool, wild: bool) -> impl Strategy<Value = String> {
    const SERVER: &[&str] = &[
        "listen",
        "admin_listen",
        "max_body_bytes",
        "admin_token",
        "request_timeout",
        "header_read_timeout",
    ];
    const DINGTALK: &[&str] = &[
        "base_url",
        "timeout",
        "token_refresh_margin",
        "max_qps",
        "template_cache_ttl",
    ];
    const STORE: &[&str] = &["url", "max_queued"];
    const DELIVERY: &[&str] = &[
        "max_attempts",
        "initial_backoff",
        "max_backoff",
        "dedup_window",
        "concurrency",
        "lease",
    ];
    const ROUTE: &[&str] = &[
        "secret",
        "insecure",
        "app",
        "author",
        "to_userids",
        "to_cids",
        "to_chat",
        "dd_from",
        "events",
        "statuses",
        "branches",
    ];
    const APPS: &[&str] = &[
        "",
        "apps: {default: {app_key: k}}",
        "apps: {default: {app_key: k, app_secret: s}}",
        "apps: {Bad: {app_key: \"\", app_secret: \"\"}}",
        "apps: {}",
    ];
    const TIMEZONES: &[&str] = &["\"Asia/Shanghai\"", "\"UTC\"", "\"Mars/Olympus\"", "\"\""];
    const TEMPLATES: &[&str] = &[
        "{name: \"日报\"}",
        "{name: \"日报\", owner: \"m\"}",
        "{name: \" \"}",
        "{id: \"t1\"}",
        "{id: \"\"}",
        "{name: \"a\", id: \"b\"}",
        "{}",
    ];
    const FIELD_TEMPLATES: &[&str] = &[
        "\"{{ status }}\"",
        "\"{{ done | bullets }}\"",
        "\"{{ todo | numbered }}\"",
        "\"{% for x in done %}{{ x }}{% endfor %}\"",
        "\"{{ x }\"",
        "\"{{ nope | nofilter }}\"",
        "\"{{ nope() }}\"",
        "\"{% if x is nope %}{% endif %}\"",
        "\"{% for i in range(100000) %}{{ i }}{% endfor %}\"",
        "\"\"",
    ];
    let route = (
        if wild {
            re("[a-z_-]{1,6}|[A-Z .]{1,4}")
        } else {
            re("[a-z_-]{1,6}")
        },
        pick(
            &[
                "generic",
                "github",
                "gitlab",
                "drone",
                "azure-devops",
                "forgejo",
            ],
            &["nope", "[]", "GitHub"],
            wild,
        ),
        section(ROUTE, huge, wild),
        pick(TEMPLATES, &[], wild),
        prop::option::of(prop::collection::vec(
            (re("[a-z日报 ]{1,6}"), pick(FIELD_TEMPLATES, &[], wild)),
            0..3,
        )),
        prop::option::of(prop::collection::vec(
            (re("[a-z日报]{1,6}"), -3i64..5, -1i64..3),
            0..3,
        )),
    );
    (
        (
            section(SERVER, huge, wild),
            section(DINGTALK, huge, wild),
            section(STORE, huge, wild),
            section(DELIVERY, huge, wild),
        ),
        pick(TIMEZONES, &[], wild),
        any::<bool>(),
        prop::collection::vec(
            (
                re("[a-zA-Z@. _-]{0,6}"),
                pick(&["\"dd\"", "\"\"", "\" \""], &[], wild),
            ),
            0..3,
        ),
        prop::collection::vec(route, 0..3),
        select(APPS),
    )
        .prop_map(
            |((server, dingtalk, store, delivery), timezone, with_tz, users, routes, apps)| {
                let mut y = String::new();
                y.push_str("server:\n");
                if !server.contains("  listen:") {
                    y.push_str("  listen: \"127.0.0.1:8080\"\n");
                }
                if !server.contains("  admin_listen:") {
                    y.push_str("  admin_listen: \"127.0.0.1:8081\"\n");
                }
                y.push_str(&server);
                if apps.is_empty() && dingtalk.is_empty() {
                    y.push_str("dingtalk: {}\n");
                } else {
                    y.push_str(&format!("dingtalk:\n  {apps}\n{dingtalk}"));
                }
                y.push_str("store:\n");
                if !store.contains("  url:") {
                    y.push_str("  url: \"memory:\"\n");
                }
                y.push_str(&store);
                if delivery.is_empty() {
                    y.push_str("delivery: {}\n");
                } else {
                    y.push_str(&format!("delivery:\n{delivery}"));
                }
                if with_tz {
                    y.push_str(&format!("timezone: {timezone}\n"));
                }
                if !users.is_empty() {
                    y.push_str("users:\n");
                    let mut seen = std::collections::HashSet::new();
                    for (login, userid) in users {
                        if !seen.insert(login.clone()) {
                            continue;
                        }
                        y.push_str(&format!("  \"{login}\": {userid}\n"));
                    }
                }
                if !routes.is_empty() {
                    y.push_str("routes:\n");
                    let mut seen = std::collections::HashSet::new();
                    for (name, source, keys, template, fields, template_fields) in routes {
                        if !seen.insert(name.clone()) {
                            continue;
                        }
                        y.push_str(&format!("  \"{name}\":\n    source: {source}\n"));
                        y.push_str(&format!("    template: {template}\n"));
                        if let Some(tf) = template_fields
                            && template.starts_with("{id")
                        {
                            let list: Vec<String> = tf
                                .iter()
                                .map(|(n, sort, kind)| {
                                    format!("{{name: \"{n}\", sort: {sort}, type: {kind}}}")
                                })
                                .collect();
                            let t = template.trim_end_matches('}');
                            y.truncate(y.len() - template.len() - 1);
                            y.push_str(&format!("{t}, fields: [{}]}}\n", list.join(", ")));
                        }
                        if !keys.contains("  author:") {
                            y.push_str("    author: \"manager01\"\n");
                        }
                        for line in keys.lines() {
                            y.push_str(&format!("  {line}\n"));
                        }
                        if let Some(fields) = fields {
                            y.push_str("    fields:\n");
                            let mut seen = std::collections::HashSet::new();
                            for (field, template) in fields {
                                // A repeated key is a YAML error, not what is being tested.
                                if seen.insert(field.clone()) {
                                    y.push_str(&format!("      \"{field}\": {template}\n"));
                                }
                            }
                        }
                    }
                }
                y
            },
        )
}

fn check_settings(yaml: &str) {
    let Ok(settings) = Settings::from_yaml(yaml) else {
        return;
    };
    for mode in [Mode::Production, Mode::Sandbox, Mode::Offline] {
        for issue in settings.issues(mode) {
            assert!(!issue.path.is_empty(), "{issue:?}");
        }
    }
    let _ = settings.tz();
    // Mapper::new compiles every template and glob the settings name: it must not panic
    // either, whatever they hold.
    let _ = Mapper::new(&settings);
}

// === the properties ===

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes as the body, with arbitrary headers: no source panics, and every answer
    /// keeps its contract.
    #[test]
    fn sources_take_arbitrary_bytes(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            "\\PC{0,64}".prop_map(String::into_bytes),
        ],
        headers in header_map(),
        secret in "[ -~]{0,12}",
    ) {
        exercise_all_sources(&headers, &body, &Secret::new(secret));
    }

    /// Arbitrary JSON values as the body.
    #[test]
    fn sources_take_arbitrary_json(value in json_value(), headers in header_map()) {
        let body = serde_json::to_vec(&value).expect("json");
        exercise_all_sources(&headers, &body, &Secret::new("s3cret"));
    }

    /// Real payloads with a few values replaced, nulled or removed, sent to the source they
    /// come from (and, half the time, to every source) with their own and arbitrary headers.
    #[test]
    fn sources_take_mutated_payloads((seed, mutations, extra, everywhere) in seeded_request()) {
        let mut body = seed.body.clone();
        for m in &mutations {
            mutate(&mut body, m);
        }
        let bytes = serde_json::to_vec(&body).expect("json");
        let mut headers = extra;
        for (name, value) in &seed.headers {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        let req = request(&headers, &bytes);
        check_parse(seed.kind, sources::parse(seed.kind, &req));
        let _ = sources::delivery_id(seed.kind, &req);
        if everywhere {
            exercise_all_sources(&headers, &bytes, &Secret::new("s3cret"));
        }
    }

    /// A delivery signed the way its sender signs always verifies; any single-byte change to
    /// the body (for schemes that sign it) or to the credential never does.
    #[test]
    fn signatures_verify_and_reject_any_change(
        (scheme, key, body, clock, body_at, body_byte, cred_at, cred_byte) in signature_case()
    ) {
        let credential = scheme.credential(&key, &body, clock);
        prop_assert!(
            verified(scheme, &key, &credential, &body, clock),
            "{scheme:?}: a correctly signed delivery was rejected"
        );
        if scheme.signs_body()
            && let Some(body2) = changed(&body, body_at, body_byte)
        {
            prop_assert!(
                !verified(scheme, &key, &credential, &body2, clock),
                "{scheme:?}: a changed body verified"
            );
        }
        if let Some(credential2) = changed(&credential, cred_at, cred_byte) {
            let i = cred_at.index(credential.len());
            let case_only = credential[i].eq_ignore_ascii_case(&cred_byte);
            if !(scheme.case_insensitive() && case_only) {
                prop_assert!(
                    !verified(scheme, &key, &credential2, &body, clock),
                    "{scheme:?}: changed credential {:?} verified",
                    String::from_utf8_lossy(&credential2)
                );
            }
        }
    }

    /// A signature made with another secret never verifies.
    #[test]
    fn signatures_under_another_secret_fail(
        (scheme, key, body, clock, ..) in signature_case(),
        other in "[A-Za-z0-9]{1,16}",
    ) {
        prop_assume!(other != key.secret && other.as_bytes() != key.hmac_key.as_slice());
        let wrong = Key { secret: other.clone(), hmac_key: other.into_bytes() };
        let credential = scheme.credential(&wrong, &body, clock);
        prop_assert!(!verified(scheme, &key, &credential, &body, clock), "{scheme:?}");
    }

    /// Valid generic job_status objects parse, and every field comes back as sent (trimmed,
    /// blank as absent, `refs/heads/` dropped, times as instants).
    #[test]
    fn generic_job_status_round_trips(job in generic_job()) {
        let body = serde_json::to_vec(&job.to_json()).expect("json");
        match generic::parse(&body) {
            Ok(Event::JobStatus(parsed)) => job.check(&parsed),
            other => panic!("{other:?}\n{}", String::from_utf8_lossy(&body)),
        }
    }

    /// Valid generic standup objects parse, and every field comes back as sent.
    #[test]
    fn generic_standup_round_trips(standup in generic_standup()) {
        let body = serde_json::to_vec(&standup.to_json()).expect("json");
        match generic::parse(&body) {
            Ok(Event::Standup(parsed)) => standup.check(&parsed),
            other => panic!("{other:?}\n{}", String::from_utf8_lossy(&body)),
        }
    }

    /// A job_status without a required field is a 400 naming that field.
    #[test]
    fn generic_job_status_missing_fields(job in generic_job(), which in 0..3usize, how in absent()) {
        let mut body = job.to_json();
        let field = match which {
            0 => {
                remove(&mut body, &["type"], &how);
                "type"
            }
            1 => {
                remove(&mut body, &["job", "pipeline"], &how);
                "job"
            }
            _ => {
                remove(&mut body, &["status"], &how);
                "status"
            }
        };
        expect_field_error(&body, field);
    }

    /// A standup without a required field is a 400 naming that field.
    #[test]
    fn generic_standup_missing_fields(standup in generic_standup(), which in 0..3usize, how in absent()) {
        let mut body = standup.to_json();
        let field = match which {
            0 => {
                remove(&mut body, &["type"], &how);
                "type"
            }
            1 => {
                remove(&mut body, &["user", "userid"], &how);
                "user"
            }
            _ => {
                remove(&mut body, &["done", "todo", "blockers", "notes"], &how);
                "done"
            }
        };
        expect_field_error(&body, field);
    }

    /// A value of the wrong type in any known field is a 400 naming exactly that field.
    #[test]
    fn generic_wrong_types_name_the_field(
        job in generic_job(),
        standup in generic_standup(),
        which in any::<Index>(),
        wrong in prop_oneof![Just(json!(true)), Just(json!({"a": 1})), Just(json!([[1]]))],
    ) {
        const JOB: &[&str] = &["job", "pipeline", "status", "phase", "project", "run_id", "branch",
            "commit", "commit_message", "url", "actor", "actor_email", "started_at",
            "finished_at", "duration_secs", "summary"];
        const STANDUP: &[&str] = &["user", "userid", "date", "done", "todo", "blockers", "notes"];
        for (mut body, fields) in [(job.to_json(), JOB), (standup.to_json(), STANDUP)] {
            let field = *which.get(fields);
            body.insert(field.to_owned(), wrong.clone());
            let bytes = serde_json::to_vec(&body).expect("json");
            let e = generic::parse(&bytes).expect_err("a wrong type was accepted");
            // A list item is named with its index (`done[0]`).
            let named = e.field.as_deref().is_some_and(|f| f == field || f.starts_with(&format!("{field}[")));
            prop_assert!(named, "{field}: {e:?}");
        }
    }

    /// Any text in any event field renders through every route without a panic or a render
    /// error, and no content is longer than DingTalk's limit.
    #[test]
    fn mapping_renders_any_event_within_the_limit(
        event in prop_oneof![job_event(), standup_event()],
        at in any_time(),
    ) {
        for route in ["builtin", "actor", "custom"] {
            match MAPPER.map(route, &event, at) {
                Ok(Mapped::Report { draft, truncated }) => {
                    for content in &draft.contents {
                        let units = content_len(&content.content);
                        prop_assert!(
                            units <= MAX_CONTENT_CHARS,
                            "{route}.{}: {units} UTF-16 units",
                            content.field
                        );
                        prop_assert!(!content.content.is_empty());
                    }
                    for field in &truncated {
                        prop_assert!(draft.contents.iter().any(|c| &c.field == field));
                    }
                }
                Ok(Mapped::Ignored { reason, .. }) => prop_assert!(!reason.is_empty()),
                Err(e) => prop_assert!(false, "{route}: {e}"),
            }
        }
    }

    /// Truncation keeps at most 1000 UTF-16 units, ends a cut text with the marker, and what
    /// it keeps is a prefix of the input ending on a grapheme boundary (so no character or
    /// cluster is ever split).
    #[test]
    fn truncate_respects_the_limit(
        content in prop_oneof![
            any::<String>(),
            prop::collection::vec(any::<char>(), 990..1010).prop_map(|c| c.into_iter().collect::<String>()),
            ("\\PC", 0usize..1500).prop_map(|(c, n)| c.repeat(n)),
            (0usize..1200, "[ \t\n]{0,30}", any::<char>()).prop_map(|(n, ws, c)| format!("{}{ws}{c}", "日".repeat(n))),
        ]
    ) {
        use unicode_segmentation::UnicodeSegmentation;
        let (out, cut) = truncate(&content);
        let units = content_len(&out);
        prop_assert!(units <= MAX_CONTENT_CHARS, "{units}");
        if cut {
            prop_assert!(content_len(&content) > MAX_CONTENT_CHARS);
            let kept = out.strip_suffix(TRUNCATION_MARKER).expect("marker at the end");
            prop_assert!(content.starts_with(kept));
            // On a grapheme boundary, unless trailing blanks were dropped after the cut.
            let on_boundary = kept.is_empty()
                || content.grapheme_indices(true).any(|(i, _)| i == kept.len());
            prop_assert!(on_boundary || content[kept.len()..].starts_with(char::is_whitespace));
        } else {
            prop_assert_eq!(&out, &content);
            prop_assert!(content_len(&content) <= MAX_CONTENT_CHARS);
        }
    }

    /// Arbitrary YAML-ish text never panics the loader.
    #[test]
    fn config_loader_takes_arbitrary_text(
        yaml in prop_oneof![
            "\\PC{0,200}",
            "[a-z_:{}\\[\\],\"' \n\t#&*!|>%@`.0-9-]{0,200}",
            prop::collection::vec(select(&["server:", "routes:", "  ", "\n", "- ", "a: ", "{", "}", "[", "]", "&x ", "*x", "<<: *x", "!!map ", "? ", "'", "\"", "#", "---\n", "...\n", "|\n", ">-\n", "%YAML 1.2\n", "\t", "~", "1e9"][..]), 0..60)
                .prop_map(|parts| parts.concat()),
        ]
    ) {
        check_settings(&yaml);
    }

    /// Settings-shaped YAML with every key present, absent or of any value: loading, `issues`
    /// in every mode, and compiling the mapper never panic.
    #[test]
    fn config_issues_never_panic(yaml in settings_yaml(false)) {
        check_settings(&yaml);
    }

    /// The same with durations past `u64::MAX / 4` seconds (all of them load).
    #[test]
    fn config_issues_never_panic_on_huge_durations(yaml in settings_yaml(true)) {
        check_settings(&yaml);
    }
}

/// The tame half of the generated settings documents always loads, so `config_issues_never_panic`
/// really exercises `issues` and `Mapper::new`, not just the loader's errors.
#[test]
fn settings_generator_loads() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = settings_doc(false, false);
    for _ in 0..200 {
        let yaml = strategy.new_tree(&mut runner).expect("value").current();
        if let Err(e) = Settings::from_yaml(&yaml) {
            panic!("{e}\n{yaml}");
        }
    }
}

/// The minimised input of `config_issues_never_panic_on_huge_durations`: a timeout that loads
/// but whose fourfold overflows `Duration`.
#[test]
fn config_huge_dingtalk_timeout() {
    check_settings(
        "server: {listen: \"127.0.0.1:8080\", admin_listen: \"127.0.0.1:8081\"}\n\
         dingtalk: {timeout: \"4611686018427387904s\"}\n\
         store: {url: \"memory:\"}\n\
         delivery: {}\n",
    );
}

/// The seeds are there and every unmutated one parses (so the mutation property starts from
/// payloads the parsers accept).
#[test]
fn seeds_parse() {
    assert!(SEEDS.len() >= 11, "{}", SEEDS.len());
    for seed in SEEDS.iter() {
        let body = serde_json::to_vec(&seed.body).expect("json");
        let pairs: Vec<(&str, &str)> = seed
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let h = headers(&pairs);
        let parsed = sources::parse(seed.kind, &request(&h, &body));
        assert!(
            parsed.is_ok(),
            "{} ({:?}): {parsed:?}",
            seed.name,
            seed.kind
        );
    }
}

/// The custom route of the mapping property really shows every variable.
#[test]
fn mapper_fixture_renders_every_variable() {
    let event = Event::Standup(Standup {
        user: Some("octocat".to_owned()),
        done: vec!["a".to_owned()],
        ..Standup::default()
    });
    match MAPPER.map("custom", &event, now()) {
        Ok(Mapped::Report { draft, .. }) => {
            assert!(draft.contents.iter().any(|c| c.field == "all"), "{draft:?}");
        }
        other => panic!("{other:?}"),
    }
}

proptest! {
    // A digest renders a whole period (many renders to find what fits), so fewer cases.
    #![proptest_config(ProptestConfig { cases: (config().cases / 8).max(1), ..config() })]

    /// Any period of any events folds into digests without a panic or a render error, every
    /// content within DingTalk's limit and never cut with the per-event marker (digests drop
    /// whole lines instead).
    #[test]
    fn digests_fold_any_events_within_the_limit(
        events in prop::collection::vec((any_time(), prop_oneof![job_event(), standup_event()]), 0..30),
        end in any_time(),
    ) {
        let refs: Vec<(DateTime<Utc>, &Event)> = events.iter().map(|(t, e)| (*t, e)).collect();
        for route in ["digest_builtin", "digest_custom"] {
            let made = DIGEST_MAPPER.digest(route, "group", &refs, None, end);
            let report = match made {
                Ok(Some(report)) => report,
                Ok(None) => continue,
                Err(e) => return Err(TestCaseError::fail(format!("{route}: {e}"))),
            };
            prop_assert_eq!(report.events, events.len());
            for content in &report.draft.contents {
                let chars = content.content.chars().count();
                prop_assert!(chars <= MAX_CONTENT_CHARS, "{route}.{}: {chars} chars", content.field);
                prop_assert!(!content.content.contains(TRUNCATION_MARKER));
            }
        }
    }
}
