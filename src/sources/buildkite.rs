//! Buildkite pipeline webhooks (ci-webhooks.md §6): `build.*` and `job.*` events named by
//! `X-Buildkite-Event`, with a `{event, build, pipeline, sender}` body (job events add `job`).
//! Authentication is either the webhook token in clear (`X-Buildkite-Token`) or
//! `X-Buildkite-Signature: timestamp=<unix>,signature=<hex HMAC-SHA256 of "<timestamp>.<body>">`
//! under the same token, with the timestamp inside the replay window. `ping`, agent and other
//! events are ignored.
//!
//! Only `build.finished` (and `build.skipped`) complete a build: `build.failing` is a failure
//! still in progress, and an early event whose body already shows a later state never counts as
//! completed, so one build makes one completed report.

use serde_json::Value;

use super::auth::{self, AuthResult};
use super::json::{self, UNKNOWN, branch_name, first, text, time};
use super::{
    Event, JobStatus, Parsed, PayloadError, Phase, Request, Status, TIMESTAMP_WINDOW_SECS,
};
use crate::config::Secret;

/// The name shown as the event's `source`.
const SOURCE: &str = "Buildkite";

/// `X-Buildkite-Token` equal to the secret, or a valid `X-Buildkite-Signature` whose timestamp
/// is within [`TIMESTAMP_WINDOW_SECS`] of `request.now`.
pub fn verify(secret: &Secret, request: &Request<'_>) -> AuthResult {
    let token = auth::present(request.headers, "x-buildkite-token");
    let signature = auth::present(request.headers, "x-buildkite-signature");
    if let Some(token) = token {
        if auth::ct_eq(token.as_bytes(), secret.expose().as_bytes()) {
            return Ok(());
        }
        if signature.is_none() {
            return Err("wrong X-Buildkite-Token".to_owned());
        }
    }
    match signature {
        Some(signature) => check_signature(secret, signature, request),
        None => Err(
            "missing credentials: Buildkite sends X-Buildkite-Token or X-Buildkite-Signature"
                .to_owned(),
        ),
    }
}

/// `timestamp=<unix seconds>,signature=<hex>`: the MAC covers `"<timestamp>." + body`, with the
/// timestamp exactly as sent.
fn check_signature(secret: &Secret, header: &str, request: &Request<'_>) -> AuthResult {
    let (timestamp, signature) = signature_parts(header).ok_or_else(|| {
        "X-Buildkite-Signature must be timestamp=<unix seconds>,signature=<hex>".to_owned()
    })?;
    let Ok(seconds) = timestamp.parse::<i64>() else {
        return Err(format!(
            "X-Buildkite-Signature timestamp {timestamp:?} is not a number of seconds"
        ));
    };
    let mut message = Vec::with_capacity(timestamp.len() + 1 + request.body.len());
    message.extend_from_slice(timestamp.as_bytes());
    message.push(b'.');
    message.extend_from_slice(request.body);
    if !auth::hmac_hex_matches(secret, &message, signature) {
        return Err("X-Buildkite-Signature does not match the body (wrong token?)".to_owned());
    }
    let skew = request
        .now
        .timestamp()
        .saturating_sub(seconds)
        .saturating_abs();
    if skew > TIMESTAMP_WINDOW_SECS {
        return Err(format!(
            "X-Buildkite-Signature timestamp {seconds} is more than {TIMESTAMP_WINDOW_SECS} s from the relay's clock (replayed or delayed delivery)"
        ));
    }
    Ok(())
}

/// The `timestamp` and `signature` values of the header (split on `,`, then the first `=`).
fn signature_parts(header: &str) -> Option<(&str, &str)> {
    let (mut timestamp, mut signature) = (None, None);
    for part in header.split(',') {
        match part.split_once('=') {
            Some((k, v)) if k.trim() == "timestamp" => timestamp = Some(v.trim()),
            Some((k, v)) if k.trim() == "signature" => signature = Some(v.trim()),
            _ => {}
        }
    }
    Some((timestamp?, signature?))
}

