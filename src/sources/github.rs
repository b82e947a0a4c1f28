//! GitHub webhooks (`source: github`, ci-webhooks.md §1). `workflow_run`, `workflow_job`,
//! `check_suite` and `check_run` events become job_status events in every lifecycle phase;
//! `ping` and all other events are ignored. Authentication is GitHub's
//! `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`; the delivery id is
//! `X-GitHub-Hook-ID:X-GitHub-Delivery` (§13), stable across GitHub's redeliveries.
//!
//! The payload readers are lenient (a missing, null or wrong-typed field is absent) and also
//! read the names Gitea uses in its GitHub-compatible payloads (`started_at`, `completed_at`,
//! `trigger_actor`), so [`super::gitea`] normalises `workflow_run` / `workflow_job` with them.

use serde_json::Value;

use super::auth::{self, AuthResult};
use super::json::{self, string, text, time};
use super::{Event, JobStatus, Parsed, PayloadError, Phase, Request, Status};
use crate::config::Secret;

/// The `source` of Actions events.
const GITHUB_ACTIONS: &str = "GitHub Actions";

/// Checks `X-Hub-Signature-256` against the raw body (the legacy SHA-1 header is not enough).
pub fn verify(secret: &Secret, request: &Request<'_>) -> AuthResult {
    let headers = request.headers;
    match auth::present(headers, "x-hub-signature-256") {
        Some(signature) if sha256_signature_matches(secret, request.body, signature) => Ok(()),
        Some(_) => Err(
            "wrong signature: X-Hub-Signature-256 is not the HMAC-SHA256 of the body under this route's secret"
                .to_owned(),
        ),
        None if auth::present(headers, "x-hub-signature").is_some() => Err(
            "missing X-Hub-Signature-256: only the legacy SHA-1 X-Hub-Signature was sent".to_owned(),
        ),
        None => Err(
            "missing X-Hub-Signature-256: set the webhook's secret in GitHub to this route's secret"
                .to_owned(),
        ),
    }
}

/// `X-GitHub-Delivery`, prefixed with `X-GitHub-Hook-ID` when present: GitHub reuses the GUID
/// on redelivery, and two hooks can see the same GUID.
pub fn delivery_id(request: &Request<'_>) -> Option<String> {
    let delivery = auth::present(request.headers, "x-github-delivery")?;
    Some(match auth::present(request.headers, "x-github-hook-id") {
        Some(hook) => format!("{hook}:{delivery}"),
        None => delivery.to_owned(),
    })
}

/// Normalises a GitHub event named by `X-GitHub-Event` (inferred from the body when the
/// header is missing, e.g. for `render`).
pub fn parse(request: &Request<'_>) -> Result<Parsed, PayloadError> {
    let root = json::object(request.body, None)?;
    let event = match auth::present(request.headers, "x-github-event") {
        Some(event) => event.to_ascii_lowercase(),
        None => match infer_event(&root) {
            Some(event) => event.to_owned(),
            None => {
                return Ok(Parsed::Ignored(
                    "no X-GitHub-Event header, and the body is not a workflow_run, workflow_job, check_run or check_suite payload"
                        .to_owned(),
                ));
            }
        },
    };
    match event.as_str() {
        "workflow_run" => workflow_run(&root, GITHUB_ACTIONS),
        "workflow_job" => workflow_job(&root, GITHUB_ACTIONS),
        "check_suite" => check_suite(&root),
        "check_run" => check_run(&root),
        "ping" => Ok(Parsed::Ignored(
            "GitHub ping (the webhook was created or tested); nothing to report".to_owned(),
        )),
        other => Ok(Parsed::Ignored(format!(
            "GitHub event {other:?} is not reported (only workflow_run, workflow_job, check_suite and check_run are)"
        ))),
    }
}

/// `workflow_run` (GitHub, and Gitea's GitHub-compatible copy): one report per run.
pub(super) fn workflow_run(root: &Value, source: &str) -> Result<Parsed, PayloadError> {
    let run = object(root, "workflow_run")?;
    let state = lifecycle(
        string(root, "/action").as_deref(),
        string(run, "/status").as_deref(),
        string(run, "/conclusion").as_deref(),
    );
    let pipeline = string(run, "/name")
        .or_else(|| string(root, "/workflow/name"))
        .or_else(|| string(run, "/path").map(|path| workflow_file(&path)))
        .or_else(|| {
            text(run, "/run_number")
                .or_else(|| text(run, "/id"))
                .map(|n| format!("workflow #{n}"))
        });
    let actor = first_user(&[
        run.get("triggering_actor"),
        run.get("trigger_actor"),
        run.get("actor"),
        root.get("sender"),
    ]);
    let finished_at = if state.phase == Phase::Completed {
        time(run, "/completed_at").or_else(|| time(run, "/updated_at"))
    } else {
        None
    };
    Ok(report(JobStatus {
        pipeline,
        source: Some(source.to_owned()),
        project: string(root, "/repository/full_name"),
        run_id: text(run, "/id").or_else(|| text(run, "/run_number")),
        branch: json::branch(run, "/head_branch"),
        commit: string(run, "/head_sha"),
        commit_message: string(run, "/head_commit/message")
            .or_else(|| string(run, "/display_title")),
        url: string(run, "/html_url"),
        actor: actor.and_then(|u| string(u, "/login")),
        actor_email: string(run, "/head_commit/author/email")
            .or_else(|| actor.and_then(|u| string(u, "/email"))),
        started_at: time(run, "/run_started_at").or_else(|| time(run, "/started_at")),
        finished_at,
        summary: run_summary(run),
        ..state.into_job()
    }))
}

