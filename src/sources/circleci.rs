//! CircleCI outbound webhooks (ci-webhooks.md §7): `workflow-completed` and `job-completed`,
//! named by the `circleci-event-type` header and signed with `circleci-signature: v1=<hex>`
//! (HMAC-SHA256 of the raw body under the webhook's signing secret). Every other event type,
//! including the UI's test ping, is ignored. The body's `id` is the delivery id: CircleCI
//! retries on errors and time-outs with the same `id`.
//!
//! Both payload styles are read: GitHub OAuth / Bitbucket Cloud projects carry `pipeline.vcs`,
//! GitLab / GitHub App / Bitbucket Data Center projects `pipeline.trigger_parameters`.

use serde_json::Value;

use super::auth::{self, AuthResult};
use super::json::{self, UNKNOWN, branch_name, first, text, time};
use super::{Event, JobStatus, Parsed, PayloadError, Phase, Request, Status};
use crate::config::Secret;

/// The name shown as the event's `source`.
const SOURCE: &str = "CircleCI";

/// `circleci-signature` must hold a `v1=<hex HMAC-SHA256 of the body>` entry that matches; the
/// header is a comma-separated list, and any matching `v1` entry passes (unknown versions are
/// skipped, never used as a fallback).
pub fn verify(secret: &Secret, request: &Request<'_>) -> AuthResult {
    let Some(header) = auth::present(request.headers, "circleci-signature") else {
        return Err(
            "missing circleci-signature header (set a signing secret on the CircleCI webhook)"
                .to_owned(),
        );
    };
    let mut v1_seen = false;
    for entry in header.split(',') {
        let Some((version, hex)) = entry.trim().split_once('=') else {
            continue;
        };
        if version.trim() != "v1" {
            continue;
        }
        v1_seen = true;
        if auth::hmac_hex_matches(secret, request.body, hex) {
            return Ok(());
        }
    }
    if v1_seen {
        Err("circleci-signature does not match the body (wrong signing secret?)".to_owned())
    } else {
        Err("circleci-signature has no v1=<hex> entry".to_owned())
    }
}

/// Normalises `workflow-completed` and `job-completed`; anything else is ignored.
pub fn parse(request: &Request<'_>) -> Result<Parsed, PayloadError> {
    let body = json::object(request.body, Some("a CircleCI webhook event"))?;
    let event = auth::header(request.headers, "circleci-event-type")
        .map(str::to_owned)
        .or_else(|| text(&body, "/type"));
    let is_job = match event.as_deref() {
        Some("workflow-completed") => false,
        Some("job-completed") => true,
        Some(other) => {
            return Ok(Parsed::Ignored(format!(
                "CircleCI event {other:?}: only workflow-completed and job-completed make reports"
            )));
        }
        None => {
            return Ok(Parsed::Ignored(
                "no circleci-event-type header: not a CircleCI webhook event".to_owned(),
            ));
        }
    };

    let (raw, started_at, finished_at, run_id, url) = if is_job {
        let url = text(&body, "/job/url").or_else(|| {
            let workflow = text(&body, "/workflow/url")?;
            let number = text(&body, "/job/number")?;
            Some(format!("{}/jobs/{number}", workflow.trim_end_matches('/')))
        });
        (
            text(&body, "/job/status"),
            time(&body, "/job/started_at"),
            time(&body, "/job/stopped_at"),
            text(&body, "/job/number"),
            url.or_else(|| text(&body, "/workflow/url")),
        )
    } else {
        (
            text(&body, "/workflow/status"),
            time(&body, "/workflow/created_at"),
            time(&body, "/workflow/stopped_at"),
            text(&body, "/pipeline/number"),
            text(&body, "/workflow/url"),
        )
    };
    let (status, phase) = raw.as_deref().map_or(UNKNOWN, normalise);

    let job = JobStatus {
        job: if is_job {
            text(&body, "/job/name")
        } else {
            None
        },
        pipeline: text(&body, "/workflow/name")
            .or_else(|| text(&body, "/pipeline/number").map(|n| format!("#{n}"))),
        status: Some(status),
        status_raw: raw,
        source: Some(SOURCE.to_owned()),
        phase: Some(phase),
        project: project(&body),
        run_id,
        branch: first(
            &body,
            &[
                "/pipeline/vcs/branch",
                "/pipeline/vcs/tag",
                "/pipeline/trigger_parameters/git/branch",
                "/pipeline/trigger_parameters/git/tag",
                "/pipeline/trigger_parameters/gitlab/branch",
            ],
        )
        .as_deref()
        .and_then(branch_name),
        commit: first(
            &body,
            &[
                "/pipeline/vcs/revision",
                "/pipeline/trigger_parameters/git/checkout_sha",
                "/pipeline/trigger_parameters/gitlab/checkout_sha",
                "/pipeline/trigger_parameters/gitlab/commit_sha",
            ],
        ),
        commit_message: commit_message(&body),
        url,
        actor: first(
            &body,
            &[
                "/pipeline/trigger/actor/login",
                "/pipeline/trigger_parameters/gitlab/user_username",
            ],
        ),
        actor_email: first(
            &body,
            &[
                "/pipeline/vcs/commit/author/email",
                "/pipeline/trigger_parameters/gitlab/commit_author_email",
            ],
        ),
        started_at,
        finished_at,
        duration_secs: None,
        summary: None,
    };
    Ok(Parsed::Event(Event::JobStatus(job)))
}