/// Normalises `build.*` and `job.*` events; `ping` and every other event are ignored.
pub fn parse(request: &Request<'_>) -> Result<Parsed, PayloadError> {
    let body = json::object(request.body, Some("a Buildkite webhook event"))?;
    let Some(event) = auth::present(request.headers, "x-buildkite-event")
        .map(str::to_owned)
        .or_else(|| text(&body, "/event"))
    else {
        return Ok(Parsed::Ignored(
            "no X-Buildkite-Event header: not a Buildkite webhook event".to_owned(),
        ));
    };
    if event == "ping" {
        return Ok(Parsed::Ignored(
            "Buildkite event \"ping\": the webhook is connected".to_owned(),
        ));
    }
    let is_job = event.starts_with("job.");
    if !is_job && !event.starts_with("build.") {
        return Ok(Parsed::Ignored(format!(
            "Buildkite event {event:?}: only build.* and job.* events make reports"
        )));
    }

    let (raw, (mut status, mut phase)) = if is_job {
        let raw = text(&body, "/job/state");
        (raw.clone(), raw.as_deref().map_or(UNKNOWN, job_state))
    } else if body.pointer("/build/blocked") == Some(&Value::Bool(true))
        && text(&body, "/build/state")
            .is_none_or(|s| matches!(s.as_str(), "passed" | "blocked" | "running" | "scheduled"))
    {
        // A build waiting on a block step keeps its last state and says `blocked: true`.
        (Some("blocked".to_owned()), (Status::Pending, Phase::Queued))
    } else {
        let raw = text(&body, "/build/state");
        (raw.clone(), raw.as_deref().map_or(UNKNOWN, build_state))
    };
    match event.as_str() {
        "build.failing" | "job.promised_exit_status" => {
            (status, phase) = (Status::Failure, Phase::InProgress);
        }
        "build.scheduled" if phase == Phase::Completed => phase = Phase::Queued,
        "build.running" | "build.started" | "job.scheduled" | "job.started" | "job.activated"
            if phase == Phase::Completed =>
        {
            phase = Phase::InProgress;
        }
        _ => {}
    }

    let (job, url, started_at, finished_at, summary) = if is_job {
        (
            first(&body, &["/job/name", "/job/label", "/job/step_key"]),
            first(&body, &["/job/web_url", "/build/web_url"]),
            time(&body, "/job/started_at"),
            time(&body, "/job/finished_at"),
            job_summary(&body),
        )
    } else {
        (
            None,
            text(&body, "/build/web_url"),
            time(&body, "/build/started_at"),
            time(&body, "/build/finished_at"),
            None,
        )
    };
    let job = JobStatus {
        job,
        pipeline: first(&body, &["/pipeline/name", "/pipeline/slug"]),
        status: Some(status),
        status_raw: raw,
        source: Some(SOURCE.to_owned()),
        phase: Some(phase),
        project: project(&body),
        run_id: text(&body, "/build/number"),
        branch: first(&body, &["/build/branch", "/build/tag"])
            .as_deref()
            .and_then(branch_name),
        commit: text(&body, "/build/commit"),
        commit_message: text(&body, "/build/message"),
        url,
        actor: first(
            &body,
            &[
                "/build/author/username",
                "/build/creator/name",
                "/build/author/name",
                "/sender/name",
            ],
        ),
        actor_email: first(&body, &["/build/creator/email", "/build/author/email"]),
        started_at,
        finished_at,
        duration_secs: None,
        summary,
    };
    Ok(Parsed::Event(Event::JobStatus(job)))
}

/// No delivery header exists. §13's key: event + build id + state (job events: the job's id and
/// state), plus `blocked` and `finished_at` (a build finishes again after a block step or a job
/// retry) and the signature timestamp when the delivery is signed.
pub fn delivery_id(request: &Request<'_>) -> Option<String> {
    let body: Value = serde_json::from_slice(request.body).ok()?;
    let event = auth::present(request.headers, "x-buildkite-event")
        .map(str::to_owned)
        .or_else(|| text(&body, "/event"))?;
    let subject = if event.starts_with("job.") {
        "job"
    } else {
        "build"
    };
    let id = text(&body, &format!("/{subject}/id"))?;
    let mut key = format!("{event}:{id}");
    if let Some(state) = text(&body, &format!("/{subject}/state")) {
        key.push(':');
        key.push_str(&state);
    }
    if body.pointer(&format!("/{subject}/blocked")) == Some(&Value::Bool(true)) {
        key.push_str(":blocked");
    }
    if let Some(finished) = text(&body, &format!("/{subject}/finished_at")) {
        key.push('@');
        key.push_str(&finished);
    }
    if let Some((timestamp, _)) =
        auth::header(request.headers, "x-buildkite-signature").and_then(signature_parts)
    {
        key.push_str(":t");
        key.push_str(timestamp);
    }
    Some(key)
}

