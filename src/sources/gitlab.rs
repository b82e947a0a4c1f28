//! GitLab CI (`source: gitlab`): Pipeline Hook and Job Hook webhooks (ci-webhooks §2).
//!
//! Authentication is the hook's secret token in `X-Gitlab-Token`, or a Standard Webhooks
//! signature (`webhook-signature`, GitLab 19 signing tokens); either one passing is enough, but a
//! signature that is present and wrong rejects the webhook whatever the token says. Other GitLab
//! events (Push Hook, System Hook…) are ignored. No I/O.
//!
//! The payload is read leniently ([`super::json`]): a missing field, a field of an unexpected
//! type or an unparseable time counts as absent, an unseen status is `unknown` with the raw value
//! kept, and only a body that is not a JSON object is a 400.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;

use super::auth::{self, AuthResult};
use super::json::{self, at, branch_name, first, first_time, normalise, seconds, text, time};
use super::{Event, JobStatus, Parsed, PayloadError, Request, Status, TIMESTAMP_WINDOW_SECS};
use crate::config::Secret;

/// Shown as the event's `source`.
const SOURCE_NAME: &str = "GitLab CI";

/// How many failed job names a pipeline summary lists before "…".
const MAX_FAILED_NAMES: usize = 3;

/// Which of the two reported hooks a webhook is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pipeline,
    Job,
}

/// Checks `X-Gitlab-Token` (constant time) and/or the Standard Webhooks signature.
pub fn verify(secret: &Secret, request: &Request<'_>) -> AuthResult {
    let headers = request.headers;
    if let Some(signature) = auth::header(headers, "webhook-signature") {
        // A signature that is sent is always checked: a forged one is never rescued by a token.
        return verify_standard_webhooks(secret, request, signature);
    }
    match auth::header(headers, "x-gitlab-token") {
        Some(token) if auth::ct_eq(token.as_bytes(), secret.expose().as_bytes()) => Ok(()),
        Some(_) => Err("wrong X-Gitlab-Token".to_owned()),
        None => Err(
            "missing credentials: set the webhook's secret token (sent as X-Gitlab-Token) or a signing token (webhook-signature)"
                .to_owned(),
        ),
    }
}

/// Standard Webhooks: `webhook-signature` lists `v1,<base64 HMAC-SHA256>` entries (space-separated
/// during key rotation) over `"{webhook-id}.{webhook-timestamp}.{raw body}"`.
fn verify_standard_webhooks(secret: &Secret, request: &Request<'_>, signature: &str) -> AuthResult {
    let headers = request.headers;
    let id = auth::header(headers, "webhook-id")
        .filter(|id| !id.is_empty())
        .ok_or("webhook-signature without webhook-id")?;
    let timestamp = auth::header(headers, "webhook-timestamp")
        .ok_or("webhook-signature without webhook-timestamp")?;
    let seconds: i64 = timestamp
        .parse()
        .map_err(|_| "webhook-timestamp is not a number of Unix seconds".to_owned())?;
    if request.now.timestamp().abs_diff(seconds) > TIMESTAMP_WINDOW_SECS.unsigned_abs() {
        return Err(format!(
            "webhook-timestamp is more than {} minutes from the relay's clock",
            TIMESTAMP_WINDOW_SECS / 60
        ));
    }
    let key = signing_key(secret)?;
    let mut message = Vec::with_capacity(id.len() + timestamp.len() + request.body.len() + 2);
    message.extend_from_slice(id.as_bytes());
    message.push(b'.');
    message.extend_from_slice(timestamp.as_bytes());
    message.push(b'.');
    message.extend_from_slice(request.body);
    let expected = auth::hmac_sha256(&key, &message);
    let matched = signature
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(base64_decode)
        .any(|given| auth::ct_eq(&expected, &given));
    if matched {
        Ok(())
    } else {
        Err("wrong webhook-signature".to_owned())
    }
}