/// The body's `id`: unique per event and kept when CircleCI retries the delivery.
pub fn delivery_id(request: &Request<'_>) -> Option<String> {
    let body: Value = serde_json::from_slice(request.body).ok()?;
    text(&body, "/id")
}

/// Workflow and job statuses. Only terminal events are sent, but the API's in-between values
/// are mapped too: `failing` (still running with a failed job) is a failure in progress.
fn normalise(raw: &str) -> (Status, Phase) {
    match raw.trim().to_ascii_lowercase().as_str() {
        "success" => (Status::Success, Phase::Completed),
        "failed" | "error" | "unauthorized" | "infrastructure_fail" | "timedout" => {
            (Status::Failure, Phase::Completed)
        }
        "failing" => (Status::Failure, Phase::InProgress),
        "canceled" | "cancelled" => (Status::Cancelled, Phase::Completed),
        "not_run" => (Status::Skipped, Phase::Completed),
        "on_hold" | "queued" | "not_running" | "blocked" => (Status::Pending, Phase::Queued),
        "running" => (Status::Running, Phase::InProgress),
        _ => UNKNOWN,
    }
}

/// `gh/owner/repo` (or `github/…`, `bb/…`, `bitbucket/…`) → `owner/repo`. Opaque slugs of
/// GitLab / GitHub App projects (`circleci/<org-id>/<project-id>`) → `organization/name`.
fn project(body: &Value) -> Option<String> {
    let name = text(body, "/project/name");
    if let Some(slug) = text(body, "/project/slug") {
        let mut parts = slug.splitn(3, '/');
        let (vcs, owner, repo) = (parts.next(), parts.next(), parts.next());
        if let (Some(vcs), Some(owner), Some(repo)) = (vcs, owner, repo) {
            let known_vcs = matches!(vcs, "gh" | "github" | "bb" | "bitbucket" | "gl" | "gitlab");
            if known_vcs && !owner.is_empty() && !repo.is_empty() {
                return Some(format!("{owner}/{repo}"));
            }
        }
    }
    match (text(body, "/organization/name"), name) {
        (Some(org), Some(name)) => Some(format!("{org}/{name}")),
        (None, name) => name,
        (Some(_), None) => None,
    }
}