/// Build states (REST `state` plus the `failing` event state).
fn build_state(raw: &str) -> (Status, Phase) {
    match raw.trim().to_ascii_lowercase().as_str() {
        "passed" => (Status::Success, Phase::Completed),
        "failed" | "waiting_failed" => (Status::Failure, Phase::Completed),
        "failing" => (Status::Failure, Phase::InProgress),
        "canceled" | "cancelled" => (Status::Cancelled, Phase::Completed),
        "running" | "started" | "canceling" => (Status::Running, Phase::InProgress),
        "scheduled" | "waiting" | "creating" | "blocked" => (Status::Pending, Phase::Queued),
        "skipped" | "not_run" => (Status::Skipped, Phase::Completed),
        _ => UNKNOWN,
    }
}

/// Job states.
fn job_state(raw: &str) -> (Status, Phase) {
    match raw.trim().to_ascii_lowercase().as_str() {
        "passed" | "unblocked" => (Status::Success, Phase::Completed),
        "failed" | "timed_out" | "waiting_failed" | "blocked_failed" | "unblocked_failed"
        | "expired" => (Status::Failure, Phase::Completed),
        "canceled" | "cancelled" => (Status::Cancelled, Phase::Completed),
        "running" | "timing_out" | "canceling" => (Status::Running, Phase::InProgress),
        "pending" | "waiting" | "blocked" | "scheduled" | "assigned" | "accepted" | "limited"
        | "limiting" => (Status::Pending, Phase::Queued),
        "skipped" | "broken" => (Status::Skipped, Phase::Completed),
        _ => UNKNOWN,
    }
}

/// `exit status N` for a finished job (noting a soft failure).
fn job_summary(body: &Value) -> Option<String> {
    let exit = body.pointer("/job/exit_status").and_then(Value::as_i64)?;
    let soft = body.pointer("/job/soft_failed") == Some(&Value::Bool(true));
    Some(if soft {
        format!("exit status {exit} (soft failed)")
    } else {
        format!("exit status {exit}")
    })
}

