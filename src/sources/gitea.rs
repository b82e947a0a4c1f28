//! Gitea and Forgejo webhooks (`source: gitea` / `source: forgejo`, ci-webhooks.md §4). One
//! module: the two send the same headers under their own prefix plus each other's, Gogs' and
//! GitHub's aliases, so a route of either flavor reads both and the flavor only decides which
//! header family is looked at first and the `source` shown ("Gitea Actions", "Forgejo Actions").
//!
//! Reported: Gitea's GitHub-compatible `workflow_run` / `workflow_job` (normalised by the
//! GitHub readers), Forgejo's `action_run_failure` / `_recover` / `_success` (a `run` object),
//! and Forgejo's `workflow_job_*` events (a `job` and a `run` object). Everything else (push,
//! the "Test Delivery" button, issues…) is ignored. Authentication: the hex HMAC-SHA256 of the
//! raw body in `X-Gitea-Signature` / `X-Forgejo-Signature` / `X-Gogs-Signature` or
//! `X-Hub-Signature-256: sha256=…`; when the hook has no secret (the signature headers come
//! empty), a fixed `Authorization` header equal to the route's secret (raw or `Bearer`).

use serde_json::Value;

use super::auth::{self, AuthResult};
use super::github::{self, Lifecycle};
use super::json::{self, string, text, time};
use super::{JobStatus, Parsed, PayloadError, Phase, Request, Status};
use crate::config::Secret;

/// Gitea or Forgejo (they differ in header names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Gitea.
    Gitea,
    /// Forgejo.
    Forgejo,
}

impl Flavor {
    /// The product name, as in its headers (`X-Gitea-…`).
    fn name(self) -> &'static str {
        match self {
            Self::Gitea => "Gitea",
            Self::Forgejo => "Forgejo",
        }
    }

    /// The `source` of its events.
    fn source(self) -> &'static str {
        match self {
            Self::Gitea => "Gitea Actions",
            Self::Forgejo => "Forgejo Actions",
        }
    }

    /// Header families, this flavor's own first; all carry the same values.
    fn families(self) -> [&'static str; 3] {
        match self {
            Self::Gitea => ["gitea", "forgejo", "gogs"],
            Self::Forgejo => ["forgejo", "gitea", "gogs"],
        }
    }
}

/// Checks a signature header, else the hook's fixed `Authorization` header. A signature that
/// is sent must match: the `Authorization` header counts only for hooks without a secret.
pub fn verify(secret: &Secret, request: &Request<'_>, flavor: Flavor) -> AuthResult {
    let headers = request.headers;
    let mut signed = false;
    for family in flavor.families() {
        if let Some(hex) = auth::present(headers, &format!("x-{family}-signature")) {
            signed = true;
            if auth::hmac_hex_matches(secret, request.body, hex) {
                return Ok(());
            }
        }
    }
    // Without a secret Gitea still sends the header, as a bare `sha256=`.
    if let Some(value) = auth::present(headers, "x-hub-signature-256").filter(|v| *v != "sha256=") {
        signed = true;
        if github::sha256_signature_matches(secret, request.body, value) {
            return Ok(());
        }
    }
    let name = flavor.name();
    if signed {
        return Err(format!(
            "wrong signature: X-{name}-Signature is not the HMAC-SHA256 of the body under this route's secret"
        ));
    }
    let expected = secret.expose().as_bytes();
    match auth::header(headers, "authorization") {
        Some(value)
            if auth::ct_eq(value.as_bytes(), expected)
                || auth::bearer(headers).is_some_and(|t| auth::ct_eq(t.as_bytes(), expected)) =>
        {
            Ok(())
        }
        Some(_) => Err("wrong secret in the Authorization header".to_owned()),
        None => Err(format!(
            "missing credentials: set the {name} webhook's secret (X-{name}-Signature) or its Authorization header to this route's secret"
        )),
    }
}

/// `X-Gitea-Delivery` / `X-Forgejo-Delivery` (a UUID per hook task; its aliases carry the same).
pub fn delivery_id(request: &Request<'_>, flavor: Flavor) -> Option<String> {
    first_header(request, flavor, "delivery").map(str::to_owned)
}

/// Normalises an Actions event named by `X-Gitea-Event` / `X-Forgejo-Event` (or an alias;
/// inferred from the body when no event header came).
pub fn parse(request: &Request<'_>, flavor: Flavor) -> Result<Parsed, PayloadError> {
    let root = json::object(request.body, None)?;
    let name = flavor.name();
    let event = first_header(request, flavor, "event")
        .or_else(|| first_header(request, flavor, "event-type"))
        .map(str::to_ascii_lowercase)
        .or_else(|| infer_event(&root).map(str::to_owned));
    let Some(event) = event else {
        return Ok(Parsed::Ignored(format!(
            "no X-{name}-Event header, and the body is not an Actions run or job payload"
        )));
    };
    let source = flavor.source();
    match event.as_str() {
        "workflow_run" => github::workflow_run(&root, source),
        e if e == "workflow_job" || e.starts_with("workflow_job_") => {
            if root.get("job").is_some_and(Value::is_object) {
                forgejo_job(&root, source)
            } else {
                github::workflow_job(&root, source)
            }
        }
        e if e.starts_with("action_run") => forgejo_run(&root, source),
        other => Ok(Parsed::Ignored(format!(
            "{name} event {other:?} is not reported (only workflow_run, workflow_job and action_run_* are)"
        ))),
    }
}