/// The HMAC key: a `whsec_` signing token is base64 after its prefix (Standard Webhooks); any
/// other secret is used as it is.
fn signing_key(secret: &Secret) -> Result<Vec<u8>, String> {
    let secret = secret.expose();
    match secret.strip_prefix("whsec_") {
        Some(encoded) => base64_decode(encoded).ok_or_else(|| {
            "the route's secret starts with whsec_ but the rest is not base64 (a GitLab signing token is whsec_ + base64)"
                .to_owned()
        }),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

fn base64_decode(encoded: &str) -> Option<Vec<u8>> {
    BASE64.decode(encoded.trim()).ok()
}

/// `Idempotency-Key` (stable across GitLab's retries and "Resend request"), else `webhook-id`,
/// else a key from the body: project id, pipeline or job id, status and finish time.
pub fn delivery_id(request: &Request<'_>) -> Option<String> {
    let headers = request.headers;
    if let Some(id) = auth::header(headers, "idempotency-key").filter(|id| !id.is_empty()) {
        return Some(id.to_owned());
    }
    if let Some(id) = auth::header(headers, "webhook-id").filter(|id| !id.is_empty()) {
        return Some(id.to_owned());
    }
    let body: Value = serde_json::from_slice(request.body).ok()?;
    let (kind, id, status, finished) = match kind(request, &body)? {
        Kind::Pipeline => (
            "pipeline",
            text(&body, "/object_attributes/id")?,
            text(&body, "/object_attributes/status")?,
            text(&body, "/object_attributes/finished_at"),
        ),
        Kind::Job => (
            "job",
            text(&body, "/build_id")?,
            text(&body, "/build_status")?,
            text(&body, "/build_finished_at"),
        ),
    };
    let project = first(&body, &["/project/id", "/project_id"]).unwrap_or_default();
    // The finish time tells a re-run that ends the same way from a resend of the same event.
    let finished = finished.map(|f| format!(":{f}")).unwrap_or_default();
    Some(format!("gitlab:{project}:{kind}:{id}:{status}{finished}"))
}

/// Normalises a Pipeline Hook or Job Hook; other events are ignored.
pub fn parse(request: &Request<'_>) -> Result<Parsed, PayloadError> {
    if let Some(event) = auth::header(request.headers, "x-gitlab-event")
        && event_kind(event).is_none()
    {
        return Ok(Parsed::Ignored(format!(
            "GitLab event {event:?} is not reported (only Pipeline Hook and Job Hook)"
        )));
    }
    let body = json::object(request.body, None)?;
    let Some(kind) = kind(request, &body) else {
        let object_kind = text(&body, "/object_kind").unwrap_or_else(|| "none".to_owned());
        return Ok(Parsed::Ignored(format!(
            "GitLab object_kind {object_kind:?} is not reported (only pipeline and build)"
        )));
    };
    // What GitLab always sends with each hook: without it the event is nonsense, not news.
    let required: &[(&str, &str)] = match kind {
        Kind::Pipeline => &[
            ("/object_attributes", "object_attributes"),
            ("/object_attributes/status", "object_attributes.status"),
        ],
        Kind::Job => &[("/build_status", "build_status")],
    };
    for (pointer, field) in required {
        let present = match body.pointer(pointer) {
            Some(Value::Object(o)) => !o.is_empty(),
            Some(Value::String(s)) => !s.trim().is_empty(),
            Some(Value::Null) | None => false,
            Some(_) => true,
        };
        if !present {
            return Err(PayloadError::field(
                field,
                "missing field (GitLab always sends it with this hook)",
            ));
        }
    }
    let job = match kind {
        Kind::Pipeline => pipeline(&body),
        Kind::Job => job(&body),
    };
    Ok(Parsed::Event(Event::JobStatus(job)))
}

/// The hook named by `X-Gitlab-Event`, or by `object_kind` when the header is missing.
fn kind(request: &Request<'_>, body: &Value) -> Option<Kind> {
    match auth::header(request.headers, "x-gitlab-event") {
        Some(event) => event_kind(event),
        None => match text(body, "/object_kind")?.as_str() {
            "pipeline" => Some(Kind::Pipeline),
            "build" => Some(Kind::Job),
            _ => None,
        },
    }
}

fn event_kind(event: &str) -> Option<Kind> {
    if event.eq_ignore_ascii_case("Pipeline Hook") {
        Some(Kind::Pipeline)
    } else if event.eq_ignore_ascii_case("Job Hook") {
        Some(Kind::Job)
    } else {
        None
    }
}

fn pipeline(body: &Value) -> JobStatus {
    let (status, status_raw, phase) = normalise(text(body, "/object_attributes/status"), status);
    let id = text(body, "/object_attributes/id");
    let number = first(body, &["/object_attributes/iid", "/object_attributes/id"]);
    let web_url = text(body, "/project/web_url");
    let url = text(body, "/object_attributes/url").or_else(|| {
        Some(format!(
            "{}/-/pipelines/{}",
            web_url?.trim_end_matches('/'),
            id.as_deref()?
        ))
    });
    JobStatus {
        job: None,
        pipeline: text(body, "/object_attributes/name")
            .or_else(|| number.map(|n| format!("pipeline #{n}"))),
        status: Some(status),
        status_raw,
        source: Some(SOURCE_NAME.to_owned()),
        phase: Some(phase),
        project: project(body),
        run_id: id,
        branch: text(body, "/object_attributes/ref")
            .as_deref()
            .and_then(branch_name),
        commit: first(body, &["/object_attributes/sha", "/commit/id"]),
        commit_message: commit_message(body),
        url,
        actor: actor(body),
        actor_email: actor_email(body),
        started_at: first_time(
            body,
            &[
                "/object_attributes/started_at",
                "/object_attributes/created_at",
            ],
        ),
        finished_at: time(body, "/object_attributes/finished_at"),
        duration_secs: seconds(body, "/object_attributes/duration"),
        summary: at(body, "/builds")
            .and_then(Value::as_array)
            .and_then(|builds| jobs_summary(builds)),
    }
}

fn job(body: &Value) -> JobStatus {
    let (status, status_raw, phase) = normalise(text(body, "/build_status"), status);
    let build_id = text(body, "/build_id");
    let web_url = first(body, &["/project/web_url", "/repository/homepage"]);
    let url = first(body, &["/build_url", "/url"]).or_else(|| {
        Some(format!(
            "{}/-/jobs/{}",
            web_url?.trim_end_matches('/'),
            build_id.as_deref()?
        ))
    });
    let summary = (status == Status::Failure)
        .then(|| {
            let reason = text(body, "/build_failure_reason")?;
            let allowed = at(body, "/build_allow_failure").and_then(Value::as_bool) == Some(true);
            Some(if allowed {
                format!("failure reason: {reason} (allowed to fail)")
            } else {
                format!("failure reason: {reason}")
            })
        })
        .flatten();
    JobStatus {
        job: text(body, "/build_name"),
        pipeline: first(body, &["/pipeline/name", "/commit/name"])
            .or_else(|| text(body, "/pipeline_id").map(|id| format!("pipeline #{id}"))),
        status: Some(status),
        status_raw,
        source: Some(SOURCE_NAME.to_owned()),
        phase: Some(phase),
        project: project(body),
        run_id: build_id,
        branch: text(body, "/ref").as_deref().and_then(branch_name),
        commit: first(body, &["/sha", "/commit/sha"]),
        commit_message: commit_message(body),
        url,
        actor: actor(body),
        actor_email: actor_email(body),
        started_at: time(body, "/build_started_at"),
        finished_at: time(body, "/build_finished_at"),
        duration_secs: seconds(body, "/build_duration"),
        summary,
    }
}

/// GitLab's status enumeration (the same for pipelines and jobs), ci-webhooks §2 and §11.
fn status(raw: &str) -> Option<Status> {
    Some(match raw.to_ascii_lowercase().as_str() {
        "success" => Status::Success,
        "failed" => Status::Failure,
        "canceled" | "cancelled" => Status::Cancelled,
        "skipped" => Status::Skipped,
        // `canceling` is still running until its jobs have stopped.
        "running" | "canceling" => Status::Running,
        // Not started yet: queued, or blocked on a person (manual) or a clock (scheduled).
        "created"
        | "waiting_for_resource"
        | "preparing"
        | "waiting_for_callback"
        | "pending"
        | "manual"
        | "scheduled" => Status::Pending,
        _ => return None,
    })
}

/// `project.path_with_namespace`; for older Job Hooks the path of `repository.homepage`, else the
/// human `project_name`.
fn project(body: &Value) -> Option<String> {
    text(body, "/project/path_with_namespace")
        .or_else(|| {
            let homepage = text(body, "/repository/homepage")?;
            let rest = homepage
                .split_once("://")
                .map_or(homepage.as_str(), |(_, r)| r);
            let path = rest.split_once('/')?.1.trim_matches('/');
            (!path.is_empty()).then(|| path.to_owned())
        })
        .or_else(|| text(body, "/project_name"))
}

fn commit_message(body: &Value) -> Option<String> {
    first(body, &["/commit/message", "/commit/title"])
}

/// The triggering user's login; older Job Hooks carry only the display name.
fn actor(body: &Value) -> Option<String> {
    first(body, &["/user/username", "/user/name"])
}

/// GitLab sends `"[REDACTED]"` for an e-mail the user keeps private.
fn actor_email(body: &Value) -> Option<String> {
    text(body, "/user/email").filter(|e| e.contains('@'))
}

/// "5 jobs: 3 passed, 1 failed (lint), 1 skipped" from a Pipeline Hook's `builds[]`.
fn jobs_summary(builds: &[Value]) -> Option<String> {
    // Shown in this order; anything else follows alphabetically.
    const ORDER: &[&str] = &[
        "success",
        "failed",
        "canceled",
        "canceling",
        "running",
        "pending",
        "preparing",
        "waiting_for_resource",
        "waiting_for_callback",
        "created",
        "scheduled",
        "manual",
        "skipped",
    ];
    if builds.is_empty() {
        return None;
    }
    let mut counts: Vec<(String, usize)> = Vec::new();
    let mut failed = Vec::new();
    for build in builds {
        let status = text(build, "/status").unwrap_or_else(|| "unknown".to_owned());
        if status == "failed"
            && let Some(name) = text(build, "/name")
        {
            failed.push(name);
        }
        match counts.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => counts.push((status, 1)),
        }
    }
    counts.sort_by_key(|(status, _)| {
        let rank = ORDER
            .iter()
            .position(|o| o == status)
            .unwrap_or(ORDER.len());
        (rank, status.clone())
    });
    let parts: Vec<String> = counts
        .iter()
        .map(|(status, n)| match status.as_str() {
            "success" => format!("{n} passed"),
            "failed" if !failed.is_empty() => {
                let mut names = failed
                    .iter()
                    .take(MAX_FAILED_NAMES)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ");
                if failed.len() > MAX_FAILED_NAMES {
                    names.push_str(", …");
                }
                format!("{n} failed ({names})")
            }
            other => format!("{n} {other}"),
        })
        .collect();
    let total = builds.len();
    let noun = if total == 1 { "job" } else { "jobs" };
    Some(format!("{total} {noun}: {}", parts.join(", ")))
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::sources::Phase;
    use crate::sources::testing::{self, headers, hmac_base64, request, utc};

    const PIPELINE_JSON: &str = testing::corpus!("gitlab", "pipeline.json");
    const PIPELINE_EVENT_JSON: &str = testing::corpus!("gitlab", "pipeline-event.json");
    const JOB_JSON: &str = testing::corpus!("gitlab", "job.json");
    const JOB_EVENT_JSON: &str = testing::corpus!("gitlab", "job-event.json");
    const BUILD_JSON: &str = testing::corpus!("gitlab", "build.json");

    const PIPELINE: &[(&str, &str)] = &[
        ("x-gitlab-event", "Pipeline Hook"),
        ("x-gitlab-token", "s3cret"),
        ("idempotency-key", "0c5f3c54-9d3b-4c2e-8a57-0f2f3d5b6a71"),
        ("x-gitlab-instance", "https://gitlab.example.com"),
        ("content-type", "application/json"),
    ];
    const JOB: &[(&str, &str)] = &[
        ("x-gitlab-event", "Job Hook"),
        ("x-gitlab-token", "s3cret"),
        ("content-type", "application/json"),
    ];

    fn now() -> DateTime<Utc> {
        utc("2026-11-24T08:00:00Z").expect("now")
    }

    fn parse_with(pairs: &[(&str, &str)], body: &[u8]) -> Parsed {
        let headers = headers(pairs);
        parse(&request(&headers, body, now())).unwrap_or_else(|e| panic!("{e}"))
    }

    fn job_status(pairs: &[(&str, &str)], body: &str) -> JobStatus {
        match parse_with(pairs, body.as_bytes()) {
            Parsed::Event(Event::JobStatus(j)) => j,
            other => panic!("not a job_status: {other:?}"),
        }
    }

    #[test]
    fn corpus_pipeline_hooks_are_normalised() {
        let j = job_status(PIPELINE, PIPELINE_JSON);
        assert_eq!(j.pipeline.as_deref(), Some("pipeline #123"), "no name: iid");
        assert_eq!(j.job, None);
        assert_eq!(j.status, Some(Status::Success));
        assert_eq!(j.status_raw.as_deref(), Some("success"));
        assert_eq!(j.phase, Some(Phase::Completed));
        assert_eq!(j.source.as_deref(), Some("GitLab CI"));
        assert_eq!(j.project.as_deref(), Some("gitlab-org/gitlab-test"));
        assert_eq!(j.run_id.as_deref(), Some("31"));
        assert_eq!(j.branch.as_deref(), Some("master"));
        assert_eq!(
            j.commit.as_deref(),
            Some("bcbb5ec396a2c0f828686f14fac9b80b780504f2")
        );
        assert_eq!(j.commit_message.as_deref(), Some("test"));
        assert_eq!(
            j.url.as_deref(),
            Some("http://192.168.64.1:3005/gitlab-org/gitlab-test/-/pipelines/31"),
            "built from project.web_url when object_attributes.url is absent"
        );
        assert_eq!(j.actor.as_deref(), Some("user1"));
        assert_eq!(j.actor_email.as_deref(), Some("user1@example.com"));
        assert_eq!(j.started_at, utc("2016-08-12T15:23:28Z"));
        assert_eq!(j.finished_at, utc("2016-08-12T15:26:29Z"));
        assert_eq!(j.duration_secs, Some(63));
        assert_eq!(
            j.summary.as_deref(),
            Some("5 jobs: 3 passed, 1 created, 1 skipped")
        );

        let j = job_status(PIPELINE, PIPELINE_EVENT_JSON);
        assert_eq!(j.pipeline.as_deref(), Some("pipeline_name"));
        assert_eq!(j.status, Some(Status::Success));
        assert_eq!(
            j.url.as_deref(),
            Some("http://192.168.64.1:3005/gitlab-org/gitlab-test/-/pipelines/31"),
            "object_attributes.url"
        );
        assert_eq!(j.actor.as_deref(), Some("root"));
        assert_eq!(j.actor_email.as_deref(), Some("user_email@gitlab.com"));
        assert_eq!(j.duration_secs, Some(63));
    }

    #[test]
    fn corpus_job_hook_is_normalised() {
        let j = job_status(JOB, JOB_JSON);
        assert_eq!(j.job.as_deref(), Some("auto_deploy:start"));
        assert_eq!(j.pipeline.as_deref(), Some("Build pipeline"), "commit.name");
        assert_eq!(j.status, Some(Status::Success));
        assert_eq!(j.status_raw.as_deref(), Some("success"));
        assert_eq!(j.phase, Some(Phase::Completed));
        assert_eq!(j.run_id.as_deref(), Some("3580121225"));
        assert_eq!(j.project.as_deref(), Some("jsmithy2/release-tools-fake"));
        assert_eq!(j.branch.as_deref(), Some("main"));
        assert_eq!(
            j.commit.as_deref(),
            Some("95d49d1efbd941908580e79d65e4b5ecaf4a8305")
        );
        assert_eq!(
            j.commit_message.as_deref(),
            Some("Remove test jobs and add back other jobs")
        );
        assert_eq!(
            j.url.as_deref(),
            Some("https://gitlab.com/jsmithy2/release-tools-fake/-/jobs/3580121225")
        );
        assert_eq!(j.actor.as_deref(), Some("jsmithy2"));
        assert_eq!(j.actor_email.as_deref(), Some("john@smith.com"));
        assert_eq!(j.started_at, utc("2023-01-10T13:50:05Z"));
        assert_eq!(j.finished_at, utc("2023-01-10T13:50:54Z"));
        assert_eq!(j.duration_secs, Some(50), "49.5 s rounded");
        assert_eq!(j.summary, None);
    }

    #[test]
    fn corpus_created_jobs_are_queued() {
        // (file, headers, actor): build.json with the header, job-event.json without it (the
        // kind then comes from object_kind) and without user.username.
        let cases: &[(&str, &[(&str, &str)], &str)] =
            &[(BUILD_JSON, JOB, "user1"), (JOB_EVENT_JSON, &[], "User")];
        for (body, pairs, actor) in cases {
            let j = job_status(pairs, body);
            assert_eq!(j.status, Some(Status::Pending), "{actor}");
            assert_eq!(j.status_raw.as_deref(), Some("created"));
            assert_eq!(j.phase, Some(Phase::Queued));
            assert_eq!(j.job.as_deref(), Some("test"));
            assert_eq!(j.pipeline.as_deref(), Some("pipeline #2366"));
            assert_eq!(j.project.as_deref(), Some("gitlab-org/gitlab-test"));
            assert_eq!(j.branch.as_deref(), Some("gitlab-script-trigger"));
            assert_eq!(
                j.commit.as_deref(),
                Some("2293ada6b400935a1378653304eaf6221e0fdb8f")
            );
            assert_eq!(
                j.url.as_deref(),
                Some("http://192.168.64.1:3005/gitlab-org/gitlab-test/-/jobs/1977")
            );
            assert_eq!(j.actor.as_deref(), Some(*actor));
            assert_eq!(j.started_at, None, "build_started_at is null");
            assert_eq!(j.duration_secs, None);
            assert_eq!(j.summary, None, "a created job has no failure reason");
        }
    }

    #[test]
    fn statuses_follow_the_gitlab_enumeration() {
        let cases: &[(&str, Status, Phase)] = &[
            ("success", Status::Success, Phase::Completed),
            ("failed", Status::Failure, Phase::Completed),
            ("canceled", Status::Cancelled, Phase::Completed),
            ("skipped", Status::Skipped, Phase::Completed),
            ("running", Status::Running, Phase::InProgress),
            ("canceling", Status::Running, Phase::InProgress),
            ("pending", Status::Pending, Phase::Queued),
            ("created", Status::Pending, Phase::Queued),
            ("waiting_for_resource", Status::Pending, Phase::Queued),
            ("preparing", Status::Pending, Phase::Queued),
            ("waiting_for_callback", Status::Pending, Phase::Queued),
            ("manual", Status::Pending, Phase::Queued),
            ("scheduled", Status::Pending, Phase::Queued),
            ("brand_new_state", Status::Unknown, Phase::Completed),
        ];
        for (raw, expected, phase) in cases {
            let pipeline = format!(
                r#"{{"object_kind":"pipeline","object_attributes":{{"id":1,"status":"{raw}"}}}}"#
            );
            let job = format!(r#"{{"object_kind":"build","build_id":1,"build_status":"{raw}"}}"#);
            for (pairs, body) in [(PIPELINE, pipeline), (JOB, job)] {
                let j = job_status(pairs, &body);
                assert_eq!(j.status.as_ref(), Some(expected), "{raw}");
                assert_eq!(j.status_raw.as_deref(), Some(*raw), "{raw}");
                assert_eq!(j.phase, Some(*phase), "{raw}");
            }
        }
    }

    #[test]
    fn pipeline_details() {
        let body = r#"{"object_kind":"pipeline",
            "object_attributes":{"id":7,"status":"failed","ref":"refs/heads/feat/x","name":"",
              "url":"https://gl.example/g/p/-/pipelines/7","created_at":"2026-11-24T08:00:00Z",
              "finished_at":"2026-11-24T08:03:12.5Z","duration":192.4},
            "user":{"username":"octocat","email":"[REDACTED]"},
            "project":{"id":9,"web_url":"https://gl.example/g/p/"},
            "builds":[{"name":"lint","status":"failed"},{"name":"unit","status":"success"},
                      {"name":"e2e","status":"failed"},{"name":"doc","status":"success"}]}"#;
        let j = job_status(PIPELINE, body);
        assert_eq!(
            j.pipeline.as_deref(),
            Some("pipeline #7"),
            "empty name, no iid"
        );
        assert_eq!(j.branch.as_deref(), Some("feat/x"));
        assert_eq!(
            j.url.as_deref(),
            Some("https://gl.example/g/p/-/pipelines/7")
        );
        assert_eq!(j.actor_email, None, "[REDACTED] is absent");
        assert_eq!(j.started_at, utc("2026-11-24T08:00:00Z"));
        assert_eq!(j.finished_at, utc("2026-11-24T08:03:12.5Z"));
        assert_eq!(j.duration_secs, Some(192));
        assert_eq!(
            j.summary.as_deref(),
            Some("4 jobs: 2 passed, 2 failed (lint, e2e)")
        );
    }

    #[test]
    fn summary_lists_at_most_three_failed_jobs() {
        let builds: Vec<Value> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| serde_json::json!({"name": n, "status": "failed"}))
            .chain([serde_json::json!({"name": "x", "status": "weird"})])
            .collect();
        assert_eq!(
            jobs_summary(&builds).as_deref(),
            Some("5 jobs: 4 failed (a, b, c, …), 1 weird")
        );
        assert_eq!(
            jobs_summary(&[serde_json::json!({"name": "a", "status": "success"})]).as_deref(),
            Some("1 job: 1 passed")
        );
        assert_eq!(jobs_summary(&[]), None);
    }

    #[test]
    fn failed_job_summary_and_time_formats() {
        let body = r#"{"object_kind":"build","build_id":5,"build_name":"lint","build_status":"failed",
            "build_failure_reason":"script_failure","build_allow_failure":true,"pipeline_id":4,
            "project":{"web_url":"https://gl.example/g/p","path_with_namespace":"g/p"},
            "build_started_at":"2026-11-24 08:00:00 UTC","build_finished_at":"2026-11-24 08:00:30 +0800"}"#;
        let j = job_status(JOB, body);
        assert_eq!(
            j.summary.as_deref(),
            Some("failure reason: script_failure (allowed to fail)")
        );
        assert_eq!(j.pipeline.as_deref(), Some("pipeline #4"));
        assert_eq!(j.url.as_deref(), Some("https://gl.example/g/p/-/jobs/5"));
        assert_eq!(j.project.as_deref(), Some("g/p"));
        assert_eq!(j.started_at, utc("2026-11-24T08:00:00Z"));
        assert_eq!(j.finished_at, utc("2026-11-24T00:00:30Z"));
    }

    #[test]
    fn long_and_non_ascii_commit_messages_are_kept() {
        let long = "修复：登录页 🚀 emoji and 中文 ".repeat(500);
        let body = serde_json::json!({
            "object_kind": "pipeline",
            "object_attributes": {"id": 1, "status": "success", "name": "发布流水线 🚢"},
            "commit": {"message": long},
            "user": {"username": "张三"},
        })
        .to_string();
        let j = job_status(PIPELINE, &body);
        assert_eq!(j.commit_message.as_deref(), Some(long.trim()));
        assert_eq!(j.pipeline.as_deref(), Some("发布流水线 🚢"));
        assert_eq!(j.actor.as_deref(), Some("张三"));
    }

    #[test]
    fn missing_and_wrong_typed_fields_are_absent() {
        let cases: &[(&str, &str)] = &[(
            "wrong types everywhere",
            r#"{"object_kind":"pipeline","object_attributes":{"status":[7],"id":[1],
                "created_at":"yesterday","duration":-4,"ref":true,"name":7.5},"user":["x"],
                "builds":"none","project":3,"commit":null}"#,
        )];
        for (label, body) in cases {
            let j = job_status(PIPELINE, body);
            assert_eq!(j.status, Some(Status::Unknown), "{label}");
            assert_eq!(j.status_raw, None, "{label}");
            assert_eq!(j.phase, Some(Phase::Completed), "{label}");
            assert_eq!(j.run_id, None, "{label}");
            assert_eq!(j.started_at, None, "{label}");
            assert_eq!(j.duration_secs, None, "{label}");
            assert_eq!(j.branch, None, "{label}");
            assert_eq!(j.actor, None, "{label}");
            assert_eq!(j.summary, None, "{label}");
            assert_eq!(j.url, None, "{label}");
            assert_eq!(j.project, None, "{label}");
        }
    }

    #[test]
    fn a_hook_without_what_gitlab_always_sends_names_the_field() {
        let cases: &[(&[(&str, &str)], &str, &str)] = &[
            (PIPELINE, "{}", "object_attributes"),
            (
                PIPELINE,
                r#"{"object_kind":"pipeline"}"#,
                "object_attributes",
            ),
            (
                PIPELINE,
                r#"{"object_kind":"pipeline","object_attributes":{}}"#,
                "object_attributes",
            ),
            (
                PIPELINE,
                r#"{"object_kind":"pipeline","object_attributes":{"id":1,"status":" "}}"#,
                "object_attributes.status",
            ),
            (JOB, r#"{"object_kind":"build"}"#, "build_status"),
        ];
        for (pairs, body, field) in cases {
            let headers = headers(pairs);
            let err = parse(&request(&headers, body.as_bytes(), now())).expect_err(body);
            assert_eq!(err.field.as_deref(), Some(*field), "{body}");
            assert!(err.message.starts_with(field), "{err}");
        }
    }

    #[test]
    fn other_events_are_ignored() {
        let cases: &[(&[(&str, &str)], &[u8])] = &[
            (
                &[("x-gitlab-event", "Push Hook")],
                br#"{"object_kind":"push"}"#,
            ),
            (
                &[("x-gitlab-event", "System Hook")],
                br#"{"object_kind":"pipeline"}"#,
            ),
            (&[("x-gitlab-event", "Deployment Hook")], b"not even json"),
            (&[("x-gitlab-event", "Brand New Hook")], b"{}"),
            (&[], br#"{"object_kind":"merge_request"}"#),
            (&[], br#"{"no_kind":true}"#),
        ];
        for (pairs, body) in cases {
            match parse_with(pairs, body) {
                Parsed::Ignored(reason) => assert!(reason.contains("not reported"), "{reason}"),
                other => panic!("{pairs:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn bodies_that_are_not_json_objects_are_rejected() {
        let bodies: [&[u8]; 5] = [b"{", b"[]", b"\"pipeline\"", b"", &[0xff, 0xfe]];
        for body in bodies {
            let headers = headers(PIPELINE);
            let err = parse(&request(&headers, body, now())).expect_err("not an object");
            assert_eq!(err.field, None);
            assert!(err.message.starts_with("body is not valid JSON: "), "{err}");
        }
    }

    fn verify_with(
        secret: &str,
        pairs: &[(&str, &str)],
        body: &[u8],
        now: DateTime<Utc>,
    ) -> AuthResult {
        let headers = headers(pairs);
        verify(&Secret::new(secret), &request(&headers, body, now))
    }

    #[test]
    fn token_is_compared_with_the_secret() {
        assert_eq!(
            verify_with("s3cret", &[("x-gitlab-token", "s3cret")], b"{}", now()),
            Ok(())
        );
        let wrong = verify_with("s3cret", &[("x-gitlab-token", "s3cre")], b"{}", now());
        assert_eq!(wrong, Err("wrong X-Gitlab-Token".to_owned()));
        let missing = verify_with("s3cret", &[], b"{}", now()).unwrap_err();
        assert!(missing.starts_with("missing credentials"), "{missing}");
        assert!(!missing.contains("s3cret"));
    }

    /// The Standard Webhooks specification's published test vector.
    const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SW_TS: &str = "1614265330";
    const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn sw_now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_614_265_330 + 120, 0).expect("time")
    }

    #[test]
    fn standard_webhooks_published_vector() {
        let check = |sig: &str| {
            verify_with(
                SW_SECRET,
                &[
                    ("webhook-id", SW_ID),
                    ("webhook-timestamp", SW_TS),
                    ("webhook-signature", sig),
                ],
                SW_BODY,
                sw_now(),
            )
        };
        assert_eq!(check(SW_SIG), Ok(()));
        // During rotation several signatures are listed; one match is enough.
        assert_eq!(check(&format!("v1,bm90IGl0 v1a,xyz {SW_SIG}")), Ok(()));
        let wrong = Err("wrong webhook-signature".to_owned());
        assert_eq!(
            check("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="),
            wrong
        );
        assert_eq!(
            check("v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
            wrong
        );
        assert_eq!(check("v1,not base64!"), wrong);
    }

    #[test]
    fn standard_webhooks_rejections() {
        let base = [
            ("webhook-id", SW_ID),
            ("webhook-timestamp", SW_TS),
            ("webhook-signature", SW_SIG),
        ];
        // A tampered body.
        assert!(verify_with(SW_SECRET, &base, br#"{"test": 2432232315}"#, sw_now()).is_err());
        // Stale or future timestamps, outside the five-minute window either way.
        for offset in [-301, 301, 86_400] {
            let now = DateTime::from_timestamp(1_614_265_330 + offset, 0).expect("time");
            let err = verify_with(SW_SECRET, &base, SW_BODY, now).unwrap_err();
            assert!(err.contains("5 minutes"), "{err}");
        }
        for offset in [-300, 300] {
            let now = DateTime::from_timestamp(1_614_265_330 + offset, 0).expect("time");
            assert_eq!(
                verify_with(SW_SECRET, &base, SW_BODY, now),
                Ok(()),
                "{offset}"
            );
        }
        // A right token does not rescue a wrong signature.
        let mut pairs = base.to_vec();
        pairs[2] = ("webhook-signature", "v1,AAAA");
        pairs.push(("x-gitlab-token", SW_SECRET));
        assert!(verify_with(SW_SECRET, &pairs, SW_BODY, sw_now()).is_err());
        // Missing companions.
        assert!(verify_with(SW_SECRET, &base[1..], SW_BODY, sw_now()).is_err());
        assert!(verify_with(SW_SECRET, &[base[0], base[2]], SW_BODY, sw_now()).is_err());
        let mut pairs = base.to_vec();
        pairs[1] = ("webhook-timestamp", "soon");
        assert!(verify_with(SW_SECRET, &pairs, SW_BODY, sw_now()).is_err());
        // A whsec_ secret that is not base64 is named, not leaked.
        let err = verify_with("whsec_@@@", &base, SW_BODY, sw_now()).unwrap_err();
        assert!(err.contains("not base64") && !err.contains("@@@"), "{err}");
    }

    #[test]
    fn standard_webhooks_with_a_plain_secret_and_a_wrong_token() {
        // Either scheme is enough: a right signature passes even next to a wrong token.
        let body = br#"{"object_kind":"pipeline"}"#;
        // Computed independently (Python hmac/base64) for this secret, id, timestamp and body…
        let expected = "WSrhQkQmQRUahrPTxefjsQhtDjKvTZLd7BMfKFhVreQ=";
        // …and again here with the hmac crate directly.
        let message = [&b"msg_1.1614265330."[..], body].concat();
        assert_eq!(hmac_base64("plain-secret", &message), expected);
        let sig = format!("v1,{expected}");
        let pairs = [
            ("webhook-id", "msg_1"),
            ("webhook-timestamp", "1614265330"),
            ("webhook-signature", sig.as_str()),
            ("x-gitlab-token", "something else"),
        ];
        assert_eq!(verify_with("plain-secret", &pairs, body, sw_now()), Ok(()));
    }

    #[test]
    fn delivery_ids() {
        let id = |pairs: &[(&str, &str)], body: &[u8]| {
            let headers = headers(pairs);
            delivery_id(&request(&headers, body, now()))
        };
        let pipeline = br#"{"object_kind":"pipeline","project":{"id":9},
            "object_attributes":{"id":31,"status":"success","finished_at":"2016-08-12 15:26:29 UTC"}}"#;
        assert_eq!(
            id(
                &[("idempotency-key", "k-1"), ("webhook-id", "w-1")],
                pipeline
            )
            .as_deref(),
            Some("k-1")
        );
        assert_eq!(
            id(&[("webhook-id", "w-1")], pipeline).as_deref(),
            Some("w-1")
        );
        assert_eq!(
            id(&[("x-gitlab-event-uuid", "not-a-delivery-id")], pipeline).as_deref(),
            Some("gitlab:9:pipeline:31:success:2016-08-12 15:26:29 UTC")
        );
        let job =
            br#"{"object_kind":"build","project_id":380,"build_id":1977,"build_status":"created"}"#;
        assert_eq!(id(JOB, job).as_deref(), Some("gitlab:380:job:1977:created"));
        assert_eq!(id(&[], b"not json"), None);
        assert_eq!(id(&[], br#"{"object_kind":"push"}"#), None);
    }
}