/// `vcs.commit.subject` (+ a blank line + `body`), else GitLab's `commit_message`/`commit_title`.
fn commit_message(body: &Value) -> Option<String> {
    match (
        text(body, "/pipeline/vcs/commit/subject"),
        text(body, "/pipeline/vcs/commit/body"),
    ) {
        (Some(subject), Some(rest)) => Some(format!("{subject}\n\n{rest}")),
        (Some(subject), None) => Some(subject),
        (None, rest) => first(
            body,
            &[
                "/pipeline/trigger_parameters/gitlab/commit_message",
                "/pipeline/trigger_parameters/gitlab/commit_title",
            ],
        )
        .or(rest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::testing::{headers, hmac_hex, request, utc};
    use axum::http::HeaderMap;
    use chrono::Utc;

    // Built from the samples in CircleCI's webhooks reference (circleci/circleci-docs,
    // `jekyll/_cci2/webhooks-reference.adoc`, MIT): GitHub OAuth style with `pipeline.vcs`.
    const WORKFLOW_COMPLETED: &str = r#"{
      "id": "3888f21b-eaa7-38e3-8f3d-75a63bba8895",
      "type": "workflow-completed",
      "happened_at": "2021-09-01T22:49:34.317Z",
      "webhook": {"id": "cf8c4fdd-0587-4da1-b4ca-4846e9640af9", "name": "Sample Webhook"},
      "project": {"id": "84996744-a854-4f5e-aea3-04e2851dc1d2", "name": "webhook-service",
                  "slug": "github/circleci/webhook-service"},
      "organization": {"id": "f22b6566-597d-46d5-ba74-99ef5bb3d85c", "name": "circleci"},
      "workflow": {
        "id": "fda08377-fe7e-46b1-8992-3a7aaecac9c3",
        "name": "build-test-deploy",
        "created_at": "2021-09-01T22:49:03.616Z",
        "stopped_at": "2021-09-01T22:49:34.170Z",
        "url": "https://app.circleci.com/pipelines/github/circleci/webhook-service/130/workflows/fda08377-fe7e-46b1-8992-3a7aaecac9c3",
        "status": "success"
      },
      "pipeline": {
        "id": "1285fe1d-d3a6-44fc-8886-8979558254c4",
        "number": 130,
        "created_at": "2021-09-01T22:49:03.544Z",
        "trigger": {"type": "webhook"},
        "vcs": {
          "provider_name": "github",
          "origin_repository_url": "https://github.com/circleci/webhook-service",
          "target_repository_url": "https://github.com/circleci/webhook-service",
          "revision": "1dc6aa69429bff4806ad6afe58d3d8f57e25973e",
          "commit": {
            "subject": "Description of change",
            "body": "More details about the change",
            "author": {"name": "Author Name", "email": "author.email@example.com"},
            "authored_at": "2021-09-01T22:48:53Z",
            "committer": {"name": "Committer Name", "email": "committer.email@example.com"},
            "committed_at": "2021-09-01T22:48:53Z"
          },
          "branch": "main"
        }
      }
    }"#;

    const JOB_COMPLETED: &str = r#"{
      "id": "8bd71c28-4969-3677-8940-3e3a61c46660",
      "type": "job-completed",
      "happened_at": "2021-09-01T22:49:34.279Z",
      "webhook": {"id": "cf8c4fdd-0587-4da1-b4ca-4846e9640af9", "name": "Sample Webhook"},
      "project": {"id": "84996744-a854-4f5e-aea3-04e2851dc1d2", "name": "webhook-service",
                  "slug": "gh/circleci/webhook-service"},
      "organization": {"id": "f22b6566-597d-46d5-ba74-99ef5bb3d85c", "name": "circleci"},
      "pipeline": {
        "id": "1285fe1d-d3a6-44fc-8886-8979558254c4",
        "number": 130,
        "created_at": "2021-09-01T22:49:03.544Z",
        "trigger": {"type": "webhook", "actor": {"login": "octocat"}},
        "vcs": {
          "provider_name": "github",
          "revision": "1dc6aa69429bff4806ad6afe58d3d8f57e25973e",
          "commit": {"subject": "Description of change",
                     "author": {"name": "Author Name", "email": "author.email@example.com"}},
          "branch": "main"
        }
      },
      "workflow": {
        "id": "fda08377-fe7e-46b1-8992-3a7aaecac9c3",
        "name": "welcome",
        "created_at": "2021-09-01T22:49:03.616Z",
        "stopped_at": "2021-09-01T22:49:34.170Z",
        "url": "https://app.circleci.com/pipelines/github/circleci/webhook-service/130/workflows/fda08377-fe7e-46b1-8992-3a7aaecac9c3"
      },
      "job": {
        "id": "8b91f9a8-7975-4e60-916c-f0152ccbc937",
        "name": "test",
        "started_at": "2021-09-01T22:49:28.841Z",
        "stopped_at": "2021-09-01T22:49:34.170Z",
        "status": "failed",
        "number": 136
      }
    }"#;

    // The GitLab / GitHub App style sample (opaque slug, `trigger_parameters`).
    const WORKFLOW_COMPLETED_GITLAB: &str = r#"{
      "type": "workflow-completed",
      "id": "cbabbb40-6084-4f91-8311-a326c0f4963a",
      "happened_at": "2022-05-27T16:20:13.954328Z",
      "webhook": {"id": "e4da0d23-31cf-4047-8a7e-8ffb14cd0100", "name": "test"},
      "workflow": {
        "id": "c2006ece-778d-49fc-9e6e-b9965f72bee9",
        "name": "build",
        "created_at": "2022-05-27T16:20:07.631Z",
        "stopped_at": "2022-05-27T16:20:13.812Z",
        "url": "https://app.circleci.com/pipelines/circleci/DdaVtNusHqi24D4YT3X4eu/6EkDPZoN4ZdMKKZtBkRodt/1/workflows/c2006ece-778d-49fc-9e6e-b9965f72bee9",
        "status": "failed"
      },
      "pipeline": {
        "id": "37c74cb7-d64d-4032-8731-1cb95bfef921",
        "number": 1,
        "created_at": "2022-04-13T11:10:18.804Z",
        "trigger": {"type": "gitlab"},
        "trigger_parameters": {
          "gitlab": {
            "web_url": "https://gitlab.com/circleci/hello-world",
            "commit_author_name": "Commit Author",
            "user_username": "username",
            "branch": "main",
            "commit_title": "Update README.md",
            "commit_message": "Update README.md",
            "repo_url": "git@gitlab.com:circleci/hello-world.git",
            "type": "push",
            "ref": "refs/heads/main",
            "repo_name": "hello-world",
            "commit_author_email": "committer.email@example.com",
            "checkout_sha": "850a1519f25d14e968649cc420d1bd381715c05c",
            "commit_sha": "850a1519f25d14e968649cc420d1bd381715c05c"
          },
          "git": {
            "tag": "",
            "checkout_sha": "850a1519f25d14e968649cc420d1bd381715c05c",
            "ref": "refs/heads/main",
            "branch": "main",
            "checkout_url": "git@gitlab.com:circleci/hello-world.git"
          },
          "circleci": {"event_time": "2022-04-13T11:10:18.349Z",
                       "actor_id": "6a19122c-40e0-4d56-a875-aac6ccc27700",
                       "event_type": "push", "trigger_type": "gitlab"}
        }
      },
      "project": {"id": "2a68fe5f-2fe5-4d4f-91e1-15f111116743", "name": "hello-world",
                  "slug": "circleci/DdaVtNusHqi24D4YT3X4eu/6EkDPZoN4ZdMKKZtBkRodt"},
      "organization": {"id": "66491562-90a9-4065-9249-4b0ce3b77452", "name": "circleci"}
    }"#;

    fn delivery_headers(event: &str, secret: &str, body: &str) -> HeaderMap {
        let signature = format!("v1={}", hmac_hex(secret, body.as_bytes()));
        headers(&[
            ("content-type", "application/json"),
            ("user-agent", "CircleCI-Webhook/1.0"),
            ("circleci-event-type", event),
            ("circleci-signature", &signature),
        ])
    }

    fn parsed(event: &str, body: &str) -> Parsed {
        let h = delivery_headers(event, "secret", body);
        parse(&request(&h, body, Utc::now())).unwrap_or_else(|e| panic!("{body}: {e}"))
    }

    fn job(event: &str, body: &str) -> JobStatus {
        match parsed(event, body) {
            Parsed::Event(Event::JobStatus(j)) => j,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn published_known_answers() {
        // CircleCI's docs: secret `secret` with bodies `hello world` and `foo`.
        let cases = [
            (
                "hello world",
                "734cc62f32841568f45715aeb9f4d7891324e6d948e4c6c60c0621cdac48623a",
            ),
            (
                "foo",
                "773ba44693c7553d6ee20f61ea5d2757a9a4f4a44d2841ae4e95b52e4cd62db4",
            ),
        ];
        let secret = Secret::new("secret");
        for (body, published) in cases {
            assert_eq!(hmac_hex("secret", body.as_bytes()), published, "{body}");
            let h = headers(&[("circleci-signature", &format!("v1={published}"))]);
            assert_eq!(
                verify(&secret, &request(&h, body, Utc::now())),
                Ok(()),
                "{body}"
            );
            let h = headers(&[("circleci-signature", &format!("v1={published}"))]);
            let other = if body == "foo" { "hello world" } else { "foo" };
            assert!(
                verify(&secret, &request(&h, other, Utc::now())).is_err(),
                "{body}"
            );
        }
    }

    #[test]
    fn signature_header_forms() {
        let secret = Secret::new("whsec-123");
        let body = WORKFLOW_COMPLETED;
        let good = hmac_hex("whsec-123", body.as_bytes());
        let bad = hmac_hex("other", body.as_bytes());
        // (header, accepted, error contains)
        let cases: Vec<(Option<String>, bool, &str)> = vec![
            (Some(format!("v1={good}")), true, ""),
            (Some(format!("v1={}", good.to_uppercase())), true, ""),
            (Some(format!("v1={bad},v1={good}")), true, ""),
            (Some(format!("v2=abc, v1={good}")), true, ""),
            (Some(format!("v1={bad}")), false, "does not match"),
            (Some(format!("v2={good}")), false, "no v1"),
            (Some(good.clone()), false, "no v1"),
            (Some("v1=zz".to_owned()), false, "does not match"),
            (Some(String::new()), false, "missing"),
            (None, false, "missing"),
        ];
        for (value, ok, contains) in cases {
            let h = match &value {
                Some(v) => headers(&[("circleci-signature", v.as_str())]),
                None => HeaderMap::new(),
            };
            let result = verify(&secret, &request(&h, body, Utc::now()));
            assert_eq!(result.is_ok(), ok, "{value:?}: {result:?}");
            if let Err(message) = result {
                assert!(message.contains(contains), "{value:?}: {message}");
                assert!(!message.contains("whsec-123"));
            }
        }
        // The signature is over the exact bytes: one changed byte fails.
        let tampered = body.replace("success", "failed");
        let h = headers(&[("circleci-signature", &format!("v1={good}"))]);
        assert!(verify(&secret, &request(&h, &tampered, Utc::now())).is_err());
    }

    #[test]
    fn documented_samples_normalise() {
        let w = job("workflow-completed", WORKFLOW_COMPLETED);
        assert_eq!(w.status, Some(Status::Success));
        assert_eq!(w.status_raw.as_deref(), Some("success"));
        assert_eq!(w.phase, Some(Phase::Completed));
        assert_eq!(w.source.as_deref(), Some("CircleCI"));
        assert_eq!(w.pipeline.as_deref(), Some("build-test-deploy"));
        assert_eq!(w.job, None);
        assert_eq!(w.project.as_deref(), Some("circleci/webhook-service"));
        assert_eq!(w.run_id.as_deref(), Some("130"));
        assert_eq!(w.branch.as_deref(), Some("main"));
        assert_eq!(
            w.commit.as_deref(),
            Some("1dc6aa69429bff4806ad6afe58d3d8f57e25973e")
        );
        assert_eq!(
            w.commit_message.as_deref(),
            Some("Description of change\n\nMore details about the change")
        );
        assert_eq!(
            w.url.as_deref(),
            Some(
                "https://app.circleci.com/pipelines/github/circleci/webhook-service/130/workflows/fda08377-fe7e-46b1-8992-3a7aaecac9c3"
            )
        );
        assert_eq!(w.actor, None);
        assert_eq!(w.actor_email.as_deref(), Some("author.email@example.com"));
        assert_eq!(w.started_at, utc("2021-09-01T22:49:03.616Z"));
        assert_eq!(w.finished_at, utc("2021-09-01T22:49:34.170Z"));
        assert_eq!(w.duration_secs(), Some(30));

        let j = job("job-completed", JOB_COMPLETED);
        assert_eq!(j.status, Some(Status::Failure));
        assert_eq!(j.status_raw.as_deref(), Some("failed"));
        assert_eq!(j.phase, Some(Phase::Completed));
        assert_eq!(j.pipeline.as_deref(), Some("welcome"));
        assert_eq!(j.job.as_deref(), Some("test"));
        assert_eq!(j.project.as_deref(), Some("circleci/webhook-service"));
        assert_eq!(j.run_id.as_deref(), Some("136"));
        assert_eq!(j.actor.as_deref(), Some("octocat"));
        assert_eq!(j.commit_message.as_deref(), Some("Description of change"));
        assert_eq!(
            j.url.as_deref(),
            Some(
                "https://app.circleci.com/pipelines/github/circleci/webhook-service/130/workflows/fda08377-fe7e-46b1-8992-3a7aaecac9c3/jobs/136"
            )
        );
        assert_eq!(j.started_at, utc("2021-09-01T22:49:28.841Z"));
        assert_eq!(j.finished_at, utc("2021-09-01T22:49:34.170Z"));

        let g = job("workflow-completed", WORKFLOW_COMPLETED_GITLAB);
        assert_eq!(g.status, Some(Status::Failure));
        assert_eq!(g.pipeline.as_deref(), Some("build"));
        assert_eq!(g.project.as_deref(), Some("circleci/hello-world"));
        assert_eq!(g.branch.as_deref(), Some("main"));
        assert_eq!(
            g.commit.as_deref(),
            Some("850a1519f25d14e968649cc420d1bd381715c05c")
        );
        assert_eq!(g.commit_message.as_deref(), Some("Update README.md"));
        assert_eq!(g.actor.as_deref(), Some("username"));
        assert_eq!(
            g.actor_email.as_deref(),
            Some("committer.email@example.com")
        );
        assert_eq!(g.run_id.as_deref(), Some("1"));
    }

    #[test]
    fn statuses_normalise() {
        // (raw, status, phase)
        let cases: &[(&str, Status, Phase)] = &[
            ("success", Status::Success, Phase::Completed),
            ("failed", Status::Failure, Phase::Completed),
            ("error", Status::Failure, Phase::Completed),
            ("unauthorized", Status::Failure, Phase::Completed),
            ("failing", Status::Failure, Phase::InProgress),
            ("canceled", Status::Cancelled, Phase::Completed),
            ("not_run", Status::Skipped, Phase::Completed),
            ("on_hold", Status::Pending, Phase::Queued),
            ("running", Status::Running, Phase::InProgress),
            ("exploded", Status::Unknown, Phase::Completed),
        ];
        for (raw, want, phase) in cases {
            let body = WORKFLOW_COMPLETED
                .replace(r#""status": "success""#, &format!(r#""status": "{raw}""#));
            let w = job("workflow-completed", &body);
            assert_eq!(w.status.as_ref(), Some(want), "{raw}");
            assert_eq!(w.phase, Some(*phase), "{raw}");
            assert_eq!(w.status_raw.as_deref(), Some(*raw));
        }
    }

    #[test]
    fn lenient_variants() {
        type Case = (&'static str, String, fn(&JobStatus) -> bool);
        let long = "修复 🐛 ".repeat(3000);
        let cases: Vec<Case> = vec![
            (
                "empty workflow name falls back to the pipeline number",
                WORKFLOW_COMPLETED.replace(r#""name": "build-test-deploy""#, r#""name": """#),
                |j| j.pipeline.as_deref() == Some("#130"),
            ),
            (
                "no status at all",
                WORKFLOW_COMPLETED.replace(r#""status": "success""#, r#""status": null"#),
                |j| j.status == Some(Status::Unknown) && j.status_raw.is_none(),
            ),
            (
                "bare minimum",
                r#"{"id":"x","type":"workflow-completed","workflow":{"status":"success"}}"#
                    .to_owned(),
                |j| {
                    j.pipeline.is_none()
                        && j.project.is_none()
                        && j.url.is_none()
                        && j.branch.is_none()
                        && j.status == Some(Status::Success)
                },
            ),
            (
                "tag instead of branch",
                WORKFLOW_COMPLETED.replace(r#""branch": "main""#, r#""tag": "v1.2.0""#),
                |j| j.branch.as_deref() == Some("v1.2.0"),
            ),
            (
                "wrong-typed optional fields are absent",
                WORKFLOW_COMPLETED
                    .replace(r#""branch": "main""#, r#""branch": ["main"]"#)
                    .replace(
                        r#""created_at": "2021-09-01T22:49:03.616Z""#,
                        r#""created_at": 12"#,
                    )
                    .replace(
                        r#""stopped_at": "2021-09-01T22:49:34.170Z""#,
                        r#""stopped_at": "soon""#,
                    ),
                |j| j.branch.is_none() && j.started_at.is_none() && j.finished_at.is_none(),
            ),
            (
                "long Chinese and emoji commit messages are kept whole",
                WORKFLOW_COMPLETED.replace("Description of change", &long),
                |j| {
                    j.commit_message
                        .as_deref()
                        .is_some_and(|m| m.starts_with("修复 🐛") && m.chars().count() > 15_000)
                },
            ),
            (
                "unknown slug prefix uses organization/name",
                WORKFLOW_COMPLETED.replace("github/circleci/webhook-service", "xx/1/2"),
                |j| j.project.as_deref() == Some("circleci/webhook-service"),
            ),
        ];
        for (label, body, check) in cases {
            let j = job("workflow-completed", &body);
            assert!(check(&j), "{label}: {:.600}", format!("{j:?}"));
        }
    }

    #[test]
    fn other_events_are_ignored() {
        let ping = r#"{"id":"p1","type":"ping","webhook":{"id":"w","name":"test"}}"#;
        // (event header, body, reason contains)
        let cases: &[(Option<&str>, &str, &str)] = &[
            (Some("ping"), ping, "\"ping\""),
            (
                Some("workflow-started"),
                WORKFLOW_COMPLETED,
                "\"workflow-started\"",
            ),
            (None, ping, "\"ping\""),
            (None, r#"{"id":"x"}"#, "no circleci-event-type header"),
        ];
        for (event, body, contains) in cases {
            let h = match event {
                Some(e) => headers(&[("circleci-event-type", e)]),
                None => HeaderMap::new(),
            };
            match parse(&request(&h, body, Utc::now())) {
                Ok(Parsed::Ignored(reason)) => assert!(reason.contains(contains), "{reason}"),
                other => panic!("{event:?}: {other:?}"),
            }
        }
        // Without the header the body's `type` names the event.
        let h = HeaderMap::new();
        assert!(matches!(
            parse(&request(&h, JOB_COMPLETED, Utc::now())),
            Ok(Parsed::Event(Event::JobStatus(j))) if j.job.as_deref() == Some("test")
        ));
    }

    #[test]
    fn bodies_that_are_not_json_objects() {
        let h = headers(&[("circleci-event-type", "workflow-completed")]);
        for body in ["", "hello world", "[]", "\"x\"", "{\"id\":"] {
            let err = parse(&request(&h, body, Utc::now())).expect_err(body);
            assert!(err.field.is_none(), "{body}");
            assert!(
                err.message.starts_with("body is not valid JSON"),
                "{body}: {err}"
            );
        }
    }

    #[test]
    fn delivery_id_is_the_body_id() {
        let h = HeaderMap::new();
        assert_eq!(
            delivery_id(&request(&h, WORKFLOW_COMPLETED, Utc::now())).as_deref(),
            Some("3888f21b-eaa7-38e3-8f3d-75a63bba8895")
        );
        assert_eq!(
            delivery_id(&request(&h, JOB_COMPLETED, Utc::now())).as_deref(),
            Some("8bd71c28-4969-3677-8940-3e3a61c46660")
        );
        assert_eq!(
            delivery_id(&request(&h, r#"{"type":"ping"}"#, Utc::now())),
            None
        );
        assert_eq!(delivery_id(&request(&h, "nope", Utc::now())), None);
    }
}