/// `workflow_job` (GitHub, and Gitea's GitHub-compatible copy): one report per job.
pub(super) fn workflow_job(root: &Value, source: &str) -> Result<Parsed, PayloadError> {
    let job = object(root, "workflow_job")?;
    let state = lifecycle(
        string(root, "/action").as_deref(),
        string(job, "/status").as_deref(),
        string(job, "/conclusion").as_deref(),
    );
    let name = string(job, "/name");
    let run_id = text(job, "/run_id");
    let pipeline = string(job, "/workflow_name")
        .or_else(|| name.clone())
        .or_else(|| run_id.as_ref().map(|id| format!("run #{id}")));
    let actor = first_user(&[root.get("sender")]);
    Ok(report(JobStatus {
        job: name,
        pipeline,
        source: Some(source.to_owned()),
        project: string(root, "/repository/full_name"),
        run_id,
        branch: json::branch(job, "/head_branch"),
        commit: string(job, "/head_sha"),
        url: string(job, "/html_url"),
        actor: actor.and_then(|u| string(u, "/login")),
        actor_email: actor.and_then(|u| string(u, "/email")),
        started_at: time(job, "/started_at"),
        finished_at: time(job, "/completed_at"),
        summary: failed_step(job),
        ..state.into_job()
    }))
}

/// `check_suite`: one per workflow run for GitHub Actions, also sent by other CI apps.
fn check_suite(root: &Value) -> Result<Parsed, PayloadError> {
    let suite = object(root, "check_suite")?;
    let state = lifecycle(
        string(root, "/action").as_deref(),
        string(suite, "/status").as_deref(),
        string(suite, "/conclusion").as_deref(),
    );
    let commit = string(suite, "/head_sha");
    // The suite has no page of its own; the commit's checks page lists it.
    let url = string(root, "/repository/html_url")
        .zip(commit.as_deref())
        .map(|(repo, sha)| format!("{repo}/commit/{sha}/checks"));
    let sender = first_user(&[root.get("sender")]);
    let finished_at = if state.phase == Phase::Completed {
        time(suite, "/updated_at")
    } else {
        None
    };
    Ok(report(JobStatus {
        pipeline: string(suite, "/app/name")
            .or_else(|| string(suite, "/app/slug"))
            .or_else(|| text(suite, "/id").map(|id| format!("check suite #{id}"))),
        source: Some(check_source(suite.get("app")).to_owned()),
        project: string(root, "/repository/full_name"),
        run_id: text(suite, "/id"),
        branch: json::branch(suite, "/head_branch"),
        commit,
        commit_message: string(suite, "/head_commit/message"),
        url,
        actor: sender.and_then(|u| string(u, "/login")),
        actor_email: string(suite, "/head_commit/author/email")
            .or_else(|| sender.and_then(|u| string(u, "/email"))),
        started_at: time(suite, "/created_at"),
        finished_at,
        ..state.into_job()
    }))
}

/// `check_run`: one per job for GitHub Actions, also sent by other CI apps.
fn check_run(root: &Value) -> Result<Parsed, PayloadError> {
    let run = object(root, "check_run")?;
    let action = string(root, "/action");
    if action.as_deref() == Some("requested_action") {
        return Ok(Parsed::Ignored(
            "check_run requested_action: someone pressed a button on the check; its status did not change"
                .to_owned(),
        ));
    }
    let state = lifecycle(
        action.as_deref(),
        string(run, "/status").as_deref(),
        string(run, "/conclusion").as_deref(),
    );
    let name = string(run, "/name");
    let app = run.get("app").or_else(|| run.pointer("/check_suite/app"));
    let sender = first_user(&[root.get("sender")]);
    Ok(report(JobStatus {
        pipeline: app
            .and_then(|a| string(a, "/name"))
            .or_else(|| name.clone()),
        job: name,
        source: Some(check_source(app).to_owned()),
        project: string(root, "/repository/full_name"),
        run_id: text(run, "/check_suite/id").or_else(|| text(run, "/id")),
        branch: json::branch(run, "/check_suite/head_branch"),
        commit: string(run, "/head_sha"),
        url: string(run, "/html_url").or_else(|| string(run, "/details_url")),
        actor: sender.and_then(|u| string(u, "/login")),
        actor_email: sender.and_then(|u| string(u, "/email")),
        started_at: time(run, "/started_at"),
        finished_at: time(run, "/completed_at"),
        ..state.into_job()
    }))
}

/// "GitHub Actions" for checks made by Actions, else just "GitHub" (the app is the pipeline).
fn check_source(app: Option<&Value>) -> &'static str {
    if app.and_then(|a| string(a, "/slug")).as_deref() == Some("github-actions") {
        GITHUB_ACTIONS
    } else {
        "GitHub"
    }
}

/// A run's pull requests and re-run attempt, e.g. `PR #2 · attempt 3`.
fn run_summary(run: &Value) -> Option<String> {
    let mut parts = Vec::new();
    let prs: Vec<String> = run
        .get("pull_requests")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|pr| text(pr, "/number"))
        .map(|n| format!("#{n}"))
        .collect();
    if !prs.is_empty() {
        parts.push(format!("PR {}", prs.join(", ")));
    }
    if let Some(attempt) = run
        .get("run_attempt")
        .and_then(Value::as_u64)
        .filter(|&a| a > 1)
    {
        parts.push(format!("attempt {attempt}"));
    }
    (!parts.is_empty()).then(|| parts.join(" · "))
}

/// The first failed step of a job, e.g. `failed step: Run tests`.
fn failed_step(job: &Value) -> Option<String> {
    job.get("steps")?
        .as_array()?
        .iter()
        .find(|step| string(step, "/conclusion").is_some_and(|c| c.eq_ignore_ascii_case("failure")))
        .and_then(|step| string(step, "/name"))
        .map(|name| format!("failed step: {name}"))
}

/// A workflow file path as a name: `ci.yml@refs/heads/main` (Gitea) → `ci.yml`.
pub(super) fn workflow_file(path: &str) -> String {
    path.split('@').next().unwrap_or(path).to_owned()
}

// === lifecycle ===

/// Lifecycle values that say a run is waiting (blocked included: ci-webhooks.md §11).
const WAITING: &[&str] = &["requested", "rerequested", "queued", "waiting", "pending"];

/// Where a run or job stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Lifecycle {
    /// Normalised status.
    pub(super) status: Status,
    /// Phase.
    pub(super) phase: Phase,
    /// The sender's own word for it (conclusion, status or action), as sent.
    pub(super) raw: Option<String>,
}