/// The first non-blank `X-<family>-<suffix>` header, this flavor's first, then GitHub's alias.
fn first_header<'a>(request: &Request<'a>, flavor: Flavor, suffix: &str) -> Option<&'a str> {
    flavor
        .families()
        .into_iter()
        .chain(["github"])
        .find_map(|family| auth::present(request.headers, &format!("x-{family}-{suffix}")))
}

/// The event a body is, by the objects it carries.
fn infer_event(root: &Value) -> Option<&'static str> {
    let has = |key: &str| root.get(key).is_some_and(Value::is_object);
    github::infer_event(root).or(match (has("job"), has("run")) {
        (true, _) => Some("workflow_job"),
        (false, true) => Some("action_run"),
        _ => None,
    })
}

/// Forgejo `action_run_failure` / `_recover` / `_success`: a run reached a final state. The
/// run's `status` says which (else the action does).
fn forgejo_run(root: &Value, source: &str) -> Result<Parsed, PayloadError> {
    let run = github::object(root, "run")?;
    let action = string(root, "/action");
    let status = string(run, "/status").or_else(|| match action.as_deref() {
        Some("recover") => Some("success".to_owned()),
        _ => action.clone(),
    });
    let mut job = from_forgejo_run(root, run, source, forgejo_state(status.as_deref()));
    if action.as_deref() == Some("recover") {
        job.summary = Some("recovered: the previous run had failed".to_owned());
    }
    Ok(github::report(job))
}

/// Forgejo `workflow_job_*`: a job (`job`) of a run (`run`) changed state.
fn forgejo_job(root: &Value, source: &str) -> Result<Parsed, PayloadError> {
    let job = github::object(root, "job")?;
    // serde_json indexing: Null when absent, never panics.
    let run = &root["run"];
    let base = from_forgejo_run(
        root,
        run,
        source,
        forgejo_state(string(job, "/status").as_deref()),
    );
    let name = string(job, "/name");
    let finished_at = if base.phase == Some(Phase::Completed) {
        time(job, "/stopped")
    } else {
        None
    };
    Ok(github::report(JobStatus {
        pipeline: base.pipeline.clone().or_else(|| name.clone()),
        job: name,
        run_id: base.run_id.clone().or_else(|| text(job, "/run_id")),
        commit: base.commit.clone().or_else(|| string(job, "/commit_sha")),
        url: string(job, "/html_url").or_else(|| base.url.clone()),
        started_at: time(job, "/started"),
        finished_at,
        ..base
    }))
}

/// What a Forgejo `run` object says (the `ActionRun` of its API).
fn from_forgejo_run(root: &Value, run: &Value, source: &str, state: Lifecycle) -> JobStatus {
    let actor = github::first_user(&[run.get("trigger_user"), root.get("sender")]);
    let index = text(run, "/index_in_repo");
    let finished_at = if state.phase == Phase::Completed {
        time(run, "/stopped")
    } else {
        None
    };
    JobStatus {
        pipeline: string(run, "/workflow_id")
            .map(|file| github::workflow_file(&file))
            .or_else(|| index.as_ref().map(|n| format!("run #{n}"))),
        source: Some(source.to_owned()),
        project: string(root, "/repository/full_name")
            .or_else(|| string(run, "/repository/full_name")),
        run_id: index.or_else(|| text(run, "/id")),
        branch: json::branch(run, "/prettyref"),
        commit: string(run, "/commit_sha"),
        commit_message: string(run, "/title"),
        url: string(run, "/html_url"),
        actor: actor.and_then(|u| string(u, "/login")),
        actor_email: actor.and_then(|u| string(u, "/email")),
        started_at: time(run, "/started"),
        finished_at,
        ..state.into_job()
    }
}