/// `<organization>/<pipeline slug>`; the organization comes from `organization.slug` or the
/// pipeline's or build's URLs (`…/organizations/<org>/pipelines/…`, `https://buildkite.com/<org>/…`).
fn project(body: &Value) -> Option<String> {
    let slug = first(body, &["/pipeline/slug", "/pipeline/name"])?;
    let org = text(body, "/organization/slug")
        .or_else(|| {
            let url = text(body, "/pipeline/url")?;
            let rest = url.split_once("/organizations/")?.1;
            rest.split('/')
                .next()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        })
        .or_else(|| {
            ["/pipeline/web_url", "/build/web_url"]
                .iter()
                .find_map(|p| {
                    let url = text(body, p)?;
                    let path = url.split_once("://")?.1.split_once('/')?.1;
                    path.split('/')
                        .next()
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                })
        });
    Some(match org {
        Some(org) => format!("{org}/{slug}"),
        None => slug,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::testing::{headers, hmac_hex, request, utc};
    use axum::http::HeaderMap;
    use chrono::{DateTime, Utc};

    const TOKEN: &str = "bk-webhook-token";

    /// `{event, build, pipeline, sender}` assembled from the Build and Pipeline JSON in
    /// buildkite/docs `pages/apis/rest_api/builds.md` (MIT), without `jobs` as webhooks send it.
    fn build_event(event: &str, state: &str, extra: &str) -> String {
        format!(
            r#"{{
  "event": "{event}",
  "build": {{
    "id": "f62a1b4d-10f9-4790-bc1c-e2c3a0c80983",
    "graphql_id": "QnVpbGQtLS1mYmQ2Zjk3OS0yOTRhLTQ3ZjItOTU0Ni1lNTk0M2VlMTAwNzE=",
    "url": "https://api.buildkite.com/v2/organizations/my-great-org/pipelines/my-pipeline/builds/1",
    "web_url": "https://buildkite.com/my-great-org/my-pipeline/builds/1",
    "number": 1,
    "state": "{state}",
    "cancel_reason": null,
    "blocked": false,
    "message": "Bumping to version 0.2-beta.6",
    "commit": "abcd0b72a1e580e90712cdd9eb26d3fb41cd09c8",
    "branch": "main",
    "env": {{}},
    "source": "webhook",
    "creator": {{
      "id": "3d3c3bf0-7d58-4afe-8fe7-b3017d5504de",
      "name": "Keith Pitt",
      "email": "keith@buildkite.com",
      "avatar_url": "https://www.gravatar.com/avatar/e14f55d3f939977cecbf51b64ff6f861",
      "created_at": "2015-05-22T12:36:45.309Z"
    }},
    "created_at": "2015-05-09T21:05:59.874Z",
    "scheduled_at": "2015-05-09T21:05:59.874Z",
    "started_at": "2015-05-09T21:05:59.874Z",
    "failing_at": null,
    "finished_at": {finished},
    "meta_data": {{}},
    "pull_request": {{}},
    "rebuilt_from": null{extra}
  }},
  "pipeline": {{
    "id": "849411f9-9e6d-4739-a0d8-e247088e9b52",
    "url": "https://api.buildkite.com/v2/organizations/my-great-org/pipelines/my-pipeline",
    "web_url": "https://buildkite.com/my-great-org/my-pipeline",
    "name": "Great Pipeline",
    "slug": "great-pipeline",
    "repository": "git@github.com:my-great-org/my-pipeline",
    "provider": {{"id": "github", "webhook_url": "https://webhook.buildkite.com/deliver/xxx"}},
    "default_branch": "main",
    "created_at": "2013-09-03 13:24:38 UTC"
  }},
  "sender": {{"id": "8a7693f8-dbae-4783-9137-84090fce9045", "name": "Some Person"}}
}}"#,
            finished = if matches!(
                state,
                "passed" | "failed" | "canceled" | "skipped" | "not_run"
            ) {
                r#""2015-05-09T21:08:59.874Z""#
            } else {
                "null"
            },
        )
    }

    fn job_event(event: &str, state: &str) -> String {
        let job = format!(
            r#","job": {{
    "id": "b63254c0-3271-4a98-8270-7cfbd6c2f14e",
    "type": "script",
    "name": ":rspec: RSpec",
    "step_key": "rspec",
    "state": "{state}",
    "web_url": "https://buildkite.com/my-great-org/my-pipeline/builds/1#b63254c0-3271-4a98-8270-7cfbd6c2f14e",
    "command": "bundle exec rspec",
    "soft_failed": false,
    "exit_status": 1,
    "started_at": "2015-05-09T21:07:59.874Z",
    "finished_at": "2015-05-09T21:08:59.874Z"
  }}}}"#
        );
        let build = build_event(event, "running", "");
        // Close the object with the job inside it.
        format!("{}{job}", build.trim_end().trim_end_matches('}'))
    }

    /// An independent HMAC-SHA256 of `<timestamp>.<body>` (hmac crate directly), hex.
    fn sign(token: &str, timestamp: &str, body: &str) -> String {
        hmac_hex(token, format!("{timestamp}.{body}").as_bytes())
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn job(event: &str, body: &str) -> JobStatus {
        let h = headers(&[
            ("content-type", "application/json"),
            ("x-buildkite-event", event),
            ("x-buildkite-token", TOKEN),
        ]);
        match parse(&request(&h, body, now())) {
            Ok(Parsed::Event(Event::JobStatus(j))) => j,
            other => panic!("{event}: {other:?}"),
        }
    }

    #[test]
    fn own_signature_vector() {
        // Computed once with `openssl dgst -sha256 -hmac` and checked here with the hmac crate.
        let body = r#"{"event":"ping","service":{"id":"1"}}"#;
        let expected = "dc65e74b2fed60f5778152613f03799feb80d8ba49e32a57f922d63aa42b9757";
        assert_eq!(sign(TOKEN, "1700000000", body), expected);
        let header = format!("timestamp=1700000000,signature={expected}");
        let h = headers(&[("x-buildkite-signature", &header)]);
        assert_eq!(
            verify(&Secret::new(TOKEN), &request(&h, body, now())),
            Ok(())
        );
    }

    #[test]
    fn token_and_signature_forms() {
        let secret = Secret::new(TOKEN);
        let body = build_event("build.finished", "passed", "");
        let sig = |ts: &str| format!("timestamp={ts},signature={}", sign(TOKEN, ts, &body));
        let arrival = now();
        let now = arrival.timestamp();
        // (headers, accepted, error contains)
        let cases: Vec<(Vec<(&str, String)>, bool, &str)> = vec![
            (vec![("x-buildkite-token", TOKEN.to_owned())], true, ""),
            (
                vec![("x-buildkite-token", "nope".to_owned())],
                false,
                "wrong X-Buildkite-Token",
            ),
            (
                vec![("x-buildkite-signature", sig(&now.to_string()))],
                true,
                "",
            ),
            (
                vec![(
                    "x-buildkite-signature",
                    format!(
                        " signature={} , timestamp={now} ",
                        sign(TOKEN, &now.to_string(), &body)
                    ),
                )],
                true,
                "",
            ),
            (
                vec![("x-buildkite-signature", sig(&(now - 299).to_string()))],
                true,
                "",
            ),
            (
                vec![("x-buildkite-signature", sig(&(now + 299).to_string()))],
                true,
                "",
            ),
            (
                vec![("x-buildkite-signature", sig(&(now - 301).to_string()))],
                false,
                "more than 300 s",
            ),
            (
                vec![("x-buildkite-signature", sig(&(now + 3600).to_string()))],
                false,
                "more than 300 s",
            ),
            (
                vec![(
                    "x-buildkite-signature",
                    format!(
                        "timestamp={now},signature={}",
                        sign("other", &now.to_string(), &body)
                    ),
                )],
                false,
                "does not match",
            ),
            (
                // Signed under a different timestamp than the one sent.
                vec![(
                    "x-buildkite-signature",
                    format!(
                        "timestamp={now},signature={}",
                        sign(TOKEN, &(now - 1).to_string(), &body)
                    ),
                )],
                false,
                "does not match",
            ),
            (
                vec![("x-buildkite-signature", format!("timestamp={now}"))],
                false,
                "must be timestamp=",
            ),
            (
                vec![(
                    "x-buildkite-signature",
                    "timestamp=soon,signature=ab".to_owned(),
                )],
                false,
                "not a number",
            ),
            (
                vec![
                    ("x-buildkite-token", "nope".to_owned()),
                    ("x-buildkite-signature", sig(&now.to_string())),
                ],
                true,
                "",
            ),
            (vec![], false, "missing credentials"),
            (
                vec![("x-buildkite-token", String::new())],
                false,
                "missing credentials",
            ),
        ];
        for (pairs, ok, contains) in cases {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let h = headers(&pairs);
            let result = verify(&secret, &request(&h, &body, arrival));
            assert_eq!(result.is_ok(), ok, "{pairs:?}: {result:?}");
            if let Err(message) = result {
                assert!(message.contains(contains), "{pairs:?}: {message}");
                assert!(!message.contains(TOKEN));
            }
        }
    }

    #[test]
    fn build_events_normalise() {
        // (event, state, status, phase)
        let cases: &[(&str, &str, Status, Phase)] = &[
            (
                "build.scheduled",
                "scheduled",
                Status::Pending,
                Phase::Queued,
            ),
            (
                "build.running",
                "running",
                Status::Running,
                Phase::InProgress,
            ),
            (
                "build.failing",
                "failing",
                Status::Failure,
                Phase::InProgress,
            ),
            (
                "build.failing",
                "running",
                Status::Failure,
                Phase::InProgress,
            ),
            (
                "build.failing",
                "failed",
                Status::Failure,
                Phase::InProgress,
            ),
            (
                "build.finished",
                "passed",
                Status::Success,
                Phase::Completed,
            ),
            (
                "build.finished",
                "failed",
                Status::Failure,
                Phase::Completed,
            ),
            (
                "build.finished",
                "waiting_failed",
                Status::Failure,
                Phase::Completed,
            ),
            (
                "build.finished",
                "canceled",
                Status::Cancelled,
                Phase::Completed,
            ),
            (
                "build.finished",
                "canceling",
                Status::Running,
                Phase::InProgress,
            ),
            (
                "build.finished",
                "running",
                Status::Running,
                Phase::InProgress,
            ),
            (
                "build.finished",
                "skipped",
                Status::Skipped,
                Phase::Completed,
            ),
            (
                "build.finished",
                "not_run",
                Status::Skipped,
                Phase::Completed,
            ),
            ("build.finished", "blocked", Status::Pending, Phase::Queued),
            ("build.finished", "waiting", Status::Pending, Phase::Queued),
            (
                "build.finished",
                "exploded",
                Status::Unknown,
                Phase::Completed,
            ),
            (
                "build.skipped",
                "skipped",
                Status::Skipped,
                Phase::Completed,
            ),
            // Fast transitions: an early event already showing a final state is not "completed".
            (
                "build.running",
                "passed",
                Status::Success,
                Phase::InProgress,
            ),
            ("build.scheduled", "failed", Status::Failure, Phase::Queued),
        ];
        for (event, state, status, phase) in cases {
            let j = job(event, &build_event(event, state, ""));
            assert_eq!(j.status.as_ref(), Some(status), "{event} {state}");
            assert_eq!(j.phase, Some(*phase), "{event} {state}");
            assert_eq!(j.status_raw.as_deref(), Some(*state), "{event} {state}");
            assert_eq!(j.source.as_deref(), Some("Buildkite"));
        }

        let j = job(
            "build.finished",
            &build_event("build.finished", "passed", ""),
        );
        assert_eq!(j.pipeline.as_deref(), Some("Great Pipeline"));
        assert_eq!(j.job, None);
        assert_eq!(j.project.as_deref(), Some("my-great-org/great-pipeline"));
        assert_eq!(j.run_id.as_deref(), Some("1"));
        assert_eq!(j.branch.as_deref(), Some("main"));
        assert_eq!(
            j.commit.as_deref(),
            Some("abcd0b72a1e580e90712cdd9eb26d3fb41cd09c8")
        );
        assert_eq!(
            j.commit_message.as_deref(),
            Some("Bumping to version 0.2-beta.6")
        );
        assert_eq!(
            j.url.as_deref(),
            Some("https://buildkite.com/my-great-org/my-pipeline/builds/1")
        );
        assert_eq!(j.actor.as_deref(), Some("Keith Pitt"));
        assert_eq!(j.actor_email.as_deref(), Some("keith@buildkite.com"));
        assert_eq!(j.started_at, utc("2015-05-09T21:05:59.874Z"));
        assert_eq!(j.finished_at, utc("2015-05-09T21:08:59.874Z"));
        assert_eq!(j.duration_secs(), Some(180));
    }

    #[test]
    fn blocked_build_is_pending() {
        let body = build_event("build.finished", "passed", "")
            .replace(r#""blocked": false"#, r#""blocked": true"#);
        let j = job("build.finished", &body);
        assert_eq!(j.status, Some(Status::Pending));
        assert_eq!(j.status_raw.as_deref(), Some("blocked"));
        assert_eq!(j.phase, Some(Phase::Queued));
        // A failed build that is also blocked is still a failure.
        let body = build_event("build.finished", "failed", "")
            .replace(r#""blocked": false"#, r#""blocked": true"#);
        assert_eq!(job("build.finished", &body).status, Some(Status::Failure));
    }

    #[test]
    fn job_events_normalise() {
        // (event, job state, status, phase)
        let cases: &[(&str, &str, Status, Phase)] = &[
            ("job.scheduled", "scheduled", Status::Pending, Phase::Queued),
            ("job.started", "running", Status::Running, Phase::InProgress),
            ("job.finished", "passed", Status::Success, Phase::Completed),
            ("job.finished", "failed", Status::Failure, Phase::Completed),
            (
                "job.finished",
                "timed_out",
                Status::Failure,
                Phase::Completed,
            ),
            ("job.finished", "expired", Status::Failure, Phase::Completed),
            (
                "job.finished",
                "canceled",
                Status::Cancelled,
                Phase::Completed,
            ),
            ("job.finished", "broken", Status::Skipped, Phase::Completed),
            ("job.finished", "mystery", Status::Unknown, Phase::Completed),
            (
                "job.activated",
                "unblocked",
                Status::Success,
                Phase::InProgress,
            ),
            (
                "job.promised_exit_status",
                "running",
                Status::Failure,
                Phase::InProgress,
            ),
        ];
        for (event, state, status, phase) in cases {
            let j = job(event, &job_event(event, state));
            assert_eq!(j.status.as_ref(), Some(status), "{event} {state}");
            assert_eq!(j.phase, Some(*phase), "{event} {state}");
            assert_eq!(j.status_raw.as_deref(), Some(*state));
        }
        let j = job("job.finished", &job_event("job.finished", "failed"));
        assert_eq!(j.job.as_deref(), Some(":rspec: RSpec"));
        assert_eq!(j.pipeline.as_deref(), Some("Great Pipeline"));
        assert_eq!(
            j.url.as_deref(),
            Some(
                "https://buildkite.com/my-great-org/my-pipeline/builds/1#b63254c0-3271-4a98-8270-7cfbd6c2f14e"
            )
        );
        assert_eq!(j.started_at, utc("2015-05-09T21:07:59.874Z"));
        assert_eq!(j.finished_at, utc("2015-05-09T21:08:59.874Z"));
        assert_eq!(j.summary.as_deref(), Some("exit status 1"));
    }

    #[test]
    fn lenient_variants() {
        type Case = (&'static str, String, fn(&JobStatus) -> bool);
        let base = build_event("build.finished", "passed", "");
        let long = "发布 🚀 ".repeat(4000);
        let cases: Vec<Case> = vec![
            (
                "empty pipeline name falls back to the slug",
                base.replace(r#""name": "Great Pipeline""#, r#""name": """#),
                |j| j.pipeline.as_deref() == Some("great-pipeline"),
            ),
            (
                "API-created build with author instead of creator",
                base.replace(
                    r#""source": "webhook""#,
                    r#""source": "api", "author": {"username": "kp", "name": "K P", "email": "kp@example.com"}"#,
                )
                .replace(r#""creator": {"#, r#""creator_gone": {"#),
                |j| j.actor.as_deref() == Some("kp") && j.actor_email.as_deref() == Some("kp@example.com"),
            ),
            (
                "no creator or author: sender",
                base.replace(r#""creator": {"#, r#""creator_gone": {"#),
                |j| j.actor.as_deref() == Some("Some Person") && j.actor_email.is_none(),
            ),
            (
                "tag build",
                base.replace(r#""branch": "main""#, r#""branch": "", "tag": "v0.2""#),
                |j| j.branch.as_deref() == Some("v0.2"),
            ),
            (
                "organization from the web URL when the API URL is absent",
                base.replace(
                    r#""url": "https://api.buildkite.com/v2/organizations/my-great-org/pipelines/my-pipeline","#,
                    "",
                ),
                |j| j.project.as_deref() == Some("my-great-org/great-pipeline"),
            ),
            (
                "wrong-typed optional fields are absent",
                base.replace(r#""number": 1"#, r#""number": [1]"#)
                    .replace(r#""commit": "abcd0b72a1e580e90712cdd9eb26d3fb41cd09c8""#, r#""commit": {}"#)
                    .replace(r#""started_at": "2015-05-09T21:05:59.874Z""#, r#""started_at": 5"#),
                |j| j.run_id.is_none() && j.commit.is_none() && j.started_at.is_none(),
            ),
            (
                "long Chinese and emoji commit message",
                base.replace("Bumping to version 0.2-beta.6", &long),
                |j| j.commit_message.as_deref().is_some_and(|m| m.chars().count() > 19_000),
            ),
            (
                "bare minimum",
                r#"{"event":"build.finished","build":{"state":"passed"}}"#.to_owned(),
                |j| {
                    j.status == Some(Status::Success)
                        && j.pipeline.is_none()
                        && j.project.is_none()
                        && j.url.is_none()
                },
            ),
        ];
        for (label, body, check) in cases {
            let j = job("build.finished", &body);
            assert!(check(&j), "{label}: {:.600}", format!("{j:?}"));
        }
    }

    #[test]
    fn other_events_are_ignored() {
        let ping = r#"{"event":"ping","service":{"id":"1"},"organization":{},"sender":{}}"#;
        // (event header, body, reason contains)
        let cases: &[(Option<&str>, &str, &str)] = &[
            (Some("ping"), ping, "\"ping\""),
            (None, ping, "\"ping\""),
            (
                Some("agent.connected"),
                r#"{"event":"agent.connected","agent":{}}"#,
                "\"agent.connected\"",
            ),
            (
                Some("cluster_token.registration_blocked"),
                r#"{"event":"cluster_token.registration_blocked"}"#,
                "only build.* and job.*",
            ),
            (None, r#"{"build":{}}"#, "no X-Buildkite-Event header"),
        ];
        for (event, body, contains) in cases {
            let h = match event {
                Some(e) => headers(&[("x-buildkite-event", e)]),
                None => HeaderMap::new(),
            };
            match parse(&request(&h, body, now())) {
                Ok(Parsed::Ignored(reason)) => assert!(reason.contains(contains), "{reason}"),
                other => panic!("{event:?}: {other:?}"),
            }
        }
        let h = headers(&[("x-buildkite-event", "build.finished")]);
        for body in ["", "not json", "[]", "true"] {
            let err = parse(&request(&h, body, now())).expect_err(body);
            assert!(err.field.is_none() && err.message.starts_with("body is not valid JSON"));
        }
    }

    #[test]
    fn delivery_ids() {
        let finished = build_event("build.finished", "passed", "");
        let token = headers(&[("x-buildkite-event", "build.finished")]);
        assert_eq!(
            delivery_id(&request(&token, &finished, now())).as_deref(),
            Some(
                "build.finished:f62a1b4d-10f9-4790-bc1c-e2c3a0c80983:passed@2015-05-09T21:08:59.874Z"
            )
        );
        let blocked = finished.replace(r#""blocked": false"#, r#""blocked": true"#);
        assert_ne!(
            delivery_id(&request(&token, &blocked, now())),
            delivery_id(&request(&token, &finished, now()))
        );
        let signed = headers(&[
            ("x-buildkite-event", "build.finished"),
            ("x-buildkite-signature", "timestamp=1700000000,signature=00"),
        ]);
        assert_eq!(
            delivery_id(&request(&signed, &finished, now())).as_deref(),
            Some(
                "build.finished:f62a1b4d-10f9-4790-bc1c-e2c3a0c80983:passed@2015-05-09T21:08:59.874Z:t1700000000"
            )
        );
        let running = build_event("build.running", "running", "");
        let h = headers(&[("x-buildkite-event", "build.running")]);
        assert_eq!(
            delivery_id(&request(&h, &running, now())).as_deref(),
            Some("build.running:f62a1b4d-10f9-4790-bc1c-e2c3a0c80983:running")
        );
        let job_body = job_event("job.finished", "failed");
        let h = headers(&[("x-buildkite-event", "job.finished")]);
        assert_eq!(
            delivery_id(&request(&h, &job_body, now())).as_deref(),
            Some(
                "job.finished:b63254c0-3271-4a98-8270-7cfbd6c2f14e:failed@2015-05-09T21:08:59.874Z"
            )
        );
        assert_eq!(
            delivery_id(&request(&h, r#"{"event":"ping"}"#, now())),
            None
        );
    }
}