impl Lifecycle {
    pub(super) fn new(status: Status, phase: Phase, raw: Option<&str>) -> Self {
        Self {
            status,
            phase,
            raw: raw.map(str::to_owned),
        }
    }

    /// A job status holding just this lifecycle, to complete with the payload's fields.
    pub(super) fn into_job(self) -> JobStatus {
        JobStatus {
            status: Some(self.status),
            status_raw: self.raw,
            phase: Some(self.phase),
            ..JobStatus::default()
        }
    }
}

/// The lifecycle from the event's `action` and the object's `status` and `conclusion`: the
/// action names the transition (`requested`, `queued`, `waiting`, `in_progress`, `completed`),
/// else the status does; a completed one is judged by its conclusion. `action_required` is
/// blocked whatever the action (waiting for approval); a `rerequested` object still shows the
/// previous run's status, so the action wins over it. Unknown values never fail: with a
/// conclusion they are completed, without one they count as running (not reported by
/// default), and the raw value is kept.
pub(super) fn lifecycle(
    action: Option<&str>,
    status: Option<&str>,
    conclusion: Option<&str>,
) -> Lifecycle {
    let lower = |s: Option<&str>| s.map(str::to_ascii_lowercase);
    let (action_lc, status_lc) = (lower(action), lower(status));
    if conclusion.is_some_and(|c| c.eq_ignore_ascii_case("action_required")) {
        return Lifecycle::new(Status::Pending, Phase::Queued, conclusion);
    }
    let from_action = action_lc
        .as_deref()
        .is_some_and(|a| a == "completed" || a == "in_progress" || WAITING.contains(&a));
    let (state, state_raw) = if from_action {
        (action_lc.as_deref(), action)
    } else {
        (status_lc.as_deref(), status)
    };
    match state {
        Some("completed") => match conclusion {
            Some(c) => concluded(c),
            None => Lifecycle::new(Status::Unknown, Phase::Completed, state_raw),
        },
        Some("in_progress") => Lifecycle::new(Status::Running, Phase::InProgress, state_raw),
        Some(waiting) if WAITING.contains(&waiting) => {
            // The status says more than the action (`queued` + `waiting`), unless it is stale.
            let raw = if status_lc.as_deref().is_some_and(|s| WAITING.contains(&s)) {
                status
            } else {
                state_raw
            };
            Lifecycle::new(Status::Pending, Phase::Queued, raw)
        }
        _ => match conclusion {
            Some(c) => concluded(c),
            None => Lifecycle::new(Status::Unknown, Phase::InProgress, status.or(action)),
        },
    }
}

/// A finished run by its conclusion (§11); unknown conclusions are `unknown`, kept raw.
pub(super) fn concluded(conclusion: &str) -> Lifecycle {
    let status = match conclusion.to_ascii_lowercase().as_str() {
        "success" => Status::Success,
        "failure" | "timed_out" | "startup_failure" | "stale" => Status::Failure,
        "cancelled" | "canceled" => Status::Cancelled,
        "skipped" | "neutral" => Status::Skipped,
        _ => Status::Unknown,
    };
    Lifecycle::new(status, Phase::Completed, Some(conclusion))
}

// === payload reading, shared with gitea ===

/// Whether `value` is `sha256=<hex HMAC-SHA256 of body>` under `secret`.
pub(super) fn sha256_signature_matches(secret: &Secret, body: &[u8], value: &str) -> bool {
    value
        .strip_prefix("sha256=")
        .is_some_and(|hex| !hex.is_empty() && auth::hmac_hex_matches(secret, body, hex))
}

/// The event a GitHub-style body is, by the object it carries.
pub(super) fn infer_event(root: &Value) -> Option<&'static str> {
    ["workflow_job", "workflow_run", "check_run", "check_suite"]
        .into_iter()
        .find(|key| root.get(key).is_some_and(Value::is_object))
}

/// The event's main object; without it there is nothing to report (400).
pub(super) fn object<'a>(root: &'a Value, key: &str) -> Result<&'a Value, PayloadError> {
    // GitHub always sends the run or job it is about: an empty object is as good as none.
    root.get(key)
        .filter(|v| v.as_object().is_some_and(|o| !o.is_empty()))
        .ok_or_else(|| PayloadError::field(key, "missing or empty object"))
}

/// Wraps a job status as the parse result.
pub(super) fn report(job: JobStatus) -> Parsed {
    Parsed::Event(Event::JobStatus(job))
}