/// Forgejo's one-word run/job status (`success`, `failure`, `cancelled`, `skipped`, `waiting`,
/// `blocked`, `running`, `unknown`): final ones are judged like GitHub conclusions.
fn forgejo_state(status: Option<&str>) -> Lifecycle {
    match status.map(str::to_ascii_lowercase).as_deref() {
        Some("waiting" | "blocked") => Lifecycle::new(Status::Pending, Phase::Queued, status),
        Some("running") => Lifecycle::new(Status::Running, Phase::InProgress, status),
        Some(_) => github::concluded(status.unwrap_or_default()),
        None => Lifecycle::new(Status::Unknown, Phase::Completed, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::Event;
    use crate::sources::testing::{headers, hmac_hex, request, utc};
    use axum::http::HeaderMap;
    use chrono::Utc;
    use serde_json::json;

    /// What Gitea (1.24+) sends with a delivery: its own headers plus the Gogs and GitHub
    /// aliases; the signatures are empty because the test hooks have no secret.
    fn gitea_headers(event: &str) -> HeaderMap {
        let uuid = "6b3f2c1e-9a7d-4e21-b0c4-5d8e7f6a1b2c";
        headers(&[
            ("content-type", "application/json"),
            ("user-agent", "Go-http-client/1.1"),
            ("x-gitea-delivery", uuid),
            ("x-gitea-event", event),
            ("x-gitea-event-type", event),
            ("x-gitea-signature", ""),
            ("x-gogs-delivery", uuid),
            ("x-gogs-event", event),
            ("x-gogs-event-type", event),
            ("x-gogs-signature", ""),
            ("x-hub-signature", "sha1="),
            ("x-hub-signature-256", "sha256="),
            ("x-github-delivery", uuid),
            ("x-github-event", event),
            ("x-github-event-type", event),
        ])
    }

    /// Forgejo's: X-Forgejo-* first, then the same aliases. `event` is what its `Event()`
    /// returns, `event_type` the hook event type (they differ for `workflow_job_*`).
    fn forgejo_headers(event: &str, event_type: &str) -> HeaderMap {
        let uuid = "0e5d4c3b-2a19-4f87-96e5-d4c3b2a19f87";
        headers(&[
            ("content-type", "application/json"),
            ("x-forgejo-delivery", uuid),
            ("x-forgejo-event", event),
            ("x-forgejo-event-type", event_type),
            ("x-forgejo-signature", ""),
            ("x-gitea-delivery", uuid),
            ("x-gitea-event", event),
            ("x-gitea-event-type", event_type),
            ("x-gitea-signature", ""),
            ("x-gogs-delivery", uuid),
            ("x-gogs-event", event),
            ("x-gogs-signature", ""),
            ("x-hub-signature-256", "sha256="),
            ("x-github-delivery", uuid),
            ("x-github-event", event),
        ])
    }

    fn outcome(headers: &HeaderMap, body: &Value, flavor: Flavor) -> Result<Parsed, PayloadError> {
        parse(
            &request(headers, body.to_string().as_bytes(), Utc::now()),
            flavor,
        )
    }

    fn job(headers: &HeaderMap, body: &Value, flavor: Flavor) -> JobStatus {
        match outcome(headers, body, flavor) {
            Ok(Parsed::Event(Event::JobStatus(job))) => job,
            other => panic!("expected a job_status, got {other:?}"),
        }
    }

    /// Sets `pointer` in `value` (test fixtures are varied from one realistic payload).
    fn with(mut value: Value, changes: &[(&str, Value)]) -> Value {
        for (pointer, new) in changes {
            *value.pointer_mut(pointer).unwrap() = new.clone();
        }
        value
    }

    // [assumed] Fixtures built from Gitea's `modules/structs` (ActionWorkflowRun,
    // ActionWorkflowJob, WorkflowRunPayload, WorkflowJobPayload) and Forgejo's (ActionRun,
    // ActionPayload): no public captures exist (ci-webhooks.md §4, §14).

    fn user() -> Value {
        json!({
            "id": 2, "login": "octocat", "login_name": "", "source_id": 0,
            "full_name": "Octo Cat", "email": "octocat@noreply.gitea.example.com",
            "avatar_url": "https://gitea.example.com/avatars/5c4e", "html_url": "https://gitea.example.com/octocat",
            "language": "zh-CN", "is_admin": false, "last_login": "2025-06-02T09:58:00+08:00",
            "created": "2024-01-10T12:00:00+08:00", "restricted": false, "active": true,
            "prohibit_login": false, "location": "", "website": "", "description": "",
            "visibility": "public", "followers_count": 0, "following_count": 0,
            "starred_repos_count": 0, "username": "octocat"
        })
    }

    fn repository() -> Value {
        json!({
            "id": 3, "owner": user(), "name": "api", "full_name": "acme/api",
            "description": "", "empty": false, "private": true, "fork": false,
            "html_url": "https://gitea.example.com/acme/api",
            "clone_url": "https://gitea.example.com/acme/api.git",
            "default_branch": "main", "has_actions": true
        })
    }

    const SHA: &str = "9f2c1e7a3b4d5e6f708192a3b4c5d6e7f8091a2b";
    const GO_ZERO: &str = "0001-01-01T00:00:00Z";

    fn gitea_run() -> Value {
        json!({
            "action": "completed",
            "workflow": {
                "id": "ci.yml", "name": "CI", "path": ".gitea/workflows/ci.yml", "state": "active",
                "created_at": "2025-06-01T09:00:00+08:00", "updated_at": "2025-06-01T09:00:00+08:00",
                "url": "https://gitea.example.com/api/v1/repos/acme/api/actions/workflows/ci.yml",
                "html_url": "https://gitea.example.com/acme/api/actions?workflow=ci.yml",
                "badge_url": "https://gitea.example.com/acme/api/actions/workflows/ci.yml/badge.svg?branch=main"
            },
            "workflow_run": {
                "id": 812,
                "url": "https://gitea.example.com/api/v1/repos/acme/api/actions/runs/812",
                "html_url": "https://gitea.example.com/acme/api/actions/runs/57",
                "display_title": "Fix flaky login test",
                "path": "ci.yml@refs/heads/main",
                "event": "push", "run_attempt": 1, "run_number": 57, "repository_id": 3,
                "head_sha": SHA, "head_branch": "main",
                "status": "completed", "conclusion": "failure",
                "actor": user(), "trigger_actor": user(),
                "repository": repository(), "head_repository": repository(),
                "started_at": "2025-06-02T10:00:05+08:00",
                "completed_at": "2025-06-02T10:03:17+08:00"
            },
            "repository": repository(),
            "sender": user()
        })
    }

    fn gitea_job() -> Value {
        let step = |n: u32, name: &str, conclusion: &str| {
            json!({"name": name, "number": n, "status": "completed", "conclusion": conclusion,
                   "started_at": "2025-06-02T10:00:10+08:00", "completed_at": "2025-06-02T10:01:10+08:00"})
        };
        json!({
            "action": "completed",
            "workflow_job": {
                "id": 1630,
                "url": "https://gitea.example.com/api/v1/repos/acme/api/actions/jobs/1630",
                "html_url": "https://gitea.example.com/acme/api/actions/runs/57/jobs/1",
                "run_id": 812,
                "run_url": "https://gitea.example.com/api/v1/repos/acme/api/actions/runs/812",
                "name": "test (ubuntu-latest)", "labels": ["ubuntu-latest"], "run_attempt": 1,
                "head_sha": SHA, "head_branch": "main",
                "status": "completed", "conclusion": "failure",
                "runner_id": 4, "runner_name": "runner-01",
                "steps": [step(0, "Set up job", "success"), step(1, "go test ./...", "failure"),
                          step(2, "Complete job", "success")],
                "created_at": "2025-06-02T10:00:02+08:00",
                "started_at": "2025-06-02T10:00:08+08:00",
                "completed_at": "2025-06-02T10:02:40+08:00"
            },
            "repository": repository(),
            "sender": user()
        })
    }

    fn forgejo_action_run(action: &str, status: &str) -> Value {
        let mut trigger = user();
        trigger["email"] = json!("octocat@noreply.forgejo.example.com");
        json!({
            "action": action,
            "run": {
                "id": 4321, "title": "Fix flaky login test", "repository": repository(),
                "workflow_id": "ci.yml", "index_in_repo": 57, "trigger_user": trigger,
                "ScheduleID": 0, "prettyref": "main", "is_ref_deleted": false,
                "commit_sha": SHA, "is_fork_pull_request": false, "need_approval": false,
                "approved_by": 0, "event": "push", "event_payload": "{\"ref\":\"refs/heads/main\"}",
                "trigger_event": "push", "status": status,
                "started": "2025-08-01T10:00:05+02:00", "stopped": "2025-08-01T10:03:17+02:00",
                "created": "2025-08-01T10:00:00+02:00", "updated": "2025-08-01T10:03:17+02:00",
                "duration": 192_000_000_000_u64,
                "html_url": "https://forgejo.example.com/acme/api/actions/runs/57"
            },
            "prior_status": "running"
        })
    }

    /// [assumed] Forgejo's newest `workflow_job_*` body: `job`, `run`, `repository`, `sender`;
    /// the job's field names follow its ActionRunJob / ActionJobResponse API types.
    fn forgejo_workflow_job(status: &str, started: &str, stopped: &str) -> Value {
        let mut body = forgejo_action_run("status_changed", "running");
        body["job"] = json!({
            "id": 3, "run_id": 4321, "name": "build-and-test", "attempt": 1,
            "handle": "51ddf9d1-2649-4b08-9fde-6867275a4b28", "job_id": "build-and-test",
            "needs": [], "runs_on": ["docker"], "task_id": 990, "status": status,
            "started": started, "stopped": stopped,
            "html_url": "https://forgejo.example.com/acme/api/actions/runs/57/jobs/3/attempt/1"
        });
        body["repository"] = repository();
        body["sender"] = user();
        body
    }

    // === Gitea workflow_run / workflow_job ===

    #[test]
    fn gitea_workflow_run_lifecycle() {
        // (label, changes to the completed fixture, action header) → (status, raw, phase, finished)
        type Case = (
            &'static str,
            Vec<(&'static str, Value)>,
            Status,
            &'static str,
            Phase,
            Option<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "completed failure",
                vec![],
                Status::Failure,
                "failure",
                Phase::Completed,
                Some("2025-06-02T02:03:17Z"),
            ),
            (
                "completed success",
                vec![("/workflow_run/conclusion", json!("success"))],
                Status::Success,
                "success",
                Phase::Completed,
                Some("2025-06-02T02:03:17Z"),
            ),
            (
                "cancelled",
                vec![("/workflow_run/conclusion", json!("cancelled"))],
                Status::Cancelled,
                "cancelled",
                Phase::Completed,
                Some("2025-06-02T02:03:17Z"),
            ),
            (
                "in progress: no conclusion, completed_at is Go's zero time",
                vec![
                    ("/action", json!("in_progress")),
                    ("/workflow_run/status", json!("in_progress")),
                    ("/workflow_run/conclusion", Value::Null),
                    ("/workflow_run/completed_at", json!(GO_ZERO)),
                ],
                Status::Running,
                "in_progress",
                Phase::InProgress,
                None,
            ),
            (
                "requested, blocked waiting for approval",
                vec![
                    ("/action", json!("requested")),
                    ("/workflow_run/status", json!("waiting")),
                    ("/workflow_run/conclusion", Value::Null),
                    ("/workflow_run/started_at", json!(GO_ZERO)),
                    ("/workflow_run/completed_at", json!(GO_ZERO)),
                ],
                Status::Pending,
                "waiting",
                Phase::Queued,
                None,
            ),
            (
                "unknown conclusion",
                vec![("/workflow_run/conclusion", json!("neutralised"))],
                Status::Unknown,
                "neutralised",
                Phase::Completed,
                Some("2025-06-02T02:03:17Z"),
            ),
        ];
        for (label, changes, status, raw, phase, finished) in cases {
            let body = with(gitea_run(), &changes);
            let j = job(&gitea_headers("workflow_run"), &body, Flavor::Gitea);
            assert_eq!(j.status, Some(status), "{label}");
            assert_eq!(j.status_raw.as_deref(), Some(raw), "{label}");
            assert_eq!(j.phase, Some(phase), "{label}");
            assert_eq!(j.finished_at, finished.and_then(utc), "{label}");
        }
    }

    #[test]
    fn gitea_workflow_run_fields() {
        let j = job(&gitea_headers("workflow_run"), &gitea_run(), Flavor::Gitea);
        assert_eq!(j.source.as_deref(), Some("Gitea Actions"));
        // Gitea's run has no `name`: the workflow's.
        assert_eq!(j.pipeline.as_deref(), Some("CI"));
        assert_eq!(j.job, None);
        assert_eq!(j.project.as_deref(), Some("acme/api"));
        assert_eq!(j.run_id.as_deref(), Some("812"));
        assert_eq!(j.branch.as_deref(), Some("main"));
        assert_eq!(j.commit.as_deref(), Some(SHA));
        // No head_commit in Gitea's run: the title (the commit subject for pushes).
        assert_eq!(j.commit_message.as_deref(), Some("Fix flaky login test"));
        assert_eq!(j.actor.as_deref(), Some("octocat"));
        assert_eq!(
            j.actor_email.as_deref(),
            Some("octocat@noreply.gitea.example.com")
        );
        assert_eq!(
            j.url.as_deref(),
            Some("https://gitea.example.com/acme/api/actions/runs/57")
        );
        assert_eq!(j.started_at, utc("2025-06-02T02:00:05Z"));
        assert_eq!(j.duration_secs(), Some(192));
        // Without the workflow object: the file of `path`, then the run number.
        let no_workflow = with(gitea_run(), &[("/workflow", Value::Null)]);
        let j = job(&gitea_headers("workflow_run"), &no_workflow, Flavor::Gitea);
        assert_eq!(j.pipeline.as_deref(), Some("ci.yml"));
        let bare = with(no_workflow, &[("/workflow_run/path", json!(""))]);
        let j = job(&gitea_headers("workflow_run"), &bare, Flavor::Gitea);
        assert_eq!(j.pipeline.as_deref(), Some("workflow #57"));
    }

    #[test]
    fn gitea_workflow_job() {
        let j = job(&gitea_headers("workflow_job"), &gitea_job(), Flavor::Gitea);
        assert_eq!(j.status, Some(Status::Failure));
        assert_eq!(j.status_raw.as_deref(), Some("failure"));
        assert_eq!(j.phase, Some(Phase::Completed));
        assert_eq!(j.job.as_deref(), Some("test (ubuntu-latest)"));
        // Gitea jobs have no workflow_name: the job name stands in.
        assert_eq!(j.pipeline.as_deref(), Some("test (ubuntu-latest)"));
        assert_eq!(j.source.as_deref(), Some("Gitea Actions"));
        assert_eq!(j.project.as_deref(), Some("acme/api"));
        assert_eq!(j.run_id.as_deref(), Some("812"));
        assert_eq!(j.branch.as_deref(), Some("main"));
        assert_eq!(j.commit.as_deref(), Some(SHA));
        assert_eq!(j.actor.as_deref(), Some("octocat"));
        assert_eq!(
            j.url.as_deref(),
            Some("https://gitea.example.com/acme/api/actions/runs/57/jobs/1")
        );
        assert_eq!(j.started_at, utc("2025-06-02T02:00:08Z"));
        assert_eq!(j.finished_at, utc("2025-06-02T02:02:40Z"));
        assert_eq!(j.summary.as_deref(), Some("failed step: go test ./..."));

        let queued = with(
            gitea_job(),
            &[
                ("/action", json!("queued")),
                ("/workflow_job/status", json!("queued")),
                ("/workflow_job/conclusion", Value::Null),
                ("/workflow_job/steps", json!([])),
                ("/workflow_job/started_at", json!(GO_ZERO)),
                ("/workflow_job/completed_at", json!(GO_ZERO)),
            ],
        );
        let j = job(&gitea_headers("workflow_job"), &queued, Flavor::Gitea);
        assert_eq!(
            (j.status, j.phase),
            (Some(Status::Pending), Some(Phase::Queued))
        );
        assert_eq!(j.status_raw.as_deref(), Some("queued"));
        assert_eq!((j.started_at, j.finished_at, j.summary), (None, None, None));
    }

    #[test]
    fn a_forgejo_route_takes_gitea_payloads_and_the_other_way_round() {
        // Forgejo forks of Gitea ≥ 1.24 may send workflow_run; Gitea's aliases are read too.
        let j = job(
            &forgejo_headers("workflow_run", "workflow_run"),
            &gitea_run(),
            Flavor::Forgejo,
        );
        assert_eq!(j.source.as_deref(), Some("Forgejo Actions"));
        assert_eq!(j.pipeline.as_deref(), Some("CI"));
        let only_github = headers(&[("x-github-event", "workflow_run")]);
        let j = job(&only_github, &gitea_run(), Flavor::Gitea);
        assert_eq!(j.status, Some(Status::Failure));
        let only_gogs = headers(&[("x-gogs-event", "action_run_success")]);
        let j = job(
            &only_gogs,
            &forgejo_action_run("success", "success"),
            Flavor::Gitea,
        );
        assert_eq!(j.source.as_deref(), Some("Gitea Actions"));
        assert_eq!(j.status, Some(Status::Success));
    }

    // === Forgejo action_run_* and workflow_job_* ===

    #[test]
    fn forgejo_action_runs() {
        // (event header, action, run.status) → (status, raw, summary)
        let cases: &[(&str, &str, &str, Status, &str, Option<&str>)] = &[
            (
                "action_run_failure",
                "failure",
                "failure",
                Status::Failure,
                "failure",
                None,
            ),
            (
                "action_run_success",
                "success",
                "success",
                Status::Success,
                "success",
                None,
            ),
            (
                "action_run_recover",
                "recover",
                "success",
                Status::Success,
                "success",
                Some("recovered: the previous run had failed"),
            ),
            (
                "action_run_failure",
                "failure",
                "cancelled",
                Status::Cancelled,
                "cancelled",
                None,
            ),
            (
                "action_run_failure",
                "failure",
                "exploded",
                Status::Unknown,
                "exploded",
                None,
            ),
        ];
        for (event, action, status, expected, raw, summary) in cases {
            let body = forgejo_action_run(action, status);
            let j = job(&forgejo_headers(event, event), &body, Flavor::Forgejo);
            assert_eq!(j.status.as_ref(), Some(expected), "{event} {status}");
            assert_eq!(j.status_raw.as_deref(), Some(*raw), "{event} {status}");
            assert_eq!(j.phase, Some(Phase::Completed), "{event}");
            assert_eq!(j.summary.as_deref(), *summary, "{event}");
            assert_eq!(j.source.as_deref(), Some("Forgejo Actions"));
            assert_eq!(j.pipeline.as_deref(), Some("ci.yml"));
            assert_eq!(j.job, None);
            assert_eq!(j.project.as_deref(), Some("acme/api"));
            assert_eq!(j.run_id.as_deref(), Some("57"));
            assert_eq!(j.branch.as_deref(), Some("main"));
            assert_eq!(j.commit.as_deref(), Some(SHA));
            assert_eq!(j.commit_message.as_deref(), Some("Fix flaky login test"));
            assert_eq!(j.actor.as_deref(), Some("octocat"));
            assert_eq!(
                j.actor_email.as_deref(),
                Some("octocat@noreply.forgejo.example.com")
            );
            assert_eq!(
                j.url.as_deref(),
                Some("https://forgejo.example.com/acme/api/actions/runs/57")
            );
            assert_eq!(j.started_at, utc("2025-08-01T08:00:05Z"));
            assert_eq!(j.finished_at, utc("2025-08-01T08:03:17Z"));
            assert_eq!(j.duration_secs(), Some(192));
        }
        // No status in the run: the action says it.
        let body = with(
            forgejo_action_run("recover", "success"),
            &[("/run/status", Value::Null)],
        );
        let j = job(
            &forgejo_headers("action_run_recover", "action_run_recover"),
            &body,
            Flavor::Forgejo,
        );
        assert_eq!(j.status, Some(Status::Success));
        // Forgejo sends unset times as the Unix epoch in the server's zone.
        let body = with(
            forgejo_action_run("failure", "failure"),
            &[("/run/started", json!("1970-01-01T01:00:00+01:00"))],
        );
        let j = job(
            &forgejo_headers("action_run_failure", "action_run_failure"),
            &body,
            Flavor::Forgejo,
        );
        assert_eq!(j.started_at, None);
    }

    #[test]
    fn forgejo_workflow_jobs() {
        let cases: &[(&str, &str, &str, Status, Phase, Option<&str>)] = &[
            (
                "workflow_job_waiting",
                "waiting",
                "1970-01-01T00:00:00Z",
                Status::Pending,
                Phase::Queued,
                None,
            ),
            (
                "workflow_job_blocked",
                "blocked",
                "1970-01-01T00:00:00Z",
                Status::Pending,
                Phase::Queued,
                None,
            ),
            (
                "workflow_job_running",
                "running",
                "1970-01-01T00:00:00Z",
                Status::Running,
                Phase::InProgress,
                None,
            ),
            (
                "workflow_job_success",
                "success",
                "2025-08-01T10:02:00+02:00",
                Status::Success,
                Phase::Completed,
                Some("2025-08-01T08:02:00Z"),
            ),
            (
                "workflow_job_skipped",
                "skipped",
                "2025-08-01T10:02:00+02:00",
                Status::Skipped,
                Phase::Completed,
                Some("2025-08-01T08:02:00Z"),
            ),
        ];
        for (event_type, status, stopped, expected, phase, finished) in cases {
            let body = forgejo_workflow_job(status, "2025-08-01T10:00:30+02:00", stopped);
            // Whether Forgejo's X-Forgejo-Event is `workflow_job` or the full type: both work.
            for event in ["workflow_job", event_type] {
                let j = job(&forgejo_headers(event, event_type), &body, Flavor::Forgejo);
                assert_eq!(j.status.as_ref(), Some(expected), "{event_type}");
                assert_eq!(j.status_raw.as_deref(), Some(*status), "{event_type}");
                assert_eq!(j.phase, Some(*phase), "{event_type}");
                assert_eq!(j.job.as_deref(), Some("build-and-test"));
                assert_eq!(j.pipeline.as_deref(), Some("ci.yml"));
                assert_eq!(j.run_id.as_deref(), Some("57"));
                assert_eq!(j.branch.as_deref(), Some("main"));
                assert_eq!(j.commit.as_deref(), Some(SHA));
                assert_eq!(j.actor.as_deref(), Some("octocat"));
                assert_eq!(
                    j.url.as_deref(),
                    Some("https://forgejo.example.com/acme/api/actions/runs/57/jobs/3/attempt/1")
                );
                assert_eq!(j.started_at, utc("2025-08-01T08:00:30Z"));
                assert_eq!(j.finished_at, finished.and_then(utc), "{event_type}");
            }
        }
        // A job without its run still reports, named by itself.
        let body = json!({"action": "completed", "job": {"name": "lint", "status": "failure", "run_id": 9}});
        let j = job(
            &forgejo_headers("workflow_job", "workflow_job_failure"),
            &body,
            Flavor::Forgejo,
        );
        assert_eq!(j.pipeline.as_deref(), Some("lint"));
        assert_eq!(j.run_id.as_deref(), Some("9"));
        assert_eq!(j.status, Some(Status::Failure));
    }

    // === ignored, malformed ===

    #[test]
    fn other_events_are_ignored() {
        let push = json!({"ref": "refs/heads/main", "before": SHA, "after": SHA, "commits": [],
                          "repository": repository(), "pusher": user(), "sender": user()});
        // Gitea's "Test Delivery" button sends a push.
        for (headers, flavor, name) in [
            (gitea_headers("push"), Flavor::Gitea, "Gitea"),
            (forgejo_headers("push", "push"), Flavor::Forgejo, "Forgejo"),
        ] {
            let Ok(Parsed::Ignored(reason)) = outcome(&headers, &push, flavor) else {
                panic!("push not ignored");
            };
            assert_eq!(
                reason,
                format!(
                    r#"{name} event "push" is not reported (only workflow_run, workflow_job and action_run_* are)"#
                )
            );
        }
        for event in ["issues", "pull_request", "release", "ping", "schedule"] {
            let result = outcome(&gitea_headers(event), &json!({}), Flavor::Gitea);
            assert!(
                matches!(result, Ok(Parsed::Ignored(_))),
                "{event}: {result:?}"
            );
        }
        let none = HeaderMap::new();
        let Ok(Parsed::Ignored(reason)) = outcome(&none, &json!({"zen": 1}), Flavor::Forgejo)
        else {
            panic!("not ignored");
        };
        assert!(reason.starts_with("no X-Forgejo-Event header"), "{reason}");
    }

    #[test]
    fn missing_event_header_is_inferred_from_the_body() {
        let none = HeaderMap::new();
        for (body, expected_job) in [
            (gitea_run(), None),
            (gitea_job(), Some("test (ubuntu-latest)")),
            (forgejo_action_run("failure", "failure"), None),
            (
                forgejo_workflow_job("success", GO_ZERO, GO_ZERO),
                Some("build-and-test"),
            ),
        ] {
            let j = job(&none, &body, Flavor::Gitea);
            assert_eq!(j.job.as_deref(), expected_job);
            assert!(j.status.is_some());
        }
    }

    #[test]
    fn bad_bodies_are_400() {
        let headers = gitea_headers("workflow_run");
        for body in ["", "<xml/>", "[]", "42", "{\"action\":"] {
            let err = parse(
                &request(&headers, body.as_bytes(), Utc::now()),
                Flavor::Gitea,
            )
            .expect_err(body);
            assert!(err.field.is_none(), "{body}: {err:?}");
            assert!(
                err.message.starts_with("body is not valid JSON: "),
                "{body}: {err}"
            );
        }
        let cases = [
            (gitea_headers("workflow_run"), "workflow_run"),
            (gitea_headers("workflow_job"), "workflow_job"),
            (
                forgejo_headers("action_run_failure", "action_run_failure"),
                "run",
            ),
        ];
        for (headers, field) in cases {
            let err = outcome(&headers, &json!({"action": "completed"}), Flavor::Forgejo)
                .expect_err(field);
            assert_eq!(err.field.as_deref(), Some(field));
        }
    }

    #[test]
    fn long_and_non_ascii_titles_are_kept() {
        let title = format!("修复：登录页面崩溃 🚀\n\n{}", "详细说明🙂".repeat(3000));
        let body = with(
            gitea_run(),
            &[
                ("/workflow_run/display_title", json!(title)),
                ("/workflow/name", json!("持续集成 ✅")),
                ("/workflow_run/head_branch", json!("refs/heads/功能/登录")),
            ],
        );
        let j = job(&gitea_headers("workflow_run"), &body, Flavor::Gitea);
        assert_eq!(j.commit_message.as_deref(), Some(title.as_str()));
        assert_eq!(j.pipeline.as_deref(), Some("持续集成 ✅"));
        assert_eq!(j.branch.as_deref(), Some("功能/登录"));
    }

    // === authentication ===

    const SIGNED_BODY: &str = r#"{"action":"completed","workflow_run":{"id":812,"status":"completed","conclusion":"success"}}"#;
    /// `printf '%s' "$SIGNED_BODY" | openssl dgst -sha256 -hmac gitea-secret`
    const SIGNED_HEX: &str = "fd4e5b065428c49c0006bebaec0d607f2a48fe114b812a7a77f0ed66fe9bc259";

    #[test]
    fn signature_vector_is_independently_checked() {
        assert_eq!(hmac_hex("gitea-secret", SIGNED_BODY.as_bytes()), SIGNED_HEX);
        assert_eq!(
            auth::sign_sha256("gitea-secret", SIGNED_BODY.as_bytes()),
            format!("sha256={SIGNED_HEX}")
        );
    }

    #[test]
    fn verify_accepts_every_signature_alias_and_the_authorization_header() {
        let hub = format!("sha256={SIGNED_HEX}");
        let wrong = hmac_hex("not-the-secret", SIGNED_BODY.as_bytes());
        // (flavor, headers, accepted, message starts with)
        let cases: &[(Flavor, &[(&str, &str)], bool, &str)] = &[
            (
                Flavor::Gitea,
                &[("x-gitea-signature", SIGNED_HEX)],
                true,
                "",
            ),
            (
                Flavor::Gitea,
                &[("x-forgejo-signature", SIGNED_HEX)],
                true,
                "",
            ),
            (Flavor::Gitea, &[("x-gogs-signature", SIGNED_HEX)], true, ""),
            (Flavor::Gitea, &[("x-hub-signature-256", &hub)], true, ""),
            (
                Flavor::Forgejo,
                &[("x-forgejo-signature", SIGNED_HEX)],
                true,
                "",
            ),
            (
                Flavor::Forgejo,
                &[("x-gitea-signature", SIGNED_HEX)],
                true,
                "",
            ),
            (Flavor::Forgejo, &[("x-hub-signature-256", &hub)], true, ""),
            // Gitea without a secret: empty signatures, the fixed Authorization header.
            (
                Flavor::Gitea,
                &[
                    ("x-gitea-signature", ""),
                    ("x-hub-signature-256", "sha256="),
                    ("authorization", "Bearer gitea-secret"),
                ],
                true,
                "",
            ),
            (
                Flavor::Forgejo,
                &[
                    ("x-forgejo-signature", ""),
                    ("authorization", "gitea-secret"),
                ],
                true,
                "",
            ),
            (
                Flavor::Gitea,
                &[("authorization", "bearer gitea-secret")],
                true,
                "",
            ),
            (
                Flavor::Gitea,
                &[("authorization", "Bearer nope")],
                false,
                "wrong secret in the Authorization header",
            ),
            (
                Flavor::Gitea,
                &[("authorization", "token gitea-secret")],
                false,
                "wrong secret in the Authorization header",
            ),
            (
                Flavor::Gitea,
                &[("x-gitea-signature", &wrong)],
                false,
                "wrong signature: X-Gitea-Signature",
            ),
            (
                Flavor::Forgejo,
                &[("x-forgejo-signature", "zz")],
                false,
                "wrong signature: X-Forgejo-Signature",
            ),
            (
                Flavor::Gitea,
                &[("x-hub-signature-256", SIGNED_HEX)],
                false,
                "wrong signature",
            ),
            // A signature that is sent must match, whatever the Authorization header says.
            (
                Flavor::Gitea,
                &[
                    ("x-gitea-signature", &wrong),
                    ("authorization", "Bearer gitea-secret"),
                ],
                false,
                "wrong signature",
            ),
            (
                Flavor::Gitea,
                &[],
                false,
                "missing credentials: set the Gitea webhook's secret",
            ),
            (
                Flavor::Forgejo,
                &[
                    ("x-forgejo-signature", ""),
                    ("x-hub-signature-256", "sha256="),
                ],
                false,
                "missing credentials: set the Forgejo webhook's secret",
            ),
        ];
        let secret = Secret::new("gitea-secret");
        for (flavor, pairs, accepted, message) in cases {
            let headers = headers(pairs);
            let result = verify(
                &secret,
                &request(&headers, SIGNED_BODY.as_bytes(), Utc::now()),
                *flavor,
            );
            assert_eq!(
                result.is_ok(),
                *accepted,
                "{flavor:?} {pairs:?}: {result:?}"
            );
            if let Err(e) = result {
                assert!(e.starts_with(message), "{flavor:?} {pairs:?}: {e}");
                assert!(!e.contains("gitea-secret"), "{e}");
            }
        }
        // The signature covers the body exactly.
        let headers = headers(&[("x-gitea-signature", SIGNED_HEX)]);
        let tampered = SIGNED_BODY.replace("success", "failure");
        assert!(
            verify(
                &secret,
                &request(&headers, tampered.as_bytes(), Utc::now()),
                Flavor::Gitea
            )
            .is_err()
        );
    }

    #[test]
    fn delivery_ids() {
        let cases: &[(Flavor, &[(&str, &str)], Option<&str>)] = &[
            (
                Flavor::Gitea,
                &[("x-gitea-delivery", "g-1"), ("x-forgejo-delivery", "f-1")],
                Some("g-1"),
            ),
            (
                Flavor::Forgejo,
                &[("x-gitea-delivery", "g-1"), ("x-forgejo-delivery", "f-1")],
                Some("f-1"),
            ),
            (Flavor::Forgejo, &[("x-gitea-delivery", "g-1")], Some("g-1")),
            (Flavor::Gitea, &[("x-gogs-delivery", "o-1")], Some("o-1")),
            (Flavor::Gitea, &[("x-github-delivery", "h-1")], Some("h-1")),
            (
                Flavor::Gitea,
                &[("x-gitea-delivery", ""), ("x-github-delivery", "h-1")],
                Some("h-1"),
            ),
            (Flavor::Gitea, &[], None),
        ];
        for (flavor, pairs, expected) in cases {
            let headers = headers(pairs);
            assert_eq!(
                delivery_id(&request(&headers, b"{}", Utc::now()), *flavor).as_deref(),
                *expected,
                "{flavor:?} {pairs:?}"
            );
        }
    }
}