/// The first of these user objects that has a login.
pub(super) fn first_user<'a>(candidates: &[Option<&'a Value>]) -> Option<&'a Value> {
    candidates
        .iter()
        .flatten()
        .copied()
        .find(|user| string(user, "/login").is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::testing::{self, headers, hmac_hex, request, utc};
    use axum::http::HeaderMap;
    use chrono::Utc;

    /// A corpus file: its name and its contents.
    macro_rules! corpus {
        ($name:literal) => {
            ($name, testing::corpus!("github", $name))
        };
    }

    /// What GitHub sends along with a delivery (User-Agent, event, delivery, hook id).
    fn github_headers(event: &str) -> HeaderMap {
        headers(&[
            ("user-agent", "GitHub-Hookshot/a1b2c3d"),
            ("content-type", "application/json"),
            ("x-github-event", event),
            ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            ("x-github-hook-id", "292430182"),
            ("x-github-hook-installation-target-type", "repository"),
        ])
    }

    fn parse_as(event: &str, body: &str) -> Result<Parsed, PayloadError> {
        let headers = github_headers(event);
        parse(&request(&headers, body.as_bytes(), Utc::now()))
    }

    fn job(event: &str, body: &str) -> JobStatus {
        match parse_as(event, body) {
            Ok(Parsed::Event(Event::JobStatus(job))) => job,
            other => panic!("{event}: expected a job_status, got {other:?}"),
        }
    }

    fn ignored(event: &str, body: &str) -> String {
        match parse_as(event, body) {
            Ok(Parsed::Ignored(reason)) => reason,
            other => panic!("{event}: expected ignored, got {other:?}"),
        }
    }

    /// The normalised fields a corpus payload must produce.
    struct Expect {
        file: (&'static str, &'static str),
        event: &'static str,
        status: Status,
        raw: &'static str,
        phase: Phase,
        pipeline: &'static str,
        job: Option<&'static str>,
        source: &'static str,
        project: &'static str,
        run_id: &'static str,
        branch: &'static str,
        commit: &'static str,
        commit_message: Option<&'static str>,
        actor: &'static str,
        actor_email: Option<&'static str>,
        url: &'static str,
        started: Option<&'static str>,
        finished: Option<&'static str>,
        summary: Option<&'static str>,
    }

    const RUN_URL: &str = "https://github.com/octo-org/octo-repo/actions/runs/289782451";
    const RUN_SHA: &str = "3484a3fb816e0859fd6e1cea078d76385ff50625";
    const RUN_MESSAGE: &str = "build(test): check workflow run event payload";
    const RUN_EMAIL: &str = "matfax@users.noreply.github.com";
    const JOB_URL: &str = "https://github.com/octo-org/octo-repo/runs/1291536064";
    const DEPLOY_URL: &str = "https://github.com/lineville/elastic-machines-testing/actions/runs/4747967848/jobs/8433573014";
    const SUITE_URL_EC: &str = "https://github.com/Codertocat/Hello-World/commit/ec26c3e57ca3a959ca5aad62de7213c562f8c821/checks";
    const SUITE_URL_F9: &str = "https://github.com/Codertocat/Hello-World/commit/f95f852bd8fca8fcc58a9a2d6c842781e32a215e/checks";
    const SUITE_EMAIL: &str = "21031067+Codertocat@users.noreply.github.com";

    fn corpus_expectations() -> Vec<Expect> {
        let run = |file, status, raw, phase, finished, summary| Expect {
            file,
            event: "workflow_run",
            status,
            raw,
            phase,
            // workflow_run.name is "" in these samples: workflow.name is used.
            pipeline: "test",
            job: None,
            source: GITHUB_ACTIONS,
            project: "octo-org/octo-repo",
            run_id: "289782451",
            branch: "master",
            commit: RUN_SHA,
            commit_message: Some(RUN_MESSAGE),
            actor: "Codertocat",
            actor_email: Some(RUN_EMAIL),
            url: RUN_URL,
            started: Some("2020-10-05T16:33:49Z"),
            finished,
            summary,
        };
        let octo_job = |file, status, raw, phase, job, started, finished, summary| Expect {
            file,
            event: "workflow_job",
            status,
            raw,
            phase,
            pipeline: "CodeQL",
            job: Some(job),
            source: GITHUB_ACTIONS,
            project: "Codertocat/Hello-World",
            run_id: "2202229078",
            branch: "main",
            commit: RUN_SHA,
            commit_message: None,
            actor: "Codertocat",
            actor_email: None,
            url: JOB_URL,
            started: Some(started),
            finished,
            summary,
        };
        let deploy_job = |file, raw| Expect {
            file,
            event: "workflow_job",
            status: Status::Pending,
            raw,
            phase: Phase::Queued,
            pipeline: "Env Test",
            job: Some("test"),
            source: GITHUB_ACTIONS,
            project: "lineville/elastic-machines-testing",
            run_id: "4747967848",
            branch: "main",
            commit: "16c5286e8d9a0629956a28938386b36608707a71",
            commit_message: None,
            actor: "lineville",
            actor_email: None,
            url: DEPLOY_URL,
            started: Some("2023-04-19T21:12:12Z"),
            finished: None,
            summary: None,
        };
        let suite = |file,
                     status,
                     raw,
                     phase,
                     source,
                     branch,
                     commit,
                     url,
                     actor,
                     email,
                     started,
                     finished| Expect {
            file,
            event: "check_suite",
            status,
            raw,
            phase,
            pipeline: "octocoders-linter",
            job: None,
            source,
            project: "Codertocat/Hello-World",
            run_id: if commit == "ec26c3e57ca3a959ca5aad62de7213c562f8c821" {
                "118578147"
            } else {
                "118578174"
            },
            branch,
            commit,
            commit_message: Some(if commit.starts_with("ec26") {
                "Update README.md"
            } else {
                "Add new gemfile"
            }),
            actor,
            actor_email: Some(email),
            url,
            started: Some(started),
            finished,
            summary: None,
        };
        let ec = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";
        let f9 = "f95f852bd8fca8fcc58a9a2d6c842781e32a215e";
        let done = Some("2019-05-15T15:21:14Z");
        vec![
            run(
                corpus!("workflow_run.completed.payload.json"),
                Status::Success,
                "success",
                Phase::Completed,
                Some("2020-10-05T16:33:49Z"),
                None,
            ),
            run(
                corpus!("workflow_run.completed.with-pull-requests.payload.json"),
                Status::Success,
                "success",
                Phase::Completed,
                Some("2020-10-05T16:33:49Z"),
                Some("PR #2"),
            ),
            run(
                corpus!("workflow_run.requested.payload.json"),
                Status::Pending,
                "queued",
                Phase::Queued,
                None,
                None,
            ),
            run(
                corpus!("workflow_run.requested.with-conclusion.payload.json"),
                Status::Pending,
                "action_required",
                Phase::Queued,
                None,
                None,
            ),
            octo_job(
                corpus!("workflow_job.completed.failure.with-organization.payload.json"),
                Status::Failure,
                "failure",
                Phase::Completed,
                "linters",
                "2021-08-05T10:34:58Z",
                Some("2021-08-05T10:38:16Z"),
                Some("failed step: Run yarn run format-check"),
            ),
            octo_job(
                corpus!("workflow_job.completed.success.with-organization.payload.json"),
                Status::Success,
                "success",
                Phase::Completed,
                "linters",
                "2021-08-05T10:34:58Z",
                Some("2021-08-05T10:38:16Z"),
                None,
            ),
            octo_job(
                corpus!("workflow_job.in_progress.payload.json"),
                Status::Running,
                "in_progress",
                Phase::InProgress,
                "Analyze (javascript)",
                "2021-09-13T02:21:13Z",
                None,
                None,
            ),
            octo_job(
                corpus!("workflow_job.queued.payload.json"),
                Status::Pending,
                "queued",
                Phase::Queued,
                "update",
                "2021-09-13T02:21:13Z",
                None,
                None,
            ),
            Expect {
                file: corpus!("workflow_job.in_progress.with-queued-steps.payload.json"),
                event: "workflow_job",
                status: Status::Running,
                raw: "in_progress",
                phase: Phase::InProgress,
                pipeline: "Test",
                job: Some("Do examples need to be regenerated?"),
                source: GITHUB_ACTIONS,
                project: "wolfy1339/github-events-schemas",
                run_id: "5373506832",
                branch: "renovate/got-13.x",
                commit: "eeeb91cc89453bff9ce51f450d8badd4eb41ae8b",
                commit_message: None,
                actor: "renovate[bot]",
                actor_email: None,
                url: "https://github.com/wolfy1339/github-events-schemas/actions/runs/5373506832/jobs/9747952373",
                started: Some("2023-06-26T03:31:36Z"),
                finished: None,
                summary: None,
            },
            // action "queued" with status "waiting" (an environment's protection rule).
            deploy_job(
                corpus!("workflow_job.queued.with-deployment.payload.json"),
                "waiting",
            ),
            deploy_job(corpus!("workflow_job.waiting.payload.json"), "waiting"),
            suite(
                corpus!("check_suite.completed.1.payload.json"),
                Status::Success,
                "success",
                Phase::Completed,
                GITHUB_ACTIONS,
                "main",
                ec,
                SUITE_URL_EC,
                "Codertocat",
                SUITE_EMAIL,
                "2019-05-15T15:20:31Z",
                done,
            ),
            suite(
                corpus!("check_suite.completed.payload.json"),
                Status::Success,
                "success",
                Phase::Completed,
                "GitHub",
                "changes",
                ec,
                SUITE_URL_EC,
                "Codertocat",
                SUITE_EMAIL,
                "2019-05-15T15:20:31Z",
                done,
            ),
            suite(
                corpus!("check_suite.completed.with-organization.payload.json"),
                Status::Success,
                "success",
                Phase::Completed,
                "GitHub",
                "changes",
                ec,
                SUITE_URL_EC,
                "Codertocat",
                SUITE_EMAIL,
                "2019-05-15T15:20:31Z",
                done,
            ),
            suite(
                corpus!("check_suite.requested.payload.json"),
                Status::Pending,
                "queued",
                Phase::Queued,
                "GitHub",
                "master",
                f9,
                SUITE_URL_F9,
                "Codertocat",
                SUITE_EMAIL,
                "2019-05-15T15:20:33Z",
                None,
            ),
            suite(
                corpus!("check_suite.requested.payload.with-email-with-special-characters.json"),
                Status::Pending,
                "queued",
                Phase::Queued,
                "GitHub",
                "master",
                f9,
                SUITE_URL_F9,
                "Codertocat",
                "41898282+github-actions[bot]@users.noreply.github.com",
                "2019-05-15T15:20:33Z",
                None,
            ),
            suite(
                corpus!("check_suite.requested.with-organization.payload.json"),
                Status::Pending,
                "queued",
                Phase::Queued,
                "GitHub",
                "master",
                f9,
                SUITE_URL_F9,
                "Codertocat",
                SUITE_EMAIL,
                "2019-05-15T15:20:33Z",
                None,
            ),
            // A re-run was asked for: the suite still shows the last result, which is stale.
            suite(
                corpus!("check_suite.rerequested.payload.json"),
                Status::Pending,
                "rerequested",
                Phase::Queued,
                "GitHub",
                "changes",
                ec,
                SUITE_URL_EC,
                "octocoders-linter[bot]",
                SUITE_EMAIL,
                "2019-05-15T15:20:31Z",
                None,
            ),
            suite(
                corpus!("check_suite.rerequested.with-organization.payload.json"),
                Status::Pending,
                "rerequested",
                Phase::Queued,
                "GitHub",
                "changes",
                ec,
                SUITE_URL_EC,
                "octocoders-linter[bot]",
                SUITE_EMAIL,
                "2019-05-15T15:20:31Z",
                None,
            ),
        ]
    }

    #[test]
    fn every_corpus_payload_normalises() {
        for e in corpus_expectations() {
            let (name, body) = e.file;
            let j = job(e.event, body);
            assert_eq!(j.status, Some(e.status.clone()), "{name}: status");
            assert_eq!(j.status_raw.as_deref(), Some(e.raw), "{name}: status_raw");
            assert_eq!(j.phase, Some(e.phase), "{name}: phase");
            assert_eq!(j.pipeline.as_deref(), Some(e.pipeline), "{name}: pipeline");
            assert_eq!(j.job.as_deref(), e.job, "{name}: job");
            assert_eq!(j.source.as_deref(), Some(e.source), "{name}: source");
            assert_eq!(j.project.as_deref(), Some(e.project), "{name}: project");
            assert_eq!(j.run_id.as_deref(), Some(e.run_id), "{name}: run_id");
            assert_eq!(j.branch.as_deref(), Some(e.branch), "{name}: branch");
            assert_eq!(j.commit.as_deref(), Some(e.commit), "{name}: commit");
            assert_eq!(
                j.commit_message.as_deref(),
                e.commit_message,
                "{name}: commit_message"
            );
            assert_eq!(j.actor.as_deref(), Some(e.actor), "{name}: actor");
            assert_eq!(
                j.actor_email.as_deref(),
                e.actor_email,
                "{name}: actor_email"
            );
            assert_eq!(j.url.as_deref(), Some(e.url), "{name}: url");
            assert_eq!(j.started_at, e.started.and_then(utc), "{name}: started_at");
            assert_eq!(
                j.finished_at,
                e.finished.and_then(utc),
                "{name}: finished_at"
            );
            assert_eq!(j.summary.as_deref(), e.summary, "{name}: summary");
            assert_eq!(j.duration_secs, None, "{name}: duration is derived later");
        }
    }

    #[test]
    fn the_corpus_table_covers_every_file() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/github");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".json"))
            .collect();
        on_disk.sort();
        let mut tested: Vec<String> = corpus_expectations()
            .iter()
            .map(|e| e.file.0.to_owned())
            .collect();
        tested.sort();
        assert_eq!(tested, on_disk);
    }

    #[test]
    fn completed_job_duration_is_derived_from_its_times() {
        let (_, body) = corpus!("workflow_job.completed.failure.with-organization.payload.json");
        // 10:34:58 → 10:38:16
        assert_eq!(job("workflow_job", body).duration_secs(), Some(198));
    }

    // === authentication ===

    /// HMAC-SHA256 computed here with the `hmac` crate directly, independently of `auth`.
    fn independent_signature(secret: &str, body: &[u8]) -> String {
        format!("sha256={}", hmac_hex(secret, body))
    }

    fn verify_with(secret: &str, pairs: &[(&str, &str)], body: &[u8]) -> AuthResult {
        let headers = headers(pairs);
        verify(&Secret::new(secret), &request(&headers, body, Utc::now()))
    }

    #[test]
    fn verifies_githubs_published_example() {
        // docs.github.com "Validating webhook deliveries".
        let signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let secret = "It's a Secret to Everybody";
        let pairs = [("x-hub-signature-256", signature)];
        assert_eq!(verify_with(secret, &pairs, b"Hello, World!"), Ok(()));
        assert!(verify_with(secret, &pairs, b"Hello, World?").is_err());
    }

    #[test]
    fn verifies_a_corpus_body_signed_in_the_test() {
        let (_, body) = corpus!("workflow_run.completed.payload.json");
        // Computed with `openssl dgst -sha256 -hmac s3cret` over the file as stored.
        let openssl = "sha256=fa120a85d4deddb83cd637a205b3106450cf3ddcbd01f831688d4811bebc9b92";
        let ours = independent_signature("s3cret", body.as_bytes());
        assert_eq!(ours, openssl);
        assert_eq!(auth::sign_sha256("s3cret", body.as_bytes()), ours);
        let pairs = [("x-hub-signature-256", openssl)];
        assert_eq!(verify_with("s3cret", &pairs, body.as_bytes()), Ok(()));
        // One byte changed, or another secret: refused.
        let tampered = body.replacen("success", "failure", 1);
        assert!(verify_with("s3cret", &pairs, tampered.as_bytes()).is_err());
        assert!(verify_with("s3cret!", &pairs, body.as_bytes()).is_err());
    }

    #[test]
    fn refuses_missing_or_malformed_signatures() {
        let body = br#"{"zen":"Design for failure."}"#;
        let good = independent_signature("s3cret", body);
        let bare_hex = good.trim_start_matches("sha256=").to_owned();
        let upper = format!("sha256={}", bare_hex.to_ascii_uppercase());
        // (headers, accepted, message starts with)
        let cases: &[(&[(&str, &str)], bool, &str)] = &[
            (&[("x-hub-signature-256", good.as_str())], true, ""),
            (&[("x-hub-signature-256", upper.as_str())], true, ""),
            (
                &[],
                false,
                "missing X-Hub-Signature-256: set the webhook's secret",
            ),
            (
                &[("x-hub-signature-256", "")],
                false,
                "missing X-Hub-Signature-256",
            ),
            (
                &[(
                    "x-hub-signature",
                    "sha1=0123456789abcdef0123456789abcdef01234567",
                )],
                false,
                "missing X-Hub-Signature-256: only the legacy SHA-1",
            ),
            (
                &[("x-hub-signature-256", bare_hex.as_str())],
                false,
                "wrong signature",
            ),
            (
                &[("x-hub-signature-256", "sha256=")],
                false,
                "wrong signature",
            ),
            (
                &[("x-hub-signature-256", "sha256=zz")],
                false,
                "wrong signature",
            ),
            (
                &[("x-hub-signature-256", "sha1=00")],
                false,
                "wrong signature",
            ),
            (
                &[("authorization", "Bearer s3cret")],
                false,
                "missing X-Hub-Signature-256",
            ),
        ];
        for (pairs, accepted, message) in cases {
            let result = verify_with("s3cret", pairs, body);
            assert_eq!(result.is_ok(), *accepted, "{pairs:?}: {result:?}");
            if let Err(e) = result {
                assert!(e.starts_with(message), "{pairs:?}: {e}");
                assert!(!e.contains("s3cret"), "{e}");
            }
        }
    }

    // === delivery id ===

    #[test]
    fn delivery_id_is_hook_and_guid() {
        let cases: &[(&[(&str, &str)], Option<&str>)] = &[
            (
                &[
                    ("x-github-delivery", "72d3162e"),
                    ("x-github-hook-id", "292430182"),
                ],
                Some("292430182:72d3162e"),
            ),
            (&[("x-github-delivery", "72d3162e")], Some("72d3162e")),
            (
                &[("x-github-delivery", "72d3162e"), ("x-github-hook-id", "")],
                Some("72d3162e"),
            ),
            (&[("x-github-hook-id", "292430182")], None),
            (&[], None),
        ];
        for (pairs, expected) in cases {
            let headers = headers(pairs);
            assert_eq!(
                delivery_id(&request(&headers, b"{}", Utc::now())).as_deref(),
                *expected,
                "{pairs:?}"
            );
        }
    }

    // === events that make no report ===

    #[test]
    fn ping_and_other_events_are_ignored() {
        let ping = r#"{"zen":"Keep it logically awesome.","hook_id":292430182,"hook":{"type":"Repository","events":["workflow_run"]}}"#;
        assert!(ignored("ping", ping).starts_with("GitHub ping"));
        let push =
            r#"{"ref":"refs/heads/main","after":"9f2c1e7","repository":{"full_name":"acme/api"}}"#;
        assert_eq!(
            ignored("push", push),
            r#"GitHub event "push" is not reported (only workflow_run, workflow_job, check_suite and check_run are)"#
        );
        assert!(ignored("deployment_status", "{}").contains("deployment_status"));
        // A button pressed on a check changes nothing.
        let action = r#"{"action":"requested_action","check_run":{"name":"lint","status":"completed","conclusion":"success"}}"#;
        assert!(ignored("check_run", action).starts_with("check_run requested_action"));
    }

    #[test]
    fn missing_event_header_is_inferred_from_the_body() {
        let (_, body) = corpus!("workflow_job.completed.success.with-organization.payload.json");
        let none = HeaderMap::new();
        let Ok(Parsed::Event(Event::JobStatus(j))) =
            parse(&request(&none, body.as_bytes(), Utc::now()))
        else {
            panic!("not inferred");
        };
        assert_eq!(j.job.as_deref(), Some("linters"));
        let Ok(Parsed::Ignored(reason)) = parse(&request(&none, br#"{"zen":"x"}"#, Utc::now()))
        else {
            panic!("not ignored");
        };
        assert!(reason.starts_with("no X-GitHub-Event header"), "{reason}");
    }

    #[test]
    fn bodies_that_are_not_json_objects_are_400() {
        for body in [
            "",
            "not json",
            "[1,2]",
            "\"workflow_run\"",
            "null",
            "{\"action\":",
        ] {
            for event in ["workflow_run", "ping", "push"] {
                let err = parse_as(event, body).expect_err(body);
                assert!(err.field.is_none(), "{body}: {err:?}");
                assert!(
                    err.message.starts_with("body is not valid JSON: "),
                    "{body}: {err}"
                );
            }
        }
        let headers = github_headers("workflow_run");
        let err =
            parse(&request(&headers, &[0xff, 0xfe, b'{'], Utc::now())).expect_err("non-UTF-8");
        assert!(err.message.starts_with("body is not valid JSON: "), "{err}");
    }

    #[test]
    fn an_event_without_its_object_names_the_field() {
        for event in ["workflow_run", "workflow_job", "check_suite", "check_run"] {
            let err = parse_as(event, r#"{"action":"completed"}"#).expect_err(event);
            assert_eq!(err.field.as_deref(), Some(event));
            assert_eq!(err.message, format!("{event}: missing or empty object"));
            // The object of another type, or an empty one, is just as missing.
            for value in ["\"x\"", "{}"] {
                let body = format!(r#"{{"action":"completed","{event}":{value}}}"#);
                assert_eq!(
                    parse_as(event, &body).expect_err(event).field.as_deref(),
                    Some(event)
                );
            }
        }
    }

    // === variants ===

    #[test]
    fn minimal_and_oddly_typed_payloads_degrade_gracefully() {
        type Case = (
            &'static str,
            &'static str,
            &'static str,
            fn(&JobStatus) -> bool,
        );
        let cases: &[Case] = &[
            (
                "bare minimum",
                "workflow_run",
                r#"{"workflow_run":{"status":"completed","conclusion":"success"}}"#,
                |j| {
                    j.status == Some(Status::Success)
                        && j.phase == Some(Phase::Completed)
                        && j.pipeline.is_none()
                        && j.project.is_none()
                        && j.actor.is_none()
                        && j.url.is_none()
                },
            ),
            (
                "empty name, no workflow: the file path",
                "workflow_run",
                r#"{"action":"completed","workflow_run":{"name":"","path":".github/workflows/ci.yml","status":"completed","conclusion":"failure"}}"#,
                |j| j.pipeline.as_deref() == Some(".github/workflows/ci.yml"),
            ),
            (
                "no name at all: the run number",
                "workflow_run",
                r#"{"action":"completed","workflow":{"name":"  "},"workflow_run":{"name":null,"run_number":163,"id":9,"conclusion":"success"}}"#,
                |j| {
                    j.pipeline.as_deref() == Some("workflow #163")
                        && j.run_id.as_deref() == Some("9")
                },
            ),
            (
                "wrong-typed optional fields are absent",
                "workflow_run",
                r#"{"action":"completed","repository":{"full_name":7},"sender":{"login":["x"]},"workflow_run":{"name":{"a":1},"head_branch":5,"head_sha":true,"html_url":[],"run_started_at":12,"updated_at":"yesterday","conclusion":"success","pull_requests":"none","run_attempt":"2","actor":"octocat"}}"#,
                |j| {
                    j.status == Some(Status::Success)
                        && j.pipeline.is_none()
                        && j.branch.is_none()
                        && j.commit.is_none()
                        && j.url.is_none()
                        && j.project.is_none()
                        && j.actor.is_none()
                        && j.started_at.is_none()
                        && j.finished_at.is_none()
                        && j.summary.is_none()
                },
            ),
            (
                "unknown conclusion: unknown, kept raw",
                "workflow_run",
                r#"{"action":"completed","workflow_run":{"name":"CI","status":"completed","conclusion":"finished"}}"#,
                |j| {
                    j.status == Some(Status::Unknown)
                        && j.status_raw.as_deref() == Some("finished")
                        && j.phase == Some(Phase::Completed)
                },
            ),
            (
                "unknown status, no conclusion: running, kept raw",
                "workflow_job",
                r#"{"action":"provisioning","workflow_job":{"name":"build","status":"provisioning"}}"#,
                |j| {
                    j.status == Some(Status::Unknown)
                        && j.status_raw.as_deref() == Some("provisioning")
                        && j.phase == Some(Phase::InProgress)
                },
            ),
            (
                "re-run by someone else: triggering_actor",
                "workflow_run",
                r#"{"action":"completed","sender":{"login":"s"},"workflow_run":{"name":"CI","conclusion":"success","actor":{"login":"author"},"triggering_actor":{"login":"rerunner"},"run_attempt":3,"pull_requests":[{"number":12},{"number":"13"}]}}"#,
                |j| {
                    j.actor.as_deref() == Some("rerunner")
                        && j.summary.as_deref() == Some("PR #12, #13 · attempt 3")
                },
            ),
            (
                "sender when the run names nobody",
                "workflow_run",
                r#"{"action":"completed","sender":{"login":"octocat","email":"o@example.com"},"workflow_run":{"name":"CI","conclusion":"success","actor":{"login":""}}}"#,
                |j| {
                    j.actor.as_deref() == Some("octocat")
                        && j.actor_email.as_deref() == Some("o@example.com")
                },
            ),
            (
                "refs/heads/ stripped",
                "workflow_job",
                r#"{"action":"completed","workflow_job":{"name":"b","head_branch":"refs/heads/feat/x","conclusion":"success"}}"#,
                |j| j.branch.as_deref() == Some("feat/x"),
            ),
            (
                "job without workflow_name: the job name is the pipeline",
                "workflow_job",
                r#"{"action":"completed","workflow_job":{"name":"build","run_id":42,"conclusion":"success"}}"#,
                |j| j.pipeline.as_deref() == Some("build") && j.run_id.as_deref() == Some("42"),
            ),
            (
                "job with no name: the run id",
                "workflow_job",
                r#"{"action":"queued","workflow_job":{"run_id":42,"status":"queued"}}"#,
                |j| j.pipeline.as_deref() == Some("run #42") && j.job.is_none(),
            ),
            (
                "check_run completed by Actions",
                "check_run",
                r#"{"action":"completed","check_run":{"name":"test (ubuntu)","status":"completed","conclusion":"timed_out","html_url":"https://github.com/a/b/runs/4","head_sha":"abc","started_at":"2026-11-24T08:00:00Z","completed_at":"2026-11-24T08:10:00Z","app":{"slug":"github-actions","name":"GitHub Actions"},"check_suite":{"id":77,"head_branch":"main"}},"repository":{"full_name":"a/b"},"sender":{"login":"octocat"}}"#,
                |j| {
                    j.status == Some(Status::Failure)
                        && j.status_raw.as_deref() == Some("timed_out")
                        && j.job.as_deref() == Some("test (ubuntu)")
                        && j.pipeline.as_deref() == Some("GitHub Actions")
                        && j.source.as_deref() == Some(GITHUB_ACTIONS)
                        && j.run_id.as_deref() == Some("77")
                        && j.branch.as_deref() == Some("main")
                        && j.duration_secs() == Some(600)
                },
            ),
            (
                "check_run created while queued, by another app",
                "check_run",
                r#"{"action":"created","check_run":{"id":5,"name":"ci/circleci: build","status":"queued","details_url":"https://circleci.com/x","app":{"slug":"circleci-checks","name":"CircleCI Checks"}}}"#,
                |j| {
                    j.phase == Some(Phase::Queued)
                        && j.status_raw.as_deref() == Some("queued")
                        && j.source.as_deref() == Some("GitHub")
                        && j.pipeline.as_deref() == Some("CircleCI Checks")
                        && j.url.as_deref() == Some("https://circleci.com/x")
                        && j.run_id.as_deref() == Some("5")
                },
            ),
        ];
        for (label, event, body, check) in cases {
            let j = job(event, body);
            assert!(check(&j), "{label}: {j:?}");
        }
    }

    #[test]
    fn long_and_non_ascii_commit_messages_are_kept() {
        let title = "修复：登录页面崩溃 🚀 — ünïcödé";
        let long = format!("{title}\n\n{}", "很长的说明。".repeat(2000));
        let body = serde_json::json!({
            "action": "completed",
            "workflow_run": {
                "name": "构建 CI 🚦",
                "status": "completed",
                "conclusion": "failure",
                "head_branch": "功能/登录",
                "head_commit": {"message": long, "author": {"email": "张三@example.cn"}},
                "triggering_actor": {"login": "张三"}
            }
        })
        .to_string();
        let j = job("workflow_run", &body);
        assert_eq!(j.commit_message.as_deref(), Some(long.as_str()));
        assert_eq!(j.pipeline.as_deref(), Some("构建 CI 🚦"));
        assert_eq!(j.branch.as_deref(), Some("功能/登录"));
        assert_eq!(j.actor.as_deref(), Some("张三"));
        assert_eq!(j.actor_email.as_deref(), Some("张三@example.cn"));
        assert_eq!(j.status, Some(Status::Failure));
    }

    #[test]
    fn lifecycle_table() {
        // "action status conclusion" ("-" for absent) → "status phase raw"
        let cases = [
            ("requested queued -", "pending queued queued"),
            ("requested pending -", "pending queued pending"),
            ("queued waiting -", "pending queued waiting"),
            ("waiting waiting -", "pending queued waiting"),
            (
                "in_progress in_progress -",
                "running in_progress in_progress",
            ),
            ("completed completed success", "success completed success"),
            ("completed completed failure", "failure completed failure"),
            (
                "completed completed timed_out",
                "failure completed timed_out",
            ),
            (
                "completed completed startup_failure",
                "failure completed startup_failure",
            ),
            ("completed completed stale", "failure completed stale"),
            (
                "completed completed cancelled",
                "cancelled completed cancelled",
            ),
            ("completed completed skipped", "skipped completed skipped"),
            ("completed completed neutral", "skipped completed neutral"),
            (
                "completed completed action_required",
                "pending queued action_required",
            ),
            ("completed completed Mystery", "unknown completed Mystery"),
            ("completed completed -", "unknown completed completed"),
            ("COMPLETED - SUCCESS", "success completed SUCCESS"),
            // No action, or one that is not a state: the status decides.
            ("- in_progress -", "running in_progress in_progress"),
            ("created queued -", "pending queued queued"),
            ("created completed success", "success completed success"),
            ("- - failure", "failure completed failure"),
            ("- weird -", "unknown in_progress weird"),
            ("weird - -", "unknown in_progress weird"),
            ("- - -", "unknown in_progress -"),
            // A stale snapshot under a re-request, or a requested run that already ended.
            (
                "rerequested completed success",
                "pending queued rerequested",
            ),
            (
                "requested completed startup_failure",
                "pending queued requested",
            ),
        ];
        let words = |s: &'static str| -> Vec<Option<&'static str>> {
            s.split(' ').map(|w| (w != "-").then_some(w)).collect()
        };
        for (input, expected) in cases {
            let (i, e) = (words(input), words(expected));
            let phase = match e[1] {
                Some("queued") => Phase::Queued,
                Some("in_progress") => Phase::InProgress,
                _ => Phase::Completed,
            };
            let status = Status::parse(e[0].unwrap());
            assert_eq!(
                lifecycle(i[0], i[1], i[2]),
                Lifecycle::new(status, phase, e[2]),
                "{input}"
            );
        }
    }
}
